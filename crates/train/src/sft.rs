//! Supervised fine-tuning: TRL's prompt-completion data, tokenized as TRL does, with the loss
//! on completion tokens only.
//!
//! Conversational rows (`prompt` and `completion` are chat lists) are rendered with the model's
//! chat template: the prompt with the generation prompt, then prompt + completion; the
//! completion's tokens are what the second adds to the first (TRL's
//! `DataCollatorForLanguageModeling` with `completion_only_loss`). Standard rows (strings) are
//! tokenized as `prompt` then `prompt + completion`, with no template. The loss is the mean
//! cross-entropy over every completion token of the optimiser step's batch (summed over its
//! micro-batches and divided by their token count, as transformers does since 4.46).

use std::io::{BufRead, BufReader};
use std::path::Path;

use afterburner_model::{ChatMessage, LanguageModel, Tensor};
use serde_json::Value;

use crate::TrainError;

/// One prompt and its completion, as messages (conversational) or text (standard).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptCompletion {
    /// Chat lists: the prompt's messages, the completion's (assistant) messages.
    Conversational {
        /// The prompt.
        prompt: Vec<ChatMessage>,
        /// The completion.
        completion: Vec<ChatMessage>,
    },
    /// Plain text.
    Standard {
        /// The prompt.
        prompt: String,
        /// The completion.
        completion: String,
    },
}

/// A tokenized example: ids and the position where the completion starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokenized {
    /// Prompt then completion tokens.
    pub ids: Vec<u32>,
    /// Index of the first completion token (>= 1).
    pub completion_start: usize,
}

impl Tokenized {
    /// Completion tokens (the loss's count).
    pub fn completion_tokens(&self) -> usize {
        self.ids.len() - self.completion_start
    }
}

/// A chat list (`[{"role", "content"}]`) of a row's field `what`; the error says which message.
pub fn chat_messages(value: &Value, what: &str) -> Result<Vec<ChatMessage>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("`{what}` is neither a string nor a list of messages"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
                _ => Err(format!("`{what}[{i}]` needs string `role` and `content`")),
            }
        })
        .collect()
}

/// Reads a file of training rows, JSON Lines or Parquet (by the `.parquet` extension, as
/// `afterburner data --file-format parquet` writes it), each row parsed by `parse` (its error is
/// the reason). A row that does not fit, or a file with no rows, is an error naming the file, the
/// row and why; nothing is skipped silently. Blank JSONL lines are ignored.
pub fn read_rows<T>(
    path: &Path,
    mut parse: impl FnMut(&Value) -> Result<T, String>,
) -> Result<Vec<T>, TrainError> {
    let rows = if path.extension().is_some_and(|e| e == "parquet") {
        parquet_values(path)?
    } else {
        jsonl_values(path)?
    };
    let mut out = Vec::with_capacity(rows.len());
    for (n, row) in rows {
        let row = row
            .and_then(|row| parse(&row))
            .map_err(|reason| TrainError::Data {
                path: path.to_path_buf(),
                row: n,
                reason,
            })?;
        out.push(row);
    }
    if out.is_empty() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            row: 0,
            reason: "no rows".into(),
        });
    }
    Ok(out)
}

/// A file's rows as JSON values, each with its 1-based row number (or why it is not a row).
type NumberedRows = Vec<(usize, Result<Value, String>)>;

/// The JSON objects of a JSON Lines file, blank lines left out.
fn jsonl_values(path: &Path) -> Result<NumberedRows, TrainError> {
    let file = std::fs::File::open(path).map_err(|e| TrainError::io("open", path, e))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io("read", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push((
            n + 1,
            serde_json::from_str::<Value>(&line).map_err(|e| format!("not JSON: {e}")),
        ));
    }
    Ok(out)
}

/// The rows of a Parquet file as JSON objects (strings, numbers, structs as objects, lists as
/// arrays: a chat list reads back as `[{"role", "content"}]`).
fn parquet_values(path: &Path) -> Result<NumberedRows, TrainError> {
    use parquet::file::reader::SerializedFileReader;
    let file = std::fs::File::open(path).map_err(|e| TrainError::io("open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| TrainError::Data {
        path: path.to_path_buf(),
        row: 0,
        reason: format!("not a Parquet file: {e}"),
    })?;
    Ok(reader
        .into_iter()
        .enumerate()
        .map(|(n, row)| {
            (
                n + 1,
                row.map(|r| r.to_json_value())
                    .map_err(|e| format!("unreadable Parquet row: {e}")),
            )
        })
        .collect())
}

/// Reads prompt-completion rows from a JSONL or Parquet file (`afterburner data sft --format
/// trl`, or any TRL prompt-completion dataset), as [`read_rows`] does.
pub fn read_prompt_completion(path: &Path) -> Result<Vec<PromptCompletion>, TrainError> {
    read_rows(path, |row| {
        let prompt = row.get("prompt").ok_or("no `prompt`")?;
        let completion = row
            .get("completion")
            .ok_or("no `completion` (a prompt-completion row is needed)")?;
        Ok(match (prompt, completion) {
            (Value::String(p), Value::String(c)) => PromptCompletion::Standard {
                prompt: p.clone(),
                completion: c.clone(),
            },
            (p, c) => {
                let prompt = chat_messages(p, "prompt")?;
                let completion = chat_messages(c, "completion")?;
                if completion.is_empty() {
                    return Err("`completion` has no message".into());
                }
                PromptCompletion::Conversational { prompt, completion }
            }
        })
    })
}

/// Tokenizes `example` for `model`; `None` when it is longer than `max_length` tokens.
pub fn tokenize(
    model: &LanguageModel,
    example: &PromptCompletion,
    max_length: usize,
) -> Result<Option<Tokenized>, TrainError> {
    let err = |e: afterburner_model::ModelError| TrainError::Model(e.to_string());
    let (prompt_text, full_text) = match example {
        PromptCompletion::Conversational { prompt, completion } => {
            let prompt_text = model.render_chat(prompt, true).map_err(err)?;
            let mut all = prompt.clone();
            all.extend(completion.iter().cloned());
            let full_text = model.render_chat(&all, false).map_err(err)?;
            (prompt_text, full_text)
        }
        PromptCompletion::Standard { prompt, completion } => {
            (prompt.clone(), format!("{prompt}{completion}"))
        }
    };
    let add_special = matches!(example, PromptCompletion::Standard { .. });
    let prompt_ids = model
        .tokenizer()
        .encode(&prompt_text, add_special)
        .map_err(err)?;
    let ids = model
        .tokenizer()
        .encode(&full_text, add_special)
        .map_err(err)?;
    if !ids.starts_with(&prompt_ids) || ids.len() <= prompt_ids.len() {
        return Err(TrainError::Config(
            "the tokenized prompt + completion does not start with the tokenized prompt (the \
             chat template renders the prompt differently once the answer follows)"
                .into(),
        ));
    }
    if ids.len() > max_length {
        return Ok(None);
    }
    Ok(Some(Tokenized {
        completion_start: prompt_ids.len().max(1),
        ids,
    }))
}

/// Log-probabilities of each completion token of `example` under `model` (`[completion]`).
pub fn completion_logps(model: &LanguageModel, example: &Tokenized) -> Result<Tensor, TrainError> {
    let mut one = batch_completion_logps(model, &[example])?;
    one.pop()
        .ok_or_else(|| TrainError::Model("no log-probabilities".into()))
}

/// Most tokens (padding included) the trainers put in one forward pass: batching makes the
/// matrix products larger and the passes fewer, and the activations kept for backward grow
/// with it.
pub const TOKENS_PER_FORWARD: usize = 1024;

/// Splits `items` into consecutive micro-batches of at most [`TOKENS_PER_FORWARD`] padded
/// tokens (`len` gives an item's tokens; a longer item goes alone).
pub fn micro_batches<T>(items: &[T], len: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut width) = (0, 0);
    for (k, item) in items.iter().enumerate() {
        let w = width.max(len(item));
        if k > start && w * (k + 1 - start) > TOKENS_PER_FORWARD {
            out.push(&items[start..k]);
            start = k;
            width = len(item);
        } else {
            width = w;
        }
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Log-probabilities of each completion token of each of `examples`, in one forward pass over
/// them right-padded into a batch (causal attention: padding after a sequence never reaches
/// it). The head runs on the positions that predict completion tokens only, its log-softmax
/// fused ([`afterburner_model::CausalLm::head_log_probs`]). One `[completion]` tensor per example.
pub fn batch_completion_logps(
    model: &LanguageModel,
    examples: &[&Tokenized],
) -> Result<Vec<Tensor>, TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let device = model.model().device().clone();
    let width = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(examples.len() * width);
    let (mut rows, mut targets, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (b, example) in examples.iter().enumerate() {
        let (n, start) = (example.ids.len(), example.completion_start);
        if start == 0 || start >= n {
            return Err(TrainError::Config(format!(
                "a completion starting at token {start} of {n}"
            )));
        }
        ids.extend(&example.ids);
        ids.extend(std::iter::repeat_n(0u32, width - n));
        // Hidden states at positions start-1 .. n-1 predict tokens start .. n.
        rows.extend((start - 1..n - 1).map(|p| (b * width + p) as u32));
        targets.extend(&example.ids[start..]);
        counts.push(n - start);
    }
    if examples.is_empty() {
        return Ok(Vec::new());
    }
    let input = Tensor::from_vec(ids, (examples.len(), width), &device).map_err(err)?;
    let hidden = model
        .model()
        .hidden_states(&input, None, None)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    let hidden_size = hidden.dim(2).map_err(err)?;
    let index = Tensor::from_vec(rows, targets.len(), &device).map_err(err)?;
    let picked = hidden
        .reshape((examples.len() * width, hidden_size))
        .and_then(|h| h.index_select(&index, 0))
        .map_err(err)?;
    let logps = model
        .model()
        .head_log_probs(&picked, &targets)
        .map_err(|e| TrainError::Model(e.to_string()))?;
    let mut out = Vec::with_capacity(counts.len());
    let mut at = 0;
    for count in counts {
        out.push(logps.narrow(0, at, count).map_err(err)?);
        at += count;
    }
    Ok(out)
}

/// The summed negative log-likelihood of `example`'s completion tokens (a scalar tensor).
pub fn completion_nll(model: &LanguageModel, example: &Tokenized) -> Result<Tensor, TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    completion_logps(model, example)?
        .sum_all()
        .and_then(|s| s.neg())
        .map_err(err)
}
