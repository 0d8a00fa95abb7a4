//! The worker pool: a fixed set of OS threads, one per core, running sandbox work taken from a
//! bounded queue.
//!
//! The sandbox is synchronous and every run occupies a core, so the HTTP layer never runs
//! programs itself: it turns a request into one job per program, and [`Pool::submit`] admits
//! all of a request's jobs at once or none (a batch is never half-queued). A job carries the
//! sender half of a one-shot channel; the handler awaits the other half. Jobs whose client has
//! gone are skipped. Closing the pool drops every queued job, which answers its handler with
//! "shutting down", while the jobs being run finish.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use afterburner_benchmarks::{Harness, HarnessConfig, WorkerCount, worker_cpus};
use afterburner_sandbox::{Language, Limits, Program, Sandbox, SandboxConfig, SandboxError};
use tokio::sync::oneshot;

use crate::ServerError;
use crate::metrics::Metrics;

/// What a worker lends a job: the sandbox, the harness, the built-program cache and its core.
pub(crate) struct Worker<'w> {
    /// The process's sandbox.
    pub sandbox: &'w Sandbox,
    /// The harness (its scripts built once).
    pub harness: &'w Harness<'w>,
    /// Built programs, reused when the same code comes again.
    pub programs: &'w ProgramCache,
    /// The core this worker's programs are pinned to.
    pub cpu: Option<usize>,
}

/// A job: code run by a worker; what it returns delivers the answer through the channel it
/// captured, called once the worker has recorded the job (so a client that has its answer also
/// sees the job in `/metrics`).
pub(crate) type JobFn = Box<dyn for<'w> FnOnce(&Worker<'w>) -> Deliver + Send>;

/// Sends a finished job's answer to its waiting request.
pub(crate) type Deliver = Box<dyn FnOnce() + Send>;

/// Work a handler hands to a worker, producing an `R`.
pub(crate) type Work<R> = Box<dyn for<'w> FnOnce(&Worker<'w>) -> R + Send>;

struct Job {
    run: JobFn,
    /// Whether whoever waits for the answer is still there.
    wanted: Box<dyn Fn() -> bool + Send>,
    enqueued: Instant,
}

/// Why jobs were not admitted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The queue has no room for them now; retry after this many seconds.
    Full {
        /// Suggested wait.
        retry_after_s: u64,
        /// Jobs waiting now.
        depth: usize,
        /// The queue's capacity.
        capacity: usize,
    },
    /// More jobs than the queue can ever hold at once.
    TooMany {
        /// Jobs asked for.
        jobs: usize,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The server is shutting down.
    ShuttingDown,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers blocked waiting for a job: each takes one of the queued jobs as soon as it wakes,
    /// so that many of the queued jobs never wait.
    idle: usize,
}

/// The bounded queue and the workers' shared state.
pub(crate) struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    workers: usize,
    running: AtomicUsize,
    closing: AtomicBool,
    /// Exponentially weighted mean job duration, ms (for `Retry-After`).
    mean_job_ms: Mutex<f64>,
    metrics: Arc<Metrics>,
}

/// A job ready to submit and the receiver of its answer.
pub(crate) fn job<R, F>(f: F) -> (JobFn, oneshot::Receiver<R>, Box<dyn Fn() -> bool + Send>)
where
    R: Send + 'static,
    F: for<'w> FnOnce(&Worker<'w>) -> R + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let probe = tx.clone();
    let wanted = Box::new(move || {
        probe
            .lock()
            .map(|t| t.as_ref().is_some_and(|s| !s.is_closed()))
            .unwrap_or(false)
    });
    let run: JobFn = Box::new(move |w: &Worker<'_>| {
        let r = f(w);
        Box::new(move || {
            if let Ok(mut slot) = tx.lock()
                && let Some(sender) = slot.take()
            {
                let _ = sender.send(r);
            }
        })
    });
    (run, rx, wanted)
}

impl Pool {
    fn new(capacity: usize, workers: usize, metrics: Arc<Metrics>) -> Pool {
        Pool {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
                idle: 0,
            }),
            ready: Condvar::new(),
            capacity,
            workers,
            running: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            mean_job_ms: Mutex::new(1000.0),
            metrics,
        }
    }

    /// Admits all `jobs` or none: they are admitted when, once every idle worker has taken one,
    /// at most the capacity are left waiting (so admission does not depend on how fast a woken
    /// worker takes its job).
    pub fn submit(&self, jobs: Vec<(JobFn, Box<dyn Fn() -> bool + Send>)>) -> Result<(), Refusal> {
        let n = jobs.len();
        let refusal = {
            let mut q = self.queue.lock().map_err(|_| Refusal::ShuttingDown)?;
            if q.closed {
                Some((Refusal::ShuttingDown, "shutting_down"))
            } else if n > self.capacity {
                Some((
                    Refusal::TooMany {
                        jobs: n,
                        capacity: self.capacity,
                    },
                    "batch_too_large",
                ))
            } else if q.jobs.len() + n > self.capacity + q.idle {
                Some((
                    Refusal::Full {
                        retry_after_s: self.retry_after_s(q.jobs.len()),
                        depth: q.jobs.len(),
                        capacity: self.capacity,
                    },
                    "queue_full",
                ))
            } else {
                let now = Instant::now();
                q.jobs.extend(jobs.into_iter().map(|(run, wanted)| Job {
                    run,
                    wanted,
                    enqueued: now,
                }));
                None
            }
        };
        match refusal {
            Some((r, reason)) => {
                self.metrics.refused(reason, n);
                Err(r)
            }
            None => {
                self.ready.notify_all();
                Ok(())
            }
        }
    }

    /// Seconds until `depth` queued jobs plus the running ones are likely done (1 to 60).
    fn retry_after_s(&self, depth: usize) -> u64 {
        let mean_s = self.mean_job_ms.lock().map_or(1000.0, |m| *m) / 1000.0;
        let ahead = (depth + self.running.load(Ordering::Relaxed)) as f64;
        let s = (ahead * mean_s / self.workers.max(1) as f64).ceil();
        (s as u64).clamp(1, 60)
    }

    /// Stops admitting jobs and drops the queued ones (their handlers answer 503); the jobs
    /// being run finish.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let dropped: Vec<Job> = match self.queue.lock() {
            Ok(mut q) => {
                q.closed = true;
                q.jobs.drain(..).collect()
            }
            Err(_) => Vec::new(),
        };
        if !dropped.is_empty() {
            self.metrics.refused("shutting_down", dropped.len());
        }
        drop(dropped);
        self.ready.notify_all();
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Jobs waiting now.
    pub fn depth(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.jobs.len())
    }

    /// Jobs being run now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The next job, waiting for one; `None` once the pool is closed.
    fn next(&self) -> Option<Job> {
        let mut q = self.queue.lock().ok()?;
        loop {
            if q.closed {
                return None;
            }
            if let Some(job) = q.jobs.pop_front() {
                self.running.fetch_add(1, Ordering::SeqCst);
                return Some(job);
            }
            q.idle += 1;
            q = self.ready.wait(q).ok()?;
            q.idle -= 1;
        }
    }

    fn finished(&self, elapsed: Duration) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut m) = self.mean_job_ms.lock() {
            *m = 0.8 * *m + 0.2 * elapsed.as_secs_f64() * 1000.0;
        }
    }

    fn work(&self, worker: &Worker<'_>) {
        while let Some(job) = self.next() {
            let waited = job.enqueued.elapsed();
            let start = Instant::now();
            let mut deliver = None;
            if (job.wanted)() {
                let run = job.run;
                match catch_unwind(AssertUnwindSafe(|| run(worker))) {
                    Ok(d) => deliver = Some(d),
                    Err(_) => {
                        tracing::error!("a job panicked; its request is answered 500");
                        self.metrics.worker_panic();
                    }
                }
            } else {
                self.metrics.cancelled();
            }
            self.finished(start.elapsed());
            self.metrics.job(waited, start.elapsed());
            if let Some(deliver) = deliver {
                deliver();
            }
        }
    }
}

/// Built programs keyed by language, exact source and compile limits, least recently used
/// first out.
pub(crate) struct ProgramCache {
    entries: Mutex<VecDeque<CacheEntry>>,
    capacity: usize,
}

/// One built program and what it was built from.
struct CacheEntry {
    language: Language,
    code: String,
    compile_limits: Limits,
    program: Arc<Program>,
}

impl ProgramCache {
    fn new(capacity: usize) -> ProgramCache {
        ProgramCache {
            entries: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// The program built from `code` under `compile_limits` (the sandbox's own when `None`),
    /// building it on a miss; the flag says whether it was cached.
    ///
    /// The limits are part of the key: a build that timed out under a short limit is not
    /// reused for a request granting a longer one, nor the other way round.
    pub fn get_or_build(
        &self,
        sandbox: &Sandbox,
        language: Language,
        code: &str,
        compile_limits: Option<&Limits>,
    ) -> Result<(Arc<Program>, bool), SandboxError> {
        let limits = compile_limits.unwrap_or_else(|| sandbox.compile_limits());
        if self.capacity == 0 {
            return Ok((
                Arc::new(sandbox.build_with_limits(language, code, limits)?),
                false,
            ));
        }
        if let Ok(mut entries) = self.entries.lock()
            && let Some(k) = entries.iter().position(|e| {
                e.language == language && e.code == code && &e.compile_limits == limits
            })
            && let Some(hit) = entries.remove(k)
        {
            let program = hit.program.clone();
            entries.push_back(hit);
            return Ok((program, true));
        }
        let program = Arc::new(sandbox.build_with_limits(language, code, limits)?);
        if let Ok(mut entries) = self.entries.lock() {
            entries.push_back(CacheEntry {
                language,
                code: code.to_string(),
                compile_limits: limits.clone(),
                program: program.clone(),
            });
            while entries.len() > self.capacity {
                entries.pop_front();
            }
        }
        Ok((program, false))
    }
}

/// What the pool found out about the machine at start-up.
#[derive(Debug, Clone)]
pub(crate) struct PoolInfo {
    /// Cores of the workers (`None`: left to the sandbox).
    pub cpus: Vec<Option<usize>>,
    /// The sandbox's degradations.
    pub warnings: Vec<String>,
}

/// The running pool: its shared state and the thread that owns the sandbox and the workers.
pub(crate) struct PoolHandle {
    pub pool: Arc<Pool>,
    pub info: PoolInfo,
    thread: Option<JoinHandle<()>>,
}

impl PoolHandle {
    /// Starts the sandbox, the harness and the workers; returns once they are ready.
    pub fn start(
        workers: Option<usize>,
        queue: usize,
        program_cache: usize,
        state_dir: Option<std::path::PathBuf>,
        compile_limits: Limits,
        harness_config: HarnessConfig,
        metrics: Arc<Metrics>,
    ) -> Result<PoolHandle, ServerError> {
        if queue == 0 {
            return Err(ServerError::Config(
                "the queue must hold at least 1 job".into(),
            ));
        }
        if workers == Some(0) {
            return Err(ServerError::Config(
                "there must be at least 1 worker".into(),
            ));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("afterburner-pool".into())
            .spawn(move || {
                let sandbox = match Sandbox::with_config(SandboxConfig {
                    state_dir,
                    compile_limits,
                    ..SandboxConfig::default()
                }) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServerError::Sandbox(e.to_string())));
                        return;
                    }
                };
                let harness = match Harness::new(&sandbox, harness_config) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServerError::Sandbox(e.to_string())));
                        return;
                    }
                };
                let caps = sandbox.capabilities();
                let count = workers.map_or(WorkerCount::EveryFreeCore, WorkerCount::Exactly);
                let cpus = worker_cpus(&caps.cpus, caps.supervisor_cpu, count);
                let pool = Arc::new(Pool::new(queue, cpus.len(), metrics));
                let programs = ProgramCache::new(program_cache);
                let info = PoolInfo {
                    cpus: cpus.clone(),
                    warnings: caps.warnings.clone(),
                };
                if ready_tx.send(Ok((pool.clone(), info))).is_err() {
                    return;
                }
                std::thread::scope(|s| {
                    for (i, &cpu) in cpus.iter().enumerate() {
                        let worker = Worker {
                            sandbox: &sandbox,
                            harness: &harness,
                            programs: &programs,
                            cpu,
                        };
                        let pool = &pool;
                        let spawned = std::thread::Builder::new()
                            .name(format!("afterburner-worker-{i}"))
                            .spawn_scoped(s, move || pool.work(&worker));
                        if let Err(e) = spawned {
                            tracing::error!("cannot start worker {i}: {e}");
                        }
                    }
                });
                // Every worker has returned: the harness and the sandbox (whose drop waits for
                // the last teardown) go now, before the pool thread ends.
                drop(programs);
                drop(harness);
                drop(sandbox);
            })
            .map_err(|e| ServerError::Io {
                what: "start the worker pool thread".into(),
                source: e,
            })?;
        match ready_rx.recv() {
            Ok(Ok((pool, info))) => Ok(PoolHandle {
                pool,
                info,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ServerError::Sandbox(
                    "the worker pool thread ended before it was ready".into(),
                ))
            }
        }
    }

    /// Closes the pool and waits for the workers (the jobs they are running finish) and the
    /// sandbox's teardown.
    pub fn stop(&mut self) {
        self.pool.close();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the worker pool thread panicked");
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> (JobFn, Box<dyn Fn() -> bool + Send>) {
        let (run, _rx, wanted) = job(|_w| ());
        (run, wanted)
    }

    #[test]
    fn a_batch_is_admitted_whole_or_refused_whole() {
        let pool = Pool::new(3, 1, Arc::new(Metrics::new()));
        assert!(pool.submit(vec![noop(), noop()]).is_ok());
        let refused = pool.submit(vec![noop(), noop()]);
        assert!(
            matches!(
                refused,
                Err(Refusal::Full {
                    depth: 2,
                    capacity: 3,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(pool.depth(), 2, "nothing of the refused batch was queued");
        assert!(pool.submit(vec![noop()]).is_ok());
        assert!(matches!(
            pool.submit(vec![noop(), noop(), noop(), noop()]),
            Err(Refusal::TooMany {
                jobs: 4,
                capacity: 3
            })
        ));
    }

    #[test]
    fn jobs_an_idle_worker_is_about_to_take_do_not_count_against_the_queue() {
        let pool = Arc::new(Pool::new(2, 1, Arc::new(Metrics::new())));
        let worker = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.next().is_some())
        };
        while pool.queue.lock().map_or(0, |q| q.idle) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Whether or not the woken worker has taken the first job yet, one job runs and two wait.
        for _ in 0..3 {
            assert!(pool.submit(vec![noop()]).is_ok());
        }
        assert!(matches!(
            pool.submit(vec![noop()]),
            Err(Refusal::Full { capacity: 2, .. })
        ));
        assert!(worker.join().is_ok_and(|took| took));
        assert_eq!(pool.depth(), 2);
    }

    #[test]
    fn closing_drops_queued_jobs_so_their_waiters_hear_of_it() {
        let pool = Pool::new(4, 1, Arc::new(Metrics::new()));
        let (run, mut rx, wanted) = job(|_w| 7);
        assert!(pool.submit(vec![(run, wanted)]).is_ok());
        pool.close();
        assert_eq!(pool.depth(), 0);
        assert!(rx.try_recv().is_err(), "the sender was dropped, not used");
        assert!(matches!(
            pool.submit(vec![noop()]),
            Err(Refusal::ShuttingDown)
        ));
        assert!(pool.is_closing());
    }

    #[test]
    fn a_job_whose_waiter_left_is_not_wanted() {
        let (_run, rx, wanted) = job(|_w| 1);
        assert!(wanted());
        drop(rx);
        assert!(!wanted());
    }
}
