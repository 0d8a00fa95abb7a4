//! Runtime throughput on a random-weight model of Qwen2.5-0.5B's shape (or `--tiny`): prefill
//! tokens/s, decode tokens/s at batch 1 and 8, peak memory, printed as JSON. `--save DIR` also
//! writes the weights as a Hugging Face folder for the transformers side of the comparison.
//!
//! `cargo run --release -p afterburner-model --example bench_model -- [--save DIR] [--steps N] [--prefill N]`

use afterburner_model::bench::{measure, random_model, save_hf_folder};
use afterburner_model::{DType, Device, ModelConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = value("--steps").map_or(Ok(32), |v| v.parse())?;
    let prefill: usize = value("--prefill").map_or(Ok(512), |v| v.parse())?;
    let config = ModelConfig::qwen2_5_0_5b();
    let model = random_model(&config, DType::F32, &Device::Cpu)?;
    if let Some(dir) = value("--save") {
        save_hf_folder(&model, std::path::Path::new(&dir))?;
    }
    let figures = measure(&model, prefill, &[1, 8], steps)?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}
