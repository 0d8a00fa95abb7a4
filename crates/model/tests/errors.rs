//! Bad input gets a specific error naming the file and the problem.

use std::path::{Path, PathBuf};

use afterburner_model::{DType, Device, LanguageModel, ModelError, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of the tiny Qwen2 folder to break.
fn copy_of_tiny_qwen2() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_error(dir: &Path) -> String {
    LanguageModel::from_folder(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "config.json has no {from:?}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn a_missing_config_json_is_named_with_the_files_a_folder_needs() {
    let dir = copy_of_tiny_qwen2();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json: missing: a model folder needs config.json, tokenizer.json"),
        "{err}"
    );
}

#[test]
fn an_unknown_architecture_is_named() {
    let dir = copy_of_tiny_qwen2();
    edit_config(dir.path(), "Qwen2ForCausalLM", "MambaForCausalLM");
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json: unsupported architecture `MambaForCausalLM`"),
        "{err}"
    );
}

#[test]
fn inconsistent_head_counts_are_named() {
    let dir = copy_of_tiny_qwen2();
    edit_config(
        dir.path(),
        "\"num_attention_heads\": 4",
        "\"num_attention_heads\": 3",
    );
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json: hidden_size 64 is not divisible by num_attention_heads 3"),
        "{err}"
    );
}

#[test]
fn a_corrupt_safetensors_file_is_named() {
    let dir = copy_of_tiny_qwen2();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    )
    .unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors: not a readable safetensors file"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named_with_its_file() {
    let dir = copy_of_tiny_qwen2();
    rewrite_weights(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors: tensor `model.layers.1.mlp.up_proj.weight`: missing"),
        "{err}"
    );
}

#[test]
fn a_shape_mismatch_names_the_tensor_and_both_shapes() {
    let dir = copy_of_tiny_qwen2();
    rewrite_weights(dir.path(), |t| {
        let w = t["model.layers.0.self_attn.k_proj.weight"]
            .narrow(0, 0, 16)
            .unwrap();
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), w);
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("tensor `model.layers.0.self_attn.k_proj.weight`: expected shape [32, 64], found [16, 64]"),
        "{err}"
    );
}

#[test]
fn a_missing_shard_is_named_by_the_index() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen2-sharded")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors.index.json: lists shard `model-00002-of-00003.safetensors`, which is missing"),
        "{err}"
    );
}

#[test]
fn an_unreadable_chat_template_fails_at_load_naming_the_file() {
    let dir = copy_of_tiny_qwen2();
    let path = dir.path().join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] =
        serde_json::Value::String("{% for m in messages %}{{ m.content }".into());
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("tokenizer_config.json: unreadable chat template: syntax error"),
        "{err}"
    );
}

#[test]
fn a_missing_tokenizer_is_named() {
    let dir = copy_of_tiny_qwen2();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("tokenizer.json: missing"), "{err}");
}

#[test]
fn an_input_mask_of_the_wrong_width_is_an_error_not_a_panic() {
    let model =
        LanguageModel::from_folder(&fixture("tiny-qwen2"), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    let err = model.forward_logits(&ids, Some(&mask)).unwrap_err();
    assert!(matches!(err, ModelError::Invalid(_)));
    assert!(
        err.to_string().contains("attention_mask must be [1, 3]"),
        "{err}"
    );
}
