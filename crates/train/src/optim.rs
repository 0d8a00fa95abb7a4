//! The optimiser: AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update,
//! written here so its moments can be checkpointed), the learning-rate schedule of transformers'
//! `get_cosine_schedule_with_warmup` (linear warmup from 0, then cosine decay to 0), and
//! global gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`).

use std::collections::HashMap;

use afterburner_model::Tensor;
use candle_core::Var;
use candle_core::backprop::GradStore;

use crate::TrainError;

/// Optimiser settings, named as TRL's `TrainingArguments`.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam's beta1.
    pub adam_beta1: f64,
    /// Adam's beta2.
    pub adam_beta2: f64,
    /// Adam's epsilon.
    pub adam_epsilon: f64,
    /// Share of the steps spent warming up (`warmup_ratio`).
    pub warmup_ratio: f64,
    /// Largest global gradient norm (`max_grad_norm`; 0: no clipping).
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            learning_rate: 2e-4,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// The learning rate at optimiser step `step` (0-based) of `total`: linear warmup over
/// `ceil(warmup_ratio * total)` steps, then cosine decay to 0 at `total`.
pub fn learning_rate(config: &OptimConfig, step: usize, total: usize) -> f64 {
    let warmup = (config.warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return config.learning_rate * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    config.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// AdamW over a fixed set of variables, with the schedule and clipping.
pub struct Trainer {
    vars: Vec<Var>,
    /// First and second moments of each variable.
    moments: Vec<(Tensor, Tensor)>,
    config: OptimConfig,
    total_steps: usize,
    step: usize,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub learning_rate: f64,
}

fn err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

impl Trainer {
    /// An optimiser over `vars` for `total_steps` optimiser steps.
    pub fn new(
        vars: Vec<Var>,
        config: OptimConfig,
        total_steps: usize,
    ) -> Result<Self, TrainError> {
        if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
            return Err(TrainError::Config(format!(
                "--learning-rate must be positive, got {}",
                config.learning_rate
            )));
        }
        if !(0.0..=1.0).contains(&config.warmup_ratio) {
            return Err(TrainError::Config(format!(
                "--warmup-ratio must be in [0, 1], got {}",
                config.warmup_ratio
            )));
        }
        let moments = vars
            .iter()
            .map(|v| {
                let zeros = v.as_tensor().zeros_like()?;
                Ok((zeros.clone(), zeros))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(Trainer {
            vars,
            moments,
            config,
            total_steps,
            step: 0,
        })
    }

    /// The optimiser's state: each variable's moments (`m.{i}`, `v.{i}`), for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (m, v)) in self.moments.iter().enumerate() {
            out.insert(format!("m.{i}"), m.clone());
            out.insert(format!("v.{i}"), v.clone());
        }
        out
    }

    /// Restores the state of [`Self::state_tensors`] after `steps` optimiser steps.
    pub fn restore(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps: usize,
    ) -> Result<(), TrainError> {
        for (i, (m, v)) in self.moments.iter_mut().enumerate() {
            let (Some(new_m), Some(new_v)) = (
                tensors.remove(&format!("m.{i}")),
                tensors.remove(&format!("v.{i}")),
            ) else {
                return Err(TrainError::Config(format!(
                    "the checkpoint's optimiser state lacks the moments of variable {i}"
                )));
            };
            if new_m.dims() != m.dims() || new_v.dims() != v.dims() {
                return Err(TrainError::Config(format!(
                    "the checkpoint's moments of variable {i} have shape {:?}, the adapter {:?}",
                    new_m.dims(),
                    m.dims()
                )));
            }
            *m = new_m;
            *v = new_v;
        }
        self.step = steps;
        Ok(())
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Applies `grads` (summed over the accumulated micro-batches and already divided by their
    /// number): clips the global norm, sets the scheduled learning rate, steps.
    pub fn step(&mut self, grads: &mut GradStore) -> Result<StepReport, TrainError> {
        let mut sum = 0.0f64;
        for var in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += g
                    .sqr()
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.to_dtype(candle_core::DType::F64))
                    .and_then(|t| t.to_scalar::<f64>())
                    .map_err(err)?;
            }
        }
        let grad_norm = sum.sqrt();
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged(format!(
                "the gradient norm is {grad_norm} at step {}",
                self.step + 1
            )));
        }
        if self.config.max_grad_norm > 0.0 && grad_norm > self.config.max_grad_norm {
            let scale = self.config.max_grad_norm / (grad_norm + 1e-6);
            for var in &self.vars {
                if let Some(g) = grads.remove(var.as_tensor()) {
                    grads.insert(var.as_tensor(), (g * scale).map_err(err)?);
                }
            }
        }
        let lr = learning_rate(&self.config, self.step, self.total_steps);
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - c.adam_beta1.powi(t), 1.0 - c.adam_beta2.powi(t));
        for (var, (m, v)) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let update = (|| -> candle_core::Result<()> {
                *m = ((&*m * c.adam_beta1)? + (g * (1.0 - c.adam_beta1))?)?;
                *v = ((&*v * c.adam_beta2)? + (g.sqr()? * (1.0 - c.adam_beta2))?)?;
                let m_hat = (&*m / bias1)?;
                let v_hat = (&*v / bias2)?;
                let step = (m_hat / (v_hat.sqrt()? + c.adam_epsilon)?)?;
                let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
                var.set(&(decayed - (step * lr)?)?)
            })();
            update.map_err(err)?;
        }
        Ok(StepReport {
            grad_norm,
            learning_rate: lr,
        })
    }
}

/// Adds `b` into `a` for every variable (gradient accumulation); missing entries are taken as
/// they are.
pub fn accumulate(
    into: &mut Option<GradStore>,
    add: GradStore,
    vars: &[Var],
    scale: f64,
) -> Result<(), TrainError> {
    match into {
        None => {
            let mut scaled = add;
            if scale != 1.0 {
                for var in vars {
                    if let Some(g) = scaled.remove(var.as_tensor()) {
                        scaled.insert(var.as_tensor(), (g * scale).map_err(err)?);
                    }
                }
            }
            *into = Some(scaled);
        }
        Some(sum) => {
            for var in vars {
                if let Some(g) = add.get(var.as_tensor()) {
                    let g: Tensor = (g * scale).map_err(err)?;
                    let total = match sum.remove(var.as_tensor()) {
                        Some(prev) => (prev + g).map_err(err)?,
                        None => g,
                    };
                    sum.insert(var.as_tensor(), total);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_linearly_then_decays_by_cosine_to_zero() {
        let c = OptimConfig {
            learning_rate: 1.0,
            warmup_ratio: 0.1,
            ..OptimConfig::default()
        };
        assert_eq!(learning_rate(&c, 0, 100), 0.0);
        assert!((learning_rate(&c, 5, 100) - 0.5).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&c, 55, 100) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&c, 100, 100).abs() < 1e-12);
        let flat = OptimConfig {
            learning_rate: 1.0,
            ..OptimConfig::default()
        };
        assert_eq!(learning_rate(&flat, 0, 10), 1.0);
    }
}
