//! Slow and idle clients cannot hold the server: hundreds of connections trickling their
//! headers or bodies leave it answering others within a second, and are cut at their timeouts
//! (headers: closed; bodies: 408); idle connections are closed; the connection cap makes new
//! connections wait rather than be served beyond it; a keep-alive connection is closed after its
//! last allowed request.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use afterburner_server::{ConnectionLimits, ServerConfig};
use afterburner_testkit::client;
use support::*;

fn limits(header_s: f64, body_s: f64, idle_s: f64) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs_f64(header_s),
        body_timeout: Duration::from_secs_f64(body_s),
        idle_timeout: Duration::from_secs_f64(idle_s),
        ..ConnectionLimits::default()
    }
}

/// A connection the test keeps open and feeds a byte at a time.
struct Trickler {
    stream: TcpStream,
    /// What the server sent before closing.
    received: Vec<u8>,
    closed_after: Option<Duration>,
}

impl Trickler {
    fn open(addr: SocketAddr, head: &str) -> Trickler {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(head.as_bytes()).expect("write the start");
        stream.set_nonblocking(true).expect("non-blocking");
        Trickler {
            stream,
            received: Vec::new(),
            closed_after: None,
        }
    }

    /// Sends one more byte and reads what the server sent; notes when the server closed.
    fn tick(&mut self, started: Instant) {
        if self.closed_after.is_some() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed_after = Some(started.elapsed());
                    return;
                }
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed_after = Some(started.elapsed());
                    return;
                }
            }
        }
        match self.stream.write(b"a") {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed_after = Some(started.elapsed()),
        }
    }
}

#[test]
fn trickling_clients_are_cut_and_others_are_answered_within_a_second() {
    let server = start(ServerConfig {
        connections: limits(2.0, 2.0, 30.0),
        ..config()
    });
    let addr = server.addr();
    let started = Instant::now();
    let mut heads: Vec<Trickler> = (0..220)
        .map(|_| Trickler::open(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "))
        .collect();
    let body_head = "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: 100000\r\n\r\n{\"code\": \"";
    let mut bodies: Vec<Trickler> = (0..60).map(|_| Trickler::open(addr, body_head)).collect();
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for t in heads.iter_mut().chain(bodies.iter_mut()) {
            t.tick(started);
        }
        let t = Instant::now();
        let r = client::get(addr, "/healthz", Duration::from_secs(1)).unwrap_or_else(|e| {
            panic!("/healthz was not answered within 1 s under slowloris: {e}")
        });
        assert_eq!(r.status, 200, "{}", r.text());
        worst = worst.max(t.elapsed());
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest /healthz: {worst:?}"
    );
    assert!(answered >= 20, "{answered} checks");

    // Every trickler was cut, none before its timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while heads
        .iter()
        .chain(&bodies)
        .any(|t| t.closed_after.is_none())
    {
        assert!(
            Instant::now() < deadline,
            "{} header and {} body tricklers are still connected",
            heads.iter().filter(|t| t.closed_after.is_none()).count(),
            bodies.iter().filter(|t| t.closed_after.is_none()).count()
        );
        for t in heads.iter_mut().chain(bodies.iter_mut()) {
            t.tick(started);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in &heads {
        assert!(
            t.received.is_empty(),
            "a connection without headers got an answer: {}",
            String::from_utf8_lossy(&t.received)
        );
        assert!(t.closed_after >= Some(Duration::from_millis(1900)));
    }
    for t in &bodies {
        let text = String::from_utf8_lossy(&t.received);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("--body-timeout"), "{text}");
        assert!(t.closed_after >= Some(Duration::from_millis(1900)));
    }
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("afterburner_connections_timed_out_total{phase=\"header\"} 220"),
        "{metrics}"
    );
    assert!(
        metrics.contains("afterburner_http_refusals_total{reason=\"body_timeout\"} 60"),
        "{metrics}"
    );
    assert!(
        metrics.contains("afterburner_http_requests_total{endpoint=\"/execute\",code=\"408\"} 60"),
        "{metrics}"
    );
    assert!(
        metrics.contains("afterburner_runs_total") && !metrics.contains("outcome=\""),
        "no program ran for a body that never arrived:\n{metrics}"
    );
}

/// Reads one response from a keep-alive connection: its head and its `Content-Length` body.
fn read_response(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return String::from_utf8_lossy(&raw[..end + 4 + length]).into_owned();
            }
        }
        let n = stream.read(&mut buf).expect("read a response");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Whether the server closed `stream` (EOF) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(within))
        .expect("set a read timeout");
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0))
        || matches!(stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

#[test]
fn keep_alive_connections_end_after_their_last_request_or_when_idle() {
    let server = start(ServerConfig {
        connections: ConnectionLimits {
            max_requests_per_connection: 2,
            ..limits(5.0, 5.0, 1.5)
        },
        ..config()
    });
    let addr = server.addr();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"));
    s.write_all(request).unwrap();
    let second = read_response(&mut s);
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "the last allowed request says so: {second}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(5)));

    // An idle keep-alive connection is closed after the idle timeout, not before.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let t = Instant::now();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(1400) && idle < Duration::from_secs(6),
        "{idle:?}"
    );
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("afterburner_connections_timed_out_total{phase=\"idle\"} 1"),
        "{metrics}"
    );
}

#[test]
fn beyond_the_connection_cap_new_connections_wait_for_a_free_one() {
    let server = start(ServerConfig {
        connections: ConnectionLimits {
            max_connections: 4,
            ..limits(5.0, 5.0, 2.0)
        },
        ..config()
    });
    let addr = server.addr();
    let t = Instant::now();
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The kernel completes the handshake (backlog), but the server serves it only once one of
    // the four idle connections is closed by its idle timeout.
    let r = client::get(addr, "/healthz", Duration::from_secs(20)).unwrap();
    assert_eq!(r.status, 200);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "served beyond the cap: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Every idle connection is closed by its timeout (not all in the same instant on a busy
    // machine: wait for the fourth before the client lets go of them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = get(addr, "/metrics").text();
    while !metrics.contains("afterburner_connections_timed_out_total{phase=\"idle\"} 4")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        metrics = get(addr, "/metrics").text();
    }
    drop(idle);
    assert!(
        metrics.contains("afterburner_connections_timed_out_total{phase=\"idle\"} 4"),
        "{metrics}"
    );
}
