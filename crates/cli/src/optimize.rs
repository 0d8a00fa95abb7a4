//! `afterburner optimize`: the test-time optimisation loop (SPEC section 6) over a dataset's
//! problems, driving any OpenAI-compatible model; resumable, concurrent, with a report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use afterburner_benchmarks::{
    Format, Problem, RecordedPerformance, Suite, Workbench, parallel, selected_references,
};
use afterburner_optimize::report::{Report, RunInfo};
use afterburner_optimize::trajectory::{
    MANIFEST_FILE, Manifest, TRAJECTORY_FILE, check_and_write_manifest,
};
use afterburner_optimize::{
    AcceptanceRule, HarnessJudge, Instruction, IterationRecord, LoopConfig, Optimizer, Outcome,
    ResponseCache, Task, Templates, TrajectoryWriter, read_trajectory,
};
use afterburner_sandbox::{Language, Sandbox};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::args::{ProtocolArgs, select_problems};
use crate::dataset::load_dataset;
use crate::interrupt::stop_flag;
use crate::progress::{Bars, progress, say};

/// Arguments of `afterburner optimize`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The dataset, as FORMAT:PATH (venus, venus-<language>, apps, coffe, leetcode, enamel).
    #[arg(long)]
    pub dataset: String,
    /// Only these problems (repeatable); by default every problem of the dataset.
    #[arg(long = "problem-id", value_name = "ID")]
    pub problem_ids: Vec<String>,
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang),
    /// http://127.0.0.1:11434/v1 (Ollama), https://api.openai.com/v1. Without it the embedded
    /// model runs in this process.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// With --endpoint: the model name the server knows. Without: the embedded model, a model
    /// folder, a .gguf file or ORG/NAME in the Hugging Face cache [default:
    /// Qwen/Qwen2.5-Coder-0.5B-Instruct when cached or downloadable, else SmolLM2-135M-Instruct
    /// from scripts/fetch-smollm2].
    #[arg(long)]
    pub model: Option<String>,
    /// Embedded model only: the weights' dtype, f32, bf16, f16, or quantized (GGUF files: keep
    /// Q4_0/Q4_1/Q8_0 projections quantized, on the CPU) [default: f32 on CPU, bf16 on a GPU].
    #[arg(long)]
    pub dtype: Option<String>,
    /// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`, e.g.
    /// `afterburner train`'s DIR/adapter) applied to the model without merging.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<std::path::PathBuf>,
    /// Improvement iterations after iteration 0 (N model calls per problem after the first solution).
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// What to optimise: time, memory or integral.
    #[arg(long, default_value = "time")]
    pub instruction: Instruction,
    /// Start from this code instead of asking the model at iteration 0: a source file (used for
    /// every selected problem) or a JSONL file of {"problem_id", "code"} lines.
    #[arg(long, value_name = "FILE")]
    pub original: Option<PathBuf>,
    /// Start from the dataset's reference solution number N of each problem (verified ones first).
    #[arg(long, value_name = "N", conflicts_with = "original")]
    pub original_reference: Option<usize>,
    /// Language of the solutions [default: the Venus file's language, else python].
    #[arg(long)]
    pub language: Option<Language>,
    /// Output folder: trajectory.jsonl, report.json, report.md, chart.png, chart.svg, final.jsonl.
    /// Re-running with the same folder resumes.
    #[arg(long, value_name = "DIR", default_value = "afterburner-optimize")]
    pub out: PathBuf,
    /// Print one JSON object summarising the run on stdout.
    #[arg(long)]
    pub json: bool,
    /// Environment variable holding the API key (sent as a Bearer token when set).
    #[arg(long, value_name = "VAR", default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Sampling temperature (above 0, so that a rejected candidate is not proposed again).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// max_tokens of each request (0: leave it to the server).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: u32,
    /// Base seed sent with each request (plus the iteration), for servers that honour it.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time limit of one model request, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Retries of a request after connection errors, timeouts, 429 and 5xx.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// First wait before a retry, ms (doubles each retry, at most 60 s).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub retry_backoff_ms: u64,
    /// Problems optimised at once (also the most model requests in flight); measurements
    /// still take one core each [default: 8 with --endpoint; 1 with the embedded model, whose
    /// generation uses every core and must not overlap a measurement].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Do not replay or store model answers in <cache>/responses.
    #[arg(long)]
    pub no_response_cache: bool,
    /// Replace the built-in system prompt with this minijinja template.
    #[arg(long, value_name = "FILE")]
    pub system_template: Option<PathBuf>,
    /// Replace the built-in generation prompt (iteration 0 from scratch) with this template.
    #[arg(long, value_name = "FILE")]
    pub generate_template: Option<PathBuf>,
    /// Replace the built-in improvement prompt with this template.
    #[arg(long, value_name = "FILE")]
    pub improve_template: Option<PathBuf>,
    /// A passing candidate must beat the incumbent by more than K standard deviations of the
    /// difference of their measurements.
    #[arg(long, value_name = "K", default_value_t = AcceptanceRule::default().k)]
    pub noise_k: f64,
    /// ... and by more than this fraction of the incumbent's value [default: the tie rule's
    /// drift floor: 0.03 for time and the integral, 0.005 for memory].
    #[arg(long, value_name = "FRACTION")]
    pub min_gain: Option<f64>,
    /// Measure the references not yet calibrated (for Beyond-T/M/I) before optimising; without
    /// it only references already in the calibration cache count.
    #[arg(long)]
    pub calibrate: bool,
    /// Use at most N reference solutions per problem for percentiles (verified ones first).
    #[arg(long, value_name = "N")]
    pub max_solutions: Option<usize>,
    /// Bootstrap resamples for the report's intervals.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

impl OptimizeArgs {
    fn check(&self) -> Result<()> {
        if self.iterations > 1000 {
            bail!("--iterations must be at most 1000, got {}", self.iterations);
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            bail!("--temperature must be in [0, 2], got {}", self.temperature);
        }
        if let Some(c) = self.concurrency
            && (c == 0 || c > 1024)
        {
            bail!("--concurrency must be in [1, 1024], got {c}");
        }
        if !(self.request_timeout > 0.0 && self.request_timeout <= 86_400.0) {
            bail!(
                "--request-timeout must be in (0, 86400] seconds, got {}",
                self.request_timeout
            );
        }
        if self.retries > 20 {
            bail!("--retries must be at most 20, got {}", self.retries);
        }
        if !(self.noise_k >= 0.0 && self.noise_k.is_finite()) {
            bail!("--noise-k must be a number >= 0, got {}", self.noise_k);
        }
        if let Some(min_gain) = self.min_gain
            && !(0.0..1.0).contains(&min_gain)
        {
            bail!("--min-gain must be in [0, 1), got {min_gain}");
        }
        Ok(())
    }
}

/// The original solutions, per problem, and how the manifest names their origin.
fn originals(
    args: &OptimizeArgs,
    problems: &[&Problem],
) -> Result<(HashMap<String, String>, String)> {
    if let Some(n) = args.original_reference {
        let mut out = HashMap::new();
        for p in problems {
            let refs = selected_references(p, None);
            let r = refs.get(n).with_context(|| {
                format!(
                    "--original-reference {n}: problem {} has {} reference solutions",
                    p.id,
                    refs.len()
                )
            })?;
            out.insert(p.id.clone(), r.code.clone());
        }
        return Ok((out, format!("reference {n}")));
    }
    let Some(path) = &args.original else {
        return Ok((HashMap::new(), "model".to_string()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --original {}", path.display()))?;
    let digest = afterburner_benchmarks::harness::short_hash(&text);
    let origin = format!("file {} ({digest})", path.display());
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        if text.trim().is_empty() {
            bail!("--original {}: the file is empty", path.display());
        }
        let all = problems.iter().map(|p| (p.id.clone(), text.clone()));
        return Ok((all.collect(), origin));
    }
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("--original {}:{}", path.display(), n + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let id = match &v["problem_id"] {
            Value::String(s) => s.clone(),
            Value::Number(x) => x.to_string(),
            _ => bail!("{}: missing `problem_id`", at()),
        };
        let code = v["code"]
            .as_str()
            .with_context(|| format!("{}: missing `code` (a string)", at()))?;
        if !problems.iter().any(|p| p.id == id) {
            bail!(
                "{}: problem `{id}` is not among the selected problems",
                at()
            );
        }
        out.insert(id, code.to_string());
    }
    Ok((out, origin))
}

/// `optimize --json`: the report (without code) and where everything was written (a stable
/// contract; printed with its keys sorted).
#[derive(Serialize)]
struct OptimizeSummary<'a> {
    #[serde(flatten)]
    report: Value,
    out: &'a Path,
    files: SummaryFiles<'a>,
    errors: Vec<ProblemError<'a>>,
    interrupted: bool,
    protocol: &'a str,
}

/// The files of a run, as `optimize --json` names them.
#[derive(Serialize)]
struct SummaryFiles<'a> {
    trajectory: &'a Path,
    manifest: PathBuf,
    report: &'a Path,
    markdown: &'a Path,
    chart_png: &'a Path,
    chart_svg: &'a Path,
    #[serde(rename = "final")]
    r#final: &'a Path,
}

/// A problem stopped by an error, as `optimize --json` lists it.
#[derive(Serialize)]
struct ProblemError<'a> {
    problem_id: &'a str,
    error: &'a str,
}

/// Everything known about one problem before the loop.
struct Prepared<'p> {
    problem: &'p Problem,
    suite: Option<Suite>,
    error: Option<String>,
    references: Vec<RecordedPerformance>,
}

/// Runs `afterburner optimize`.
pub fn optimize(args: OptimizeArgs) -> Result<ExitCode> {
    args.check()?;
    let dataset = load_dataset(&args.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problem_ids)?;
    if problems.is_empty() {
        bail!("dataset {} has no problem to optimise", args.dataset);
    }
    let language = args.language.unwrap_or(match dataset.spec.format {
        Format::Venus(l) => l,
        _ => Language::Python,
    });
    let (originals, origin) = originals(&args, &problems)?;
    let templates = Templates::with_files(
        args.system_template.as_deref(),
        args.generate_template.as_deref(),
        args.improve_template.as_deref(),
    )?;

    let cache_dir = args.protocol.cache_dir()?;
    let response_cache =
        (!args.no_response_cache).then(|| ResponseCache::new(cache_dir.join("responses")));
    let backend = crate::optimize_backend::backend(&args, response_cache)?;
    crate::optimize_backend::check_same_backend(&args.out, &backend.endpoint)?;

    // The output folder: manifest (a resumed run must match), trajectory read back.
    let manifest = Manifest {
        dataset: args.dataset.clone(),
        model: backend.model_name.clone(),
        instruction: args.instruction,
        language,
        original: origin,
        endpoint: backend.endpoint.clone(),
        iterations: args.iterations,
    };
    check_and_write_manifest(&args.out, &manifest)?;
    let trajectory_path = args.out.join(TRAJECTORY_FILE);
    let mut loaded = read_trajectory(&trajectory_path)?;
    for issue in &loaded.issues {
        eprintln!("warning: {issue}");
    }
    let writer = TrajectoryWriter::open(&trajectory_path)?;

    let sandbox = Sandbox::new()?;
    let bench: Workbench = args.protocol.workbench(&sandbox, stop_flag())?;
    let mut bars = Bars::default();
    let (calibrated, _) = if args.calibrate {
        bench.calibrate(&problems, args.max_solutions, &mut bars)
    } else {
        bench.prepare(&problems, args.max_solutions, &mut bars)
    };
    let interrupted = || bench.stopped();
    if interrupted() {
        eprintln!("interrupted while preparing the problems' tests; nothing optimised");
        return Ok(ExitCode::from(130));
    }
    let mut prepared: Vec<Prepared<'_>> = calibrated
        .into_iter()
        .map(|c| Prepared {
            references: c.distribution(),
            problem: c.problem,
            suite: c.suite,
            error: c.error,
        })
        .collect();
    let suites: HashMap<String, Suite> = prepared
        .iter_mut()
        .filter_map(|p| Some((p.problem.id.clone(), p.suite.take()?)))
        .collect();
    let judge = HarnessJudge::new(bench.harness(), suites, bench.cpus().to_vec());
    let optimizer = Optimizer {
        model: &*backend.model,
        judge: &judge,
        templates: &templates,
        config: LoopConfig {
            iterations: args.iterations,
            instruction: args.instruction,
            language,
            rule: AcceptanceRule {
                k: args.noise_k,
                min_gain: args.min_gain,
            },
        },
    };

    let scored = prepared.iter().filter(|p| !p.references.is_empty()).count();
    eprintln!(
        "optimising {} problems ({} iterations after iteration 0, instruction {}) with {} at {}; \
         {} of them with calibrated references; {} measuring core(s); output in {}",
        prepared.len(),
        args.iterations,
        args.instruction,
        backend.model_name,
        backend.url,
        scored,
        bench.cpus().len(),
        args.out.display()
    );
    let per_problem = args.iterations + 1;
    let pb = progress(prepared.len() * per_problem, "iterations");
    let done_before: usize = prepared
        .iter()
        .map(|p| {
            loaded
                .rows
                .get(&p.problem.id)
                .map_or(0, |r| r.len().min(per_problem))
        })
        .sum();
    pb.set_position(done_before as u64);

    let previous: Vec<Vec<IterationRecord>> = prepared
        .iter()
        .map(|p| loaded.rows.remove(&p.problem.id).unwrap_or_default())
        .collect();
    let previous = Mutex::new(previous);
    let items: Vec<usize> = (0..prepared.len()).collect();
    let threads = vec![None; backend.concurrency.min(prepared.len()).max(1)];
    let mut outcomes: Vec<Option<Outcome>> = (0..prepared.len()).map(|_| None).collect();
    let emit = |r: &IterationRecord| -> Result<(), String> {
        writer.append(r).map_err(|e| e.to_string())?;
        pb.inc(1);
        pb.set_message(format!(
            "{} #{}: {}{}",
            r.problem_id,
            r.iteration,
            r.status,
            if r.accepted { " (accepted)" } else { "" }
        ));
        Ok(())
    };
    parallel(
        &items,
        &threads,
        bench.stop_flag(),
        |&i, _| {
            let p = &prepared[i];
            let rows = std::mem::take(&mut previous.lock().unwrap_or_else(|e| e.into_inner())[i]);
            if let Some(e) = &p.error {
                return Outcome {
                    problem_id: p.problem.id.clone(),
                    records: rows,
                    ran: 0,
                    error: Some(format!("its tests could not be prepared: {e}")),
                    interrupted: false,
                };
            }
            let task = Task {
                problem: p.problem,
                original: originals.get(&p.problem.id).cloned(),
                references: p.references.clone(),
            };
            optimizer.run(&task, rows, &emit, &interrupted)
        },
        |i, outcome| {
            if let Some(e) = &outcome.error {
                say(&pb, format!("error: {}: {e}", outcome.problem_id));
            }
            outcomes[i] = Some(outcome);
        },
    );
    pb.finish_and_clear();
    let was_interrupted = interrupted();

    // Problems never started (interrupted before their turn) keep the rows they had.
    let leftover = previous.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut rows: BTreeMap<String, Vec<IterationRecord>> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for (i, p) in prepared.iter().enumerate() {
        let id = p.problem.id.clone();
        match outcomes[i].take() {
            Some(o) => {
                if let Some(e) = o.error {
                    errors.insert(id.clone(), e);
                }
                rows.insert(id, o.records);
            }
            None => {
                rows.insert(id, leftover[i].clone());
            }
        }
    }
    let ids: Vec<String> = prepared.iter().map(|p| p.problem.id.clone()).collect();
    let references: HashMap<String, Vec<RecordedPerformance>> = prepared
        .iter()
        .map(|p| (p.problem.id.clone(), p.references.clone()))
        .collect();
    let report = Report::build(
        RunInfo {
            dataset: args.dataset.clone(),
            model: backend.model_name.clone(),
            endpoint: backend.endpoint.clone(),
            instruction: args.instruction,
            language,
            iterations: args.iterations,
        },
        &ids,
        &rows,
        &errors,
        &references,
        args.resamples,
    );
    let files = report
        .write(&args.out)
        .with_context(|| format!("cannot write the report into {}", args.out.display()))?;

    if args.json {
        let mut report_json = serde_json::to_value(&report)?;
        if let Some(problems) = report_json["problems"].as_array_mut() {
            for p in problems {
                if let Some(o) = p.as_object_mut() {
                    o.remove("code");
                }
            }
        }
        let summary = OptimizeSummary {
            report: report_json,
            out: &args.out,
            files: SummaryFiles {
                trajectory: &trajectory_path,
                manifest: args.out.join(MANIFEST_FILE),
                report: &files.json,
                markdown: &files.markdown,
                chart_png: &files.png,
                chart_svg: &files.svg,
                r#final: &files.solutions,
            },
            errors: errors
                .iter()
                .map(|(id, e)| ProblemError {
                    problem_id: id,
                    error: e,
                })
                .collect(),
            interrupted: was_interrupted,
            protocol: bench.protocol(),
        };
        // Through a JSON value: the keys come out sorted, as they always have.
        println!("{}", serde_json::to_value(&summary)?);
    } else {
        print_human(&report, &args.out);
    }
    Ok(if was_interrupted {
        ExitCode::from(130)
    } else if !errors.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The human summary: the report's own markdown (run, per iteration, per problem, errors) and
/// where the files are.
fn print_human(report: &Report, out: &Path) {
    print!("{}", report.markdown());
    println!(
        "\nwrote {}/{{trajectory.jsonl, report.json, report.md, chart.png, chart.svg, final.jsonl}}",
        out.display()
    );
}
