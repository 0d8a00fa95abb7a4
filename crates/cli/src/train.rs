//! `afterburner train sft|dpo`: LoRA fine-tuning of the embedded model on TRL rows
//! (`afterburner data sft|dpo --format trl` writes them): supervised, or DPO against the
//! adapters-off reference. The loops are the train crate's ([`afterburner_train::train_sft`],
//! [`afterburner_train::train_dpo`]); this module parses, loads, shows progress and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use afterburner_model::DType;
use afterburner_train::dpo::read_preferences;
use afterburner_train::sft::read_prompt_completion;
use afterburner_train::{LoraConfig, OptimConfig, RunControl, SftConfig, train_dpo, train_sft};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::interrupt::stop_flag;
use crate::model_choice::{Precision, choose_model, load_model};
use crate::progress::progress;

/// Arguments of `afterburner train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Debug, Subcommand)]
enum TrainCommand {
    /// Supervised fine-tuning with LoRA: loss on completion tokens only, chat template applied.
    Sft(SftArgs),
    /// DPO with LoRA (sigmoid loss; the reference is the model with the adapters off).
    Dpo(DpoArgs),
    /// GRPO with LoRA, rewarded by the sandbox in-process (SPEC §7's reward on the rows'
    /// labels, the problems of --dataset run on eval's suites).
    Grpo(Box<GrpoArgs>),
    /// Merge a LoRA adapter into its base model and write a Hugging Face model folder.
    Merge(MergeArgs),
}

/// Arguments of `afterburner train grpo`.
#[derive(Debug, Args)]
pub struct GrpoArgs {
    #[command(flatten)]
    run: SftArgs,
    /// The dataset the rows' problem ids come from, as FORMAT:PATH (as for `afterburner data`).
    #[arg(long)]
    dataset: String,
    /// Completions sampled per prompt and step.
    #[arg(long, default_value_t = 8)]
    num_generations: usize,
    /// Most tokens per completion.
    #[arg(long, default_value_t = 512)]
    max_completion_length: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// KL coefficient to the adapters-off reference (0: no reference pass).
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    /// Lower clip of the importance ratio.
    #[arg(long, default_value_t = 0.2)]
    epsilon: f64,
    /// Upper clip of the ratio [default: --epsilon].
    #[arg(long)]
    epsilon_high: Option<f64>,
    /// Do not divide advantages by the group's standard deviation.
    #[arg(long)]
    no_scale_rewards: bool,
    /// Optimiser steps per batch of sampled completions (TRL's `num_iterations`, the paper's
    /// mu): above 1, each batch is reused and the clipped ratio matters.
    #[arg(long, default_value_t = 1)]
    num_iterations: usize,
    #[command(flatten)]
    protocol: crate::args::ProtocolArgs,
}

/// `--finetuning-type` (LLaMA-Factory's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FinetuningArg {
    /// LoRA adapters.
    Lora,
    /// Every weight.
    Full,
}

/// Arguments of `afterburner train merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model: a Hugging Face folder or ORG/NAME in the hub cache.
    #[arg(long)]
    model: String,
    /// The PEFT LoRA adapter folder.
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// The merged model's folder (config, tokenizer and generation files copied from the base).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Arguments of `afterburner train dpo`.
#[derive(Debug, Args)]
pub struct DpoArgs {
    #[command(flatten)]
    run: SftArgs,
    /// DPO's beta: how far the policy may move from the reference.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
}

/// Arguments of `afterburner train sft` (named as TRL's and PEFT's); `train dpo` takes them too.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// The base model: a Hugging Face folder, a .gguf file, or ORG/NAME in the hub cache
    /// [default: the embedded default].
    #[arg(long)]
    model: Option<String>,
    /// Rows (JSON Lines, or Parquet by the .parquet extension), TRL's conversational or
    /// standard form: prompt-completion (sft), prompt-chosen-rejected (dpo), or chat prompts
    /// with their reward labels (grpo: `afterburner data grpo --format trl|openrlhf`).
    #[arg(long, value_name = "FILE.jsonl|FILE.parquet")]
    data: PathBuf,
    /// Output folder: adapter/ (PEFT format), metrics.jsonl, summary.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Optimiser steps (overrides --num-train-epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Passes over the data.
    #[arg(long, default_value_t = 1.0)]
    num_train_epochs: f64,
    /// Peak learning rate (linear warmup, then cosine decay to 0).
    #[arg(long, default_value_t = 2e-4)]
    learning_rate: f64,
    /// Share of the steps spent warming up.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// Decoupled weight decay (AdamW).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Largest global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    per_device_train_batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    gradient_accumulation_steps: usize,
    /// Which weights are trained: LoRA adapters on the frozen base, or every weight (full,
    /// for small models: f32 weights plus two AdamW moments each; the result is a Hugging Face
    /// folder in DIR/model, and the base must be one).
    #[arg(long, value_enum, default_value_t = FinetuningArg::Lora)]
    finetuning_type: FinetuningArg,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// LoRA alpha (scaling alpha / r).
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    /// LoRA dropout: probability of zeroing each input feature of an adapter in the loss's
    /// forward passes (PEFT's `lora_dropout`).
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Modules that get adapters (repeatable) [default: q,k,v,o,gate,up,down projections].
    #[arg(long = "lora-target-modules", value_name = "NAME")]
    lora_target_modules: Vec<String>,
    /// Examples longer than this many tokens are skipped (and counted).
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Seed of the adapter's initialisation and the data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write a checkpoint (DIR/checkpoint-N) every N optimiser steps.
    #[arg(long, value_name = "N")]
    save_steps: Option<usize>,
    /// Continue exactly from a checkpoint folder written by an earlier run with the same
    /// settings and data (Ctrl-C writes one).
    #[arg(long, value_name = "DIR/checkpoint-N")]
    resume_from_checkpoint: Option<PathBuf>,
}

/// Runs `afterburner train ...`.
pub fn train(args: TrainArgs) -> Result<ExitCode> {
    match args.command {
        TrainCommand::Sft(a) => run(a, Task::Sft),
        TrainCommand::Dpo(a) => run(a.run, Task::Dpo(a.beta)),
        TrainCommand::Grpo(a) => {
            let a = *a;
            let rest = GrpoOnly {
                dataset: a.dataset,
                settings: afterburner_train::GrpoSettings {
                    loss: afterburner_train::grpo::GrpoLoss {
                        epsilon_low: a.epsilon,
                        epsilon_high: a.epsilon_high.unwrap_or(a.epsilon),
                        beta: a.beta,
                        bias_correction_kl: true,
                    },
                    num_generations: a.num_generations,
                    max_completion_length: a.max_completion_length,
                    temperature: a.temperature,
                    scale_rewards: !a.no_scale_rewards,
                    num_iterations: a.num_iterations,
                },
                protocol: a.protocol,
            };
            run(a.run, Task::Grpo(Box::new(rest)))
        }
        TrainCommand::Merge(a) => merge(a),
    }
}

fn merge(args: MergeArgs) -> Result<ExitCode> {
    let choice = choose_model(Some(&args.model))?;
    if !(choice.path.is_dir() && choice.path.join("config.json").is_file()) {
        bail!(
            "--model {}: merging writes a Hugging Face folder and needs one as the base (a GGUF \
             file has no config.json or tokenizer files to carry over); use --adapter with \
             generate, optimize or serve instead",
            args.model
        );
    }
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("--out {}: the folder is not empty", args.out.display());
    }
    let device = afterburner_model::Device::Cpu;
    let config = afterburner_model::ModelConfig::from_file(&choice.path.join("config.json"))?;
    let dtype = match config.torch_dtype.as_deref() {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    };
    let mut model = load_model(&choice.path, Precision::Dense(dtype), &device)
        .with_context(|| format!("cannot load the model {}", choice.name))?;
    let adapters =
        afterburner_train::Adapters::load_peft(model.model_mut(), &args.adapter, &device)
            .with_context(|| format!("--adapter {}", args.adapter.display()))?;
    let weights = adapters.merged_weights(model.model())?;
    let copied = afterburner_train::trainable::save_hf_folder(&choice.path, &weights, &args.out)?;
    println!(
        "merged {} LoRA modules into {} ({} tensors, {dtype:?}) -> {} (with {})",
        adapters.modules.len(),
        choice.name,
        weights.len(),
        args.out.display(),
        copied.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Which trainer, with what only it needs.
enum Task {
    Sft,
    Dpo(f64),
    Grpo(Box<GrpoOnly>),
}

/// GRPO's own settings.
struct GrpoOnly {
    dataset: String,
    settings: afterburner_train::GrpoSettings,
    protocol: crate::args::ProtocolArgs,
}

/// What is trained on: prompt-completion rows, preference pairs (with beta), or GRPO prompts
/// with their parsed labels.
enum Rows {
    Sft(Vec<afterburner_train::PromptCompletion>),
    Dpo(Vec<afterburner_train::dpo::Preference>, f64),
    Grpo(
        Vec<afterburner_train::GrpoPrompt>,
        std::collections::HashMap<String, afterburner_optimize::RewardLabel>,
        Box<GrpoOnly>,
    ),
}

/// Reads GRPO rows (`afterburner data grpo --format trl|openrlhf`): a chat `prompt` (or
/// `input`) and the label as `ground_truth` (or `label`), checked as a reward label.
fn read_grpo(
    path: &std::path::Path,
) -> Result<(
    Vec<afterburner_train::GrpoPrompt>,
    std::collections::HashMap<String, afterburner_optimize::RewardLabel>,
)> {
    let rows = afterburner_train::sft::read_rows(path, |row| {
        let messages = row
            .get("prompt")
            .or_else(|| row.get("input"))
            .ok_or("no chat `prompt` (or `input`) list")?;
        let prompt = afterburner_train::sft::chat_messages(messages, "prompt")?;
        let label = row
            .get("ground_truth")
            .or_else(|| row.get("label"))
            .and_then(serde_json::Value::as_str)
            .ok_or("no `ground_truth` (or `label`) string")?;
        let parsed = afterburner_optimize::RewardLabel::parse(label)?;
        Ok((
            afterburner_train::GrpoPrompt {
                prompt,
                label: label.to_string(),
            },
            parsed,
        ))
    })?;
    let labels = rows
        .iter()
        .map(|(p, l)| (p.label.clone(), l.clone()))
        .collect();
    Ok((rows.into_iter().map(|(p, _)| p).collect(), labels))
}

fn run(args: SftArgs, task: Task) -> Result<ExitCode> {
    if !args.num_train_epochs.is_finite() || args.num_train_epochs <= 0.0 {
        bail!(
            "--num-train-epochs must be positive, got {}",
            args.num_train_epochs
        );
    }
    let rows = match task {
        Task::Sft => Rows::Sft(read_prompt_completion(&args.data)?),
        Task::Dpo(beta) => Rows::Dpo(read_preferences(&args.data)?, beta),
        Task::Grpo(rest) => {
            let (prompts, labels) = read_grpo(&args.data)?;
            Rows::Grpo(prompts, labels, rest)
        }
    };
    let (count, what) = match &rows {
        Rows::Sft(e) => (e.len(), "examples"),
        Rows::Dpo(p, _) => (p.len(), "preference pairs"),
        Rows::Grpo(p, _, _) => (p.len(), "prompts"),
    };
    let choice = choose_model(args.model.as_deref())?;
    let device = afterburner_model::best_device();
    let mut model = load_model(&choice.path, Precision::Dense(DType::F32), &device)
        .with_context(|| format!("cannot load the model {}", choice.name))?;
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        target_modules: if args.lora_target_modules.is_empty() {
            LoraConfig::default().target_modules
        } else {
            args.lora_target_modules.clone()
        },
    };
    let config = SftConfig {
        finetuning: match args.finetuning_type {
            FinetuningArg::Lora => afterburner_train::FinetuningType::Lora,
            FinetuningArg::Full => afterburner_train::FinetuningType::Full,
        },
        lora,
        optim: OptimConfig {
            learning_rate: args.learning_rate,
            weight_decay: args.weight_decay,
            warmup_ratio: args.warmup_ratio,
            max_grad_norm: args.max_grad_norm,
            ..OptimConfig::default()
        },
        max_steps: args.max_steps,
        num_train_epochs: args.num_train_epochs,
        per_device_train_batch_size: args.per_device_train_batch_size,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
        max_length: args.max_length,
        seed: args.seed,
    };
    let trained = match args.finetuning_type {
        FinetuningArg::Lora => format!("LoRA (r {}, alpha {})", config.lora.r, config.lora.alpha),
        FinetuningArg::Full => "every weight".to_string(),
    };
    eprintln!(
        "training {trained} of {} with {count} {what} from {}",
        choice.name,
        args.data.display()
    );
    let mut bar = None;
    let stop = stop_flag();
    let is_stopped = move || stop.is_stopped();
    let control = RunControl {
        save_steps: args.save_steps,
        resume_from: args.resume_from_checkpoint.clone(),
        stop: Some(&is_stopped),
    };
    let mut show = |m: &afterburner_train::StepMetrics| {
        let pb = bar.get_or_insert_with(|| progress(m.total_steps, "train"));
        pb.set_position(m.step as u64);
        let preference = m.preference.map_or(String::new(), |p| {
            format!(" margin {:.3} acc {:.2}", p.margin, p.accuracy)
        });
        pb.set_message(format!(
            "loss {:.4}{preference} lr {:.2e} grad {:.3} {:.0} tok/s",
            m.loss, m.learning_rate, m.grad_norm, m.tokens_per_s
        ));
    };
    let summary = match &rows {
        Rows::Sft(examples) => train_sft(
            &mut model, examples, &config, &args.out, &control, &mut show,
        )?,
        Rows::Dpo(pairs, beta) => train_dpo(
            &mut model, pairs, &config, *beta, &args.out, &control, &mut show,
        )?,
        Rows::Grpo(prompts, labels, rest) => {
            let dataset = crate::dataset::load_dataset(&rest.dataset)?;
            let mut ids: Vec<&str> = labels.values().map(|l| l.problem_id.as_str()).collect();
            ids.sort();
            ids.dedup();
            let problems = ids
                .iter()
                .map(|id| {
                    dataset.problem(id).with_context(|| {
                        format!(
                            "a row's label names problem `{id}`, which {} lacks",
                            rest.dataset
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let sandbox = afterburner_sandbox::Sandbox::new()?;
            let bench = rest.protocol.workbench(&sandbox, stop_flag())?;
            eprintln!("preparing the suites of {} problems", problems.len());
            let (prepared, _) =
                bench.prepare(&problems, Some(0), &mut crate::progress::Bars::default());
            let mut suites = std::collections::HashMap::new();
            for c in prepared {
                match (c.suite, c.error) {
                    (Some(suite), _) => {
                        suites.insert(c.problem.id.clone(), (c.problem, suite));
                    }
                    (None, e) => bail!(
                        "problem `{}`: its suite could not be prepared: {}",
                        c.problem.id,
                        e.unwrap_or_default()
                    ),
                }
            }
            let judge = afterburner_optimize::SandboxReward::new(
                bench.harness(),
                suites,
                bench.cpus().to_vec(),
                afterburner_reward::RewardConfig::default(),
            );
            let mut reward = |samples: &[afterburner_train::Sampled]| {
                let items: Vec<(&afterburner_optimize::RewardLabel, &str)> = samples
                    .iter()
                    .map(|s| (&labels[&s.prompt.label], s.text.as_str()))
                    .collect();
                let (rewards, problems) = judge.rewards(&items);
                for p in problems {
                    eprintln!("warning: not judged: {p}");
                }
                // The candidate passed exactly when the correctness term is positive (SPEC §7).
                Ok(rewards
                    .into_iter()
                    .map(|r| {
                        r.map(|r| afterburner_train::Judgement {
                            reward: r.total,
                            passed: Some(r.correctness > 0.0),
                        })
                    })
                    .collect())
            };
            afterburner_train::train_grpo(
                &mut model,
                prompts,
                &config,
                &rest.settings,
                &mut reward,
                &args.out,
                &control,
                &mut show,
            )?
        }
    };
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if summary.interrupted {
        let checkpoint = summary
            .checkpoint
            .as_ref()
            .map_or("-".to_string(), |c| c.display().to_string());
        eprintln!(
            "interrupted after step {}: resume with --resume-from-checkpoint {checkpoint}",
            summary.steps
        );
        return Ok(ExitCode::from(130));
    }
    write_curves(&args.out)?;
    let summary_path = args.out.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)? + "\n",
    )
    .with_context(|| format!("cannot write {}", summary_path.display()))?;
    println!(
        "trained {} steps on {} {what} ({} longer than --max-length {} skipped): loss {:.4} -> \
         {:.4}; {} in {}",
        summary.steps,
        summary.examples,
        summary.skipped_too_long,
        args.max_length,
        summary.first_loss,
        summary.last_loss,
        match args.finetuning_type {
            FinetuningArg::Lora => "adapter (PEFT)",
            FinetuningArg::Full => "model (Hugging Face folder)",
        },
        summary.adapter.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Draws `DIR/loss.{png,svg}` (and for DPO and GRPO `DIR/rewards.{png,svg}`) from
/// `DIR/metrics.jsonl`.
fn write_curves(out: &std::path::Path) -> Result<()> {
    use afterburner_optimize::chart::{ImageFormat, Line, write_lines};
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not JSON lines", path.display()))?;
    let line = |name: &str, key: &str| Line {
        name: name.to_string(),
        points: rows
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .collect(),
    };
    let mut charts = vec![("loss", "training loss", "loss", vec![line("loss", "loss")])];
    if rows.iter().any(|r| r.get("rewards/margins").is_some()) {
        charts.push((
            "rewards",
            "DPO rewards",
            "beta x log-ratio",
            vec![
                line("chosen", "rewards/chosen"),
                line("rejected", "rewards/rejected"),
                line("margin", "rewards/margins"),
            ],
        ));
    }
    if rows.iter().any(|r| r.get("reward_std").is_some()) {
        let mut lines = vec![line("mean reward", "reward")];
        if rows.iter().any(|r| r.get("pass_rate").is_some()) {
            lines.push(line("pass rate", "pass_rate"));
        }
        charts.push(("rewards", "GRPO rewards", "reward", lines));
    }
    for (file, title, y, lines) in charts {
        for (format, ext) in [(ImageFormat::Png, "png"), (ImageFormat::Svg, "svg")] {
            let target = out.join(format!("{file}.{ext}"));
            write_lines(&target, format, title, ("step", y), &lines, (900, 500))
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
