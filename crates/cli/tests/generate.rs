//! The `afterburner generate` contract: raw greedy generation reproduces transformers' tokens on
//! the tiny fixture model, chat mode renders the template (from `--prompt` or a `--messages`
//! file alike), bad input exits 2 naming what and where, and the real SmolLM2 GGUF generates.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/fixtures");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// Runs `afterburner generate ARGS --json` and parses its one JSON object.
fn generate_json(args: &[&str]) -> Value {
    let out = afterburner(&[&["generate"][..], args, &["--json"][..]].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn raw_greedy_generation_gives_the_tokens_transformers_gives() {
    let parity: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("parity.json")).unwrap()).unwrap();
    let cases = parity["models"]["tiny-qwen2"]["greedy"].as_array().unwrap();
    assert!(!cases.is_empty());
    let model = fixture("tiny-qwen2");
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let n = case["max_new_tokens"].as_u64().unwrap().to_string();
        let v = generate_json(&[
            "--model",
            &model,
            "--raw",
            "--prompt",
            text,
            "--temperature",
            "0",
            "--max-new-tokens",
            &n,
        ]);
        assert_eq!(
            ids(&v["prompt_token_ids"]),
            ids(&case["input_ids"]),
            "{text:?}"
        );
        assert_eq!(ids(&v["token_ids"]), ids(&case["output_ids"]), "{text:?}");
        let stopped = case["stopped_at_eos"].as_bool().unwrap();
        assert_eq!(
            v["finish_reason"],
            if stopped { "stop" } else { "length" },
            "{text:?}"
        );
        assert_eq!(
            v["completion_tokens"].as_u64().unwrap() as usize,
            ids(&case["output_ids"]).len()
        );
        assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert!(v["text"].is_string());
    }
}

#[test]
fn chat_mode_renders_the_template_and_a_messages_file_gives_the_same_answer() {
    let model = fixture("tiny-qwen2");
    let common = [
        "--model",
        &model,
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
    ];
    let from_prompt = generate_json(&[&common[..], &["--prompt", "def add(a, b):"][..]].concat());
    let prompt_ids = ids(&from_prompt["prompt_token_ids"]);
    // Qwen2.5's template: <|im_start|>system ... <|im_end|> <|im_start|>user ... <|im_start|>assistant\n
    assert_eq!(
        prompt_ids[0], 401,
        "starts with <|im_start|>: {prompt_ids:?}"
    );
    assert!(
        prompt_ids.contains(&402),
        "holds <|im_end|>: {prompt_ids:?}"
    );
    let raw = generate_json(&[&common[..], &["--raw", "--prompt", "def add(a, b):"][..]].concat());
    assert!(ids(&raw["prompt_token_ids"]).len() < prompt_ids.len());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.json");
    std::fs::write(&file, r#"[{"role": "user", "content": "def add(a, b):"}]"#).unwrap();
    let from_file =
        generate_json(&[&common[..], &["--messages", file.to_str().unwrap()][..]].concat());
    for key in ["text", "token_ids", "prompt_token_ids", "finish_reason"] {
        assert_eq!(from_file[key], from_prompt[key], "{key}");
    }
    // Without --json: the text alone.
    let out = afterburner(
        &[
            &["generate"][..],
            &common[..],
            &["--prompt", "def add(a, b):"][..],
        ]
        .concat(),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
        from_prompt["text"].as_str().unwrap()
    );
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let model = fixture("tiny-qwen2");
    let run = |seed: &str| {
        generate_json(&[
            "--model",
            &model,
            "--raw",
            "--prompt",
            "def f(x):",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
        ])["token_ids"]
            .clone()
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

fn copy_fixture(to: &Path) {
    for entry in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bad_input_exits_2_and_says_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-qwen2");
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let not_json = write("broken.json", "[{\"role\": ");
    let no_content = write(
        "no-content.json",
        r#"[{"role": "user", "content": "hi"}, {"role": "user"}]"#,
    );
    let bad_role = write("bad-role.json", r#"[{"role": "robot", "content": "hi"}]"#);
    let broken_template = dir.path().join("broken-template");
    std::fs::create_dir(&broken_template).unwrap();
    copy_fixture(&broken_template);
    let config_path = broken_template.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = Value::String("{% if messages %}unclosed".into());
    std::fs::write(&config_path, config.to_string()).unwrap();
    let broken = broken_template.to_str().unwrap().to_string();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--model", "/no/such/model/folder", "--prompt", "x"],
            vec!["/no/such/model/folder", "no such folder"],
        ),
        (
            vec!["--model", &model, "--messages", not_json.to_str().unwrap()],
            vec!["broken.json", "not valid JSON"],
        ),
        (
            vec![
                "--model",
                &model,
                "--messages",
                no_content.to_str().unwrap(),
            ],
            vec!["no-content.json", "message 1", "missing `content`"],
        ),
        (
            vec!["--model", &model, "--messages", bad_role.to_str().unwrap()],
            vec!["bad-role.json", "message 0", "unknown role `robot`"],
        ),
        (
            vec!["--model", &model, "--messages", "/no/such/chat.json"],
            vec!["/no/such/chat.json", "cannot read"],
        ),
        (
            vec!["--model", &broken, "--prompt", "x"],
            vec!["tokenizer_config.json", "broken-template"],
        ),
        (
            vec!["--model", &model, "--prompt", "x", "--temperature=-1"],
            vec!["--temperature"],
        ),
        (
            vec!["--model", &model, "--prompt", "x", "--dtype", "f8"],
            vec!["--dtype", "f8", "or quantized"],
        ),
        (
            vec!["--model", &model, "--prompt", "x", "--dtype", "quantized"],
            vec!["--dtype quantized needs a GGUF file", "Hugging Face folder"],
        ),
        (
            vec![
                "--model",
                &model,
                "--messages",
                no_content.to_str().unwrap(),
                "--raw",
            ],
            vec!["--raw"],
        ),
        (vec!["--model", &model], vec!["--prompt"]),
    ];
    for (args, expected) in cases {
        let out = afterburner(&[&["generate"][..], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{args:?}: expected {e:?} in: {stderr}");
        }
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

/// The SmolLM2 GGUF: `$AFTERBURNER_SMOLLM2_GGUF`, else the Afterburner cache; fails (never
/// skips) when absent, as the model crate's GGUF tests do.
fn smollm2_path() -> PathBuf {
    let path = match std::env::var_os("AFTERBURNER_SMOLLM2_GGUF") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = match std::env::var_os("AFTERBURNER_CACHE") {
                Some(cache) => PathBuf::from(cache),
                None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/afterburner"),
            };
            cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "{} is absent: run scripts/fetch-smollm2 (or set AFTERBURNER_SMOLLM2_GGUF)",
        path.display()
    );
    path
}

#[test]
fn the_smollm2_gguf_continues_python_greedily() {
    let path = smollm2_path();
    let greedy = |dtype: &str| {
        generate_json(&[
            "--model",
            path.to_str().unwrap(),
            "--dtype",
            dtype,
            "--prompt",
            "def add(a, b):",
            "--raw",
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
        ])
    };
    let start = Instant::now();
    let v = greedy("f32");
    let elapsed = start.elapsed();
    let produced = ids(&v["token_ids"]).len();
    assert!((1..=16).contains(&produced), "{v}");
    let finish = v["finish_reason"].as_str().unwrap();
    assert!(
        finish == "stop" || (finish == "length" && produced == 16),
        "{v}"
    );
    assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
    eprintln!(
        "SmolLM2 GGUF: {produced} tokens {:?} in {elapsed:?} (load included), {:.1} tokens/s",
        v["text"], v["tokens_per_second"]
    );
    // The quantized weights (`--dtype quantized`) continue the same way.
    let q = greedy("quantized");
    assert_eq!(q["token_ids"], v["token_ids"], "{q}\n{v}");
}

#[test]
fn offline_without_a_cached_qwen_the_default_is_smollm2_and_says_so() {
    let empty_hub = tempfile::tempdir().unwrap();
    let out = command()
        .args([
            "generate",
            "--prompt",
            "def add(a, b):",
            "--raw",
            "--temperature",
            "0",
            "--max-new-tokens",
            "2",
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", empty_hub.path())
        .env("AFTERBURNER_SMOLLM2_GGUF", smollm2_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no Qwen2.5-Coder-0.5B-Instruct in the Hugging Face cache")
            && stderr.contains("using SmolLM2-135M-Instruct")
            && stderr.contains("a 135M model fails most problems"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "SmolLM2-135M-Instruct");
}

#[test]
fn with_no_model_anywhere_the_error_names_both_fixes() {
    let empty_hub = tempfile::tempdir().unwrap();
    let out = command()
        .args(["generate", "--prompt", "hi"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", empty_hub.path())
        .env(
            "AFTERBURNER_SMOLLM2_GGUF",
            empty_hub.path().join("absent.gguf"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "HF_HUB_OFFLINE",
        "absent.gguf",
        "scripts/fetch-smollm2",
        "--model PATH",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
