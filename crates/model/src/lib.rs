//! The embedded model runtime: loads Hugging Face model folders (and GGUF files), runs Qwen2- and
//! Llama-family causal language models on candle with differentiable operations only, tokenizes,
//! renders chat templates and generates. It knows nothing of sandboxes, benchmarks or HTTP.

pub mod bench;
pub mod chat_template;
pub mod config;
pub mod error;
mod fused;
pub mod generation;
pub mod gguf;
pub mod hub;
pub mod language_model;
pub mod model;
pub mod quantized;
pub mod sampling;
pub mod tokenizer;
mod vector;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use generation::{
    FinishReason, Generation, GenerationDefaults, GenerationSettings, TokenEvent,
};
pub use hub::{HubOptions, resolve_model, resolve_model_with};
pub use language_model::{LanguageModel, best_device, default_dtype, parse_dtype};
pub use model::{
    CausalLm, KvCache, Linear, LinearWeight, LogitsOutput, LoraAdapter, LoraDropout, RmsNorm,
};
pub use sampling::{SamplingParams, SplitMix64};
pub use tokenizer::TextTokenizer;
pub use weights::Weights;

/// The threads the CPU kernels use: candle's count (`RAYON_NUM_THREADS`, else the physical
/// cores), asked once. Candle asks again on every parallel operation, and without
/// `RAYON_NUM_THREADS` each asking reads and parses `/proc/cpuinfo` (thousands of times a
/// training step, dozens a decoded token): see [`set_thread_environment`].
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Sets, where the user has not, the environment candle's CPU kernels read:
/// `RAYON_NUM_THREADS` to [`threads`] (candle then stops reading /proc/cpuinfo on every parallel
/// operation, and rayon's pool agrees with candle's count), and for `training`
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` (candle's elementwise pool otherwise spins after each of
/// backward's many gradient sums, on a core the matrix products need; decoding keeps the spin).
///
/// # Safety
/// Call it before any other thread exists (first thing in `main`): it writes the process
/// environment, which another thread could be reading.
pub unsafe fn set_thread_environment(training: bool) {
    let mut settings = Vec::new();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        settings.push(("RAYON_NUM_THREADS", threads().to_string()));
    }
    if training && std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        settings.push(("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string()));
    }
    for (name, value) in settings {
        // SAFETY: the caller guarantees no other thread exists to read the environment.
        unsafe { std::env::set_var(name, value) };
    }
}
