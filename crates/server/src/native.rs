//! Native endpoints: `POST /v1/evaluate` (one solution over a problem's whole suite),
//! `POST /v1/reward` (a batch of model responses -> the Afterburner reward with its
//! components), and OpenRLHF's `POST /get_reward` shape over the same machinery.
//!
//! A problem is named by the id of a problem of a dataset loaded at start (`--dataset`), or
//! given inline as `tests` (`[{"input", "expected"}]`, plus optional `entry` and `checker` in
//! the benchmark crate's serde forms; stdin/stdout and exact token comparison by default).
//! A loaded problem's suite is the one `calibrate` and `eval` measure on: its tests, then its
//! stress inputs (COFFE's stressful tests, ENAMEL's generated inputs), prepared on first use;
//! inline tests are their own suite.

use std::sync::Arc;

use afterburner_benchmarks::metrics::Objective;
use afterburner_benchmarks::{
    CaseResult, Checker, Entry, HarnessError, Problem, RecordedPerformance, Suite, TestCase,
};
use afterburner_reward::{ParsedResponse, RewardConfig, parse_response};
use afterburner_sandbox::{Dispersion, Language, Limits, Measurement, Status, clip};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{Wire, parse_language, program_language, to_wire_value};
use crate::error::{ApiError, JsonBody, parse_json};
use crate::grading::{Baseline, Graded, grade, record_graded, score};
use crate::pool::Work;
use crate::state::AppState;

const MIB: u64 = 1024 * 1024;

/// A test given inline.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InlineTest {
    input: String,
    #[serde(alias = "output")]
    expected: String,
}

/// Which problem: a loaded one by id, or inline tests (with an optional entry and checker).
/// Requests carry these fields at their top level (`#[serde(flatten)]`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ProblemSpec {
    /// A problem of a dataset the server loaded.
    #[serde(default)]
    problem_id: Option<String>,
    /// Inline tests.
    #[serde(default)]
    tests: Option<Vec<InlineTest>>,
    /// How inline tests call the solution (default: stdin/stdout).
    #[serde(default)]
    entry: Option<Entry>,
    /// How inline tests compare outputs (default: exact tokens).
    #[serde(default)]
    checker: Option<Checker>,
}

/// A problem ready to judge on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    problem: Arc<Problem>,
    suite: Arc<Suite>,
}

/// Resolves `spec` for a solution in `language`; errors are prefixed with `at` (`items[2].`).
async fn resolve(
    state: &AppState,
    spec: &ProblemSpec,
    language: Language,
    at: &str,
) -> Result<Target, ApiError> {
    let target = match (&spec.problem_id, &spec.tests) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "`{at}`: give either `problem_id` or `tests`, not both"
            )));
        }
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "`{at}`: no problem: give `problem_id` (a problem of a dataset the server \
                 loaded) or inline `tests`"
            )));
        }
        (Some(id), None) => {
            if spec.entry.is_some() || spec.checker.is_some() {
                return Err(ApiError::bad_request(format!(
                    "`{at}entry`/`{at}checker`: only inline `tests` take an entry or checker; \
                     problem `{id}` has its own"
                )));
            }
            let loaded = state.problem(id).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{at}problem_id`: no problem `{id}` among the {} the server loaded{}",
                    state.problems.len(),
                    if state.problems.is_empty() {
                        " (start it with --dataset FORMAT:PATH)"
                    } else {
                        ""
                    }
                ))
            })?;
            let suite = loaded.suite(state).await?;
            if suite.cases.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "`{at}problem_id`: problem `{id}` has no tests, and none of its stress \
                     inputs could be prepared ({} dropped)",
                    suite.dropped.len()
                )));
            }
            Target {
                problem: loaded.problem.clone(),
                suite,
            }
        }
        (None, Some(tests)) => {
            if tests.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "`{at}tests` is empty: there would be nothing to fail"
                )));
            }
            let problem = Problem::from_tests(
                "inline",
                spec.entry.clone().unwrap_or(Entry::StdinStdout),
                tests
                    .iter()
                    .map(|t| TestCase {
                        input: t.input.clone(),
                        expected: t.expected.clone(),
                    })
                    .collect(),
                spec.checker.clone().unwrap_or(Checker::Exact),
            );
            let suite = Suite::tests_only(&problem);
            Target {
                problem: Arc::new(problem),
                suite: Arc::new(suite),
            }
        }
    };
    if language != Language::Python && target.problem.entry != Entry::StdinStdout {
        return Err(ApiError::bad_request(format!(
            "`{at}language`: problem `{}` calls a function or method, which only Python \
             solutions can be judged on (got {language})",
            target.problem.id
        )));
    }
    Ok(target)
}

/// How a request asks its suites to be run; requests carry these fields at their top level
/// (`#[serde(flatten)]`), all optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SuiteRunAsked {
    /// Time limit of the whole suite run, seconds.
    #[serde(default)]
    time_limit: Option<f64>,
    /// Memory limit, MiB.
    #[serde(default)]
    memory_limit_mib: Option<f64>,
    /// Runs; figures are medians.
    #[serde(default)]
    repeats: Option<usize>,
}

impl SuiteRunAsked {
    /// Time and memory limits of one suite run, as asked, defaulted and capped.
    fn limits(&self, state: &AppState) -> Result<Limits, ApiError> {
        let mut limits = state
            .config
            .limits
            .resolve(
                self.time_limit,
                self.memory_limit_mib,
                "time_limit/memory_limit_mib",
            )
            .map_err(ApiError::bad_request)?;
        // A whole suite's output goes through one process.
        limits.output_bytes = 64 * MIB;
        Ok(limits)
    }

    /// Runs per suite, as asked (1 by default), capped by the server's maximum.
    fn repeats(&self, state: &AppState) -> Result<usize, ApiError> {
        match self.repeats {
            None => Ok(1),
            Some(0) => Err(ApiError::bad_request("`repeats` must be at least 1")),
            Some(n) => Ok(n.min(state.config.max_repeats.max(1))),
        }
    }
}

fn harness_error(e: &HarnessError) -> ApiError {
    match e {
        HarnessError::Unsupported { .. } => ApiError::bad_request(e.to_string()),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The limits a suite ran under.
#[derive(Debug, Serialize)]
pub(crate) struct LimitsBody {
    time_s: f64,
    memory_mib: u64,
}

impl LimitsBody {
    fn of(l: &Limits) -> LimitsBody {
        LimitsBody {
            time_s: l.wall_time.as_secs_f64(),
            memory_mib: l.memory_bytes / MIB,
        }
    }
}

/// The per-run part of an answer: verdict, per-test results, measurement, medians.
#[derive(Debug, Serialize)]
pub(crate) struct GradedBody<'a> {
    status: Status,
    passed: bool,
    /// Tests in the suite.
    tests: usize,
    passed_tests: usize,
    cases: &'a [CaseResult],
    measurement: &'a Measurement,
    compile_ms: f64,
    message: Option<&'a str>,
    /// Why it failed, when it did.
    detail: Option<String>,
    performance: Option<RecordedPerformance>,
    repeats: usize,
    /// Coefficients of variation over the repeats (when it passed).
    cv: Option<&'a Dispersion>,
}

impl GradedBody<'_> {
    fn of(g: &Graded) -> GradedBody<'_> {
        let e = &g.evaluation;
        GradedBody {
            status: e.status,
            passed: g.passed,
            tests: e.cases.len(),
            passed_tests: e.accepted_cases(),
            cases: &e.cases,
            measurement: &e.measurement,
            compile_ms: e.compile_ms,
            message: e.message.as_deref(),
            detail: e.failure_reason(),
            performance: g.performance,
            repeats: g.summary.as_ref().map_or(1, |s| s.runs),
            cv: g.summary.as_ref().map(|s| &s.cv),
        }
    }
}

/// `POST /v1/evaluate`.
#[derive(Debug, Deserialize)]
pub(crate) struct EvaluateRequest {
    language: String,
    code: String,
    #[serde(flatten)]
    problem: ProblemSpec,
    #[serde(flatten)]
    run: SuiteRunAsked,
}

/// `POST /v1/evaluate`.
pub(crate) async fn evaluate(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<EvaluateRequest>,
) -> Result<Json<Value>, ApiError> {
    let language = program_language(&req.language, &req.code)?;
    let target = resolve(&state, &req.problem, language, "").await?;
    let limits = req.run.limits(&state)?;
    let repeats = req.run.repeats(&state)?;
    let (t, l, code) = (target.clone(), limits.clone(), req.code);
    let work: Work<Result<Graded, HarnessError>> =
        Box::new(move |w| grade(w, &t.problem, &t.suite, language, &code, &l, repeats));
    let outcome = state.run_one(work).await?;
    record_graded(&state.metrics, language, &outcome);
    let graded = outcome.map_err(|e| harness_error(&e))?;
    let body = to_wire_value(&EvaluateBody {
        graded: GradedBody::of(&graded),
        problem_id: &target.problem.id,
        language,
        limits: LimitsBody::of(&limits),
    })?;
    Ok(Json(body))
}

/// The `/v1/evaluate` answer: the graded run, and what it was run as.
#[derive(Debug, Serialize)]
pub(crate) struct EvaluateBody<'a> {
    #[serde(flatten)]
    graded: GradedBody<'a>,
    problem_id: &'a str,
    language: Language,
    limits: LimitsBody,
}

/// One response to reward: the problem, the instruction and the original's performance.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RewardLabel {
    /// The solution's language (default `python`).
    #[serde(default)]
    language: Option<String>,
    #[serde(flatten)]
    problem: ProblemSpec,
    /// The efficiency instruction: `time`, `memory` or `integral`.
    instruction: String,
    /// The original solution's verdict and figures (none: the prompt had no original).
    #[serde(default)]
    baseline: Option<Baseline>,
}

/// `POST /v1/reward` item: a response and its label.
#[derive(Debug, Deserialize)]
pub(crate) struct RewardItem {
    response: String,
    #[serde(flatten)]
    label: RewardLabel,
}

/// `POST /v1/reward`.
#[derive(Debug, Deserialize)]
pub(crate) struct RewardRequest {
    items: Vec<RewardItem>,
    #[serde(flatten)]
    run: SuiteRunAsked,
    /// Weights and ceilings overriding the server's (e.g. a ramped efficiency weight).
    #[serde(default)]
    reward_config: Option<RewardConfig>,
}

/// An item checked and parsed, ready to run.
struct Prepared {
    language: Language,
    target: Target,
    objective: Objective,
    baseline: Option<Baseline>,
    parsed: ParsedResponse,
}

/// What became of one item.
struct Outcome {
    prepared: Prepared,
    graded: Option<Result<Graded, String>>,
}

fn parse_objective(s: &str, at: &str) -> Result<Objective, ApiError> {
    s.parse::<Objective>()
        .map_err(|e| ApiError::bad_request(format!("`{at}instruction`: {e}")))
}

async fn prepare(
    state: &AppState,
    response: &str,
    label: &RewardLabel,
    at: &str,
) -> Result<Prepared, ApiError> {
    let language = match &label.language {
        Some(l) => parse_language(l, &format!("{at}language"))?,
        None => Language::Python,
    };
    let target = resolve(state, &label.problem, language, at).await?;
    let objective = parse_objective(&label.instruction, at)?;
    Ok(Prepared {
        language,
        target,
        objective,
        baseline: label.baseline,
        parsed: parse_response(response, language),
    })
}

/// Runs every item that has code (all admitted at once, or the request is refused).
async fn run_items(
    state: &AppState,
    items: Vec<Prepared>,
    limits: &Limits,
    repeats: usize,
) -> Result<Vec<Outcome>, ApiError> {
    if items.len() > state.config.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the batch has {} items but the server takes at most {} per request",
                items.len(),
                state.config.max_batch
            ),
        )
        .with_reason("batch_too_large"));
    }
    let mut work: Vec<Work<Result<Graded, HarnessError>>> = Vec::new();
    for item in &items {
        if let Some(code) = &item.parsed.code {
            let (t, l, code, language) = (
                item.target.clone(),
                limits.clone(),
                code.clone(),
                item.language,
            );
            work.push(Box::new(move |w| {
                grade(w, &t.problem, &t.suite, language, &code, &l, repeats)
            }));
        }
    }
    let mut answers = state.run_all(work).await?.into_iter();
    let mut out = Vec::with_capacity(items.len());
    for prepared in items {
        let graded = if prepared.parsed.code.is_some() {
            let answer = answers.next().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: fewer answers than jobs",
                )
            })?;
            record_graded(&state.metrics, prepared.language, &answer);
            Some(answer.map_err(|e| e.to_string()))
        } else {
            state.metrics.run("no_code");
            None
        };
        out.push(Outcome { prepared, graded });
    }
    Ok(out)
}

/// The reward's terms.
#[derive(Debug, Serialize)]
pub(crate) struct Components {
    format: f64,
    correctness: f64,
    efficiency: f64,
    gain: Option<f64>,
}

/// The status of a response without code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum NoCode {
    /// Written `no_code`.
    #[serde(rename = "no_code")]
    NoCode,
}

/// What became of an item's code.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum ItemVerdict<'a> {
    /// It ran: the graded run.
    Graded(GradedBody<'a>),
    /// The response had no usable code: why.
    NoCode {
        status: NoCode,
        passed: bool,
        detail: String,
    },
    /// The harness failed: no reward is made up.
    Failed {
        status: Status,
        passed: bool,
        error: &'a str,
    },
}

/// An item's answer: reward and components, verdict and figures; `reward` is null with an
/// `error` when the harness failed (never a made-up number).
#[derive(Debug, Serialize)]
pub(crate) struct ItemBody<'a> {
    problem_id: &'a str,
    language: Language,
    instruction: Objective,
    well_formed: bool,
    reward: Option<f64>,
    components: Option<Components>,
    #[serde(flatten)]
    verdict: ItemVerdict<'a>,
}

impl ItemBody<'_> {
    fn of<'a>(o: &'a Outcome, config: &RewardConfig) -> ItemBody<'a> {
        let p = &o.prepared;
        let graded = match &o.graded {
            Some(Err(e)) => {
                return ItemBody {
                    problem_id: &p.target.problem.id,
                    language: p.language,
                    instruction: p.objective,
                    well_formed: p.parsed.well_formed,
                    reward: None,
                    components: None,
                    verdict: ItemVerdict::Failed {
                        status: Status::SandboxError,
                        passed: false,
                        error: e,
                    },
                };
            }
            Some(Ok(g)) => Some(g),
            None => None,
        };
        let r = score(
            p.parsed.well_formed,
            p.baseline.as_ref(),
            p.objective,
            graded,
            config,
        );
        ItemBody {
            problem_id: &p.target.problem.id,
            language: p.language,
            instruction: p.objective,
            well_formed: p.parsed.well_formed,
            reward: Some(r.total),
            components: Some(Components {
                format: r.format,
                correctness: r.correctness,
                efficiency: r.efficiency,
                gain: r.gain,
            }),
            verdict: match graded {
                Some(g) => ItemVerdict::Graded(GradedBody::of(g)),
                None => ItemVerdict::NoCode {
                    status: NoCode::NoCode,
                    passed: false,
                    detail: p.parsed.problem.clone().unwrap_or_default(),
                },
            },
        }
    }

    /// Whether the item's code passed.
    fn passed(&self) -> bool {
        match &self.verdict {
            ItemVerdict::Graded(g) => g.passed,
            ItemVerdict::NoCode { passed, .. } | ItemVerdict::Failed { passed, .. } => *passed,
        }
    }
}

/// The `/v1/reward` answer.
#[derive(Debug, Serialize)]
pub(crate) struct RewardBody<'a> {
    results: Vec<ItemBody<'a>>,
    limits: LimitsBody,
    repeats: usize,
    reward_config: RewardConfig,
}

/// `POST /v1/reward`.
pub(crate) async fn reward(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RewardRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.items.is_empty() {
        return Err(ApiError::bad_request("`items` is empty: nothing to reward"));
    }
    let limits = req.run.limits(&state)?;
    let repeats = req.run.repeats(&state)?;
    let config = req.reward_config.unwrap_or(state.config.reward);
    let mut prepared = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.iter().enumerate() {
        prepared.push(prepare(&state, &item.response, &item.label, &format!("items[{i}].")).await?);
    }
    let outcomes = run_items(&state, prepared, &limits, repeats).await?;
    let body = to_wire_value(&RewardBody {
        results: outcomes.iter().map(|o| ItemBody::of(o, &config)).collect(),
        limits: LimitsBody::of(&limits),
        repeats,
        reward_config: config,
    })?;
    Ok(Json(body))
}

/// OpenRLHF's remote reward request: `query` (prompt + response), `prompts`, `labels`.
///
/// Checked against OpenRLHF v0.11.0 (commit 3c3be6234e0c, `openrlhf/utils/agent.py`,
/// `SingleTurnAgentExecutor._fetch_rewards_via_http`): each finished sample is posted alone as
/// `{"query": [prompt and response decoded with special tokens], "prompts": [prompt], "labels":
/// [label]}`, sharded over the `--reward.remote_url` list, so every URL but the first gets
/// empty lists; the answer's `rewards`, `scores` and `extra_logs` (each value a list of
/// numbers) become tensors.
#[derive(Debug, Deserialize)]
pub(crate) struct GetRewardRequest {
    #[serde(default)]
    query: Vec<String>,
    #[serde(default)]
    prompts: Vec<String>,
    #[serde(default)]
    labels: Vec<Value>,
}

/// End-of-turn and end-of-text markers a chat model's tokenizer leaves at the end of a reply
/// decoded with its special tokens, as OpenRLHF decodes it.
const END_MARKERS: [&str; 10] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<|return|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// The response within an OpenRLHF query: what follows the prompt, without the end-of-turn
/// markers the decoder left at its end.
///
/// The query is the prompt's tokens and the response's decoded together, so it starts with the
/// prompt unless decoding changed the prompt's text (a tokenizer that normalises spaces); then
/// the prompt's last characters (its chat template's assistant header) are looked for where the
/// prompt should end. A query in which neither is found is refused rather than guessed at: the
/// prompt holds an original solution, whose code must never be taken for the response's.
fn response_of<'q>(query: &'q str, prompt: &str, at: &str) -> Result<&'q str, ApiError> {
    let response = if prompt.is_empty() {
        query
    } else if let Some(rest) = query.strip_prefix(prompt) {
        rest
    } else {
        let mut tail_start = prompt.len().saturating_sub(32);
        while !prompt.is_char_boundary(tail_start) {
            tail_start += 1;
        }
        let tail = &prompt[tail_start..];
        let mut window_end = (prompt.len() + 64).min(query.len());
        while !query.is_char_boundary(window_end) {
            window_end -= 1;
        }
        match query[..window_end].rfind(tail) {
            Some(p) if !tail.is_empty() => &query[p + tail.len()..],
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`{at}`: the query does not start with its prompt, nor holds the prompt's end \
                     ({tail:?}) where the prompt should end: cannot tell the response from the \
                     prompt"
                )));
            }
        }
    };
    let mut response = response.trim_end();
    while let Some(marker) = END_MARKERS.iter().find(|m| response.ends_with(*m)) {
        response = response[..response.len() - marker.len()].trim_end();
    }
    Ok(response)
}

/// `POST /get_reward`: each label is a JSON string (or object) with the fields of a
/// `/v1/reward` item but `response`; the response is the query minus its prompt and trailing
/// end-of-turn markers. An empty request (another server's share of a sample) gets empty lists.
pub(crate) async fn get_reward(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<GetRewardRequest>,
) -> Result<Wire<GetRewardBody>, ApiError> {
    let n = req.query.len();
    if req.labels.len() != n {
        return Err(ApiError::bad_request(format!(
            "`labels`: {} labels for {n} queries; each query needs a label, a JSON string such \
             as {{\"problem_id\": \"...\", \"instruction\": \"time\", \"baseline\": {{\"passed\": \
             true, \"time_ms\": 120.0}}}}",
            req.labels.len()
        )));
    }
    if !req.prompts.is_empty() && req.prompts.len() != n {
        return Err(ApiError::bad_request(format!(
            "`prompts`: {} prompts for {n} queries",
            req.prompts.len()
        )));
    }
    if n == 0 {
        return Ok(Wire(GetRewardBody::default()));
    }
    let mut prepared = Vec::with_capacity(n);
    for (i, (query, label)) in req.query.iter().zip(&req.labels).enumerate() {
        let label: RewardLabel = match label {
            Value::String(s) => parse_json(s.as_bytes()),
            other => parse_json(other.to_string().as_bytes()),
        }
        .map_err(|e| ApiError::bad_request(format!("`labels[{i}]`: {}", e.message)))?;
        let prompt = req.prompts.get(i).map_or("", String::as_str);
        let response = response_of(query, prompt, &format!("query[{i}]"))?;
        prepared.push(prepare(&state, response, &label, &format!("labels[{i}].")).await?);
    }
    let config = state.config.reward;
    let limits = SuiteRunAsked::default().limits(&state)?;
    let outcomes = run_items(&state, prepared, &limits, 1).await?;
    let failed: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match &o.graded {
            Some(Err(e)) => Some(format!("query {i}: {}", clip(e, 300))),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the sandbox failed on {} of {n} queries (no reward is made up; retry): {}",
                failed.len(),
                failed.join("; ")
            ),
        ));
    }
    let mut body = GetRewardBody::default();
    for o in &outcomes {
        let answer = ItemBody::of(o, &config);
        // Failed items were answered above: every other one has its reward and terms.
        let (Some(reward), Some(terms)) = (answer.reward, &answer.components) else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: an item without a failure has no reward",
            ));
        };
        let passed = if answer.passed() { 1.0 } else { 0.0 };
        body.rewards.push(reward);
        body.scores.push(passed);
        body.extra_logs.format.push(terms.format);
        body.extra_logs.correctness.push(terms.correctness);
        body.extra_logs.efficiency.push(terms.efficiency);
        body.extra_logs.passed.push(passed);
    }
    Ok(Wire(body))
}

/// OpenRLHF's reward answer: one reward and one score (1 passed, 0 not) per query, and the
/// reward's terms per query in `extra_logs` (OpenRLHF logs each key).
#[derive(Debug, Default, Serialize)]
pub(crate) struct GetRewardBody {
    rewards: Vec<f64>,
    scores: Vec<f64>,
    extra_logs: ExtraLogs,
}

/// Per-query terms OpenRLHF logs beside the rewards.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ExtraLogs {
    format: Vec<f64>,
    correctness: Vec<f64>,
    efficiency: Vec<f64>,
    passed: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "<|im_start|>user\nSquare it.<|im_end|>\n<|im_start|>assistant\n";

    #[test]
    fn the_response_is_the_query_after_its_prompt_without_end_markers() {
        let query = format!("{PROMPT}<thinking>t</thinking><solution>s</solution><|im_end|>\n");
        assert_eq!(
            response_of(&query, PROMPT, "query[0]").unwrap(),
            "<thinking>t</thinking><solution>s</solution>"
        );
        assert_eq!(
            response_of("reply</s><|endoftext|>", "", "query[0]").unwrap(),
            "reply"
        );
    }

    #[test]
    fn a_prompt_the_decoder_changed_is_found_by_its_end() {
        // A tokenizer that normalises spaces changed the prompt's start, not its template end.
        let decoded = PROMPT.replace("Square it.", "Square it .");
        let query = format!("{decoded}answer<|im_end|>");
        assert_eq!(response_of(&query, PROMPT, "query[0]").unwrap(), "answer");
    }

    #[test]
    fn a_query_without_its_prompt_is_refused_not_guessed() {
        let e = response_of("something else entirely", PROMPT, "query[3]").unwrap_err();
        assert!(e.message.contains("`query[3]`"), "{}", e.message);
        assert!(
            e.message.contains("cannot tell the response"),
            "{}",
            e.message
        );
    }
}
