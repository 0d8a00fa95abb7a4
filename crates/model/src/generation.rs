//! Batched text generation: left-padded prefill, then token-by-token decode with a preallocated
//! key/value cache; greedy or seeded sampling; eos ids, stop strings and length limits.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ModelConfig, token_id_list};
use crate::error::{ModelError, Result};
use crate::model::{CausalLm, LogitsOutput};
use crate::sampling::{SamplingParams, SplitMix64, sample};
use crate::tokenizer::TextTokenizer;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string was produced.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The caller's token callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// `"stop"` or `"length"`, as the OpenAI API spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Per-call generation settings; `None` fields fall back to the model's `generation_config.json`
/// (missing fields of deserialized settings take [`GenerationSettings::default`]'s values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationSettings {
    /// Most tokens to generate per sequence.
    pub max_new_tokens: usize,
    /// Sampling temperature; `Some(0.0)` is greedy; `None` uses the model's default (greedy when
    /// its generation config does not sample).
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold (1 = off).
    pub top_p: Option<f64>,
    /// Top-k cut (0 = off).
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed, settings and prompt give the same tokens.
    pub seed: u64,
    /// Strings that end the completion when they appear in its text (trimmed from the text).
    pub stop: Vec<String>,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            max_new_tokens: 256,
            temperature: None,
            top_p: None,
            top_k: None,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl GenerationSettings {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationSettings {
            max_new_tokens,
            temperature: Some(0.0),
            ..Self::default()
        }
    }
}

/// The model's generation defaults (`generation_config.json`, else `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<u32>,
    /// Token used to left-pad batches.
    pub pad_token_id: Option<u32>,
    /// Whether the model samples by default.
    pub do_sample: bool,
    /// Default temperature when sampling.
    pub temperature: Option<f64>,
    /// Default top-p when sampling.
    pub top_p: Option<f64>,
    /// Default top-k when sampling.
    pub top_k: Option<usize>,
}

impl GenerationDefaults {
    /// Defaults from `config.json` alone: its eos ids, greedy decoding.
    pub fn from_config(config: &ModelConfig) -> Self {
        GenerationDefaults {
            eos_token_ids: config.eos_token_ids.clone(),
            pad_token_id: None,
            do_sample: false,
            temperature: None,
            top_p: None,
            top_k: None,
        }
    }

    /// Reads `generation_config.json` if `path` exists, else [`Self::from_config`].
    pub fn from_file_or_config(path: &Path, config: &ModelConfig) -> Result<Self> {
        if !path.is_file() {
            return Ok(Self::from_config(config));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(path, format!("not valid JSON: {e}")))?;
        let bad = |message: String| ModelError::file(path, message);
        let eos = token_id_list(json.get("eos_token_id"), "eos_token_id").map_err(bad)?;
        let pad = token_id_list(json.get("pad_token_id"), "pad_token_id").map_err(bad)?;
        let number = |key: &str| json.get(key).and_then(Value::as_f64);
        Ok(GenerationDefaults {
            eos_token_ids: if eos.is_empty() {
                config.eos_token_ids.clone()
            } else {
                eos
            },
            pad_token_id: pad.first().copied(),
            do_sample: json
                .get("do_sample")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            temperature: number("temperature"),
            top_p: number("top_p"),
            top_k: json
                .get("top_k")
                .and_then(Value::as_u64)
                .map(|k| k as usize),
        })
    }

    /// The sampling parameters `settings` resolve to: explicit settings win; otherwise the
    /// model's defaults when it samples (transformers' defaults: temperature 1, top-k 50), else greedy.
    pub fn resolve(&self, settings: &GenerationSettings) -> Result<SamplingParams> {
        let temperature = match settings.temperature {
            Some(t) => t,
            None if self.do_sample => self.temperature.unwrap_or(1.0),
            None => 0.0,
        };
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "temperature must be >= 0, found {temperature}"
            )));
        }
        let top_p = settings.top_p.or(self.top_p).unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::Invalid(format!(
                "top_p must be in (0, 1], found {top_p}"
            )));
        }
        let top_k = settings
            .top_k
            .or(self.top_k)
            .unwrap_or(if self.do_sample { 50 } else { 0 });
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k,
        })
    }
}

/// One generated completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The completion text (special tokens and the stop string removed).
    pub text: String,
    /// The new tokens, including a final eos token when generation stopped on one.
    pub token_ids: Vec<u32>,
    /// The prompt's tokens.
    pub prompt_token_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Wall time of the whole (batched) call that produced this completion.
    pub elapsed: Duration,
}

impl Generation {
    /// Number of prompt tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_token_ids.len()
    }

    /// Number of generated tokens.
    pub fn completion_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Generated tokens per second of wall time.
    pub fn tokens_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.token_ids.len() as f64 / secs
        } else {
            0.0
        }
    }
}

/// The state of one sequence of a batch during decoding.
struct Row {
    tokens: Vec<u32>,
    limit: usize,
    rng: SplitMix64,
    finish: Option<FinishReason>,
    stop_text: Option<String>,
}

/// One token just generated, as reported to a streaming callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Index of the sequence in its batch.
    pub row: usize,
    /// The token.
    pub token_id: u32,
    /// How many tokens this sequence has generated so far (including this one).
    pub generated: usize,
}

/// Generates a completion for each prompt (token ids), all in one left-padded batch.
pub fn generate(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    defaults: &GenerationDefaults,
    prompts: &[Vec<u32>],
    settings: &GenerationSettings,
) -> Result<Vec<Generation>> {
    generate_streaming(model, tokenizer, defaults, prompts, settings, &mut |_| true)
}

/// [`generate`] that reports every new token to `on_token` as soon as it is chosen (for
/// streaming); when `on_token` returns `false`, every unfinished sequence ends with
/// [`FinishReason::Cancelled`] (client gone, Ctrl-C).
pub fn generate_streaming(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    defaults: &GenerationDefaults,
    prompts: &[Vec<u32>],
    settings: &GenerationSettings,
    on_token: &mut dyn FnMut(TokenEvent) -> bool,
) -> Result<Vec<Generation>> {
    let start = Instant::now();
    let params = defaults.resolve(settings)?;
    let context = model.config().max_position_embeddings;
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ModelError::Invalid(format!("prompt {index} has no tokens")));
        }
        if prompt.len() >= context {
            return Err(ModelError::PromptTooLong {
                index,
                prompt_tokens: prompt.len(),
                context,
            });
        }
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut rows: Vec<Row> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Row {
            tokens: Vec::new(),
            limit: settings.max_new_tokens.min(context - p.len()),
            rng: SplitMix64::new(settings.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            finish: None,
            stop_text: None,
        })
        .collect();
    let steps = rows.iter().map(|r| r.limit).max().unwrap_or(0);
    if steps == 0 {
        return Ok(prompts
            .iter()
            .map(|p| Generation {
                text: String::new(),
                token_ids: Vec::new(),
                prompt_token_ids: p.clone(),
                finish_reason: FinishReason::Length,
                elapsed: start.elapsed(),
            })
            .collect());
    }
    let pad = defaults
        .pad_token_id
        .or(defaults.eos_token_ids.first().copied())
        .unwrap_or(0);
    let device = model.device();
    // Left-padded prompts and their mask; the mask grows by one column per decoded token.
    let mut mask: Vec<Vec<u32>> = Vec::with_capacity(b);
    let mut ids = Vec::with_capacity(b * longest);
    for prompt in prompts {
        let padding = longest - prompt.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
        let mut row = Vec::with_capacity(longest + steps);
        row.extend(std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1, prompt.len())));
        mask.push(row);
    }
    let mut cache = model.new_cache(b, longest + steps)?;
    let mut input = Tensor::from_vec(ids, (b, longest), device)?;
    loop {
        let width = mask[0].len();
        let mask_tensor = Tensor::from_vec(
            mask.iter().flatten().copied().collect::<Vec<u32>>(),
            (b, width),
            device,
        )?;
        let logits = model
            .forward(
                &input,
                Some(&mask_tensor),
                Some(&mut cache),
                LogitsOutput::Last,
            )?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?; // [b][v]
        let mut next = Vec::with_capacity(b);
        let mut cancelled = false;
        for (index, (row, logits)) in rows.iter_mut().zip(&logits).enumerate() {
            if row.finish.is_some() {
                next.push(pad);
                continue;
            }
            let token = sample(logits, &params, &mut row.rng);
            row.tokens.push(token);
            next.push(token);
            if defaults.eos_token_ids.contains(&token) {
                row.finish = Some(FinishReason::Stop);
            } else if !settings.stop.is_empty() {
                let text = tokenizer.decode(&row.tokens, true)?;
                if let Some(cut) = earliest_stop(&text, &settings.stop) {
                    row.stop_text = Some(text[..cut].to_string());
                    row.finish = Some(FinishReason::Stop);
                }
            }
            if row.finish.is_none() && row.tokens.len() >= row.limit {
                row.finish = Some(FinishReason::Length);
            }
            let event = TokenEvent {
                row: index,
                token_id: token,
                generated: row.tokens.len(),
            };
            if !cancelled && !on_token(event) {
                cancelled = true;
            }
        }
        if cancelled {
            for row in rows.iter_mut().filter(|r| r.finish.is_none()) {
                row.finish = Some(FinishReason::Cancelled);
            }
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        for (row, m) in rows.iter().zip(mask.iter_mut()) {
            m.push(u32::from(row.finish.is_none()));
        }
        input = Tensor::from_vec(next, (b, 1), device)?;
    }
    let elapsed = start.elapsed();
    rows.into_iter()
        .zip(prompts)
        .map(|(row, prompt)| {
            let text = match row.stop_text {
                Some(text) => text,
                None => tokenizer.decode(&row.tokens, true)?,
            };
            Ok(Generation {
                text,
                token_ids: row.tokens,
                prompt_token_ids: prompt.clone(),
                finish_reason: row.finish.unwrap_or(FinishReason::Length),
                elapsed,
            })
        })
        .collect()
}

/// Byte offset of the earliest occurrence of any non-empty stop string in `text`.
fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}
