//! The HTTP application: shared state, the router, authentication and request metrics, and the
//! service endpoints (`/healthz`, `/metrics`, `/status`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use afterburner_benchmarks::{Problem, Suite};
use afterburner_sandbox::Language;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::ServerConfig;
use crate::error::{ApiError, BodyLimit};
use crate::metrics::{Gauges, Metrics};
use crate::pool::{JobFn, Pool, PoolInfo, Work, job};
use crate::{fusion, monolith, native};

/// A problem of a loaded dataset and its suite (its correctness tests).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub problem: Arc<Problem>,
    pub suite: Arc<Suite>,
}

/// Where an `/execute` task stands.
#[derive(Debug, Clone)]
pub(crate) enum TaskState {
    /// Queued or running.
    Pending,
    /// Finished: the response body.
    Done(Value),
}

/// `/execute` results kept for `GET /results/<task_id>`: pending ones, and the latest finished
/// within a count and a byte budget (outputs can be megabytes each).
#[derive(Debug, Default)]
pub(crate) struct ResultStore {
    tasks: HashMap<String, TaskState>,
    finished: VecDeque<(String, usize)>,
    bytes: usize,
    keep: usize,
    max_bytes: usize,
}

impl ResultStore {
    pub fn new(keep: usize, max_bytes: usize) -> ResultStore {
        ResultStore {
            keep,
            max_bytes,
            ..ResultStore::default()
        }
    }

    pub fn pending(&mut self, id: &str) {
        self.tasks.insert(id.to_string(), TaskState::Pending);
    }

    /// Stores a finished result; the oldest go first when over the count or the byte budget
    /// (a result larger than the whole budget is not kept).
    pub fn done(&mut self, id: &str, body: Value) {
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |v| v.len());
        if self.keep == 0 || size > self.max_bytes {
            self.tasks.remove(id);
            return;
        }
        self.tasks.insert(id.to_string(), TaskState::Done(body));
        self.finished.push_back((id.to_string(), size));
        self.bytes += size;
        while self.finished.len() > self.keep || self.bytes > self.max_bytes {
            match self.finished.pop_front() {
                Some((old, n)) => {
                    self.bytes -= n;
                    self.tasks.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<TaskState> {
        self.tasks.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub pool: Arc<Pool>,
    pub info: PoolInfo,
    pub metrics: Arc<Metrics>,
    pub problems: HashMap<String, Loaded>,
    pub results: Mutex<ResultStore>,
    pub started: Instant,
    task_counter: AtomicU64,
    task_prefix: String,
}

impl FromRef<Arc<AppState>> for BodyLimit {
    fn from_ref(state: &Arc<AppState>) -> BodyLimit {
        BodyLimit(state.config.max_body_bytes)
    }
}

/// 64 random bits from the kernel (the clock if that fails).
fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into the 8-byte value it is given.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        v = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    v
}

impl AppState {
    pub fn new(
        config: ServerConfig,
        pool: Arc<Pool>,
        info: PoolInfo,
        metrics: Arc<Metrics>,
        problems: HashMap<String, Loaded>,
    ) -> AppState {
        let (keep, max_bytes) = (config.results_kept, config.results_max_bytes);
        AppState {
            config,
            pool,
            info,
            metrics,
            problems,
            results: Mutex::new(ResultStore::new(keep, max_bytes)),
            started: Instant::now(),
            task_counter: AtomicU64::new(0),
            task_prefix: format!("{:016x}", random_u64()),
        }
    }

    /// A fresh task id: unique within the process, unguessable across processes.
    pub fn task_id(&self) -> String {
        let n = self.task_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:08x}-{:08x}", self.task_prefix, random_u64() as u32)
    }

    /// Submits one job per closure, all or none, and waits for every answer in order.
    pub async fn run_all<R: Send + 'static>(&self, work: Vec<Work<R>>) -> Result<Vec<R>, ApiError> {
        let receivers = self.submit_all(work)?;
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(self.answer(rx).await?);
        }
        Ok(out)
    }

    /// Submits one job per closure, all or none; returns the receivers of their answers.
    pub fn submit_all<R: Send + 'static>(
        &self,
        work: Vec<Work<R>>,
    ) -> Result<Vec<oneshot::Receiver<R>>, ApiError> {
        let mut jobs: Vec<(JobFn, Box<dyn Fn() -> bool + Send>)> = Vec::with_capacity(work.len());
        let mut receivers = Vec::with_capacity(work.len());
        for f in work {
            let (run, rx, wanted) = job(f);
            jobs.push((run, wanted));
            receivers.push(rx);
        }
        self.pool.submit(jobs).map_err(ApiError::refused)?;
        Ok(receivers)
    }

    /// Waits for one job's answer; a job that never ran says why.
    pub async fn answer<R>(&self, rx: oneshot::Receiver<R>) -> Result<R, ApiError> {
        match rx.await {
            Ok(r) => Ok(r),
            Err(_) if self.pool.is_closing() => Err(ApiError::shutting_down()),
            Err(_) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: the worker running this program failed (see the server log)",
            )),
        }
    }

    /// The loaded problem with this id.
    pub fn problem(&self, id: &str) -> Option<&Loaded> {
        self.problems.get(id)
    }
}

/// The application's router over `state`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/execute", post(monolith::execute))
        .route("/results/{task_id}", get(monolith::results))
        .route("/status", get(status))
        .route("/run_code", post(fusion::run_code))
        .route("/v1/evaluate", post(native::evaluate))
        .route("/v1/reward", post(native::reward))
        .route("/get_reward", post(native::get_reward))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::openai::routes(state.config.model.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; see GET /status for what this server offers",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Counts every request and its latency by endpoint (the route pattern) and status.
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .request(&endpoint, response.status().as_u16(), start.elapsed());
    response
}

/// Equal in time independent of where the strings first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, every endpoint but `/healthz` needs `Authorization: Bearer TOKEN`
/// (or `?access_token=TOKEN`, for clients such as verl's SandboxFusion caller that cannot add
/// headers).
async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = state.config.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
    let ok = [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` (the server was \
         started with --token)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.pool.is_closing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        axum::Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stored = state.results.lock().map_or(0, |r| r.len());
    let text = state.metrics.render(Gauges {
        queue_depth: state.pool.depth(),
        queue_capacity: state.pool.capacity(),
        jobs_running: state.pool.running(),
        workers: state.pool.workers(),
        results_stored: stored,
        uptime_s: state.started.elapsed().as_secs_f64(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// A `key: value kB` figure of a `/proc` file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `GET /status`: the queue, the workers, memory, and what the server offers.
pub(crate) async fn status(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    let stored = state.results.lock().map_or(0, |r| r.len());
    let limits = state.config.limits;
    axum::Json(json!({
        "status": if state.pool.is_closing() { "shutting_down" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "queue": {
            "depth": state.pool.depth(),
            "capacity": state.pool.capacity(),
            "running": state.pool.running(),
        },
        "workers": state.pool.workers(),
        "worker_cpus": state.info.cpus,
        "memory": {
            "server_rss_kb": proc_kb("/proc/self/status", "VmRSS"),
            "machine_total_kb": proc_kb("/proc/meminfo", "MemTotal"),
            "machine_available_kb": proc_kb("/proc/meminfo", "MemAvailable"),
        },
        "results_stored": stored,
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "problems": state.problems.len(),
        "languages": Language::ALL.iter().map(|l| l.name()).collect::<Vec<_>>(),
        "limits": {
            "default_time_s": limits.default_time_s,
            "max_time_s": limits.max_time_s,
            "default_memory_mib": limits.default_memory_mib,
            "max_memory_mib": limits.max_memory_mib,
            "max_body_bytes": state.config.max_body_bytes,
            "max_batch": state.config.max_batch.min(state.pool.capacity()),
            "max_repeats": state.config.max_repeats,
        },
        "warnings": state.info.warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_store_keeps_the_latest_finished_tasks() {
        let mut s = ResultStore::new(2, 1 << 20);
        s.pending("a");
        s.done("a", json!(1));
        s.done("b", json!(2));
        s.pending("p");
        s.done("c", json!(3));
        assert!(s.get("a").is_none(), "the oldest finished one went");
        assert!(matches!(s.get("b"), Some(TaskState::Done(_))));
        assert!(matches!(s.get("p"), Some(TaskState::Pending)));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn the_result_store_keeps_within_its_byte_budget() {
        let mut s = ResultStore::new(100, 100);
        s.done("a", json!("x".repeat(40)));
        s.done("b", json!("y".repeat(40)));
        s.done("c", json!("z".repeat(40)));
        assert!(s.get("a").is_none(), "over 100 bytes: the oldest went");
        assert!(s.get("c").is_some());
        s.done("huge", json!("h".repeat(500)));
        assert!(s.get("huge").is_none(), "larger than the budget: not kept");
        assert!(s.get("b").is_some() && s.get("c").is_some());
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
