//! Serving connections: the accept loop, which serves at most
//! [`ConnectionLimits::max_connections`] at once (further ones wait in the listen backlog), and
//! each connection's watchdog, which closes it when its client stalls: headers arriving too
//! slowly, or the connection idle too long before a request. Bodies are timed by the router's
//! body-reading middleware (408), since a handler must be able to answer.
//!
//! A connection is in one of three phases: idle (waiting for the first byte of a request; the
//! previous response may still be being written), reading a request's head (from its first
//! byte until hyper has parsed the headers), or busy (the request's body, its handler and its
//! answer; bounded by the body timeout and the program limits, not by the watchdog).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;

/// Where a connection stands.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's first byte since this instant.
    Idle(Instant),
    /// Reading a request's head since its first byte arrived at this instant.
    Head(Instant),
    /// A request is being served.
    Busy,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// Its request's headers took longer than the header timeout.
    Header,
    /// It was idle longer than the idle timeout.
    Idle,
}

impl Stall {
    /// The label `/metrics` counts it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Stall::Header => "header",
            Stall::Idle => "idle",
        }
    }
}

/// A connection's phase, shared by its socket, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Option<Phase>) {
        if let Ok(mut p) = self.phase.lock()
            && let Some(next) = f(*p)
        {
            *p = next;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: an idle connection starts reading a request's head.
    fn read(&self) {
        self.set(|p| matches!(p, Phase::Idle(_)).then(|| Phase::Head(Instant::now())));
    }

    /// A request's head was parsed and is being served.
    fn busy(&self) {
        self.set(|_| Some(Phase::Busy));
    }

    /// A request was answered: the connection waits for the next one.
    fn idle(&self) {
        self.set(|_| Some(Phase::Idle(Instant::now())));
    }

    /// When the current phase runs out, and what it is then.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Stall)> {
        match *self.phase.lock().ok()? {
            Phase::Idle(t) => Some((t + limits.idle_timeout, Stall::Idle)),
            Phase::Head(t) => Some((t + limits.header_timeout, Stall::Header)),
            Phase::Busy => None,
        }
    }
}

/// Completes when the connection has stalled past its phase's limit.
async fn watchdog(activity: &Activity, limits: &ConnectionLimits) -> Stall {
    loop {
        let changed = activity.changed.notified();
        match activity.deadline(limits) {
            None => changed.await,
            Some((at, _)) => {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(at.into()) => {
                        // The phase may have moved on just as the timer fired: look again.
                        if let Some((at, stall)) = activity.deadline(limits)
                            && at <= Instant::now()
                        {
                            return stall;
                        }
                    }
                }
            }
        }
    }
}

/// A socket that tells its connection's [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves one connection until it closes, stalls, or (after `stop`) finishes its request.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let served = Arc::new(AtomicUsize::new(0));
    let tower = TowerToHyperService::new(app);
    let on_request = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        on_request.busy();
        let call = tower.call(req);
        let (activity, served) = (on_request.clone(), served.clone());
        async move {
            let mut response = match call.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            if limits.max_requests_per_connection > 0 && n >= limits.max_requests_per_connection {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            activity.idle();
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        // The watchdog times headers (from their first byte) and idle waits itself.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended with an error: {e}");
                }
                return;
            }
            stall = watchdog(&activity, &limits) => {
                metrics.connection_timed_out(stall.as_str());
                tracing::debug!("closing a connection stalled in its {} phase", stall.as_str());
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Accepts connections and serves `app` on them until `shutdown` completes; then stops
/// accepting (the socket is closed), lets each connection finish the request it is serving,
/// and returns once every connection has closed.
pub(crate) async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before it was accepted: wait a
                // moment rather than spin, and go on serving the connections already open.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        metrics.connection_opened();
        let (app, metrics, stop) = (app.clone(), metrics.clone(), stop_rx.clone());
        tasks.spawn(async move {
            connection(stream, app, limits, metrics.clone(), stop).await;
            metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}
