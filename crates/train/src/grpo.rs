//! The GRPO objective as TRL's `GRPOTrainer` computes it (`loss_type="dapo"`, its default):
//! group-normalised advantages, the clipped importance ratio per token (`epsilon` low and high),
//! an optional KL penalty to the reference (`beta`, 0 by default), and token-level
//! normalisation over every completion token of the generation batch.
//!
//! Per completion token `t` of a rollout with advantage `A`:
//! `ratio = exp(logp(t) - old_logp(t))`, `loss(t) = -min(ratio A, clip(ratio, 1 - eps_low,
//! 1 + eps_high) A) + beta kl(t)` with `kl(t) = exp(ref(t) - logp(t)) - (ref(t) - logp(t)) - 1`,
//! times `ratio` when `bias_correction_kl` is set (TRL's default); the batch's loss is the sum over tokens divided by the batch's completion tokens.

use afterburner_model::{LanguageModel, Tensor};

use crate::TrainError;
use crate::sft::Tokenized;

/// The GRPO settings, named as TRL's `GRPOConfig`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoLoss {
    /// Lower clip of the ratio (`epsilon`, 0.2).
    pub epsilon_low: f64,
    /// Upper clip of the ratio (`epsilon_high`, defaults to `epsilon`).
    pub epsilon_high: f64,
    /// KL coefficient (`beta`, 0: no reference pass).
    pub beta: f64,
    /// Weight each token's KL by its importance ratio (`use_bias_correction_kl`, TRL's default).
    pub bias_correction_kl: bool,
}

impl Default for GrpoLoss {
    fn default() -> Self {
        GrpoLoss {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            bias_correction_kl: true,
        }
    }
}

/// Group-normalised advantages (TRL's `scale_rewards="group"`): each reward minus its group's
/// mean, divided by the group's standard deviation (unbiased, as `torch.std`) plus 1e-4 when
/// `scale` is set. `rewards` holds consecutive groups of `group` completions.
pub fn group_advantages(
    rewards: &[f64],
    group: usize,
    scale: bool,
) -> Result<Vec<f64>, TrainError> {
    if group == 0 || !rewards.len().is_multiple_of(group) {
        return Err(TrainError::Config(format!(
            "{} rewards do not form groups of {group}",
            rewards.len()
        )));
    }
    let mut out = Vec::with_capacity(rewards.len());
    for chunk in rewards.chunks(group) {
        let mean = chunk.iter().sum::<f64>() / group as f64;
        let std = if group > 1 {
            (chunk.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (group - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        for r in chunk {
            let a = r - mean;
            out.push(if scale { a / (std + 1e-4) } else { a });
        }
    }
    Ok(out)
}

/// Log-probabilities of each completion token of `example` under `model` (`[completion]`).
pub fn token_logps(model: &LanguageModel, example: &Tokenized) -> Result<Tensor, TrainError> {
    crate::sft::completion_logps(model, example)
}

/// One sampled completion, ready for the loss.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// Prompt + completion tokens.
    pub tokens: Tokenized,
    /// Its advantage.
    pub advantage: f64,
    /// Per completion token, the log-probabilities under the policy that sampled it; `None`
    /// when that policy is the one being updated (one step per batch): the ratio's denominator
    /// is then the detached current log-probabilities, as TRL does.
    pub old_logps: Option<Vec<f32>>,
    /// Per completion token, under the reference (needed when `beta` > 0).
    pub ref_logps: Option<Vec<f32>>,
}

/// What one rollout contributed, beside its loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RolloutStats {
    /// Completion tokens.
    pub tokens: usize,
    /// Tokens whose ratio was clipped (the clipped term was the smaller).
    pub clipped: usize,
    /// Summed per-token KL to the reference (0 without one).
    pub kl_sum: f64,
}

/// The summed per-token loss of `rollout` under `model` (divide by the batch's completion
/// tokens for TRL's normalisation), with its statistics.
pub fn rollout_loss(
    model: &LanguageModel,
    rollout: &Rollout,
    settings: &GrpoLoss,
) -> Result<(Tensor, RolloutStats), TrainError> {
    let logps = token_logps(model, &rollout.tokens)?;
    loss_of_logps(&logps, rollout, settings)
}

/// Splits `rollouts` into consecutive micro-batches of at most
/// [`crate::sft::TOKENS_PER_FORWARD`] padded tokens (see [`crate::sft::micro_batches`]).
pub fn micro_batches(rollouts: &[Rollout]) -> Vec<&[Rollout]> {
    crate::sft::micro_batches(rollouts, |r| r.tokens.ids.len())
}

/// [`rollout_loss`] summed over `rollouts`, computed in one forward pass over them (see
/// [`crate::sft::batch_completion_logps`]), with their statistics summed.
pub fn batch_loss(
    model: &LanguageModel,
    rollouts: &[Rollout],
    settings: &GrpoLoss,
) -> Result<(Tensor, RolloutStats), TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let tokens: Vec<&Tokenized> = rollouts.iter().map(|r| &r.tokens).collect();
    let logps = crate::sft::batch_completion_logps(model, &tokens)?;
    let mut total: Option<Tensor> = None;
    let mut stats = RolloutStats::default();
    for (logps, rollout) in logps.iter().zip(rollouts) {
        let (loss, s) = loss_of_logps(logps, rollout, settings)?;
        total = Some(match total {
            None => loss,
            Some(t) => (t + loss).map_err(err)?,
        });
        stats.tokens += s.tokens;
        stats.clipped += s.clipped;
        stats.kl_sum += s.kl_sum;
    }
    let total = total.ok_or_else(|| TrainError::Config("a batch without rollouts".into()))?;
    Ok((total, stats))
}

/// The summed per-token loss of `rollout` given its completion tokens' log-probabilities
/// under the policy being trained.
fn loss_of_logps(
    logps: &Tensor,
    rollout: &Rollout,
    settings: &GrpoLoss,
) -> Result<(Tensor, RolloutStats), TrainError> {
    let err = |e: candle_core::Error| TrainError::Model(e.to_string());
    let n = logps.dims1().map_err(err)?;
    let device = logps.device().clone();
    let old = match &rollout.old_logps {
        None => logps.detach(),
        Some(old) if old.len() == n => Tensor::from_vec(old.clone(), n, &device).map_err(err)?,
        Some(old) => {
            return Err(TrainError::Config(format!(
                "{} old log-probabilities for {n} completion tokens",
                old.len()
            )));
        }
    };
    let ratio = (logps - &old).and_then(|d| d.exp()).map_err(err)?;
    let clipped = ratio
        .clamp(1.0 - settings.epsilon_low, 1.0 + settings.epsilon_high)
        .map_err(err)?;
    let a = rollout.advantage;
    let unclipped_term = (&ratio * a).map_err(err)?;
    let clipped_term = (&clipped * a).map_err(err)?;
    let smaller = unclipped_term.minimum(&clipped_term).map_err(err)?;
    let mut per_token = smaller.neg().map_err(err)?;
    let clipped_count = {
        let u = unclipped_term.to_vec1::<f32>().map_err(err)?;
        let c = clipped_term.to_vec1::<f32>().map_err(err)?;
        u.iter().zip(&c).filter(|(u, c)| c < u).count()
    };
    let mut kl_sum = 0.0;
    if settings.beta != 0.0 {
        let reference = rollout.ref_logps.clone().ok_or_else(|| {
            TrainError::Config("beta > 0 needs the reference log-probabilities".into())
        })?;
        let reference = Tensor::from_vec(reference, n, &device).map_err(err)?;
        let diff = (&reference - logps).map_err(err)?;
        let mut kl = (diff.exp().map_err(err)? - &diff)
            .and_then(|k| k - 1.0)
            .map_err(err)?;
        kl_sum = kl
            .sum_all()
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(err)? as f64;
        if settings.bias_correction_kl {
            kl = (kl * &ratio).map_err(err)?;
        }
        per_token = (per_token + (kl * settings.beta).map_err(err)?).map_err(err)?;
    }
    let loss = per_token.sum_all().map_err(err)?;
    Ok((
        loss,
        RolloutStats {
            tokens: n,
            clipped: clipped_count,
            kl_sum,
        },
    ))
}
