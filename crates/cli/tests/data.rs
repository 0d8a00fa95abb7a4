//! The `afterburner data` contract on real COFFE problems measured in the real sandbox: every
//! format reads back with Hugging Face `datasets` as its trainer's schema says, GRPO labels are
//! judged by a live `/v1/reward`, reruns reuse the calibration, and bad options and files get a
//! clear error.

mod support;

use std::process::Command;
use std::time::Duration;

use afterburner_testkit::client;
use serde_json::{Value, json};
use support::*;

/// COFFE problems whose stress inputs are quick to generate and check.
const QUICK: [&str; 3] = ["cc-4a4036eefa", "cc-660ac1d198", "cc-ca387e1d5e"];

fn coffe() -> String {
    format!("coffe:{DATA}/coffe-code-contests")
}

fn data_args(kind: &str, format: &str, cache: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "data".into(),
        kind.into(),
        "--format".into(),
        format.into(),
        "--dataset".into(),
        coffe(),
        "--max-solutions".into(),
        "6".into(),
        "--repeats".into(),
        "1".into(),
        "--cache".into(),
        cache.into(),
        "--out".into(),
        out.into(),
    ];
    for id in QUICK {
        args.push("--problem-id".into());
        args.push(id.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) -> String {
    let out = afterburner(args);
    assert!(
        out.status.success(),
        "afterburner {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python_check(dir: &std::path::Path) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../python/check_training_data.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run python3 (CI installs it with datasets and pyarrow)");
    assert!(
        out.status.success(),
        "check_training_data.py {} failed (needs `pip install datasets pyarrow`):\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn every_format_reads_back_with_datasets_as_its_trainer_reads_it_and_reruns_reuse_the_calibration()
{
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let combos = [
        ("sft", "trl", None),
        ("sft", "llamafactory", None),
        ("sft", "verl", None),
        ("sft", "openrlhf", Some("parquet")),
        ("dpo", "trl", Some("parquet")),
        ("dpo", "llamafactory", None),
        ("dpo", "openrlhf", None),
        ("grpo", "verl", None),
        ("grpo", "verl", Some("jsonl")),
        ("grpo", "trl", None),
        ("grpo", "openrlhf", None),
    ];
    for (k, (kind, format, file_format)) in combos.iter().enumerate() {
        let out = tmp.path().join(format!("{kind}-{format}-{k}"));
        let mut extra = vec!["--test-share", "0.34"];
        if let Some(f) = file_format {
            extra.extend(["--file-format", f]);
        }
        let stdout = run_ok(&data_args(
            kind,
            format,
            cache,
            out.to_str().unwrap(),
            &extra,
        ));
        if k == 0 {
            assert!(stdout.contains("18 measured, 0 cached"), "{stdout}");
        } else {
            assert!(stdout.contains("0 measured, 18 cached"), "{stdout}");
        }
        let checked = python_check(&out);
        assert_eq!(checked["kind"], *kind);
        assert_eq!(checked["problems"], 3, "{checked}");
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        let expected_ext = file_format.unwrap_or(if *format == "verl" {
            "parquet"
        } else {
            "jsonl"
        });
        assert_eq!(manifest["file_format"], expected_ext);
        assert_eq!(manifest["source"]["dataset_format"], "coffe");
        assert_eq!(manifest["source"]["options"]["max_solutions"], 6);
        assert!(
            manifest["source"]["fingerprint"]
                .as_str()
                .is_some_and(|f| !f.is_empty())
        );
    }
}

#[test]
fn grpo_labels_are_judged_by_the_reward_endpoint_of_a_server_on_the_same_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let grpo = tmp.path().join("grpo");
    let sft = tmp.path().join("sft");
    run_ok(&data_args(
        "grpo",
        "trl",
        cache,
        grpo.to_str().unwrap(),
        &["--test-share", "0"],
    ));
    run_ok(&data_args(
        "sft",
        "trl",
        cache,
        sft.to_str().unwrap(),
        &["--test-share", "0"],
    ));
    let rows = jsonl(&grpo.join("train.jsonl"));
    let answers = jsonl(&sft.join("train.jsonl"));
    assert!(!rows.is_empty());
    // For each GRPO row: the SFT answer of its problem (a passing solution) and a wrong one.
    let mut items = Vec::new();
    for row in rows.iter().take(6) {
        let label: Value = serde_json::from_str(row["ground_truth"].as_str().unwrap()).unwrap();
        let good = answers
            .iter()
            .find(|a| a["problem_id"] == row["problem_id"])
            .expect("an SFT answer for the problem");
        for response in [
            good["completion"][0]["content"].clone(),
            json!("<thinking>guess</thinking>\n<solution>\n```python\nprint(0)\n```\n</solution>"),
        ] {
            let mut item = label.clone();
            item["response"] = response;
            items.push(item);
        }
    }
    let (mut child, addr) = serve(&[
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dataset",
        &coffe(),
    ]);
    let answer = client::post_json(
        addr,
        "/v1/reward",
        &json!({"items": items}),
        Duration::from_secs(300),
    );
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.expect("the server answers");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json().unwrap();
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), items.len());
    for (k, r) in results.iter().enumerate() {
        let passed = r["passed"].as_bool().unwrap_or(false);
        assert_eq!(passed, k % 2 == 0, "item {k}: {r}");
        assert!(r["reward"].is_number(), "item {k}: {r}");
    }
}

#[test]
fn excluded_problems_never_appear_and_bad_options_and_files_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let exclude = tmp.path().join("held-out.txt");
    std::fs::write(&exclude, format!("# held out\n{}\n\n", QUICK[1])).unwrap();
    let out = tmp.path().join("sft");
    let stdout = run_ok(&data_args(
        "sft",
        "trl",
        cache,
        out.to_str().unwrap(),
        &["--exclude", exclude.to_str().unwrap()],
    ));
    assert!(stdout.contains("1 excluded"), "{stdout}");
    for split in ["train", "test"] {
        for row in jsonl(&out.join(format!("{split}.jsonl"))) {
            assert_ne!(row["problem_id"], QUICK[1]);
        }
    }

    let failures: [(&str, &str, Vec<&str>, &str); 4] = [
        ("dpo", "verl", vec![], "verl has no DPO trainer"),
        ("grpo", "llamafactory", vec![], "LLaMA-Factory has no GRPO"),
        (
            "sft",
            "trl",
            vec!["--test-share", "1.5"],
            "--test-share must be in [0, 1]",
        ),
        (
            "sft",
            "trl",
            vec!["--per-problem", "0"],
            "--per-problem must be at least 1",
        ),
    ];
    for (kind, format, extra, message) in failures {
        let out = afterburner(&data_args(kind, format, cache, "/nonexistent/x", &extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
    std::fs::write(&exclude, "{\"id\": 3}\n").unwrap();
    let out = afterburner(&data_args(
        "sft",
        "trl",
        cache,
        tmp.path().join("x").to_str().unwrap(),
        &["--exclude", exclude.to_str().unwrap()],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("held-out.txt line 1: a JSON line needs a string `problem_id`"),
        "{stderr}"
    );
}
