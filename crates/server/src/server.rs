//! Starting, serving and stopping: [`Server::bind`] prepares everything synchronously (sandbox,
//! workers, datasets, socket), [`Server::serve`] answers requests until a shutdown signal, and
//! [`Server::spawn`] runs it on a thread of its own (for tests, benchmarks and embedding).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use afterburner_benchmarks::{HarnessConfig, load};
use tokio::sync::oneshot;

use crate::app::router;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::pool::PoolHandle;
use crate::state::{AppState, Loaded};

/// A server ready to serve: sandbox and workers started, datasets loaded, socket bound.
pub struct Server {
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    pool: PoolHandle,
    addr: SocketAddr,
    notes: Vec<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

/// Loads every dataset; problems are keyed by id (the first dataset naming an id keeps it).
fn load_problems(
    config: &ServerConfig,
    notes: &mut Vec<String>,
) -> Result<HashMap<String, Loaded>, ServerError> {
    let mut problems = HashMap::new();
    for spec in &config.datasets {
        let dataset = load(spec).map_err(|e| ServerError::Dataset {
            spec: spec.to_string(),
            reason: e.to_string(),
        })?;
        notes.push(format!("dataset {spec}: {}", dataset.report));
        for problem in dataset.problems {
            if problems.contains_key(&problem.id) {
                notes.push(format!(
                    "dataset {spec}: problem `{}` already loaded from an earlier dataset; \
                     keeping the first",
                    problem.id
                ));
                continue;
            }
            problems.insert(problem.id.clone(), Loaded::new(problem));
        }
    }
    Ok(problems)
}

impl Server {
    /// Checks the settings, loads the datasets, starts the sandbox and the workers, and binds
    /// the socket. Needs root (the sandbox does).
    pub fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.limits.validate().map_err(ServerError::Config)?;
        if config.queue == 0 {
            return Err(ServerError::Config(
                "the queue must hold at least 1 job (--queue)".into(),
            ));
        }
        if config.workers == Some(0) {
            return Err(ServerError::Config(
                "there must be at least 1 worker (--workers)".into(),
            ));
        }
        if config.max_batch == 0 || config.max_repeats == 0 || config.max_body_bytes == 0 {
            return Err(ServerError::Config(
                "the batch size, repeats and body size limits must be at least 1".into(),
            ));
        }
        config.connections.validate().map_err(ServerError::Config)?;
        let mut notes = Vec::new();
        let problems = load_problems(&config, &mut notes)?;
        let metrics = Arc::new(Metrics::new());
        let defaults = HarnessConfig::default();
        let harness_config = HarnessConfig {
            limits: config
                .limits
                .resolve(None, None, "default limits")
                .map_err(ServerError::Config)?,
            repeats: 1,
            cache_dir: config.cache_dir.clone(),
            ..defaults
        };
        let listener = std::net::TcpListener::bind(config.addr).map_err(|e| ServerError::Io {
            what: format!("listen on {}", config.addr),
            source: e,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::Io {
                what: "make the socket non-blocking".into(),
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| ServerError::Io {
            what: "read the bound address".into(),
            source: e,
        })?;
        let pool = PoolHandle::start(
            config.workers,
            config.queue,
            config.program_cache,
            config.state_dir.clone(),
            config.limits.default_compile_limits(),
            harness_config,
            metrics.clone(),
        )?;
        notes.extend(pool.info.warnings.iter().map(|w| format!("sandbox: {w}")));
        if !addr.ip().is_loopback() && config.token.is_none() {
            notes.push(format!(
                "listening on {addr}, beyond loopback, without --token: anyone who can reach it \
                 can run code here"
            ));
        }
        let state = Arc::new(AppState::new(
            config,
            pool.pool.clone(),
            pool.info.clone(),
            metrics,
            problems,
        ));
        Ok(Server {
            state,
            listener,
            pool,
            addr,
            notes,
        })
    }

    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.state.pool.workers()
    }

    /// The cores the workers' programs run on (`None`: left to the sandbox).
    pub fn worker_cpus(&self) -> &[Option<usize>] {
        &self.state.info.cpus
    }

    /// Number of problems loaded from the datasets.
    pub fn problems(&self) -> usize {
        self.state.problems.len()
    }

    /// What the operator should know: dataset load reports, sandbox degradations, exposure.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Serves until `shutdown` completes, then stops accepting connections, answers queued
    /// programs with 503 (they never ran), lets running programs finish and their requests be
    /// answered, stops the workers and tears the sandbox down. Must run inside a Tokio runtime.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            state,
            listener,
            mut pool,
            ..
        } = self;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| ServerError::Io {
                what: "register the socket with the runtime".into(),
                source: e,
            })?;
        let grace = state.config.shutdown_grace;
        let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
        let closing = state.pool.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing running programs");
            closing.close();
            let _ = stopping_tx.send(());
        };
        let app = router(state.clone());
        let serving = crate::conn::serve(
            listener,
            app,
            state.config.connections,
            state.metrics.clone(),
            signal,
        );
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = serving => {},
            _ = deadline => tracing::warn!(
                "requests still open {} s after the shutdown signal; closing them",
                grace.as_secs()
            ),
        }
        drop(state);
        tokio::task::spawn_blocking(move || pool.stop())
            .await
            .map_err(|e| ServerError::Sandbox(format!("stopping the workers failed: {e}")))?;
        Ok(())
    }

    /// Serves on this thread (with a runtime of its own) until SIGTERM or SIGINT, then shuts
    /// down gracefully as [`Server::serve`] does.
    pub fn run_until_terminated(self) -> Result<(), ServerError> {
        let runtime = runtime()?;
        runtime.block_on(self.serve(termination_signal()))
    }

    /// Serves on a new thread with its own runtime until [`ServerHandle::shutdown`] (or drop).
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let addr = self.addr;
        let runtime = runtime()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("afterburner-server".into())
            .spawn(move || {
                runtime.block_on(self.serve(async move {
                    let _ = rx.await;
                }))
            })
            .map_err(|e| ServerError::Io {
                what: "start the server thread".into(),
                source: e,
            })?;
        Ok(ServerHandle {
            addr,
            trigger: Some(tx),
            thread: Some(thread),
        })
    }
}

/// The HTTP runtime: two threads are plenty, the programs run on the pool's workers.
fn runtime() -> Result<tokio::runtime::Runtime, ServerError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("afterburner-http")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io {
            what: "start the async runtime".into(),
            source: e,
        })
}

/// A server running on its own thread.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    trigger: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.trigger.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully and waits until the workers and the sandbox are gone.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.begin_shutdown();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ServerError::Sandbox("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Completes on SIGTERM or SIGINT (the signals a service manager or a terminal sends).
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot listen for termination signals ({e}); stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
