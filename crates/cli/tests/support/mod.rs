//! Test support shared by the CLI's integration tests: the real data, the real binary, JSONL.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// The shared real data (see its README).
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

/// The `afterburner` binary, without the caller's `OPENAI_API_KEY` (no test reaches a real endpoint).
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_afterburner"));
    c.env_remove("OPENAI_API_KEY");
    c
}

/// Runs `afterburner args` to the end.
pub fn afterburner<S: AsRef<OsStr>>(args: &[S]) -> Output {
    command()
        .args(args)
        .output()
        .expect("run the afterburner binary")
}

/// The JSON lines of the file at `path` (none when it does not exist).
pub fn jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad line of {}: {l}: {e}", path.display()))
        })
        .collect()
}

/// Starts `afterburner serve ARGS` and returns the child and the address it announced; its
/// stderr keeps being drained so the server never blocks on a full pipe.
pub fn serve(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = command()
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start afterburner serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            other => {
                let _ = child.kill();
                panic!("afterburner serve ended before announcing its address: {other:?}");
            }
        };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr.parse().expect("a socket address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}
