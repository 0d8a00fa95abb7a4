//! `afterburner serve --model`: the embedded model behind the server's OpenAI endpoints
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`).

use afterburner_server::OpenAiModel;
use anyhow::Result;
use clap::Args;

/// The model flags of `afterburner serve`.
#[derive(Debug, Args)]
pub struct ServeModelArgs {
    /// Also answer OpenAI /v1/chat/completions, /v1/completions and /v1/models with this model:
    /// a model folder, a .gguf file (or a folder holding one), or ORG/NAME in the Hugging Face
    /// cache. Generations run one at a time on a thread of their own.
    #[arg(long)]
    pub model: Option<String>,
    /// The model's weights dtype: f32, bf16, f16, or quantized (GGUF files: keep
    /// Q4_0/Q4_1/Q8_0 projections quantized, on the CPU) [default: f32 on CPU, bf16 on a GPU].
    #[arg(long, requires = "model")]
    pub dtype: Option<String>,
    /// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`, e.g.
    /// `afterburner train`'s DIR/adapter) applied to the model without merging.
    #[arg(long, value_name = "DIR", requires = "model")]
    pub adapter: Option<std::path::PathBuf>,
    /// Model requests that may wait for the model; beyond it they are refused (503, Retry-After).
    #[arg(long, default_value_t = 64, requires = "model")]
    pub model_queue: usize,
}

/// Loads the model `args` name and starts its thread; `None` without `--model`.
pub fn start(args: &ServeModelArgs) -> Result<Option<OpenAiModel>> {
    let Some(given) = args.model.as_deref() else {
        return Ok(None);
    };
    let (choice, model) = crate::model_choice::choose_and_load(
        Some(given),
        args.dtype.as_deref(),
        args.adapter.as_deref(),
    )?;
    eprintln!(
        "afterburner serve: model `{}` ({}) answers /v1/chat/completions, /v1/completions and /v1/models",
        choice.name,
        choice.path.display()
    );
    Ok(Some(OpenAiModel::start(
        model,
        choice.name,
        args.model_queue,
    )?))
}
