//! The `afterburner optimize` contract, against a scripted OpenAI-compatible server on loopback
//! and a small Venus-format dataset written by the test: trajectory rows, the JSON summary, the
//! report files, resuming, per-problem errors and exit codes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use afterburner_benchmarks::{VenusRow, VenusSolution, write_venus_jsonl};
use afterburner_testkit::scripted::{Reply, ScriptedServer};
use serde_json::Value;
use support::*;

/// A `Solution.total(n)` that sleeps `seconds` per call (0: none).
fn solution(seconds: f64) -> String {
    if seconds > 0.0 {
        format!(
            "import time\nclass Solution:\n    def total(self, n: int) -> int:\n        time.sleep({seconds})\n        return n * (n + 1) // 2\n"
        )
    } else {
        "class Solution:\n    def total(self, n: int) -> int:\n        return n * (n + 1) // 2\n"
            .to_string()
    }
}

const WRONG: &str = "class Solution:\n    def total(self, n: int) -> int:\n        return n\n";

fn answer(code: &str) -> String {
    format!("<thinking>Use the formula.</thinking>\n<solution>\n```python\n{code}```\n</solution>")
}

fn row(id: i64, statement: &str, references: &[f64]) -> VenusRow {
    VenusRow {
        problem_id: id,
        title: format!("Triangle {id}"),
        question_content: statement.to_string(),
        difficulty: "Easy".into(),
        tags: vec!["Math".into()],
        code_prompt: "class Solution:\n    def total(self, n: int) -> int:\n        ".into(),
        test_case_generator: String::new(),
        test_case_evaluator: String::new(),
        test_case_runners:
            "==Code Submission==\n\nimport sys\nprint(Solution().total(int(sys.stdin.read())))\n"
                .into(),
        test_cases: r#"[{"input": "10", "output": "55"}, {"input": "100", "output": "5050"}]"#
            .into(),
        solutions: references
            .iter()
            .map(|&s| VenusSolution {
                code: solution(s),
                status: "success".into(),
                passed: true,
                time: f64::INFINITY,
                memory: f64::INFINITY,
                integral: f64::INFINITY,
            })
            .collect(),
    }
}

/// A Venus JSONL file with the given rows; returns the `--dataset` spec.
fn dataset(dir: &Path, rows: &[VenusRow]) -> String {
    let path = dir.join("venus.jsonl");
    write_venus_jsonl(&path, rows).unwrap();
    format!("venus:{}", path.display())
}

fn args<'a>(spec: &'a str, endpoint: &'a str, out: &'a Path, cache: &'a Path) -> Vec<String> {
    [
        "optimize",
        "--dataset",
        spec,
        "--endpoint",
        endpoint,
        "--model",
        "scripted",
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--repeats",
        "1",
        "--retry-backoff-ms",
        "10",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> (Output, Value) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = afterburner(&refs);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (out, v)
}

fn rows(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("trajectory.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn optimize_runs_the_loop_and_writes_trajectory_summary_and_report() {
    let dir = tempfile::tempdir().unwrap();
    // References sleep 0.05, 0.6 and 1.0 s per test: the slow candidate (0.3 s) beats two of
    // three on time, the fast one all three.
    let spec = dataset(
        dir.path(),
        &[row(7, "Return 1 + 2 + ... + n.", &[0.05, 0.6, 1.0])],
    );
    let server = ScriptedServer::start(vec![
        Reply::content(answer(&solution(0.3))),
        Reply::content(answer(WRONG)),
        Reply::content(answer(&solution(0.0))),
    ])
    .unwrap();
    let (out_dir, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let url = server.base_url();
    let mut a = args(&spec, &url, &out_dir, &cache);
    a.extend(["--iterations", "2", "--calibrate"].map(String::from));
    let (out, v) = run(&a);
    assert!(out.status.success(), "{}\n{v}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().lines().count(),
        1
    );

    // The trajectory: one row per iteration with the contract's fields.
    let rows = rows(&out_dir);
    assert_eq!(rows.len(), 3);
    for (k, r) in rows.iter().enumerate() {
        for field in [
            "problem_id",
            "iteration",
            "accepted",
            "status",
            "passed",
            "time",
            "memory",
            "integral",
            "code",
            "prompt",
            "response",
        ] {
            assert!(r.get(field).is_some(), "row {k} lacks {field}: {r}");
        }
        assert_eq!(r["problem_id"], "7");
        assert_eq!(r["iteration"], k);
    }
    let accepted: Vec<bool> = rows
        .iter()
        .map(|r| r["accepted"].as_bool().unwrap())
        .collect();
    assert_eq!(accepted, [true, false, true]);
    assert_eq!(rows[1]["status"], "wrong_answer");
    assert!(rows[2]["time"].as_f64().unwrap() < rows[0]["time"].as_f64().unwrap());
    assert!(rows[1]["time"].is_null());
    assert!(
        rows[0]["prompt"][1]["content"]
            .as_str()
            .unwrap()
            .contains("## Starter Code")
    );
    assert!(rows[0]["response"].as_str().unwrap().contains("<solution>"));
    assert_eq!(rows[0]["percentiles"]["time"].as_f64().unwrap(), 2.0 / 3.0);
    assert_eq!(rows[2]["percentiles"]["time"].as_f64().unwrap(), 1.0);

    // The prompts after iteration 0 carry the incumbent (the slow solution) and its figures.
    let prompts = server.user_prompts();
    assert_eq!(prompts.len(), 3);
    for p in &prompts[1..] {
        assert!(p.contains("time.sleep(0.3)"), "{p}");
        assert!(
            p.contains("## Original Performance\nPassed: True / Time: "),
            "{p}"
        );
    }

    // The summary: per-iteration pass@1 and Beyond-T/M/I, per-problem results, files.
    let per = v["per_iteration"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    for p in per {
        assert_eq!(p["pass_at_1"], 1.0);
        assert_eq!(p["scored"], 1);
    }
    assert!((per[0]["beyond_t"]["mean"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(per[2]["beyond_t"]["mean"], 1.0);
    assert_eq!(v["problems"][0]["incumbent"], 2);
    assert_eq!(v["problems"][0]["accepted_at"], serde_json::json!([0, 2]));
    assert!(v["problems"][0]["gain"].as_f64().unwrap() > 0.3, "{v}");
    assert_eq!(v["totals"]["model_calls"], 3);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["interrupted"], false);

    let file = |k: &str| PathBuf::from(v["files"][k].as_str().unwrap());
    let png = std::fs::read(file("chart_png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5_000);
    let svg = std::fs::read_to_string(file("chart_svg")).unwrap();
    assert!(svg.contains("Beyond-T") && svg.contains("pass@1"));
    let md = std::fs::read_to_string(file("markdown")).unwrap();
    assert!(
        md.contains("## Per iteration") && md.contains("## Per problem"),
        "{md}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(file("report")).unwrap()).unwrap();
    assert_eq!(report["per_iteration"], v["per_iteration"]);
    let finals = std::fs::read_to_string(file("final")).unwrap();
    let last: Value = serde_json::from_str(finals.trim()).unwrap();
    assert_eq!(last["code"], solution(0.0));

    // Re-running the finished run asks the model nothing and reports the same.
    let (again, v2) = run(&a);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(server.received().len(), 3);
    assert_eq!(v2["per_iteration"], v["per_iteration"]);
    assert_eq!(self::rows(&out_dir).len(), 3);
}

#[test]
fn a_problem_whose_model_calls_fail_is_reported_the_others_finish_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(
        dir.path(),
        &[
            row(1, "Problem one: return 1 + 2 + ... + n.", &[]),
            row(2, "Problem two: return 1 + 2 + ... + n.", &[]),
        ],
    );
    let fast = answer(&solution(0.0));
    let broken = {
        let fast = fast.clone();
        ScriptedServer::with_handler(move |r| {
            if r.user_prompt().unwrap_or("").contains("Problem two") {
                Reply::status(500)
            } else {
                Reply::content(fast.clone())
            }
        })
        .unwrap()
    };
    let (out_dir, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let url = broken.base_url();
    let mut a = args(&spec, &url, &out_dir, &cache);
    a.extend(["--iterations", "1", "--retries", "1"].map(String::from));
    let (out, v) = run(&a);
    assert_eq!(out.status.code(), Some(1), "{}\n{v}", stderr(&out));
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["problem_id"], "2");
    let e = errors[0]["error"].as_str().unwrap();
    assert!(e.contains("HTTP 500 after 2 attempt(s)"), "{e}");
    assert_eq!(v["problems"][0]["complete"], true);
    assert_eq!(v["problems"][1]["iterations"], 0);
    assert_eq!(v["totals"]["errors"], 1);
    // Problem one: 2 requests; problem two: 1 request retried once.
    assert_eq!(broken.received().len(), 4);
    drop(broken);

    // With the model back, the rerun completes problem two and does not touch problem one.
    let healthy = ScriptedServer::with_handler(move |_| Reply::content(fast.clone())).unwrap();
    let url = healthy.base_url();
    let mut a = args(&spec, &url, &out_dir, &cache);
    a.extend(["--iterations", "1"].map(String::from));
    let (out, v) = run(&a);
    assert!(out.status.success(), "{}\n{v}", stderr(&out));
    let prompts = healthy.user_prompts();
    assert_eq!(prompts.len(), 2);
    assert!(prompts.iter().all(|p| p.contains("Problem two")));
    assert_eq!(v["totals"]["complete"], 2);
    let rows = rows(&out_dir);
    assert_eq!(rows.len(), 4);
}

#[test]
fn an_original_file_is_iteration_zero_and_costs_no_model_call() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(dir.path(), &[row(3, "Return 1 + 2 + ... + n.", &[])]);
    let original = dir.path().join("slow.py");
    std::fs::write(&original, solution(0.3)).unwrap();
    let server = ScriptedServer::start(vec![Reply::content(answer(&solution(0.0)))]).unwrap();
    let (out_dir, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let url = server.base_url();
    let mut a = args(&spec, &url, &out_dir, &cache);
    a.extend(
        [
            "--iterations",
            "1",
            "--instruction",
            "integral",
            "--original",
            original.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let (out, v) = run(&a);
    assert!(out.status.success(), "{}\n{v}", stderr(&out));
    let rows = rows(&out_dir);
    assert_eq!(rows[0]["source"], "original");
    assert!(rows[0]["prompt"].is_null());
    assert!(rows[1]["accepted"].as_bool().unwrap(), "{}", rows[1]);
    assert!(
        rows[1]["decision"]
            .as_str()
            .unwrap()
            .starts_with("integral")
    );
    let prompts = server.user_prompts();
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].contains("time.sleep(0.3)"));
    assert!(prompts[0].contains("Optimize the both time and memory efficient performance"));
    assert_eq!(v["run"]["instruction"], "integral");
}

#[test]
fn bad_input_is_refused_with_exit_code_2_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dataset(dir.path(), &[row(1, "Return 1 + 2 + ... + n.", &[])]);
    let (out_dir, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let base = |endpoint: &str| args(&spec, endpoint, &out_dir, &cache);
    let url = "http://127.0.0.1:9/v1";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base("127.0.0.1:8000/v1"), "http://"),
        (
            [base(url), vec!["--instruction".into(), "speed".into()]].concat(),
            "time, memory or integral",
        ),
        (
            [base(url), vec!["--problem-id".into(), "404".into()]].concat(),
            "no such problem",
        ),
        (
            [
                base(url),
                vec!["--original".into(), "/nonexistent/x.py".into()],
            ]
            .concat(),
            "cannot read --original",
        ),
        (
            [base(url), vec!["--temperature".into(), "9".into()]].concat(),
            "--temperature",
        ),
        (
            [base(url), vec!["--original-reference".into(), "3".into()]].concat(),
            "has 0 reference solutions",
        ),
    ];
    for (a, expected) in cases {
        let (out, _) = run(&a);
        assert_eq!(out.status.code(), Some(2), "{a:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{a:?}: {}", stderr(&out));
    }
    let missing = afterburner(&["optimize", "--dataset", &spec, "--model", "m"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--endpoint"));

    // A folder that holds another run is not resumed with different settings.
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("run.json"),
        serde_json::json!({
            "dataset": spec, "model": "scripted", "instruction": "memory", "language": "python",
            "original": "model", "endpoint": url, "iterations": 1
        })
        .to_string(),
    )
    .unwrap();
    let (out, _) = run(&base(url));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("instruction `memory`, not `time`"),
        "{}",
        stderr(&out)
    );
}
