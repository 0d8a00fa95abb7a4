//! Model resolution: a local folder, or `ORG/NAME` in the Hugging Face cache layout
//! (`models--ORG--NAME/refs/main` -> `snapshots/<revision>/`), downloaded into that cache with
//! `hf-hub` when allowed.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The files a model folder needs, as listed in error messages.
pub const REQUIRED_FILES: &str = "config.json, tokenizer.json, tokenizer_config.json, generation_config.json (optional) and model.safetensors (or model.safetensors.index.json with its shards)";

/// Where and how to look for hub models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache folder (the one holding `models--ORG--NAME`).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    /// The revision (branch) to resolve, `main` by default.
    pub revision: String,
}

impl HubOptions {
    /// Options from the environment: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`.
    pub fn from_env() -> Self {
        let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        let cache_dir = if let Some(dir) = env("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = env("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            let home = env("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("huggingface").join("hub")
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        HubOptions {
            cache_dir,
            offline,
            revision: "main".to_string(),
        }
    }
}

/// Resolves `model` with options from the environment (see [`resolve_model_with`]).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    resolve_model_with(model, &HubOptions::from_env())
}

/// Resolves a model argument to a local path: an existing folder (or file, e.g. a `.gguf`) is
/// used as it is; `ORG/NAME` is looked up in the hub cache and, unless offline, downloaded into it.
pub fn resolve_model_with(model: &str, options: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some((org, name)) = split_repo_id(model) else {
        return Err(ModelError::NotFound {
            model: model.to_string(),
            message: format!(
                "no such folder; pass a model folder holding {REQUIRED_FILES}, or a Hugging Face id ORG/NAME"
            ),
        });
    };
    let repo_dir = options.cache_dir.join(format!("models--{org}--{name}"));
    if let Some(snapshot) = cached_snapshot(&repo_dir, &options.revision)
        && is_complete(&snapshot)
    {
        return Ok(snapshot);
    }
    let instructions = format!(
        "put {REQUIRED_FILES} in {}/snapshots/<revision>/ and write <revision> to {}/refs/{}, or pass --model with a local folder holding them",
        repo_dir.display(),
        repo_dir.display(),
        options.revision
    );
    if options.offline {
        return Err(ModelError::NotFound {
            model: model.to_string(),
            message: format!(
                "not in the Hugging Face cache at {} and HF_HUB_OFFLINE forbids downloading; {instructions}",
                options.cache_dir.display()
            ),
        });
    }
    download(model, options).map_err(|reason| ModelError::NotFound {
        model: model.to_string(),
        message: format!(
            "not in the Hugging Face cache at {} and the download failed ({reason}); {instructions}",
            options.cache_dir.display()
        ),
    })
}

/// `ORG/NAME` split in two when `model` has that shape.
fn split_repo_id(model: &str) -> Option<(&str, &str)> {
    let (org, name) = model.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(org) && valid(name)).then_some((org, name))
}

/// The snapshot folder `refs/<revision>` points to; if no ref exists, the only snapshot.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let dir = snapshots.join(commit.trim());
        return dir.is_dir().then_some(dir);
    }
    let direct = snapshots.join(revision);
    if direct.is_dir() {
        return Some(direct);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    (dirs.len() == 1).then(|| dirs.remove(0))
}

/// Whether a folder has a config, a tokenizer and weights.
fn is_complete(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && dir.join("tokenizer.json").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// Downloads the model's files into the cache and returns the snapshot folder.
fn download(model: &str, options: &HubOptions) -> Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(options.cache_dir.clone())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        model.to_string(),
        hf_hub::RepoType::Model,
        options.revision.clone(),
    ));
    let config = repo
        .get("config.json")
        .map_err(|e| format!("config.json: {e}"))?;
    repo.get("tokenizer.json")
        .map_err(|e| format!("tokenizer.json: {e}"))?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = repo.get(optional);
    }
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(single) => {
            let index = repo.get("model.safetensors.index.json").map_err(|e| {
                format!("model.safetensors: {single}; model.safetensors.index.json: {e}")
            })?;
            let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let mut shards: Vec<&str> = json
                .get("weight_map")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.values().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(|e| format!("{shard}: {e}"))?;
            }
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the downloaded config.json has no folder".to_string())
}
