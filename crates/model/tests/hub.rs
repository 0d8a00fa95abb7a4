//! Model resolution: local folders and the Hugging Face cache layout (no network in tests).

use std::path::{Path, PathBuf};

use afterburner_model::{DType, Device, HubOptions, LanguageModel, ModelError, resolve_model_with};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        offline: true,
        revision: "main".into(),
    }
}

fn snapshot_with_tiny_qwen2(cache: &Path, revision: &str) -> PathBuf {
    let snapshot = cache.join("models--test--tiny/snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    snapshot
}

#[test]
fn a_local_folder_resolves_to_itself() {
    let dir = fixture("tiny-qwen2");
    let resolved =
        resolve_model_with(dir.to_str().unwrap(), &offline(Path::new("/nonexistent"))).unwrap();
    assert_eq!(resolved, dir);
}

#[test]
fn org_name_resolves_through_refs_main_to_its_snapshot_and_loads() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = snapshot_with_tiny_qwen2(cache.path(), "abc");
    std::fs::create_dir_all(cache.path().join("models--test--tiny/refs")).unwrap();
    std::fs::write(cache.path().join("models--test--tiny/refs/main"), "abc\n").unwrap();
    let resolved = resolve_model_with("test/tiny", &offline(cache.path())).unwrap();
    assert_eq!(resolved, snapshot);
    let model = LanguageModel::from_folder(&resolved, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, 416);
}

#[test]
fn a_single_snapshot_without_a_ref_is_used() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = snapshot_with_tiny_qwen2(cache.path(), "abc");
    assert_eq!(
        resolve_model_with("test/tiny", &offline(cache.path())).unwrap(),
        snapshot
    );
}

#[test]
fn offline_with_an_empty_cache_says_which_files_to_put_where() {
    let cache = tempfile::tempdir().unwrap();
    let err =
        resolve_model_with("Qwen/Qwen2.5-Coder-0.5B-Instruct", &offline(cache.path())).unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }));
    let text = err.to_string();
    let repo = cache
        .path()
        .join("models--Qwen--Qwen2.5-Coder-0.5B-Instruct");
    assert!(
        text.starts_with("model `Qwen/Qwen2.5-Coder-0.5B-Instruct`: not in the Hugging Face cache"),
        "{text}"
    );
    assert!(
        text.contains("HF_HUB_OFFLINE forbids downloading"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}/snapshots/<revision>/", repo.display())),
        "{text}"
    );
    assert!(
        text.contains("config.json, tokenizer.json, tokenizer_config.json"),
        "{text}"
    );
    assert!(text.contains("model.safetensors"), "{text}");
}

#[test]
fn an_incomplete_snapshot_is_not_used() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = snapshot_with_tiny_qwen2(cache.path(), "abc");
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = resolve_model_with("test/tiny", &offline(cache.path())).unwrap_err();
    assert!(
        err.to_string().contains("not in the Hugging Face cache"),
        "{err}"
    );
}

#[test]
fn a_path_that_is_neither_a_folder_nor_an_id_is_an_error() {
    let err = resolve_model_with("./no/such/folder/here", &offline(Path::new("/tmp"))).unwrap_err();
    assert!(err.to_string().contains("no such folder"), "{err}");
}

#[test]
fn load_from_path_takes_a_hugging_face_folder_and_names_what_a_bare_folder_lacks() {
    let model = LanguageModel::from_path(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, 400);
    let empty = tempfile::tempdir().unwrap();
    let err = LanguageModel::from_path(empty.path(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json: missing: a model folder needs"),
        "{err}"
    );
}
