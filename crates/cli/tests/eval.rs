//! The `afterburner eval` contract: metrics as SPEC section 5 defines them, rows per solution,
//! malformed lines and missing problems reported.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use support::*;

/// COFFE problems whose stress inputs are quick to generate and check.
const QUICK: [&str; 3] = ["cc-4a4036eefa", "cc-660ac1d198", "cc-ca387e1d5e"];

/// The verified solutions of a COFFE problem, from the upstream file.
fn coffe_solution(id: &str, k: usize) -> String {
    let spec = format!("coffe:{DATA}/coffe-code-contests");
    let out = afterburner(&["dataset", "ls", "--dataset", &spec, "--json"]);
    assert!(out.status.success());
    let text =
        std::fs::read_to_string(format!("{DATA}/coffe-code-contests/solutions.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<Value> = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap();
    let index = ids.iter().position(|r| r["id"] == id).unwrap();
    let (_, solutions) = v["prompt2groundtruth"]
        .as_object()
        .unwrap()
        .iter()
        .nth(index)
        .unwrap();
    solutions[k][0].as_str().unwrap().to_string()
}

fn write_solutions(dir: &Path) -> String {
    let path = dir.join("solutions.jsonl");
    let lines = [
        json!({"problem_id": QUICK[0], "code": coffe_solution(QUICK[0], 0)}).to_string(),
        "{not json".to_string(),
        json!({"problem_id": QUICK[1], "code": "print('Success')\n", "language": "python"})
            .to_string(),
        json!({"problem_id": "cc-nope", "code": "print(1)"}).to_string(),
        json!({"problem_id": QUICK[0], "language": "python"}).to_string(),
        json!({"problem_id": QUICK[0], "code": "x", "language": "cobol"}).to_string(),
        String::new(),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

/// `afterburner eval` of [`write_solutions`] on `problems`, with `protocol` options and `extra`.
fn eval_with(dir: &Path, problems: &[&str], protocol: &[&str], extra: &[&str]) -> Output {
    let spec = format!("coffe:{DATA}/coffe-code-contests");
    let solutions = write_solutions(dir);
    let cache = dir.join("cache");
    let mut args = vec![
        "eval",
        "--dataset",
        &spec,
        "--solutions",
        &solutions,
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend(protocol);
    for id in problems {
        args.extend(["--problem-id", id]);
    }
    args.extend(extra);
    afterburner(&args)
}

fn eval(dir: &Path, extra: &[&str]) -> Output {
    let protocol = [
        "--repeats",
        "1",
        "--max-solutions",
        "3",
        "--resamples",
        "2000",
    ];
    eval_with(dir, &QUICK, &protocol, extra)
}

#[test]
fn json_metrics_follow_the_spec_and_rows_describe_each_solution() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("rows.jsonl");
    let out = eval(dir.path(), &["--json", "--out", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();

    // Three problems: one passing solution, one failing, one problem without a solution.
    assert_eq!(v["problems"], 3, "{v}");
    let third = 1.0 / 3.0;
    assert!(
        (v["pass_at_1"].as_f64().unwrap() - third).abs() < 1e-9,
        "{v}"
    );
    for key in ["beyond_t", "beyond_m", "beyond_i"] {
        let x = v[key].as_f64().unwrap();
        assert!(
            (0.0..=third + 1e-9).contains(&x),
            "{key} {x} exceeds pass@1"
        );
        let [lo, hi] = [
            v["intervals"][key][0].as_f64().unwrap(),
            v["intervals"][key][1].as_f64().unwrap(),
        ];
        assert!(lo <= x && x <= hi, "{key}: {lo} {x} {hi}");
    }
    let lo = v["intervals"]["pass_at_1"][0].as_f64().unwrap();
    let hi = v["intervals"]["pass_at_1"][1].as_f64().unwrap();
    assert!(lo <= third && third <= hi && (0.0..=1.0).contains(&lo) && hi <= 1.0);
    assert_eq!(v["missing"], json!([QUICK[2]]));
    assert_eq!(v["buckets"]["time"]["F"], 2, "{v}");
    let malformed = v["malformed"].as_array().unwrap();
    let lines: Vec<u64> = malformed
        .iter()
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 4, 5, 6], "{malformed:?}");
    let reasons: Vec<&str> = malformed
        .iter()
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].contains("not JSON"), "{reasons:?}");
    assert!(reasons[1].contains("cc-nope"), "{reasons:?}");
    assert!(reasons[2].contains("missing `code`"), "{reasons:?}");
    assert!(reasons[3].contains("cobol"), "{reasons:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("solutions.jsonl:2:"), "{stderr}");

    // One row per usable solution.
    let rows = jsonl(&out_path);
    assert_eq!(rows.len(), 2);
    let good = &rows[0];
    assert_eq!(good["line"], 1);
    assert_eq!(good["status"], "accepted");
    assert_eq!(good["passed"], true);
    assert!(good["time_ms"].as_f64().unwrap() > 0.0);
    assert!(good["memory_kb"].as_f64().unwrap() > 0.0);
    assert!(good["integral_kb_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(good["references"], 3);
    for k in ["time", "memory", "integral"] {
        let p = good["percentiles"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{k} {p}");
        assert!(["B", "M", "W"].contains(&good["buckets"][k].as_str().unwrap()));
    }
    assert_eq!(
        good["tests_passed"], good["tests_total"],
        "every test and stress input passed"
    );
    let bad = &rows[1];
    assert_eq!(bad["status"], "wrong_answer");
    assert_eq!(bad["passed"], false);
    assert_eq!(bad["percentiles"], Value::Null);
    assert_eq!(bad["buckets"]["time"], "F");
    assert_eq!(bad["verdicts"][0], "wrong_answer");
}

#[test]
fn the_table_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let out = eval(dir.path(), &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "pass@1",
        "33.3%",
        "Beyond-T",
        "Beyond-M",
        "Beyond-I",
        "95% CI",
        "buckets time",
        "counted as failed",
        QUICK[2],
        "wrong_answer",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}

#[test]
fn a_missing_solutions_file_is_an_error() {
    let spec = format!("coffe:{DATA}/coffe-code-contests");
    let out = afterburner(&["eval", "--dataset", &spec, "--solutions", "/no/such.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such.jsonl"));
}

#[test]
fn rows_are_written_even_when_no_metric_can_be_computed() {
    // With no reference measured there is nothing to compare against: the command fails with a
    // reason, but the solution's own verdict and measurement still reach --out.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("coffe:{DATA}/coffe-code-contests");
    let solutions = dir.path().join("one.jsonl");
    let line = json!({"problem_id": QUICK[0], "code": coffe_solution(QUICK[0], 0)});
    std::fs::write(&solutions, line.to_string()).unwrap();
    let rows = dir.path().join("rows.jsonl");
    let cache = dir.path().join("cache");
    let out = afterburner(&[
        "eval",
        "--dataset",
        &spec,
        "--solutions",
        solutions.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--problem-id",
        QUICK[0],
        "--max-solutions",
        "0",
        "--repeats",
        "1",
        "--out",
        rows.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no problem can be scored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rows).unwrap();
    let row: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(row["problem_id"], QUICK[0]);
    assert_eq!(row["status"], "accepted", "{row}");
}

#[test]
fn candidates_are_measured_with_the_references_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rows_path = dir.path().join("rows.jsonl");
    let out = eval_with(
        dir.path(),
        &[QUICK[0]],
        &["--repeats", "3", "--max-solutions", "2"],
        &["--json", "--out", rows_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let rows = jsonl(&rows_path);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["passed"], true, "{}", rows[0]);
    assert_eq!(rows[0]["runs"], 3, "{}", rows[0]);
    assert!(rows[0]["cv"]["wall_ms"].as_f64().unwrap() >= 0.0);
    // The references were measured with the same three runs.
    let refs = jsonl(&cache.join("calibration.jsonl"));
    assert_eq!(refs.len(), 2);
    assert!(refs.iter().all(|r| r["runs"] == 3), "{refs:?}");
}

#[test]
fn counted_instructions_score_beyond_instr_and_identical_code_counts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("rows.jsonl");
    let protocol = [
        "--repeats",
        "1",
        "--max-solutions",
        "2",
        "--count-instructions",
    ];
    let extra = ["--json", "--out", out_path.to_str().unwrap()];
    let out = eval_with(dir.path(), &QUICK[..1], &protocol, &extra);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["protocol"]
            .as_str()
            .unwrap()
            .contains("instructions=valgrind"),
        "{v}"
    );
    let beyond = v["beyond_instr"].as_f64().expect("Beyond-Instr reported");
    assert!((0.0..=1.0).contains(&beyond), "{v}");
    let rows = jsonl(&out_path);
    let good = &rows[0];
    let count = good["instructions"]
        .as_f64()
        .expect("the candidate was counted");
    assert!(count > 1e6, "{good}");
    assert_eq!(good["instructions_percentile"].as_f64(), Some(beyond));
    // The candidate is reference 0's own code: it counts the same (within a few instructions
    // of the driver's timing output) and ties with it.
    let records = jsonl(&dir.path().join("cache").join("calibration.jsonl"));
    let reference = records
        .iter()
        .find(|r| r["solution_id"] == format!("{}/ref-0", QUICK[0]))
        .expect("reference 0 calibrated");
    let theirs = reference["performance"]["instructions"]
        .as_f64()
        .expect("counted");
    assert!(
        (theirs - count).abs() <= 1e-5 * count,
        "{theirs} vs {count}"
    );
}
