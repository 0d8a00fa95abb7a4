//! Fine-tuning the embedded model with LoRA (`afterburner train`).
//!
//! - [`lora`]: adapters initialised as PEFT does, saved and loaded in PEFT's format.
//! - [`optim`]: AdamW, warmup + cosine schedule, gradient clipping and accumulation.
//! - [`sft`]: TRL prompt-completion rows, tokenized with the chat template, loss on completion
//!   tokens only.
//! - [`dpo`]: TRL preference rows and the sigmoid DPO loss against the adapters-off reference.
//! - [`grpo`]: the GRPO objective (group advantages, clipped ratio, KL, token normalisation).
//! - [`train_sft`]: the supervised loop: seeded shuffling, accumulation, one metrics line per
//!   optimiser step, the adapter saved at the end.
//!
//! The model crate runs the network (its `Linear` carries the adapter); this crate decides what
//! is trained and how. It knows nothing of sandboxes.

#![warn(missing_docs)]

pub mod dpo;
pub mod grpo;
pub mod lora;
pub mod optim;
pub mod sft;
pub mod trainable;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use afterburner_model::LanguageModel;
use serde::{Deserialize, Serialize};

pub use lora::{Adapters, LoraConfig, SeededRng};
pub use optim::{OptimConfig, StepReport};
pub use sft::{PromptCompletion, Tokenized};
pub use trainable::{FinetuningType, Reference, Trainable};

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
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, not as a source, so it is printed once).
        cause: std::io::Error,
    },
}

impl TrainError {
    fn io(action: &'static str, path: &Path, cause: std::io::Error) -> TrainError {
        TrainError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// The supervised run's settings, named as TRL's `SFTConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftConfig {
    /// LoRA adapters or every weight.
    pub finetuning: FinetuningType,
    /// The adapters (LoRA runs).
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
            finetuning: FinetuningType::Lora,
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
    /// DPO's rewards, margins and accuracy (DPO runs only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
    /// GRPO's rewards, clipping and KL (GRPO runs only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rollouts: Option<RolloutMetrics>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    /// Examples (DPO: pairs) used.
    pub examples: usize,
    /// Examples skipped for being longer than `max_length`.
    pub skipped_too_long: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Where the adapter (LoRA) or the model (full fine-tuning) was saved, when the run
    /// finished.
    pub adapter: PathBuf,
    /// The last checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
    /// Whether the stop flag ended the run early (resume from `checkpoint`).
    pub interrupted: bool,
}

/// Where a run stands, saved in each checkpoint (`trainer_state.json`) so that a resumed run
/// continues exactly: the same batches, the same updates.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    rng: u64,
    order: Vec<usize>,
    cursor: usize,
    consumed: usize,
    /// The items (indices) of the current batch, reused for `reuse` steps.
    #[serde(default)]
    batch: Vec<usize>,
    first_loss: f64,
    last_loss: f64,
    examples: usize,
    settings: String,
}

/// The settings a checkpoint must have been made with to be resumed.
fn settings_key(config: &SftConfig, examples: usize) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}",
        config.finetuning,
        config.lora,
        config.optim,
        config.max_steps,
        config.num_train_epochs,
        config.per_device_train_batch_size,
        config.gradient_accumulation_steps,
        config.max_length,
        config.seed,
        examples
    )
}

/// How a run is driven: checkpoints, resumption, stopping.
#[derive(Default)]
pub struct RunControl<'a> {
    /// Write a checkpoint every this many optimiser steps.
    pub save_steps: Option<usize>,
    /// Resume from this checkpoint folder (`out/checkpoint-N`).
    pub resume_from: Option<PathBuf>,
    /// Checked after every step: when it says stop, a checkpoint is written and the run ends.
    pub stop: Option<&'a (dyn Fn() -> bool + Sync)>,
}

#[allow(clippy::too_many_arguments)]
fn write_checkpoint(
    out: &Path,
    model: &LanguageModel,
    trainable: &Trainable,
    kind: FinetuningType,
    trainer: &optim::Trainer,
    state: &TrainerState,
    base: &str,
    extra: Option<&dyn ExtraState>,
) -> Result<PathBuf, TrainError> {
    let dir = out.join(format!("checkpoint-{}", state.step));
    let tmp = out.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io("remove", &tmp, e))?;
    }
    trainable.save(model, &tmp.join(Trainable::folder_name(kind)), base)?;
    let optimizer = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&trainer.state_tensors(), &optimizer)
        .map_err(|e| TrainError::io("write", &optimizer, std::io::Error::other(e.to_string())))?;
    let state_path = tmp.join("trainer_state.json");
    let text = serde_json::to_string(state)
        .map_err(|e| TrainError::Config(format!("trainer state: {e}")))?;
    std::fs::write(&state_path, text).map_err(|e| TrainError::io("write", &state_path, e))?;
    if let Some(extra) = extra {
        extra.save(&tmp)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io("remove", &dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io("rename into place", &dir, e))?;
    Ok(dir)
}

/// What one batch gave: its gradients (already divided for the step's mean) and its figures.
struct BatchOutcome {
    grads: candle_core::backprop::GradStore,
    loss: f64,
    tokens: usize,
    all_tokens: usize,
    preference: Option<PreferenceMetrics>,
    rollouts: Option<RolloutMetrics>,
}

/// Computes one optimiser step's batch with what is trained.
type BatchFn<'a, T> = dyn FnMut(&mut LanguageModel, &Trainable, &[&T], usize) -> Result<BatchOutcome, TrainError>
    + 'a;

/// State a trainer keeps beside the loop's own, written into each checkpoint and read back on
/// resumption.
trait ExtraState {
    /// Writes the state into the checkpoint folder `dir`.
    fn save(&self, dir: &Path) -> Result<(), TrainError>;
    /// Reads it back from the checkpoint folder `dir`.
    fn load(&self, dir: &Path) -> Result<(), TrainError>;
}

/// How the shared loop computes its steps.
struct Steps<'a, 'b, T> {
    /// One optimiser step's batch.
    batch: &'a mut BatchFn<'b, T>,
    /// Optimiser steps per batch of items (the same items are handed to this many steps).
    reuse: usize,
    /// The trainer's own checkpointed state.
    extra: Option<&'a dyn ExtraState>,
}

/// How the shared loop ended.
struct LoopEnd {
    steps: usize,
    first_loss: f64,
    last_loss: f64,
    checkpoint: Option<PathBuf>,
    interrupted: bool,
    adapter: PathBuf,
}

impl LoopEnd {
    /// The run's summary, with what the trainer used and skipped.
    fn summary(self, examples: usize, skipped_too_long: usize) -> SftSummary {
        SftSummary {
            examples,
            skipped_too_long,
            steps: self.steps,
            first_loss: self.first_loss,
            last_loss: self.last_loss,
            adapter: self.adapter,
            checkpoint: self.checkpoint,
            interrupted: self.interrupted,
        }
    }
}

/// The loop both trainers share: seeded order, accumulation, steps, metrics, checkpoints and
/// resumption. `batch` computes one optimiser step's batch with the adapters attached.
#[allow(clippy::too_many_arguments)]
fn run_loop<T>(
    model: &mut LanguageModel,
    items: &[T],
    config: &SftConfig,
    settings: String,
    out: &Path,
    control: &RunControl,
    on_step: &mut dyn FnMut(&StepMetrics),
    steps: Steps<'_, '_, T>,
) -> Result<LoopEnd, TrainError> {
    let Steps {
        batch,
        reuse,
        extra,
    } = steps;
    if config.per_device_train_batch_size == 0 || config.gradient_accumulation_steps == 0 {
        return Err(TrainError::Config(
            "--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1"
                .into(),
        ));
    }
    if control.save_steps == Some(0) {
        return Err(TrainError::Config("--save-steps must be at least 1".into()));
    }
    let per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps;
    let steps_per_epoch = items.len().div_ceil(per_step) * reuse;
    let total_steps = match config.max_steps {
        Some(0) => return Err(TrainError::Config("--max-steps must be at least 1".into())),
        Some(n) => n,
        None => ((config.num_train_epochs * steps_per_epoch as f64).ceil() as usize).max(1),
    };
    let device = model.model().device().clone();
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("create", out, e))?;
    let metrics_path = out.join("metrics.jsonl");
    let kind = config.finetuning;
    let (adapters, mut trainer, mut state) = match &control.resume_from {
        None => {
            let adapters = Trainable::start(model, kind, &config.lora, config.seed)?;
            let trainer = optim::Trainer::new(adapters.vars(), config.optim.clone(), total_steps)?;
            std::fs::File::create(&metrics_path)
                .map_err(|e| TrainError::io("create", &metrics_path, e))?;
            let state = TrainerState {
                step: 0,
                total_steps,
                rng: config.seed ^ 0x5EED_DA7A,
                order: Vec::new(),
                cursor: 0,
                consumed: 0,
                batch: Vec::new(),
                first_loss: f64::NAN,
                last_loss: f64::NAN,
                examples: items.len(),
                settings: settings.clone(),
            };
            (adapters, trainer, state)
        }
        Some(dir) => {
            let state_path = dir.join("trainer_state.json");
            let text = std::fs::read_to_string(&state_path)
                .map_err(|e| TrainError::io("read", &state_path, e))?;
            let state: TrainerState = serde_json::from_str(&text).map_err(|e| {
                TrainError::Config(format!(
                    "{}: not a trainer state: {e}",
                    state_path.display()
                ))
            })?;
            if state.settings != settings {
                return Err(TrainError::Config(format!(
                    "{} was made with other settings or data; resume with the same ones \
                     (checkpoint: {}; now: {settings})",
                    dir.display(),
                    state.settings
                )));
            }
            let adapters = Trainable::resume(model, kind, dir)?;
            let mut trainer =
                optim::Trainer::new(adapters.vars(), config.optim.clone(), total_steps)?;
            let optimizer = dir.join("optimizer.safetensors");
            let moments = candle_core::safetensors::load(&optimizer, &device).map_err(|e| {
                TrainError::io("read", &optimizer, std::io::Error::other(e.to_string()))
            })?;
            trainer.restore(moments, state.step)?;
            if let Some(extra) = extra {
                extra.load(dir)?;
            }
            // Keep the metrics of the steps the checkpoint holds; later lines are redone.
            let kept: Vec<String> = std::fs::read_to_string(&metrics_path)
                .unwrap_or_default()
                .lines()
                .take(state.step)
                .map(str::to_string)
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(&metrics_path, text)
                .map_err(|e| TrainError::io("write", &metrics_path, e))?;
            (adapters, trainer, state)
        }
    };
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io("open", &metrics_path, e))?;
    let base = model.origin().display().to_string();
    let mut checkpoint = None;
    let mut interrupted = false;
    while state.step < total_steps {
        let started = Instant::now();
        if state.step.is_multiple_of(reuse) || state.batch.is_empty() {
            let mut rng = SeededRng::from_state(state.rng);
            state.batch.clear();
            for _ in 0..per_step {
                if state.cursor == state.order.len() {
                    state.order = (0..items.len()).collect();
                    for i in (1..state.order.len()).rev() {
                        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                        state.order.swap(i, j);
                    }
                    state.cursor = 0;
                }
                state.batch.push(state.order[state.cursor]);
                state.cursor += 1;
                state.consumed += 1;
            }
            state.rng = rng.state();
        }
        let picked: Vec<&T> = state.batch.iter().map(|&i| &items[i]).collect();
        let outcome = batch(model, &adapters, &picked, state.step);
        adapters.dropout_off(model.model_mut());
        let mut outcome = outcome?;
        if !outcome.loss.is_finite() {
            return Err(TrainError::Diverged(format!(
                "the loss is {} at step {}",
                outcome.loss,
                state.step + 1
            )));
        }
        let report = trainer.step(&mut outcome.grads)?;
        state.step += 1;
        if state.step == 1 {
            state.first_loss = outcome.loss;
        }
        state.last_loss = outcome.loss;
        let metrics = StepMetrics {
            step: state.step,
            total_steps,
            epoch: state.consumed as f64 / items.len() as f64,
            loss: outcome.loss,
            grad_norm: report.grad_norm,
            learning_rate: report.learning_rate,
            tokens: outcome.tokens,
            tokens_per_s: outcome.all_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            preference: outcome.preference,
            rollouts: outcome.rollouts,
        };
        let line = serde_json::to_string(&metrics)
            .map_err(|e| TrainError::Config(format!("metrics: {e}")))?;
        writeln!(metrics_file, "{line}").map_err(|e| TrainError::io("write", &metrics_path, e))?;
        on_step(&metrics);
        let stop = control.stop.is_some_and(|s| s()) && state.step < total_steps;
        let due = control.save_steps.is_some_and(|n| state.step % n == 0);
        if stop || due {
            checkpoint = Some(write_checkpoint(
                out, model, &adapters, kind, &trainer, &state, &base, extra,
            )?);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    let adapter = out.join(Trainable::folder_name(kind));
    if !interrupted {
        adapters.save(model, &adapter, &base)?;
    }
    Ok(LoopEnd {
        steps: state.step,
        first_loss: state.first_loss,
        last_loss: state.last_loss,
        checkpoint,
        interrupted,
        adapter,
    })
}

/// The seed of `lora_dropout`'s masks in (0-based) optimiser step `step`: a function of the
/// run's seed and the step alone, so a resumed run draws the masks an uninterrupted one does.
fn dropout_seed(seed: u64, step: usize) -> u64 {
    (seed ^ 0xD50F_0A7D_u64).wrapping_add((step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Tokenizes every item with `tokenize` (`None`: longer than `max_length`, skipped and
/// counted); an error names the item (`what` and its 1-based number), and all of them being too
/// long is an error.
fn tokenize_all<T, U>(
    items: &[T],
    what: &str,
    max_length: usize,
    mut tokenize: impl FnMut(&T) -> Result<Option<U>, TrainError>,
) -> Result<(Vec<U>, usize), TrainError> {
    let mut tokenized = Vec::new();
    let mut skipped = 0;
    for (i, item) in items.iter().enumerate() {
        match tokenize(item).map_err(|e| TrainError::Config(format!("{what} {}: {e}", i + 1)))? {
            Some(t) => tokenized.push(t),
            None => skipped += 1,
        }
    }
    if tokenized.is_empty() {
        return Err(TrainError::Config(format!(
            "every one of the {} {what}s is longer than --max-length {max_length}",
            items.len()
        )));
    }
    Ok((tokenized, skipped))
}

/// Trains LoRA adapters on `examples` with `model` (whose projections get the adapters) and
/// saves them in PEFT's format to `out/adapter`; one metrics line per optimiser step goes to
/// `out/metrics.jsonl` and to `on_step`. `control` adds checkpoints every N steps
/// (`out/checkpoint-N`: the adapter, the optimiser's moments, the data order and position, the
/// RNG), resumption from one (exact: the same batches and updates as an uninterrupted run), and
/// a stop flag (a checkpoint is written and the run returns `interrupted`).
pub fn train_sft(
    model: &mut LanguageModel,
    examples: &[PromptCompletion],
    config: &SftConfig,
    out: &Path,
    control: &RunControl,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<SftSummary, TrainError> {
    let (tokenized, skipped_too_long) =
        tokenize_all(examples, "example", config.max_length, |e| {
            sft::tokenize(model, e, config.max_length)
        })?;
    let settings = format!("sft|{}", settings_key(config, tokenized.len()));
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let mut batch = |model: &mut LanguageModel,
                     adapters: &Trainable,
                     batch: &[&Tokenized],
                     step: usize|
     -> Result<BatchOutcome, TrainError> {
        adapters.dropout_on(model.model_mut(), dropout_seed(config.seed, step));
        let vars = adapters.vars();
        let tokens: usize = batch.iter().map(|t| t.completion_tokens()).sum();
        let all_tokens: usize = batch.iter().map(|t| t.ids.len()).sum();
        let mut grads = None;
        let mut loss_sum = 0.0;
        for micro_batch in sft::micro_batches(batch, |t| t.ids.len()) {
            let mut nll: Option<afterburner_model::Tensor> = None;
            for logps in sft::batch_completion_logps(model, micro_batch)? {
                let sum = logps.sum_all().map_err(err)?;
                nll = Some(match nll {
                    None => sum,
                    Some(total) => (total + sum).map_err(err)?,
                });
            }
            let nll = nll
                .ok_or_else(|| TrainError::Model("an empty micro-batch".into()))?
                .neg()
                .map_err(err)?;
            let scaled = (&nll / tokens as f64).map_err(err)?;
            loss_sum += nll.to_scalar::<f32>().map_err(err)? as f64;
            let g = scaled.backward().map_err(err)?;
            optim::accumulate(&mut grads, g, &vars, 1.0)?;
        }
        Ok(BatchOutcome {
            grads: grads.ok_or_else(|| TrainError::Model("no gradient".into()))?,
            loss: loss_sum / tokens as f64,
            tokens,
            all_tokens,
            preference: None,
            rollouts: None,
        })
    };
    let end = run_loop(
        model,
        &tokenized,
        config,
        settings,
        out,
        control,
        on_step,
        Steps {
            batch: &mut batch,
            reuse: 1,
            extra: None,
        },
    )?;
    Ok(end.summary(tokenized.len(), skipped_too_long))
}

/// DPO figures of a step's batch, as TRL logs them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PreferenceMetrics {
    /// Mean `beta * (logp(chosen) - ref(chosen))`.
    #[serde(rename = "rewards/chosen")]
    pub chosen: f64,
    /// Mean `beta * (logp(rejected) - ref(rejected))`.
    #[serde(rename = "rewards/rejected")]
    pub rejected: f64,
    /// Mean chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub margin: f64,
    /// Share of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub accuracy: f64,
}

/// Trains LoRA adapters with DPO (sigmoid loss, `beta`) on preference pairs, the reference
/// being the same model with the adapters off; otherwise as [`train_sft`] (the loss is the mean
/// over the step's pairs; metrics carry TRL's `rewards/*`).
pub fn train_dpo(
    model: &mut LanguageModel,
    pairs: &[dpo::Preference],
    config: &SftConfig,
    beta: f64,
    out: &Path,
    control: &RunControl,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<SftSummary, TrainError> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(TrainError::Config(format!(
            "--beta must be positive, got {beta}"
        )));
    }
    let (tokenized, skipped_too_long) = tokenize_all(pairs, "pair", config.max_length, |p| {
        dpo::tokenize_pair(model, p, config.max_length)
    })?;
    let settings = format!("dpo|{beta}|{}", settings_key(config, tokenized.len()));
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let mut batch = |model: &mut LanguageModel,
                     adapters: &Trainable,
                     batch: &[&dpo::TokenizedPair],
                     step: usize|
     -> Result<BatchOutcome, TrainError> {
        adapters.dropout_on(model.model_mut(), dropout_seed(config.seed, step));
        let vars = adapters.vars();
        let n = batch.len() as f64;
        let tokens: usize = batch
            .iter()
            .map(|p| p.chosen.completion_tokens() + p.rejected.completion_tokens())
            .sum();
        let all_tokens: usize = batch
            .iter()
            .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
            .sum();
        let mut grads = None;
        let (mut loss_sum, mut chosen, mut rejected, mut right) = (0.0, 0.0, 0.0, 0.0);
        for pair in batch {
            let reference = dpo::reference_logps(model, adapters, pair)?;
            let l = dpo::pair_loss(model, pair, reference, beta)?;
            loss_sum += l.loss.to_scalar::<f32>().map_err(err)? as f64;
            chosen += l.chosen_reward;
            rejected += l.rejected_reward;
            if l.chosen_reward > l.rejected_reward {
                right += 1.0;
            }
            let g = (&l.loss / n).map_err(err)?.backward().map_err(err)?;
            optim::accumulate(&mut grads, g, &vars, 1.0)?;
        }
        Ok(BatchOutcome {
            grads: grads.ok_or_else(|| TrainError::Model("no gradient".into()))?,
            loss: loss_sum / n,
            tokens,
            all_tokens,
            preference: Some(PreferenceMetrics {
                chosen: chosen / n,
                rejected: rejected / n,
                margin: (chosen - rejected) / n,
                accuracy: right / n,
            }),
            rollouts: None,
        })
    };
    let end = run_loop(
        model,
        &tokenized,
        config,
        settings,
        out,
        control,
        on_step,
        Steps {
            batch: &mut batch,
            reuse: 1,
            extra: None,
        },
    )?;
    Ok(end.summary(tokenized.len(), skipped_too_long))
}

/// GRPO figures of a step, as TRL logs them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RolloutMetrics {
    /// Mean reward of the judged completions.
    pub reward: f64,
    /// Standard deviation of those rewards.
    pub reward_std: f64,
    /// Completions the reward function judged.
    pub judged: usize,
    /// Completions it could not judge (their groups are left out of the loss).
    pub unjudged: usize,
    /// Share of judged completions whose code passed (when the reward function says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
    /// Share of completion tokens whose ratio was clipped.
    #[serde(rename = "clip_ratio")]
    pub clip_ratio: f64,
    /// Mean per-token KL to the reference (0 when `beta` is 0).
    pub kl: f64,
    /// Mean completion length in tokens.
    pub completion_length: f64,
}

/// A GRPO prompt: the chat messages and the label its completions are judged with.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoPrompt {
    /// The prompt messages.
    pub prompt: Vec<afterburner_model::ChatMessage>,
    /// What the reward needs (e.g. `afterburner data grpo`'s ground truth).
    pub label: String,
}

/// A sampled completion handed to the reward function.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled<'a> {
    /// The prompt it answers.
    pub prompt: &'a GrpoPrompt,
    /// The completion's text.
    pub text: String,
}

/// A judged completion: its reward and, where the reward function knows it, whether its code
/// passed (for the pass rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// The reward.
    pub reward: f64,
    /// Whether the completion's code passed its tests (`None`: not a notion of this reward).
    pub passed: Option<bool>,
}

impl From<f64> for Judgement {
    fn from(reward: f64) -> Self {
        Judgement {
            reward,
            passed: None,
        }
    }
}

/// Judges completions: one reward per completion, `None` where it could not be judged (never
/// a made-up number). It runs on its own thread while the model samples the next group.
pub type RewardFn<'a> =
    dyn FnMut(&[Sampled]) -> Result<Vec<Option<Judgement>>, TrainError> + Send + 'a;

/// GRPO's settings, named as TRL's `GRPOConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoSettings {
    /// The objective.
    pub loss: grpo::GrpoLoss,
    /// Completions per prompt (`num_generations`).
    pub num_generations: usize,
    /// Most tokens per completion.
    pub max_completion_length: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Divide advantages by the group's standard deviation (`scale_rewards`).
    pub scale_rewards: bool,
    /// Optimiser steps per generation batch (`num_iterations`, the paper's mu; 1: on-policy).
    pub num_iterations: usize,
}

impl Default for GrpoSettings {
    fn default() -> Self {
        GrpoSettings {
            loss: grpo::GrpoLoss::default(),
            num_generations: 8,
            max_completion_length: 256,
            temperature: 1.0,
            scale_rewards: true,
            num_iterations: 1,
        }
    }
}

/// A generation batch's rollouts, kept for the optimiser steps that reuse it
/// (`num_iterations` > 1) and saved in checkpoints (`rollouts.json`), so that a run resumed in
/// the middle of a cycle reuses the same rollouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RolloutCache {
    /// Which generation batch (optimiser step / `num_iterations`).
    cycle: usize,
    /// The rollouts of the judged groups.
    rollouts: Vec<grpo::Rollout>,
    /// The judged completions' rewards.
    judged: Vec<f64>,
    /// Whether each judged completion passed, where the reward function says.
    #[serde(default)]
    passed: Vec<bool>,
    /// Completions the reward function could not judge.
    unjudged: usize,
}

/// The rollout cache as checkpoint state.
struct CachedRollouts(std::cell::RefCell<Option<RolloutCache>>);

impl ExtraState for CachedRollouts {
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join("rollouts.json");
        let text = serde_json::to_string(&*self.0.borrow())
            .map_err(|e| TrainError::Config(format!("rollouts: {e}")))?;
        std::fs::write(&path, text).map_err(|e| TrainError::io("write", &path, e))
    }

    fn load(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join("rollouts.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io("read", &path, e))?;
        let cache: Option<RolloutCache> = serde_json::from_str(&text).map_err(|e| {
            TrainError::Config(format!("{}: not a rollout cache: {e}", path.display()))
        })?;
        *self.0.borrow_mut() = cache;
        Ok(())
    }
}

/// Samples a group of completions for each prompt of `batch` from the current policy and has
/// `reward` judge them, a group judged (on another thread) while the next one is sampled;
/// returns the rollouts of the fully judged groups with their advantages, old log-probabilities
/// (only when the batch is reused: otherwise the ratio's denominator is the policy being
/// updated) and reference log-probabilities (when `beta` > 0).
#[allow(clippy::too_many_arguments)]
fn sample_and_judge(
    model: &mut LanguageModel,
    adapters: &Trainable,
    batch: &[&GrpoPrompt],
    settings: &GrpoSettings,
    seed: u64,
    cycle: usize,
    reward: &mut RewardFn<'_>,
) -> Result<RolloutCache, TrainError> {
    use std::sync::mpsc;
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let model_err = |e: afterburner_model::ModelError| TrainError::Model(e.to_string());
    let g = settings.num_generations;
    let prompt_ids = batch
        .iter()
        .map(|p| model.encode_chat(&p.prompt).map_err(model_err))
        .collect::<Result<Vec<_>, _>>()?;
    let mut generations = Vec::with_capacity(batch.len());
    let mut rewards: Vec<Option<Vec<Option<Judgement>>>> = vec![None; batch.len()];
    let sampler: &LanguageModel = model;
    std::thread::scope(|scope| -> Result<(), TrainError> {
        let (to_judge, queue) = mpsc::channel::<(usize, Vec<Sampled>)>();
        let (judged_tx, judged_rx) = mpsc::channel();
        let judge = scope.spawn(move || {
            for (k, samples) in queue {
                let judged = reward(&samples).and_then(|r| {
                    if r.len() == samples.len() {
                        Ok(r)
                    } else {
                        Err(TrainError::Config(format!(
                            "the reward function returned {} rewards for {} completions",
                            r.len(),
                            samples.len()
                        )))
                    }
                });
                let failed = judged.is_err();
                if judged_tx.send((k, judged)).is_err() || failed {
                    break;
                }
            }
        });
        for (k, ids) in prompt_ids.iter().enumerate() {
            let group = sampler
                .generate_tokens(
                    &vec![ids.clone(); g],
                    &afterburner_model::GenerationSettings {
                        max_new_tokens: settings.max_completion_length,
                        temperature: Some(settings.temperature),
                        top_p: Some(1.0),
                        top_k: Some(0),
                        seed: seed
                            ^ (cycle as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
                            ^ (k as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25),
                        stop: Vec::new(),
                    },
                )
                .map_err(model_err)?;
            let samples = group
                .iter()
                .map(|gen_| Sampled {
                    prompt: batch[k],
                    text: gen_.text.clone(),
                })
                .collect();
            generations.push(group);
            if to_judge.send((k, samples)).is_err() {
                break; // the judge stopped on an error, received below
            }
        }
        drop(to_judge);
        if judge.join().is_err() {
            return Err(TrainError::Config("the reward function panicked".into()));
        }
        for (k, judged) in judged_rx {
            rewards[k] = Some(judged?);
        }
        Ok(())
    })?;
    let mut cache = RolloutCache {
        cycle,
        rollouts: Vec::new(),
        judged: Vec::new(),
        passed: Vec::new(),
        unjudged: 0,
    };
    for (k, group_rewards) in rewards.into_iter().enumerate() {
        let group_rewards = group_rewards
            .ok_or_else(|| TrainError::Config(format!("prompt {} was never judged", k + 1)))?;
        let Some(judgements) = group_rewards.iter().copied().collect::<Option<Vec<_>>>() else {
            cache.unjudged += group_rewards.iter().filter(|r| r.is_none()).count();
            continue;
        };
        let values: Vec<f64> = judgements.iter().map(|j| j.reward).collect();
        cache.judged.extend(values.iter().copied());
        cache
            .passed
            .extend(judgements.iter().filter_map(|j| j.passed));
        let advantages = grpo::group_advantages(&values, g, settings.scale_rewards)?;
        for (generation, advantage) in generations[k].iter().zip(advantages) {
            if generation.token_ids.is_empty() {
                continue;
            }
            let mut ids = prompt_ids[k].clone();
            ids.extend(&generation.token_ids);
            let tokens = Tokenized {
                completion_start: prompt_ids[k].len().max(1),
                ids,
            };
            let old_logps = if settings.num_iterations > 1 {
                Some(
                    grpo::token_logps(model, &tokens)?
                        .detach()
                        .to_vec1::<f32>()
                        .map_err(err)?,
                )
            } else {
                None
            };
            let ref_logps = if settings.loss.beta != 0.0 {
                adapters.detach(model.model_mut());
                let r = grpo::token_logps(model, &tokens);
                adapters.reattach(model.model_mut());
                Some(r?.to_vec1::<f32>().map_err(err)?)
            } else {
                None
            };
            cache.rollouts.push(grpo::Rollout {
                tokens,
                advantage,
                old_logps,
                ref_logps,
            });
        }
    }
    Ok(cache)
}

/// Trains LoRA adapters with GRPO: every `num_iterations` optimiser steps, a batch of prompts
/// gets `num_generations` completions each, sampled from the current policy (seeded by the
/// run's seed and the batch) and judged by `reward` while the next group is sampled; the rewards
/// are normalised within each group, and each of the `num_iterations` steps takes one optimiser
/// step on the clipped objective over those rollouts (the first with ratios of 1). A group with
/// an unjudged completion is left out of the loss and counted. Otherwise as [`train_sft`]
/// (checkpoints, which also hold the batch's rollouts; exact resumption; metrics with TRL's
/// reward and clipping figures).
#[allow(clippy::too_many_arguments)]
pub fn train_grpo(
    model: &mut LanguageModel,
    prompts: &[GrpoPrompt],
    config: &SftConfig,
    settings: &GrpoSettings,
    reward: &mut RewardFn<'_>,
    out: &Path,
    control: &RunControl,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<SftSummary, TrainError> {
    if settings.num_generations < 2 {
        return Err(TrainError::Config(
            "--num-generations must be at least 2 (advantages compare completions of a prompt)"
                .into(),
        ));
    }
    if settings.max_completion_length == 0 {
        return Err(TrainError::Config(
            "--max-completion-length must be at least 1".into(),
        ));
    }
    if settings.num_iterations == 0 {
        return Err(TrainError::Config(
            "--num-iterations must be at least 1".into(),
        ));
    }
    if prompts.is_empty() {
        return Err(TrainError::Config("no prompts".into()));
    }
    let settings_text = format!(
        "grpo|{:?}|{}|{}|{}|{}|{}|{}",
        settings.loss,
        settings.num_generations,
        settings.max_completion_length,
        settings.temperature,
        settings.scale_rewards,
        settings.num_iterations,
        settings_key(config, prompts.len())
    );
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let seed = config.seed;
    let cache = CachedRollouts(std::cell::RefCell::new(None));
    let mut batch = |model: &mut LanguageModel,
                     adapters: &Trainable,
                     batch: &[&GrpoPrompt],
                     step: usize|
     -> Result<BatchOutcome, TrainError> {
        let cycle = step / settings.num_iterations;
        if cache.0.borrow().as_ref().is_none_or(|c| c.cycle != cycle) {
            let fresh = sample_and_judge(model, adapters, batch, settings, seed, cycle, reward)?;
            *cache.0.borrow_mut() = Some(fresh);
        }
        let cached = cache.0.borrow();
        let cached = cached
            .as_ref()
            .ok_or_else(|| TrainError::Config("no rollouts for the step".into()))?;
        let rollouts = &cached.rollouts;
        let tokens: usize = rollouts.iter().map(|r| r.tokens.completion_tokens()).sum();
        let all_tokens: usize = rollouts.iter().map(|r| r.tokens.ids.len()).sum();
        adapters.dropout_on(model.model_mut(), dropout_seed(seed, step));
        let vars = adapters.vars();
        let mut grads = None;
        let (mut loss_sum, mut clipped, mut kl_sum) = (0.0, 0usize, 0.0);
        for micro_batch in grpo::micro_batches(rollouts) {
            let (loss, stats) = grpo::batch_loss(model, micro_batch, &settings.loss)?;
            loss_sum += loss.to_scalar::<f32>().map_err(err)? as f64;
            clipped += stats.clipped;
            kl_sum += stats.kl_sum;
            let g = (&loss / tokens as f64)
                .map_err(err)?
                .backward()
                .map_err(err)?;
            optim::accumulate(&mut grads, g, &vars, 1.0)?;
        }
        let grads = match grads {
            Some(g) => g,
            // Nothing to learn from (every group unjudged or empty): a zero gradient.
            None => (vars[0].as_tensor().sum_all().map_err(err)? * 0.0)
                .map_err(err)?
                .backward()
                .map_err(err)?,
        };
        let judged = &cached.judged;
        let n = judged.len().max(1) as f64;
        let mean = judged.iter().sum::<f64>() / n;
        let std = (judged.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        Ok(BatchOutcome {
            grads,
            loss: if tokens > 0 {
                loss_sum / tokens as f64
            } else {
                0.0
            },
            tokens,
            all_tokens,
            preference: None,
            rollouts: Some(RolloutMetrics {
                reward: if judged.is_empty() { f64::NAN } else { mean },
                reward_std: std,
                judged: judged.len(),
                unjudged: cached.unjudged,
                pass_rate: (!cached.passed.is_empty()).then(|| {
                    cached.passed.iter().filter(|p| **p).count() as f64 / cached.passed.len() as f64
                }),
                clip_ratio: clipped as f64 / tokens.max(1) as f64,
                kl: kl_sum / tokens.max(1) as f64,
                completion_length: tokens as f64 / rollouts.len().max(1) as f64,
            }),
        })
    };
    let end = run_loop(
        model,
        prompts,
        config,
        settings_text,
        out,
        control,
        on_step,
        Steps {
            batch: &mut batch,
            reuse: settings.num_iterations,
            extra: Some(&cache),
        },
    )?;
    Ok(end.summary(prompts.len(), 0))
}

/// One benchmark training step, repeatable on demand: the Rust side of `afterburner bench
/// train`, which alternates it with PyTorch's step so that both see the same machine.
pub struct BenchStep<'a> {
    model: &'a LanguageModel,
    trainer: optim::Trainer,
    vars: Vec<candle_core::Var>,
    work: BenchWork,
}

/// What a [`BenchStep`] computes.
enum BenchWork {
    /// The SFT loss on every token after the first.
    Sft(Tokenized),
    /// The GRPO loss over rollouts, in micro-batches; `tokens` completion tokens in all.
    Grpo {
        rollouts: Vec<grpo::Rollout>,
        tokens: usize,
    },
}

impl<'a> BenchStep<'a> {
    /// A LoRA SFT step (forward, backward, AdamW) on `ids`, the loss on every token after the
    /// first; attaches a fresh adapter to `model`.
    pub fn sft(
        model: &'a mut LanguageModel,
        ids: &[u32],
        lora: &LoraConfig,
    ) -> Result<Self, TrainError> {
        if ids.len() < 2 {
            return Err(TrainError::Config("a step needs at least 2 tokens".into()));
        }
        let example = Tokenized {
            ids: ids.to_vec(),
            completion_start: 1,
        };
        Self::new(model, lora, BenchWork::Sft(example))
    }

    /// A LoRA GRPO-loss step over `group` rollouts whose second half is the completion
    /// (advantages alternating in sign, one iteration per batch as TRL's default, forward in
    /// micro-batches as training does, backward, AdamW); attaches a fresh adapter to `model`.
    pub fn grpo(
        model: &'a mut LanguageModel,
        group: &[Vec<u32>],
        lora: &LoraConfig,
    ) -> Result<Self, TrainError> {
        let n = group.len();
        if n == 0 || group.iter().any(|s| s.len() < 4) {
            return Err(TrainError::Config(
                "a GRPO step needs sequences of at least 4 tokens".into(),
            ));
        }
        let rollouts: Vec<grpo::Rollout> = group
            .iter()
            .enumerate()
            .map(|(k, s)| grpo::Rollout {
                tokens: Tokenized {
                    ids: s.clone(),
                    completion_start: s.len() / 2,
                },
                advantage: (-1f64).powi(k as i32) * (1.0 + k as f64 / n as f64),
                old_logps: None,
                ref_logps: None,
            })
            .collect();
        let tokens = rollouts.iter().map(|r| r.tokens.completion_tokens()).sum();
        Self::new(model, lora, BenchWork::Grpo { rollouts, tokens })
    }

    fn new(
        model: &'a mut LanguageModel,
        lora: &LoraConfig,
        work: BenchWork,
    ) -> Result<Self, TrainError> {
        let device = model.model().device().clone();
        let adapters = Adapters::attach(model.model_mut(), lora, 0, &device)?;
        let vars = adapters.vars();
        // The schedule's length only sets learning rates, which do not change a step's work.
        let trainer = optim::Trainer::new(vars.clone(), OptimConfig::default(), 1 << 20)?;
        Ok(BenchStep {
            model,
            trainer,
            vars,
            work,
        })
    }

    /// Runs one step; returns its milliseconds.
    pub fn step(&mut self) -> Result<f64, TrainError> {
        let err = |e: candle_core::Error| TrainError::Model(e.to_string());
        let started = Instant::now();
        let mut grads = match &self.work {
            BenchWork::Sft(example) => {
                let nll = sft::completion_nll(self.model, example)?;
                (nll / example.completion_tokens() as f64)
                    .and_then(|loss| loss.backward())
                    .map_err(err)?
            }
            BenchWork::Grpo { rollouts, tokens } => {
                let settings = grpo::GrpoLoss::default();
                let mut grads = None;
                for micro_batch in grpo::micro_batches(rollouts) {
                    let (loss, _) = grpo::batch_loss(self.model, micro_batch, &settings)?;
                    let g = (loss / *tokens as f64)
                        .and_then(|loss| loss.backward())
                        .map_err(err)?;
                    optim::accumulate(&mut grads, g, &self.vars, 1.0)?;
                }
                grads.ok_or_else(|| TrainError::Model("no gradient".into()))?
            }
        };
        self.trainer.step(&mut grads)?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}
