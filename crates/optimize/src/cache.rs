//! The on-disk response cache: a model's answer to a request is stored once and replayed, so
//! re-runs and resumed runs cost no model calls.
//!
//! The key is the SHA-256 of the complete JSON request body (model, messages, sampling settings)
//! and a *sample tag*. The endpoint URL is stored with the entry but is not part of the key: the
//! same model behind another address (a server restarted on another port or host) replays what
//! it already answered. The tag names the draw: the loop passes
//! `<problem id>/<iteration>`, because after a rejected candidate the next prompt is identical
//! to the previous one, and a key without the tag would replay the rejected answer forever
//! instead of sampling a new one. What replays: a resumed run builds each prompt from the stored
//! incumbent row, so an answer that arrived before an interruption is never paid for twice; a run
//! started afresh replays its generation prompts, but its later prompts carry freshly measured
//! figures and are therefore new requests. One file per entry, `<dir>/<2 hex>/<64 hex>.json`, written to a
//! temporary file and renamed into place, so concurrent writers and crashes never leave a
//! half-written entry under its final name. An entry that does not parse is a miss (and is
//! overwritten by the next answer).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chat::{Completion, LlmError};

/// What is stored per entry: enough to audit it by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key (hex).
    pub key: String,
    /// The endpoint the request went to.
    pub url: String,
    /// The sample tag.
    pub tag: String,
    /// The request body.
    pub request: serde_json::Value,
    /// The answer.
    pub completion: Completion,
    /// When it was stored (seconds since the Unix epoch).
    pub stored_at: u64,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
#[error("response cache: cannot {action} {}: {source}", path.display())]
pub struct CacheError {
    /// What was being done.
    pub action: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

/// A folder of cached model responses.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

/// The cache key of a request body, for the draw named `tag`.
pub fn cache_key(body: &serde_json::Value, tag: &str) -> String {
    let mut h = Sha256::new();
    h.update(body.to_string().as_bytes());
    h.update([0]);
    h.update(tag.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ResponseCache {
    /// A cache in folder `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResponseCache { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        let prefix = key.get(..2).unwrap_or("xx");
        self.dir.join(prefix).join(format!("{key}.json"))
    }

    /// The stored answer for `key`, if any (an unreadable entry is a miss).
    pub fn get(&self, key: &str) -> Option<Completion> {
        let path = self.path(key);
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice::<CacheEntry>(&text) {
            Ok(entry) if entry.key == key => Some(entry.completion),
            Ok(_) => {
                tracing::warn!(
                    "{}: key does not match its file name; ignored",
                    path.display()
                );
                None
            }
            Err(e) => {
                tracing::warn!("{}: not a cache entry ({e}); ignored", path.display());
                None
            }
        }
    }

    /// Stores an answer (atomically: temporary file, then rename).
    pub fn put(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        let path = self.path(&entry.key);
        let err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError {
                action,
                path,
                source,
            }
        };
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(err("create", parent))?;
        let bytes = serde_json::to_vec_pretty(entry)
            .map_err(|e| err("serialise an entry for", &path)(std::io::Error::other(e)))?;
        let tmp = parent.join(format!(
            ".{}.{}.{:?}.tmp",
            entry.key,
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = fs::File::create(&tmp).map_err(err("create", &tmp))?;
        file.write_all(&bytes).map_err(err("write", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(err("move into place", &path))
    }
}

/// Replays the answer stored for the request `body` and draw `tag`, or gets it from `answer` and
/// stores it (a store that fails is logged: the answer is still used); every backend answers
/// through this, so a cached draw is replayed the same way whoever produced it. `url` names the
/// backend in the stored entry.
pub(crate) fn replay_or_answer(
    cache: Option<&ResponseCache>,
    url: &str,
    tag: &str,
    body: serde_json::Value,
    answer: impl FnOnce() -> Result<Completion, LlmError>,
) -> Result<Completion, LlmError> {
    let key = cache_key(&body, tag);
    if let Some(cache) = cache
        && let Some(mut c) = cache.get(&key)
    {
        c.from_cache = true;
        c.attempts = 0;
        c.elapsed_ms = 0.0;
        return Ok(c);
    }
    let completion = answer()?;
    if let Some(cache) = cache {
        let entry = CacheEntry {
            key,
            url: url.to_string(),
            tag: tag.to_string(),
            request: body,
            completion: completion.clone(),
            stored_at: crate::now_secs(),
        };
        if let Err(e) = cache.put(&entry) {
            tracing::warn!("{e}; the answer is used but not cached");
        }
    }
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(text: &str) -> Completion {
        Completion {
            content: text.to_string(),
            finish_reason: Some("stop".into()),
            model: Some("m".into()),
            usage: None,
            from_cache: false,
            attempts: 1,
            elapsed_ms: 1.0,
        }
    }

    fn entry(key: &str, text: &str) -> CacheEntry {
        CacheEntry {
            key: key.to_string(),
            url: "http://x/v1/chat/completions".into(),
            tag: "p/0".into(),
            request: json!({"model": "m"}),
            completion: completion(text),
            stored_at: 0,
        }
    }

    #[test]
    fn keys_depend_on_the_body_and_tag() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let k = cache_key(&body, "p/1");
        assert_eq!(k.len(), 64);
        assert_eq!(k, cache_key(&body, "p/1"));
        assert_ne!(k, cache_key(&body, "p/2"));
        let other = json!({"model": "m", "messages": [{"role": "user", "content": "hi!"}]});
        assert_ne!(k, cache_key(&other, "p/1"));
        let model = json!({"model": "n", "messages": [{"role": "user", "content": "hi"}]});
        assert_ne!(k, cache_key(&model, "p/1"));
    }

    #[test]
    fn stored_answers_come_back_and_broken_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::new(dir.path());
        let key = "ab".repeat(32);
        assert!(cache.get(&key).is_none());
        cache.put(&entry(&key, "hello")).unwrap();
        assert_eq!(cache.get(&key).unwrap().content, "hello");
        std::fs::write(cache.path(&key), b"{cut sho").unwrap();
        assert!(cache.get(&key).is_none());
        cache.put(&entry(&key, "again")).unwrap();
        assert_eq!(cache.get(&key).unwrap().content, "again");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
