//! The `afterburner calibrate` contract: cached, resumable, interruptible without loss.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// COFFE problems whose stress inputs are quick to generate and check.
const QUICK: [&str; 3] = ["cc-4a4036eefa", "cc-660ac1d198", "cc-ca387e1d5e"];

fn coffe() -> String {
    format!("coffe:{DATA}/coffe-code-contests")
}

fn calibrate_args<'a>(cache: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "calibrate",
        "--dataset",
        &coffe(),
        "--cache",
        cache,
        "--repeats",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `afterburner args`, sends it SIGINT once `ready()` holds, and returns its output after
/// checking that it exited as interrupted (130).
fn interrupt_when(args: &[String], ready: impl Fn() -> bool) -> Output {
    let child = command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    out
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim().lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(&text).expect("stdout is one JSON object")
}

fn cache_lines(dir: &Path) -> Vec<Value> {
    jsonl(&dir.join("calibration.jsonl"))
}

fn run_lines(dir: &Path) -> Vec<Value> {
    jsonl(&dir.join("calibration-runs.jsonl"))
}

#[test]
fn calibration_is_cached_and_a_rerun_measures_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let args = calibrate_args(
        cache,
        &[
            "--problem-id",
            QUICK[0],
            "--problem-id",
            QUICK[1],
            "--max-solutions",
            "2",
            "--json",
        ],
    );
    let out = afterburner(&args);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["totals"]["measured"], 4, "{v}");
    assert_eq!(v["totals"]["cached"], 0, "{v}");
    assert_eq!(
        v["workers"], 1,
        "one core is the sampler's on this 2-core machine: {v}"
    );
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2);
    for p in problems {
        assert_eq!(p["passing"], 2, "{p}");
        assert!(p["median_time_ms"].as_f64().unwrap() > 0.0, "{p}");
    }
    let lines = cache_lines(dir.path());
    assert_eq!(lines.len(), 4);
    for l in &lines {
        for key in [
            "problem_id",
            "solution_id",
            "code",
            "suite",
            "fingerprint",
            "protocol",
            "status",
            "passed",
            "performance",
        ] {
            assert!(l.get(key).is_some(), "missing {key}: {l}");
        }
    }
    // Stress suites are cached too.
    assert!(dir.path().join("stress").read_dir().unwrap().count() >= 2);

    let again = json(&afterburner(&args));
    assert_eq!(again["totals"]["measured"], 0, "{again}");
    assert_eq!(again["totals"]["cached"], 4, "{again}");
    assert_eq!(cache_lines(dir.path()).len(), 4);

    // A different protocol does not reuse the figures.
    let mut other = calibrate_args(
        cache,
        &["--problem-id", QUICK[0], "--max-solutions", "1", "--json"],
    );
    other[6] = "2".into();
    let more = json(&afterburner(&other));
    assert_eq!(more["totals"]["measured"], 1, "{more}");
    assert_eq!(more["totals"]["cached"], 0, "{more}");
}

#[test]
fn interrupting_keeps_every_finished_measurement_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let mut args = calibrate_args(cache, &["--max-solutions", "6"]);
    for id in QUICK {
        args.extend(["--problem-id".to_string(), id.to_string()]);
    }
    let complete = || {
        std::fs::read_to_string(dir.path().join("calibration.jsonl"))
            .map_or(0, |t| t.matches('\n').count())
    };
    let out = interrupt_when(&args, || complete() >= 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    let saved = cache_lines(dir.path()).len();
    assert!((2..18).contains(&saved), "{saved}");

    let mut rerun = args.clone();
    rerun.push("--json".into());
    let v = json(&afterburner(&rerun));
    assert_eq!(v["totals"]["cached"], saved, "{v}");
    assert_eq!(v["totals"]["measured"], 18 - saved, "{v}");
    assert_eq!(cache_lines(dir.path()).len(), 18);
}

#[test]
fn unknown_problems_and_bad_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let out = afterburner(&calibrate_args(cache, &["--problem-id", "cc-nope"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cc-nope"));
    let mut args = calibrate_args(cache, &["--problem-id", QUICK[0]]);
    args[6] = "0".into();
    let out = afterburner(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeats"));
}

#[test]
fn repeats_are_interleaved_in_rounds_and_an_interrupted_calibration_resumes_from_its_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let mut args = calibrate_args(cache, &["--problem-id", QUICK[0], "--max-solutions", "4"]);
    args[6] = "3".into();
    // Round 1 has measured all four references once, and round 2 has begun.
    interrupt_when(&args, || run_lines(dir.path()).len() >= 5);

    let runs = run_lines(dir.path());
    let rounds: Vec<u64> = runs.iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert_eq!(
        &rounds[..4],
        [0, 0, 0, 0],
        "every reference once first: {rounds:?}"
    );
    assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "{rounds:?}");
    for r in &runs {
        assert_eq!(r["status"], "accepted", "{r}");
        assert!(r["measurement"]["wall_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    // A reference's record is only written once all its runs are in.
    let complete = cache_lines(dir.path()).len();
    assert!(
        complete < 4,
        "interrupted before the last round ended: {complete}"
    );

    let mut rerun = args.clone();
    rerun.push("--json".into());
    let v = json(&afterburner(&rerun));
    let saved = runs.len() - 2 * complete;
    assert_eq!(v["totals"]["resumed_runs"], saved, "{v}");
    assert_eq!(v["totals"]["runs"], 12 - runs.len() - complete, "{v}");
    assert_eq!(v["totals"]["measured"], 4 - complete, "{v}");
    let lines = cache_lines(dir.path());
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["runs"], 3, "{l}");
        assert_eq!(l["passed"], true, "{l}");
    }
}

#[test]
fn progress_is_written_as_plain_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let mut args = calibrate_args(cache, &["--problem-id", QUICK[0], "--max-solutions", "6"]);
    args[6] = "3".into();
    let out = command()
        .args(&args)
        .env("AFTERBURNER_PROGRESS_SECS", "0.2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("references: ") && l.contains("/18 ("))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(
        lines.iter().all(|l| l.contains("elapsed, eta")),
        "{lines:?}"
    );
}

/// `bench stability` calibrates twice into OUT/first and OUT/second (the second reusing the
/// first's stress suites), writes the report, and `bench compare` reads the same two caches;
/// a bad cache line is an error naming it.
#[test]
fn bench_stability_calibrates_twice_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("exp");
    let out = afterburner(&[
        "bench",
        "stability",
        "--dataset",
        &coffe(),
        "--problem-id",
        QUICK[0],
        "--max-solutions",
        "3",
        "--repeats",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("3 solutions in both calibrations"),
        "{stdout}"
    );
    assert!(stdout.contains("| time | 3 |"), "{stdout}");
    assert_eq!(cache_lines(&out_dir.join("first")).len(), 3);
    assert_eq!(cache_lines(&out_dir.join("second")).len(), 3);
    assert!(out_dir.join("second/stress").read_dir().unwrap().count() > 0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("stability.json")).unwrap())
            .unwrap();
    assert_eq!(report["compared"], 3, "{report}");
    assert_eq!(report["objectives"].as_array().unwrap().len(), 3);

    let compared = afterburner(&[
        "bench",
        "compare",
        out_dir.join("first").to_str().unwrap(),
        out_dir.join("second").to_str().unwrap(),
        "--json",
    ]);
    assert!(compared.status.success(), "{compared:?}");
    assert_eq!(json(&compared)["compared"], 3);

    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("calibration.jsonl"),
        "{\"not\": \"a record\"}\n",
    )
    .unwrap();
    let err = afterburner(&[
        "bench",
        "compare",
        out_dir.join("first").to_str().unwrap(),
        broken.to_str().unwrap(),
    ]);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("calibration.jsonl:1") && stderr.contains("not a calibration record"),
        "{stderr}"
    );
}
