//! Test support: a real server on 127.0.0.1:0 in this process, and a real HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use afterburner_benchmarks::{DatasetSpec, Format};
use afterburner_server::{Server, ServerConfig, ServerHandle};
use afterburner_testkit::client::{self, Response};
use serde_json::Value;

/// The shared real data (see its README).
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

/// The LeetCodeDataset test split.
pub fn leetcode_spec() -> DatasetSpec {
    DatasetSpec::new(
        Format::LeetCode,
        format!("{DATA}/leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz"),
    )
}

/// A config for tests: loopback, port 0, one worker.
pub fn config() -> ServerConfig {
    ServerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: Some(1),
        queue: 16,
        ..ServerConfig::default()
    }
}

/// Starts a server with `config` on its own thread.
pub fn start(config: ServerConfig) -> ServerHandle {
    let server = Server::bind(config).unwrap_or_else(|e| panic!("cannot start a server: {e}"));
    server
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the server: {e}"))
}

/// Generous: a loaded 2-core machine runs Python slowly.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// `POST path` with a JSON body.
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    client::post_json(addr, path, body, TIMEOUT)
        .unwrap_or_else(|e| panic!("POST {path} failed: {e}"))
}

/// `POST path` with a raw body.
pub fn post_raw(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    client::request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("POST {path} failed: {e}"))
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    client::get(addr, path, TIMEOUT).unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
}

/// The JSON body of a response with the expected status.
pub fn json_with(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text());
    r.json()
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", r.text()))
}

/// The `error` message of an error response with the expected status.
pub fn error_with(r: &Response, status: u16) -> String {
    let v = json_with(r, status);
    v.get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no `error` string in {v}"))
        .to_string()
}

/// A response in the paper's format with `code` in a Python block.
pub fn well_formed(code: &str) -> String {
    format!("<thinking>\nfaster\n</thinking>\n<solution>\n```python\n{code}\n```\n</solution>")
}

/// Waits until the server reports `running` jobs running and `depth` waiting.
pub fn wait_for_queue(addr: SocketAddr, running: u64, depth: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = json_with(&get(addr, "/status"), 200);
        if st["queue"]["running"] == running && st["queue"]["depth"] == depth {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never reached {running} running and {depth} waiting: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
