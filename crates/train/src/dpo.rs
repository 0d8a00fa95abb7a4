//! Direct preference optimisation: TRL's preference rows, tokenized as `DPOTrainer` does, and
//! its sigmoid loss with the reference policy taken from the same model with the adapters off
//! (TRL's PEFT default: no second copy of the model).
//!
//! For a pair, with `logp` the summed log-probability of a completion's tokens given the prompt,
//! `delta = (logp_policy(chosen) - logp_ref(chosen)) - (logp_policy(rejected) -
//! logp_ref(rejected))` and the loss is `-log sigmoid(beta * delta)`, averaged over the pairs of
//! the batch (`loss_type="sigmoid"`, TRL's default, `beta` 0.1).

use std::path::Path;

use afterburner_model::{LanguageModel, Tensor};
use serde_json::Value;

use crate::TrainError;
use crate::sft::{
    PromptCompletion, Tokenized, batch_completion_logps, chat_messages, read_rows, tokenize,
};

/// A prompt with a preferred and a dispreferred completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    /// The prompt with the chosen completion.
    pub chosen: PromptCompletion,
    /// The prompt with the rejected completion.
    pub rejected: PromptCompletion,
}

/// Reads preference rows (`prompt`, `chosen`, `rejected`; TRL's conversational or standard
/// form, as `afterburner data dpo --format trl` writes) from a JSONL or Parquet file. A row
/// that does not fit is an error naming the file, the row and why.
pub fn read_preferences(path: &Path) -> Result<Vec<Preference>, TrainError> {
    read_rows(path, |row| {
        let field = |name: &str| {
            row.get(name)
                .ok_or_else(|| format!("no `{name}` (a preference row is needed)"))
        };
        let (prompt, chosen, rejected) = (field("prompt")?, field("chosen")?, field("rejected")?);
        Ok(match (prompt, chosen, rejected) {
            (Value::String(p), Value::String(c), Value::String(r)) => Preference {
                chosen: PromptCompletion::Standard {
                    prompt: p.clone(),
                    completion: c.clone(),
                },
                rejected: PromptCompletion::Standard {
                    prompt: p.clone(),
                    completion: r.clone(),
                },
            },
            (p, c, r) => {
                let prompt = chat_messages(p, "prompt")?;
                let chosen = chat_messages(c, "chosen")?;
                let rejected = chat_messages(r, "rejected")?;
                if chosen.is_empty() || rejected.is_empty() {
                    return Err("`chosen` or `rejected` has no message".into());
                }
                Preference {
                    chosen: PromptCompletion::Conversational {
                        prompt: prompt.clone(),
                        completion: chosen,
                    },
                    rejected: PromptCompletion::Conversational {
                        prompt,
                        completion: rejected,
                    },
                }
            }
        })
    })
}

/// A tokenized pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// Prompt + chosen.
    pub chosen: Tokenized,
    /// Prompt + rejected.
    pub rejected: Tokenized,
}

/// Tokenizes a pair; `None` when either side is longer than `max_length` tokens.
pub fn tokenize_pair(
    model: &LanguageModel,
    pair: &Preference,
    max_length: usize,
) -> Result<Option<TokenizedPair>, TrainError> {
    let chosen = tokenize(model, &pair.chosen, max_length)?;
    let rejected = tokenize(model, &pair.rejected, max_length)?;
    Ok(chosen
        .zip(rejected)
        .map(|(chosen, rejected)| TokenizedPair { chosen, rejected }))
}

/// The reference log-probabilities of a pair, `(chosen, rejected)`: the model with its adapters
/// switched off (detached: no gradient).
pub fn reference_logps(
    model: &mut LanguageModel,
    adapters: &dyn crate::Reference,
    pair: &TokenizedPair,
) -> Result<(f64, f64), TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    adapters.detach(model.model_mut());
    let result = (|| {
        let (c, r) = pair_logps(model, pair)?;
        let value = |t: Tensor| t.to_scalar::<f32>().map(f64::from).map_err(err);
        Ok((value(c)?, value(r)?))
    })();
    adapters.reattach(model.model_mut());
    result
}

/// The summed completion log-probabilities of a pair's chosen and rejected answers (scalar
/// tensors), from one forward pass over both.
fn pair_logps(model: &LanguageModel, pair: &TokenizedPair) -> Result<(Tensor, Tensor), TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let both = batch_completion_logps(model, &[&pair.chosen, &pair.rejected])?;
    let [chosen, rejected] = both.as_slice() else {
        return Err(TrainError::Model(
            "a pair without two log-probabilities".into(),
        ));
    };
    Ok((
        chosen.sum_all().map_err(err)?,
        rejected.sum_all().map_err(err)?,
    ))
}

/// One pair's DPO loss and what TRL logs of it.
#[derive(Debug)]
pub struct PairLoss {
    /// `-log sigmoid(beta * delta)` (a scalar tensor, differentiable in the adapters).
    pub loss: Tensor,
    /// `beta * (logp(chosen) - ref(chosen))`.
    pub chosen_reward: f64,
    /// `beta * (logp(rejected) - ref(rejected))`.
    pub rejected_reward: f64,
}

/// The sigmoid DPO loss of `pair` under the policy (adapters on), given its reference
/// log-probabilities.
pub fn pair_loss(
    model: &LanguageModel,
    pair: &TokenizedPair,
    reference: (f64, f64),
    beta: f64,
) -> Result<PairLoss, TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let (chosen, rejected) = pair_logps(model, pair)?;
    let chosen_ratio = (&chosen - reference.0).map_err(err)?;
    let rejected_ratio = (&rejected - reference.1).map_err(err)?;
    let delta = (&chosen_ratio - &rejected_ratio).map_err(err)?;
    // -log sigmoid(x) = softplus(-x) = log(1 + exp(-x)), computed stably.
    let x = (delta * beta).map_err(err)?;
    let loss = softplus_neg(&x).map_err(err)?;
    let value = |t: &Tensor| t.to_scalar::<f32>().map(|v| v as f64).map_err(err);
    Ok(PairLoss {
        chosen_reward: beta * value(&chosen_ratio)?,
        rejected_reward: beta * value(&rejected_ratio)?,
        loss,
    })
}

/// `log(1 + exp(-x))` for a scalar tensor, stable for large `|x|`:
/// `max(-x, 0) + log(1 + exp(-|x|))`.
fn softplus_neg(x: &Tensor) -> candle_core::Result<Tensor> {
    let neg = x.neg()?;
    let relu = neg.relu()?;
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    relu + tail
}
