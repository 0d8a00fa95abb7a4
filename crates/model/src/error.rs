//! The crate's error type: every failure names what went wrong and where (file, tensor, field).

use std::path::PathBuf;

/// Everything that can go wrong while resolving, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing, unreadable or malformed (`config.json`, safetensors, tokenizer files, ...).
    #[error("{}: {message}", path.display())]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A weight tensor is missing, of the wrong shape or unreadable.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        /// The weights file (or in-memory origin) the tensor was looked up in.
        path: PathBuf,
        /// The tensor's Hugging Face name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// A prompt does not fit in the model's context window.
    #[error(
        "prompt {index} has {prompt_tokens} tokens but the model's context is {context} tokens (max_position_embeddings)"
    )]
    PromptTooLong {
        /// Index of the prompt in its batch.
        index: usize,
        /// Number of tokens of the prompt.
        prompt_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// A model argument resolves to nothing usable (local folder or Hugging Face cache).
    #[error("model `{model}`: {message}")]
    NotFound {
        /// The model argument as given.
        model: String,
        /// Where it was looked for and what to do.
        message: String,
    },
    /// Invalid arguments to a call (generation settings, batch shapes, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Rendering a chat template failed (template error or `raise_exception`).
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// A [`ModelError::File`] for `path` with `message`.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::File {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A [`ModelError::Tensor`] for `tensor` in `path` with `message`.
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, message: impl Into<String>) -> Self {
        ModelError::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
