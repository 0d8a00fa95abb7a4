//! What every handler shares: the configuration, the worker pool, metrics, the loaded problems
//! and the `/execute` result store, plus submitting jobs to the pool and waiting for answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use afterburner_benchmarks::{Problem, Suite};
use afterburner_sandbox::random_u64;
use axum::extract::FromRef;
use axum::http::StatusCode;
use tokio::sync::oneshot;

use crate::config::ServerConfig;
use crate::error::{ApiError, BodyLimit};
use crate::metrics::Metrics;
use crate::pool::{JobFn, Pool, PoolInfo, Work, job};
use crate::results::ResultStore;

/// A problem of a loaded dataset and its suite: its tests, then its stress inputs with their
/// expected outputs, the same suite `calibrate` and `eval` measure on. A problem with stress
/// sources has its suite prepared on first use (a pool job: generators and consensus
/// references run in the sandbox), shared by every later request and cached on disk in the
/// harness's cache folder under the same key as `calibrate`'s.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub problem: Arc<Problem>,
    suite: tokio::sync::OnceCell<Arc<Suite>>,
}

impl Loaded {
    /// A loaded problem; its suite is its tests alone when it has no stress sources.
    pub fn new(problem: Problem) -> Loaded {
        let suite = if problem.stress.is_empty() {
            tokio::sync::OnceCell::new_with(Some(Arc::new(Suite::tests_only(&problem))))
        } else {
            tokio::sync::OnceCell::new()
        };
        Loaded {
            problem: Arc::new(problem),
            suite,
        }
    }

    /// Its suite, prepared on a worker the first time it is asked for.
    pub async fn suite(&self, state: &AppState) -> Result<Arc<Suite>, ApiError> {
        self.suite
            .get_or_try_init(|| async {
                let problem = self.problem.clone();
                let started = Instant::now();
                let work: Work<Result<Suite, afterburner_benchmarks::HarnessError>> =
                    Box::new(move |w| w.harness.suite(&problem, w.cpu));
                let suite = state.run_one(work).await?.map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "cannot prepare the stress suite of problem `{}`: {e}",
                            self.problem.id
                        ),
                    )
                })?;
                tracing::info!(
                    problem = %self.problem.id,
                    cases = suite.cases.len(),
                    stress = suite.stress_cases(),
                    dropped = suite.dropped.len(),
                    cached = suite.from_cache,
                    "suite prepared in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                Ok(Arc::new(suite))
            })
            .await
            .cloned()
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

    /// Submits one job and waits for its answer.
    pub async fn run_one<R: Send + 'static>(&self, work: Work<R>) -> Result<R, ApiError> {
        self.run_all(vec![work]).await?.pop().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: no answer for the submitted job",
            )
        })
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
