//! `afterburner generate`: one completion from the embedded model, for trying a model folder or
//! GGUF file, and for parity checks from outside (`--json` prints the token ids).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use afterburner_model::{ChatMessage, GenerationSettings};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::model_choice::choose_and_load;

/// Arguments of `afterburner generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model: a Hugging Face folder, a .gguf file (or a folder holding one), or ORG/NAME in
    /// the Hugging Face cache [default: Qwen/Qwen2.5-Coder-0.5B-Instruct when cached or
    /// downloadable, else SmolLM2-135M-Instruct from scripts/fetch-smollm2].
    #[arg(long)]
    pub model: Option<String>,
    /// The prompt: a user message (rendered with the chat template), or with --raw the text to
    /// continue as it is.
    #[arg(
        long,
        required_unless_present = "messages",
        conflicts_with = "messages"
    )]
    pub prompt: Option<String>,
    /// A JSON file holding the conversation: [{"role": "system"|"user"|"assistant", "content":
    /// "..."}, ...] (or {"messages": [...]}).
    #[arg(long, value_name = "FILE.json")]
    pub messages: Option<PathBuf>,
    /// Continue --prompt as raw text: no chat template (the tokenizer's special tokens, if any,
    /// are added as transformers' tokenizer(text) adds them).
    #[arg(long, conflicts_with = "messages")]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy [default: the model's generation_config.json, greedy
    /// when it does not sample].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold in (0, 1] [default: the model's].
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep only the K most likely tokens (0: off) [default: the model's].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed, settings and prompt give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A string that ends the completion (cut from the text); repeatable.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Weights' dtype: f32, bf16, f16, or quantized (GGUF files: keep
    /// Q4_0/Q4_1/Q8_0 projections quantized, on the CPU) [default: f32 on CPU, bf16 on a GPU].
    #[arg(long)]
    pub dtype: Option<String>,
    /// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`, e.g.
    /// `afterburner train`'s DIR/adapter) applied to the model without merging.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<std::path::PathBuf>,
    /// Print one JSON object: {text, token_ids, prompt_token_ids, finish_reason,
    /// tokens_per_second, prompt_tokens, completion_tokens, model}.
    #[arg(long)]
    pub json: bool,
}

/// Reads a conversation file: a JSON array of `{role, content}` objects, or an object whose
/// `messages` field is one; every error names the file and the message.
pub fn read_messages(path: &Path) -> Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--messages {}: cannot read the file", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("--messages {}: not valid JSON", path.display()))?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("messages") {
            Some(Value::Array(list)) => list,
            _ => bail!(
                "--messages {}: expected a JSON array of {{\"role\", \"content\"}} objects, or an \
                 object with a `messages` array",
                path.display()
            ),
        },
        _ => bail!(
            "--messages {}: expected a JSON array of {{\"role\", \"content\"}} objects",
            path.display()
        ),
    };
    if list.is_empty() {
        bail!("--messages {}: the conversation is empty", path.display());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = || format!("--messages {}: message {i}", path.display());
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: missing `role` (a string)", at()))?;
            if !matches!(role, "system" | "user" | "assistant" | "tool") {
                bail!(
                    "{}: unknown role `{role}`; expected system, user, assistant or tool",
                    at()
                );
            }
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: missing `content` (a string)", at()))?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Runs `afterburner generate`.
pub fn generate(args: GenerateArgs) -> Result<ExitCode> {
    if let Some(t) = args.temperature
        && !(t >= 0.0 && t.is_finite())
    {
        bail!("--temperature must be a number >= 0, got {t}");
    }
    if let Some(p) = args.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        bail!("--top-p must be in (0, 1], got {p}");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    // Read the conversation before loading the model: a bad file fails at once.
    let conversation = match (&args.messages, &args.prompt) {
        (Some(path), _) => Some(read_messages(path)?),
        (None, Some(prompt)) if !args.raw => Some(vec![ChatMessage::user(prompt.clone())]),
        _ => None,
    };
    let (choice, model) = choose_and_load(
        args.model.as_deref(),
        args.dtype.as_deref(),
        args.adapter.as_deref(),
    )?;
    let settings = GenerationSettings {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: args.stop.clone(),
    };
    let generation = match (&conversation, &args.prompt) {
        (Some(messages), _) => model.chat(messages, &settings),
        (None, Some(prompt)) => model.generate_raw(prompt, &settings),
        (None, None) => bail!("give --prompt TEXT or --messages FILE.json"),
    }
    .with_context(|| format!("generating with {}", choice.path.display()))?;
    if args.json {
        println!(
            "{}",
            json!({
                "text": generation.text,
                "token_ids": generation.token_ids,
                "prompt_token_ids": generation.prompt_token_ids,
                "finish_reason": generation.finish_reason.as_str(),
                "tokens_per_second": generation.tokens_per_second(),
                "prompt_tokens": generation.prompt_tokens(),
                "completion_tokens": generation.completion_tokens(),
                "model": choice.name,
            })
        );
    } else {
        println!("{}", generation.text);
    }
    Ok(ExitCode::SUCCESS)
}
