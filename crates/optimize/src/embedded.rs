//! The embedded backend: a [`ChatModel`] that runs an [`afterburner_model::LanguageModel`] in
//! this process instead of calling a server.
//!
//! Messages go through the model's chat template; generation uses the loop's temperature and
//! token limit, top-p/top-k from the model's `generation_config.json` unless given, and the seed
//! `base seed + draw`, so a run is reproducible draw by draw. Generations run one at a time (a
//! mutex): the model uses every core, and the loop's measurements must not overlap a generation
//! (with one problem at a time, `--concurrency 1`, they never do).
//!
//! Answers go through the same on-disk [`ResponseCache`] as the HTTP client. The key is the JSON
//! request body (the model named by its resolved path and a fingerprint of its files, the
//! messages and every sampling setting) plus the draw's tag, so a resumed or repeated run replays
//! exactly what it would otherwise generate again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use afterburner_model::{ChatMessage, GenerationSettings, LanguageModel};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cache::{ResponseCache, replay_or_answer};
use crate::{ChatModel, Completion, LlmError, Message, Usage};

/// How the embedded model samples.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedSettings {
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Most new tokens per answer.
    pub max_tokens: usize,
    /// Base seed; draw `d` samples with `seed + d`.
    pub seed: u64,
    /// Nucleus threshold; `None`: the model's default.
    pub top_p: Option<f64>,
    /// Top-k cut; `None`: the model's default.
    pub top_k: Option<usize>,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            temperature: 0.7,
            max_tokens: 4096,
            seed: 0,
            top_p: None,
            top_k: None,
        }
    }
}

/// A [`ChatModel`] backed by a model running in this process.
#[derive(Debug)]
pub struct EmbeddedChat {
    model: Mutex<LanguageModel>,
    name: String,
    path: PathBuf,
    fingerprint: String,
    settings: EmbeddedSettings,
    cache: Option<ResponseCache>,
}

/// How many leading bytes of each weights file go into a model's fingerprint.
const FINGERPRINT_PREFIX: u64 = 1 << 20;

/// A content fingerprint of a model file or folder: SHA-256 over its small metadata files
/// (`config.json`, `generation_config.json`, `tokenizer_config.json`, `tokenizer.json`) whole,
/// and each weights file's (`*.safetensors`, `*.gguf`) name, size and first MiB. Copying or
/// moving the files keeps it; changing the weights or the config changes it.
pub fn model_fingerprint(path: &Path) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    let mut weights = Vec::new();
    if path.is_dir() {
        for name in [
            "config.json",
            "generation_config.json",
            "tokenizer_config.json",
            "tokenizer.json",
        ] {
            if let Ok(bytes) = std::fs::read(path.join(name)) {
                hash.update(name.as_bytes());
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
        }
        for entry in std::fs::read_dir(path)? {
            let file = entry?.path();
            let is_weights = file.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("gguf")
            });
            if is_weights && file.is_file() {
                weights.push(file);
            }
        }
        weights.sort();
    } else {
        weights.push(path.to_path_buf());
    }
    for file in weights {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = std::fs::metadata(&file)?.len();
        hash.update(name.as_bytes());
        hash.update(size.to_le_bytes());
        let mut prefix = Vec::new();
        std::fs::File::open(&file)?
            .take(FINGERPRINT_PREFIX)
            .read_to_end(&mut prefix)?;
        hash.update(&prefix);
    }
    Ok(hash
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl EmbeddedChat {
    /// Wraps a loaded model. `name` is what completions report as their model; the model's
    /// origin (canonicalised) and a fingerprint of its files name it in cache keys.
    pub fn new(
        model: LanguageModel,
        name: impl Into<String>,
        settings: EmbeddedSettings,
        cache: Option<ResponseCache>,
    ) -> Result<Self, LlmError> {
        let origin = model.origin().to_path_buf();
        let path = std::fs::canonicalize(&origin).unwrap_or(origin);
        let fingerprint = model_fingerprint(&path).map_err(|e| LlmError::Backend {
            backend: embedded_url(&path),
            reason: format!("cannot read the model files to fingerprint them: {e}"),
        })?;
        Ok(EmbeddedChat {
            model: Mutex::new(model),
            name: name.into(),
            path,
            fingerprint,
            settings,
            cache,
        })
    }

    /// The model's resolved path (a folder or a `.gguf` file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `embedded:<resolved path>`: what the run manifest and cache entries record as the endpoint.
    pub fn url(&self) -> String {
        embedded_url(&self.path)
    }

    /// The fingerprint of the model's files (see [`model_fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The sampling settings.
    pub fn settings(&self) -> &EmbeddedSettings {
        &self.settings
    }

    /// The JSON request body that keys draw `draw` of `messages` in the response cache.
    pub fn request_body(&self, messages: &[Message], draw: u64) -> Value {
        json!({
            "backend": "embedded",
            "model": self.path,
            "fingerprint": self.fingerprint,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "seed": self.settings.seed.wrapping_add(draw),
            "top_p": self.settings.top_p,
            "top_k": self.settings.top_k,
        })
    }

    /// Generates the answer to `messages` for draw `draw` (no cache).
    pub fn generate(&self, messages: &[Message], draw: u64) -> Result<Completion, LlmError> {
        let chat: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.as_str(), m.content.clone()))
            .collect();
        let settings = GenerationSettings {
            max_new_tokens: self.settings.max_tokens,
            temperature: Some(self.settings.temperature),
            top_p: self.settings.top_p,
            top_k: self.settings.top_k,
            seed: self.settings.seed.wrapping_add(draw),
            stop: Vec::new(),
        };
        let start = Instant::now();
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let generation = model
            .chat(&chat, &settings)
            .map_err(|e| LlmError::Backend {
                backend: self.url(),
                reason: format!("the embedded model failed: {e}"),
            })?;
        drop(model);
        Ok(Completion {
            content: generation.text.clone(),
            finish_reason: Some(generation.finish_reason.as_str().to_string()),
            model: Some(self.name.clone()),
            usage: Some(Usage {
                prompt_tokens: Some(generation.prompt_tokens() as u64),
                completion_tokens: Some(generation.completion_tokens() as u64),
            }),
            from_cache: false,
            attempts: 1,
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// `embedded:<path>`.
fn embedded_url(path: &Path) -> String {
    format!("embedded:{}", path.display())
}

impl ChatModel for EmbeddedChat {
    fn complete(&self, messages: &[Message], tag: &str, draw: u64) -> Result<Completion, LlmError> {
        let body = self.request_body(messages, draw);
        replay_or_answer(self.cache.as_ref(), &self.url(), tag, body, || {
            self.generate(messages, draw)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afterburner_model::{DType, Device};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../model/tests/fixtures")
            .join(name)
    }

    fn tiny(settings: EmbeddedSettings, cache: Option<ResponseCache>) -> EmbeddedChat {
        let model =
            LanguageModel::from_folder(&fixture("tiny-qwen2"), DType::F32, &Device::Cpu).unwrap();
        EmbeddedChat::new(model, "tiny-qwen2", settings, cache).unwrap()
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::system("You write Python."),
            Message::user("def add(a, b):"),
        ]
    }

    #[test]
    fn the_same_draw_gives_the_same_answer_and_reports_tokens_and_finish() {
        let settings = EmbeddedSettings {
            temperature: 0.9,
            max_tokens: 12,
            seed: 7,
            ..EmbeddedSettings::default()
        };
        let chat = tiny(settings, None);
        let a = chat.complete(&messages(), "p/1", 1).unwrap();
        let b = chat.complete(&messages(), "p/1", 1).unwrap();
        assert_eq!(a.content, b.content);
        assert!(!a.from_cache && a.attempts == 1);
        assert_eq!(a.model.as_deref(), Some("tiny-qwen2"));
        let usage = a.usage.unwrap();
        assert!(usage.prompt_tokens.unwrap() > 5);
        let produced = usage.completion_tokens.unwrap();
        assert!((1..=12).contains(&produced), "{produced}");
        let finish = a.finish_reason.unwrap();
        assert!(finish == "stop" || finish == "length", "{finish}");
        if produced < 12 {
            assert_eq!(finish, "stop");
        }
    }

    #[test]
    fn answers_are_cached_under_the_model_path_fingerprint_settings_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::new(dir.path());
        let chat = tiny(
            EmbeddedSettings {
                max_tokens: 8,
                ..EmbeddedSettings::default()
            },
            Some(cache),
        );
        let first = chat.complete(&messages(), "p/0", 0).unwrap();
        let again = chat.complete(&messages(), "p/0", 0).unwrap();
        assert!(!first.from_cache);
        assert!(again.from_cache && again.attempts == 0);
        assert_eq!(first.content, again.content);
        let other_tag = chat.complete(&messages(), "p/1", 0).unwrap();
        assert!(!other_tag.from_cache);
        let body = chat.request_body(&messages(), 3);
        assert_eq!(body["seed"], 3);
        assert_eq!(body["fingerprint"], chat.fingerprint());
        assert!(chat.url().starts_with("embedded:/"), "{}", chat.url());
        assert!(chat.url().ends_with("tiny-qwen2"), "{}", chat.url());
    }

    #[test]
    fn fingerprints_tell_models_apart_and_survive_a_copy() {
        let qwen = model_fingerprint(&fixture("tiny-qwen2")).unwrap();
        let llama = model_fingerprint(&fixture("tiny-llama")).unwrap();
        assert_ne!(qwen, llama);
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        assert_eq!(model_fingerprint(copy.path()).unwrap(), qwen);
        std::fs::write(copy.path().join("config.json"), b"{}").unwrap();
        assert_ne!(model_fingerprint(copy.path()).unwrap(), qwen);
    }

    #[test]
    fn a_prompt_longer_than_the_context_is_an_error_naming_the_model() {
        let chat = tiny(EmbeddedSettings::default(), None);
        let long = vec![Message::user("x = 1\n".repeat(400))];
        let err = chat.complete(&long, "p/0", 0).unwrap_err().to_string();
        assert!(err.contains("embedded:"), "{err}");
        assert!(err.contains("context"), "{err}");
    }
}
