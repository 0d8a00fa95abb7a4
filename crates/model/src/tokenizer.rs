//! `TextTokenizer`: a Hugging Face `tokenizer.json` through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A tokenizer that encodes text to token ids and back, recognising special tokens in raw text
/// as transformers does.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl TextTokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::file(
                path,
                "missing (the tokenizer is required)",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::file(path, format!("not a readable tokenizer.json: {e}")))?;
        Ok(TextTokenizer {
            inner,
            origin: path.to_path_buf(),
        })
    }

    /// Wraps a tokenizer built in code (e.g. from GGUF metadata); `origin` names it in errors.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, origin: impl Into<PathBuf>) -> Self {
        TextTokenizer {
            inner,
            origin: origin.into(),
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Where the tokenizer was read from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a
    /// BOS token), as transformers' `tokenizer(text)` does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; `skip_special_tokens` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| {
            ModelError::Tokenizer(format!("cannot decode {} token ids: {e}", ids.len()))
        })
    }

    /// The id of a token given by its text (e.g. `<|im_end|>`), if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
