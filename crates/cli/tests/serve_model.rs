//! `afterburner serve --model`: the server answers OpenAI `/v1/chat/completions` with the
//! embedded model, giving what `afterburner generate` gives for the same messages; malformed
//! requests get OpenAI-style 400s; `/v1/models` lists the model.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use afterburner_testkit::client;
use serde_json::{Value, json};
use support::*;

const TINY_QWEN2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../model/tests/fixtures/tiny-qwen2"
);
const TIMEOUT: Duration = Duration::from_secs(60);

/// Kills the server when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `afterburner serve ARGS` and returns it and the address it announced.
fn serve(args: &[&str]) -> (Running, SocketAddr) {
    let mut child = command()
        .arg("serve")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start afterburner serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("afterburner serve ended before announcing its address: {seen:?}");
        };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr.parse().expect("a socket address");
        }
        seen.push(line);
    };
    assert!(
        seen.iter().any(|l| l.contains("/v1/chat/completions")),
        "the model is announced: {seen:?}"
    );
    std::thread::spawn(move || for _ in lines {});
    (Running(child), addr)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = client::post_json(addr, path, body, TIMEOUT).unwrap();
    (r.status, r.json().unwrap_or(Value::Null))
}

#[test]
fn serve_with_a_model_answers_chat_completions_as_generate_does() {
    let (_server, addr) = serve(&[
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--model",
        TINY_QWEN2,
    ]);
    let (status, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({
            "model": TINY_QWEN2,
            "messages": [{"role": "user", "content": "def add(a, b):"}],
            "temperature": 0,
            "max_tokens": 12
        }),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], TINY_QWEN2);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("chat.json");
    std::fs::write(
        &messages,
        r#"[{"role": "user", "content": "def add(a, b):"}]"#,
    )
    .unwrap();
    let out = afterburner(&[
        "generate",
        "--model",
        TINY_QWEN2,
        "--messages",
        messages.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], generated["text"]);
    assert_eq!(v["choices"][0]["finish_reason"], generated["finish_reason"]);
    assert_eq!(usage["completion_tokens"], generated["completion_tokens"]);
    assert_eq!(usage["prompt_tokens"], generated["prompt_tokens"]);

    let (status, v) = post(addr, "/v1/chat/completions", &json!({"messages": "hi"}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("messages"),
        "{v}"
    );

    let models = client::get(addr, "/v1/models", TIMEOUT).unwrap();
    assert_eq!(models.status, 200);
    let models = models.json().unwrap();
    assert_eq!(models["data"][0]["id"], TINY_QWEN2);
}

#[test]
fn serve_with_a_missing_model_exits_2_naming_it() {
    let out = afterburner(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--model",
        "/no/such/model",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/no/such/model"), "{stderr}");
}
