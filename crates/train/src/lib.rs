//! Fine-tuning the embedded model with LoRA (`afterburner train`).
//!
//! - [`lora`]: adapters initialised as PEFT does, saved and loaded in PEFT's format.
//! - [`optim`]: AdamW, warmup + cosine schedule, gradient clipping and accumulation.
//! - [`sft`]: TRL prompt-completion rows, tokenized with the chat template, loss on completion
//!   tokens only.
//! - [`train_sft`]: the supervised loop: seeded shuffling, accumulation, one metrics line per
//!   optimiser step, the adapter saved at the end.
//!
//! The model crate runs the network (its `Linear` carries the adapter); this crate decides what
//! is trained and how. It knows nothing of sandboxes.

#![warn(missing_docs)]

pub mod lora;
pub mod optim;
pub mod sft;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use afterburner_model::LanguageModel;
use serde::Serialize;

pub use lora::{Adapters, LoraConfig, SeededRng};
pub use optim::{OptimConfig, StepReport};
pub use sft::{PromptCompletion, Tokenized};

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings that do not make sense.
    #[error("{0}")]
    Config(String),
    /// A data row that does not fit.
    #[error("{}: row {row}: {reason}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based row (0: the file as a whole).
        row: usize,
        /// Why.
        reason: String,
    },
    /// An adapter folder that cannot be loaded.
    #[error("{0}")]
    Adapter(String),
    /// The model failed.
    #[error("model: {0}")]
    Model(String),
    /// The loss or the gradients stopped being finite.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl TrainError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The supervised run's settings, named as TRL's `SFTConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftConfig {
    /// The adapters.
    pub lora: LoraConfig,
    /// The optimiser.
    pub optim: OptimConfig,
    /// Optimiser steps; overrides the epochs when set.
    pub max_steps: Option<usize>,
    /// Passes over the data (when `max_steps` is not set).
    pub num_train_epochs: f64,
    /// Examples per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimiser step.
    pub gradient_accumulation_steps: usize,
    /// Examples longer than this many tokens are skipped (and counted).
    pub max_length: usize,
    /// Seeds the adapter's initialisation and the data order.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            lora: LoraConfig::default(),
            optim: OptimConfig::default(),
            max_steps: None,
            num_train_epochs: 1.0,
            per_device_train_batch_size: 1,
            gradient_accumulation_steps: 1,
            max_length: 1024,
            seed: 42,
        }
    }
}

/// One optimiser step's metrics (a line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// 1-based optimiser step.
    pub step: usize,
    /// Of this many.
    pub total_steps: usize,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Mean loss per completion token of the step's batch.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Completion tokens in the step's batch.
    pub tokens: usize,
    /// Tokens (prompt and completion) processed per second in this step.
    pub tokens_per_s: f64,
}

/// What a supervised run did.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    /// Examples used.
    pub examples: usize,
    /// Examples skipped for being longer than `max_length`.
    pub skipped_too_long: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Where the adapter was saved.
    pub adapter: PathBuf,
}

/// Trains LoRA adapters on `examples` with `model` (whose projections get the adapters) and
/// saves them in PEFT's format to `out/adapter`; one metrics line per optimiser step goes to
/// `out/metrics.jsonl` and to `on_step`.
pub fn train_sft(
    model: &mut LanguageModel,
    examples: &[PromptCompletion],
    config: &SftConfig,
    out: &Path,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<SftSummary, TrainError> {
    if config.per_device_train_batch_size == 0 || config.gradient_accumulation_steps == 0 {
        return Err(TrainError::Config(
            "--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1"
                .into(),
        ));
    }
    let mut tokenized = Vec::new();
    let mut skipped_too_long = 0;
    for (i, e) in examples.iter().enumerate() {
        match sft::tokenize(model, e, config.max_length)
            .map_err(|err| TrainError::Config(format!("example {}: {err}", i + 1)))?
        {
            Some(t) => tokenized.push(t),
            None => skipped_too_long += 1,
        }
    }
    if tokenized.is_empty() {
        return Err(TrainError::Config(format!(
            "every one of the {} examples is longer than --max-length {}",
            examples.len(),
            config.max_length
        )));
    }
    let per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps;
    let steps_per_epoch = tokenized.len().div_ceil(per_step);
    let total_steps = match config.max_steps {
        Some(0) => return Err(TrainError::Config("--max-steps must be at least 1".into())),
        Some(n) => n,
        None => ((config.num_train_epochs * steps_per_epoch as f64).ceil() as usize).max(1),
    };
    let device = model.model().device().clone();
    let adapters = Adapters::attach(model.model_mut(), &config.lora, config.seed, &device)?;
    let vars = adapters.vars();
    let mut trainer = optim::Trainer::new(vars.clone(), config.optim.clone(), total_steps)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("create", out, e))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics_file = std::fs::File::create(&metrics_path)
        .map_err(|e| TrainError::io("create", &metrics_path, e))?;
    let mut rng = SeededRng::new(config.seed ^ 0x5EED_DA7A);
    let mut order: Vec<usize> = Vec::new();
    let mut cursor = 0usize;
    let mut consumed = 0usize;
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    for step in 0..total_steps {
        let started = Instant::now();
        let mut batch = Vec::with_capacity(per_step);
        for _ in 0..per_step {
            if cursor == order.len() {
                order = (0..tokenized.len()).collect();
                for i in (1..order.len()).rev() {
                    let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                cursor = 0;
            }
            batch.push(&tokenized[order[cursor]]);
            cursor += 1;
            consumed += 1;
        }
        let tokens: usize = batch.iter().map(|t| t.completion_tokens()).sum();
        let all_tokens: usize = batch.iter().map(|t| t.ids.len()).sum();
        let mut grads = None;
        let mut loss_sum = 0.0;
        for example in batch {
            let nll = sft::completion_nll(model, example)?;
            let scaled = (&nll / tokens as f64).map_err(err)?;
            loss_sum += nll.to_scalar::<f32>().map_err(err)? as f64;
            let g = scaled.backward().map_err(err)?;
            optim::accumulate(&mut grads, g, &vars, 1.0)?;
        }
        let loss = loss_sum / tokens as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged(format!(
                "the loss is {loss} at step {}",
                step + 1
            )));
        }
        let mut grads = grads.ok_or_else(|| TrainError::Model("no gradient".into()))?;
        let report = trainer.step(&mut grads)?;
        if step == 0 {
            first_loss = loss;
        }
        last_loss = loss;
        let metrics = StepMetrics {
            step: step + 1,
            total_steps,
            epoch: consumed as f64 / tokenized.len() as f64,
            loss,
            grad_norm: report.grad_norm,
            learning_rate: report.learning_rate,
            tokens,
            tokens_per_s: all_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        };
        let line = serde_json::to_string(&metrics)
            .map_err(|e| TrainError::Config(format!("metrics: {e}")))?;
        writeln!(metrics_file, "{line}").map_err(|e| TrainError::io("write", &metrics_path, e))?;
        on_step(&metrics);
    }
    let adapter = out.join("adapter");
    let base = model.origin().display().to_string();
    adapters.save_peft(&adapter, Some(&base))?;
    Ok(SftSummary {
        examples: tokenized.len(),
        skipped_too_long,
        steps: total_steps,
        first_loss,
        last_loss,
        adapter,
    })
}
