//! `afterburner optimize` without `--endpoint`: the embedded model (here the tiny random-weight
//! fixture, which writes nonsense) runs the same loop as the HTTP path, its answers are recorded
//! honestly as failed iterations, the report is written, a resumed run replays answers from the
//! response cache, and an output folder made with one backend is not resumed with another.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::*;

const TINY_QWEN2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../model/tests/fixtures/tiny-qwen2"
);
const COUNT_PRIMES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/optimize/count-primes.jsonl"
);

/// Short prompt templates: the tiny model's context is 256 tokens, too short for the paper's.
fn templates(dir: &Path) -> Vec<String> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    vec![
        "--system-template".into(),
        write("system.j2", "Write {{ language }}."),
        "--generate-template".into(),
        write("generate.j2", "Solve {{ title }}."),
        "--improve-template".into(),
        write(
            "improve.j2",
            "Improve {{ title }}: {{ original.performance }}",
        ),
    ]
}

fn optimize(dir: &Path, out: &str, extra: &[&str]) -> (Output, Value) {
    let spec = format!("venus:{COUNT_PRIMES}");
    let out_dir = dir.join(out);
    let cache = dir.join("cache");
    let mut args: Vec<String> = [
        "optimize",
        "--dataset",
        &spec,
        "--model",
        TINY_QWEN2,
        "--iterations",
        "1",
        "--max-tokens",
        "32",
        "--seed",
        "11",
        "--repeats",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(templates(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = command()
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let summary =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap_or(Value::Null);
    (output, summary)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_embedded_model_runs_the_loop_records_its_nonsense_and_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (out, summary) = optimize(dir.path(), "out", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("embedded:"),
        "the start-up line names the embedded model: {}",
        stderr(&out)
    );
    let out_dir = dir.path().join("out");
    let rows = jsonl(&out_dir.join("trajectory.jsonl"));
    assert_eq!(rows.len(), 2, "iteration 0 and 1: {rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["iteration"], i);
        assert_eq!(row["problem_id"], "204");
        assert_eq!(
            row["passed"], false,
            "random weights cannot solve it: {row}"
        );
        assert_ne!(row["status"], "accepted");
        assert_eq!(row["cached"], false);
        let completion = row["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=32).contains(&completion), "{row}");
        assert!(row["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
        let finish = row["finish_reason"].as_str().unwrap();
        assert!(finish == "stop" || finish == "length", "{row}");
        assert!(row["response"].is_string());
    }
    assert_eq!(rows[0]["status"], "no_code", "{}", rows[0]);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    let endpoint = manifest["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("embedded:/"), "{endpoint}");
    assert!(endpoint.ends_with("tiny-qwen2"), "{endpoint}");
    assert_eq!(manifest["model"], TINY_QWEN2);
    for file in [
        "report.json",
        "report.md",
        "chart.png",
        "chart.svg",
        "final.jsonl",
    ] {
        assert!(out_dir.join(file).is_file(), "{file}");
    }
    assert_eq!(summary["totals"]["model_calls"], 2, "{summary}");
    assert_eq!(summary["totals"]["cached_calls"], 0, "{summary}");

    // Interrupted after iteration 0: the rerun resumes at iteration 1 and replays its answer.
    let first_line = std::fs::read_to_string(out_dir.join("trajectory.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(out_dir.join("trajectory.jsonl"), first_line + "\n").unwrap();
    let (again, _) = optimize(dir.path(), "out", &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let resumed = jsonl(&out_dir.join("trajectory.jsonl"));
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[1]["cached"], true, "{}", resumed[1]);
    assert_eq!(resumed[1]["response"], rows[1]["response"]);

    // A fresh output folder with the same cache replays every answer.
    let (fresh, summary) = optimize(dir.path(), "fresh", &[]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let replayed = jsonl(&dir.path().join("fresh/trajectory.jsonl"));
    assert!(replayed.iter().all(|r| r["cached"] == true), "{replayed:?}");
    assert_eq!(replayed[0]["response"], rows[0]["response"]);
    assert_eq!(summary["totals"]["cached_calls"], 2, "{summary}");

    // The folder of an embedded run is not resumed against a server.
    let (http, _) = optimize(dir.path(), "out", &["--endpoint", "http://127.0.0.1:9/v1"]);
    assert_eq!(http.status.code(), Some(2), "{}", stderr(&http));
    assert!(
        stderr(&http).contains("embedded:") && stderr(&http).contains("http://127.0.0.1:9/v1"),
        "{}",
        stderr(&http)
    );
}

#[test]
fn a_prompt_longer_than_the_context_stops_the_problem_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("venus:{COUNT_PRIMES}");
    let out_dir = dir.path().join("out");
    let cache = dir.path().join("cache");
    // The paper's prompts do not fit the tiny model's 256-token context.
    let out = command()
        .args([
            "optimize",
            "--dataset",
            &spec,
            "--model",
            TINY_QWEN2,
            "--iterations",
            "1",
            "--max-tokens",
            "8",
            "--repeats",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = summary["errors"][0]["error"].as_str().unwrap();
    assert_eq!(summary["errors"][0]["problem_id"], "204");
    assert!(error.contains("embedded:/"), "{error}");
    assert!(
        error.contains("context is 256 tokens (max_position_embeddings)"),
        "{error}"
    );
}

#[test]
fn a_model_that_cannot_be_found_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("venus:{COUNT_PRIMES}");
    let out = command()
        .args([
            "optimize",
            "--dataset",
            &spec,
            "--model",
            "/no/such/model",
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("/no/such/model") && err.contains("--endpoint"),
        "{err}"
    );
    assert!(!dir.path().join("out/run.json").exists());
}
