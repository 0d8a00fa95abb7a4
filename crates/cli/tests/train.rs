//! The `afterburner train sft` contract on the tiny Qwen2 fixture: it trains, writes a PEFT
//! adapter, metrics and a summary, and refuses bad rows and settings with a message.

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-qwen2")
}

fn write_rows(path: &std::path::Path, rows: &[Value]) {
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

#[test]
fn sft_writes_a_peft_adapter_metrics_and_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sft.jsonl");
    write_rows(
        &data,
        &[
            json!({"prompt": [{"role": "user", "content": "add"}],
                   "completion": [{"role": "assistant", "content": "print(a+b)"}],
                   "problem_id": "p1", "split": "train"}),
            json!({"prompt": "Q: hello\nA:", "completion": " print('hi')"}),
        ],
    );
    let out = tmp.path().join("run");
    let result = afterburner(&[
        "train",
        "sft",
        "--model",
        fixture().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "5",
        "--lora-r",
        "4",
        "--learning-rate",
        "1e-2",
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("trained 5 steps on 2 examples"), "{stdout}");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    assert_eq!(jsonl(&out.join("metrics.jsonl")).len(), 5);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["last_loss"].as_f64().unwrap() < summary["first_loss"].as_f64().unwrap());
    for file in ["loss.png", "loss.svg"] {
        assert!(
            std::fs::metadata(out.join(file)).unwrap().len() > 1000,
            "{file}"
        );
    }

    // Full fine-tuning writes a Hugging Face folder that the model loader takes as --model.
    let full = tmp.path().join("full");
    let result = afterburner(&[
        "train",
        "sft",
        "--model",
        fixture().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        full.to_str().unwrap(),
        "--max-steps",
        "2",
        "--finetuning-type",
        "full",
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("model (Hugging Face folder) in"),
        "{stdout}"
    );
    assert!(full.join("model/model.safetensors").is_file());
    let answer = generate(full.join("model").to_str().unwrap(), &[]);
    assert!(answer["text"].is_string(), "{answer}");
}

#[test]
fn bad_rows_and_settings_are_refused_with_the_file_the_row_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    write_rows(
        &data,
        &[
            json!({"prompt": "ok", "completion": "fine"}),
            json!({"prompt": [{"role": "user"}], "completion": "x"}),
        ],
    );
    let out_dir = tmp.path().join("o");
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["train", "sft", "--model"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(fixture().display().to_string());
        args.extend(["--data".into(), data.display().to_string()]);
        args.extend(["--out".into(), out_dir.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = afterburner(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl: row 2: `prompt[0]` needs string `role` and `content`"),
        "{stderr}"
    );
    write_rows(&data, &[json!({"prompt": "ok", "completion": "fine"})]);
    let (code, stderr) = run(&["--lora-target-modules", "c_attn"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no module of the model matches"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--max-length", "2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("longer than --max-length 2"), "{stderr}");
}

#[test]
fn dpo_trains_on_preference_rows_and_logs_rewards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dpo.jsonl");
    write_rows(
        &data,
        &[
            json!({"prompt": [{"role": "user", "content": "add"}],
                   "chosen": [{"role": "assistant", "content": "print(a+b)"}],
                   "rejected": [{"role": "assistant", "content": "print(a-b)"}],
                   "problem_id": "p1", "split": "train"}),
            json!({"prompt": "Q: hello\nA:", "chosen": " print('hi')", "rejected": " print(1)"}),
        ],
    );
    let out = tmp.path().join("run");
    let result = afterburner(&[
        "train",
        "dpo",
        "--model",
        fixture().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "4",
        "--per-device-train-batch-size",
        "2",
        "--learning-rate",
        "1e-2",
        "--beta",
        "0.2",
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("trained 4 steps on 2 preference pairs"),
        "{stdout}"
    );
    let metrics = jsonl(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4);
    assert!(
        metrics[3]["rewards/margins"].as_f64().unwrap() > 0.0,
        "{}",
        metrics[3]
    );
    assert!(out.join("adapter/adapter_config.json").is_file());
    assert!(out.join("rewards.png").is_file() && out.join("rewards.svg").is_file());
}

fn generate(model: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "def add(a, b):",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = afterburner(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_merged_model_generates_what_the_base_with_its_adapter_generates() {
    let adapter =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures/sft-parity");
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    let out = afterburner(&[
        "train",
        "merge",
        "--model",
        fixture().to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(merged.join("model.safetensors").is_file());
    assert!(merged.join("tokenizer.json").is_file());
    let base = generate(fixture().to_str().unwrap(), &[]);
    let with_adapter = generate(
        fixture().to_str().unwrap(),
        &["--adapter", adapter.to_str().unwrap()],
    );
    let from_merged = generate(merged.to_str().unwrap(), &[]);
    assert_eq!(from_merged["token_ids"], with_adapter["token_ids"]);
    assert_ne!(
        base["token_ids"], with_adapter["token_ids"],
        "the adapter changes the model"
    );
    // Merging into a non-empty folder is refused.
    let again = afterburner(&[
        "train",
        "merge",
        "--model",
        fixture().to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn grpo_runs_end_to_end_on_afterburner_data_grpo_output_checkpoints_resumes_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let coffe = format!("coffe:{DATA}/coffe-code-contests");
    let cache = tmp.path().join("cache");
    // Real GRPO data: a COFFE problem calibrated in the sandbox, two prompts, as Parquet.
    let rows = tmp.path().join("rows");
    let made = afterburner(&[
        "data",
        "grpo",
        "--format",
        "trl",
        "--file-format",
        "parquet",
        "--dataset",
        &coffe,
        "--problem-id",
        "cc-4a4036eefa",
        "--max-solutions",
        "4",
        "--repeats",
        "1",
        "--per-problem",
        "2",
        "--test-share",
        "0",
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        rows.to_str().unwrap(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = rows.join("train.parquet");
    assert!(data.is_file());
    // The fixture with a context long enough for real problem statements (random weights and
    // rotary positions work at any length).
    let model = tmp.path().join("tiny-long");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 16384.into();
    config["sliding_window"] = 16384.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();

    let out = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "grpo",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--dataset",
            &coffe,
            "--cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "1",
            "--num-generations",
            "2",
            "--num-iterations",
            "2",
            "--max-completion-length",
            "8",
            "--max-length",
            "16384",
            "--save-steps",
            "1",
        ];
        args.extend(extra);
        let result = afterburner(&args);
        let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
        assert!(
            result.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
        stdout
    };
    let stdout = train(&[]);
    assert!(stdout.contains("trained 3 steps on 2 prompts"), "{stdout}");
    let metrics = jsonl(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 3);
    for m in &metrics {
        assert_eq!(
            m["judged"].as_u64().unwrap() + m["unjudged"].as_u64().unwrap(),
            2,
            "{m}"
        );
        assert!(m["judged"].as_u64().unwrap() > 0, "{m}");
        assert!(m["reward"].as_f64().is_some(), "{m}");
        let pass_rate = m["pass_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&pass_rate), "{m}");
    }
    assert_eq!(
        metrics[0]["reward"], metrics[1]["reward"],
        "steps 1 and 2 share a batch"
    );
    for file in [
        "loss.png",
        "loss.svg",
        "rewards.png",
        "rewards.svg",
        "summary.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    for step in 1..=3 {
        assert!(
            out.join(format!("checkpoint-{step}/trainer_state.json"))
                .is_file()
        );
    }
    // Resumed from step 1 (inside the first batch's cycle), the run ends as it did.
    let resumed = train(&[
        "--resume-from-checkpoint",
        out.join("checkpoint-1").to_str().unwrap(),
    ]);
    assert!(
        resumed.contains("trained 3 steps on 2 prompts"),
        "{resumed}"
    );
    let without_speed = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v
            })
            .collect()
    };
    assert_eq!(
        without_speed(jsonl(&out.join("metrics.jsonl"))),
        without_speed(metrics)
    );

    // A row whose label is not a reward label names the file and row.
    let data = tmp.path().join("grpo.jsonl");
    write_rows(
        &data,
        &[
            json!({"prompt": [{"role": "user", "content": "x"}], "ground_truth": "{\"problem_id\": \"p\"}"}),
        ],
    );
    let bad = afterburner(&[
        "train",
        "grpo",
        "--model",
        fixture().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--dataset",
        &coffe,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("grpo.jsonl: row 1: not a reward label"),
        "{stderr}"
    );
}

/// A stand-in for the PyTorch side of `bench train` (torch cannot be installed in CI): a shell
/// script that speaks `train_bench.py`'s serve protocol, so the pairing and the table are real.
fn scripted_python(dir: &std::path::Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn bench_train_alternates_both_sides_and_prints_their_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("requests");
    let python = scripted_python(
        tmp.path(),
        &format!(
            "echo \"$2\" >> {log}\necho '{{\"ready\": true}}'\nwhile read -r line; do echo \"$line\" >> {log}; echo '{{\"ms\": 1000000}}'; done\necho '{{\"peak_rss_kb\": 2048, \"torch\": \"scripted\", \"threads\": 2}}'",
            log = log.display()
        ),
    );
    let result = afterburner(&[
        "bench",
        "train",
        "--model",
        fixture().to_str().unwrap(),
        "--python",
        python.to_str().unwrap(),
        "--seq",
        "8",
        "--steps",
        "3",
        "--lora-r",
        "2",
        "--group",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // Each side: its command, one warm-up step and three timed ones.
    let requests = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        requests.lines().collect::<Vec<_>>(),
        [
            "serve-step",
            "step",
            "step",
            "step",
            "step",
            "serve-grpo-step",
            "step",
            "step",
            "step",
            "step"
        ]
    );
    assert!(stdout.contains("LoRA SFT step"), "{stdout}");
    assert!(stdout.contains("LoRA GRPO-loss step"), "{stdout}");
    assert!(stdout.contains("torch scripted, 2 threads"), "{stdout}");
    assert!(
        stdout.contains("| 1000000 | 1000000, 1000000, 1000000 | 2 |"),
        "{stdout}"
    );
    // A scripted step of 1000 s against a real one of the tiny fixture: a large ratio, twice.
    let ratios: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("speed ratio (PyTorch step / ours, median of 3 adjacent pairs): ")
        })
        .map(|rest| rest.split('x').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), 2, "{stdout}");
    assert!(ratios.iter().all(|r| *r > 100.0), "{ratios:?}");
}

#[test]
fn bench_train_says_why_the_pytorch_side_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let python = scripted_python(
        tmp.path(),
        "echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1",
    );
    let result = afterburner(&[
        "bench",
        "train",
        "--model",
        fixture().to_str().unwrap(),
        "--python",
        python.to_str().unwrap(),
        "--seq",
        "8",
        "--steps",
        "1",
    ]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("the PyTorch side ended (exit status: 1) without an answer")
            && stderr.contains("No module named 'torch'"),
        "{stderr}"
    );
}
