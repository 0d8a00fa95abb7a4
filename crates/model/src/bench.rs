//! A throughput benchmark of the runtime on a random-weight model: prefill tokens/s, decode
//! tokens/s per batch size and peak memory, plus a writer for the same weights as a Hugging Face
//! folder so that transformers can be measured on identical weights.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{CausalLm, LogitsOutput};
use crate::sampling::{SplitMix64, argmax};

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    /// Prompt length of the prefill measurement.
    pub prefill_tokens: usize,
    /// Prefill throughput (batch 1), tokens per second.
    pub prefill_tokens_per_second: f64,
    /// Decode throughput per batch size: generated tokens (all rows) per second.
    pub decode: Vec<DecodeFigure>,
    /// Size of the weights in memory, bytes.
    pub weights_bytes: u64,
    /// Peak resident memory of the process (`VmHWM`), bytes, where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// Decode throughput at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeFigure {
    /// Sequences decoded together.
    pub batch: usize,
    /// Decode steps timed.
    pub steps: usize,
    /// Generated tokens (all rows) per second.
    pub tokens_per_second: f64,
}

/// A model of `config`'s shape with normal(0, 0.02) weights (norms 1), not seeded: fast to build.
pub fn random_model(config: &ModelConfig, dtype: DType, device: &Device) -> Result<CausalLm> {
    CausalLm::build(config, dtype, device, &mut |name, shape| {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?
        };
        Ok(t.to_dtype(dtype)?)
    })
}

/// Writes `model` as a Hugging Face folder (`config.json` + `model.safetensors`, f32).
pub fn save_hf_folder(model: &CausalLm, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::file(dir, format!("cannot create: {e}")))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&model.config().to_hf_json())
        .map_err(|e| ModelError::file(&config_path, e.to_string()))?;
    std::fs::write(&config_path, text)
        .map_err(|e| ModelError::file(&config_path, format!("cannot write: {e}")))?;
    let tensors: HashMap<String, Tensor> = model
        .named_parameters()?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)
        .map_err(|e| ModelError::file(&path, format!("cannot write: {e}")))
}

/// Measures prefill of `prefill_tokens` tokens (batch 1) and `decode_steps` greedy decode steps
/// after a 32-token prompt for each batch size.
pub fn measure(
    model: &CausalLm,
    prefill_tokens: usize,
    batches: &[usize],
    decode_steps: usize,
) -> Result<BenchFigures> {
    let vocab = model.config().vocab_size as u64;
    let mut rng = SplitMix64::new(1);
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect() };
    let device = model.device();

    let prompt = Tensor::from_vec(tokens(prefill_tokens), (1, prefill_tokens), device)?;
    model.forward(&prompt, None, None, LogitsOutput::Last)?; // warm-up
    let start = Instant::now();
    model.forward(&prompt, None, None, LogitsOutput::Last)?;
    let prefill_tokens_per_second = prefill_tokens as f64 / start.elapsed().as_secs_f64();

    let mut decode = Vec::new();
    for &batch in batches {
        let prompt_len = 32;
        let mut cache = model.new_cache(batch, prompt_len + decode_steps + 1)?;
        let prompt = Tensor::from_vec(tokens(batch * prompt_len), (batch, prompt_len), device)?;
        let mut logits = model.forward(&prompt, None, Some(&mut cache), LogitsOutput::Last)?;
        let start = Instant::now();
        for _ in 0..decode_steps {
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let next: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
            let input = Tensor::from_vec(next, (batch, 1), device)?;
            logits = model.forward(&input, None, Some(&mut cache), LogitsOutput::Last)?;
        }
        let secs = start.elapsed().as_secs_f64();
        decode.push(DecodeFigure {
            batch,
            steps: decode_steps,
            tokens_per_second: (batch * decode_steps) as f64 / secs,
        });
    }
    let weights_bytes = model.weights_bytes();
    Ok(BenchFigures {
        prefill_tokens,
        prefill_tokens_per_second,
        decode,
        weights_bytes,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), where available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
