//! Runtime throughput: prefill tokens/s, decode tokens/s at batch 1 and 8, peak memory, printed
//! as JSON. The model is `--model PATH` (a Hugging Face folder or a GGUF file, loaded in f32: the
//! same weights transformers is measured on by `scripts/bench-model`), or else a random-weight
//! model of Qwen2.5-0.5B's shape; `--save DIR` also writes those weights as a Hugging Face folder.
//! `--quantized` keeps a GGUF file's Q4_0/Q4_1/Q8_0 projections quantized (`--dtype quantized`).
//!
//! `cargo run --release -p afterburner-model --example bench_model -- [--model PATH] [--quantized] [--save DIR] [--steps N] [--prefill N]`

use afterburner_model::bench::{measure, random_model, save_hf_folder};
use afterburner_model::{CausalLm, DType, Device, LanguageModel, ModelConfig, Weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { afterburner_model::set_thread_environment(false) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = value("--steps").map_or(Ok(32), |v| v.parse())?;
    let prefill: usize = value("--prefill").map_or(Ok(512), |v| v.parse())?;
    if let Some(path) = value("--model") {
        let dir = std::path::Path::new(&path);
        let figures = if args.iter().any(|a| a == "--quantized") {
            let loaded = afterburner_model::gguf::load_language_model_quantized(dir)?;
            measure(loaded.model(), prefill, &[1, 8], steps)?
        } else if dir.join("config.json").is_file() {
            // A weights-only folder is enough: the benchmark feeds token ids, no tokenizer.
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let weights = Weights::from_folder(dir)?;
            let model = CausalLm::load(&config, &weights, DType::F32, &Device::Cpu)?;
            measure(&model, prefill, &[1, 8], steps)?
        } else {
            let loaded = LanguageModel::load(&path, DType::F32, &Device::Cpu)?;
            measure(loaded.model(), prefill, &[1, 8], steps)?
        };
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    let config = ModelConfig::qwen2_5_0_5b();
    let model = random_model(&config, DType::F32, &Device::Cpu)?;
    if let Some(dir) = value("--save") {
        save_hf_folder(&model, std::path::Path::new(&dir))?;
    }
    let figures = measure(&model, prefill, &[1, 8], steps)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}
