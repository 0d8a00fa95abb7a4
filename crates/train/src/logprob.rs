//! The log-probability of each target token under a row of logits, fused: forward takes one
//! pass over each row (its maximum, log-sum-exp and the target's logit) and backward one more
//! (softmax minus one-hot), instead of a log-softmax over the whole vocabulary whose
//! intermediates autograd keeps and walks back through, a vocabulary-wide tensor at each step.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `log_softmax(logits)[i, targets[i]]` for `logits` `[n, v]`: `[n]`, differentiable with
/// respect to `logits`. Fused on the CPU in f32; elsewhere (other devices or dtypes) through
/// candle's log-softmax and gather.
pub fn target_log_probs(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows of logits", targets.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("target token {t} is outside the vocabulary of {v}");
    }
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return logits.contiguous()?.apply_op1(TargetLogProb {
            targets: Arc::new(targets.to_vec()),
            log_sum_exp: Arc::new(OnceLock::new()),
        });
    }
    let targets = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
    candle_nn::ops::log_softmax(logits, D::Minus1)?
        .gather(&targets, 1)?
        .squeeze(1)
}

/// `ln(sum(exp(row)))`, stably (shifted by the row's maximum), summed in f64.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| f64::from((x - max).exp()))
        .sum();
    // Eight partial sums of at most v/8 terms each: f32 is exact enough per lane, f64 across.
    let mut total = tail;
    for (k, c) in chunks.enumerate() {
        for j in 0..8 {
            acc[j] += (c[j] - max).exp();
        }
        if k % 1024 == 1023 {
            total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
            acc = [0f32; 8];
        }
    }
    total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
    max + total.ln() as f32
}

/// The rows of a contiguous f32 tensor `[n, v]`.
fn rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize, usize)> {
    let (n, v) = layout.shape().dims2()?;
    let data = storage.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("target-log-prob needs contiguous logits");
    };
    Ok((&data[start..end], n, v))
}

/// The forward op; keeps each row's log-sum-exp for its backward.
struct TargetLogProb {
    targets: Arc<Vec<u32>>,
    log_sum_exp: Arc<OnceLock<Vec<f32>>>,
}

impl CustomOp1 for TargetLogProb {
    fn name(&self) -> &'static str {
        "target-log-prob"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (data, n, v) = rows(storage, layout)?;
        let lse: Vec<f32> = data.par_chunks(v.max(1)).map(log_sum_exp).collect();
        let out = (0..n)
            .map(|i| data[i * v + self.targets[i] as usize] - lse[i])
            .collect();
        let _ = self.log_sum_exp.set(lse);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d/dx_ij of (x_it - lse_i) = [j == t] - softmax_ij.
        let grad = grad_res.to_dtype(DType::F32)?.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(
            &grad,
            &TargetLogProbGrad {
                targets: self.targets.clone(),
                log_sum_exp: self.log_sum_exp.clone(),
            },
        )?))
    }
}

/// The backward op: `grad_i ([j == t_i] - softmax_ij)`.
struct TargetLogProbGrad {
    targets: Arc<Vec<u32>>,
    log_sum_exp: Arc<OnceLock<Vec<f32>>>,
}

impl CustomOp2 for TargetLogProbGrad {
    fn name(&self) -> &'static str {
        "target-log-prob-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (data, n, v) = rows(s1, l1)?;
        let grad = s2.as_slice::<f32>()?;
        let Some((g0, g1)) = l2.contiguous_offsets() else {
            candle_core::bail!("target-log-prob-grad needs a contiguous gradient");
        };
        let grad = &grad[g0..g1];
        if grad.len() != n {
            candle_core::bail!("a gradient of {} for {n} rows", grad.len());
        }
        let computed;
        let lse = match self.log_sum_exp.get() {
            Some(lse) => lse,
            None => {
                computed = data
                    .par_chunks(v.max(1))
                    .map(log_sum_exp)
                    .collect::<Vec<_>>();
                &computed
            }
        };
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v.max(1))
            .zip(data.par_chunks(v.max(1)))
            .enumerate()
            .for_each(|(i, (o, x))| {
                let (g, m) = (grad[i], lse[i]);
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = -g * (x - m).exp();
                }
                o[self.targets[i] as usize] += g;
            });
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Candle's composite log-softmax and gather: what the fused op replaces.
    fn reference(logits: &Tensor, targets: &[u32]) -> Tensor {
        let t = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), logits.device()).unwrap();
        candle_nn::ops::log_softmax(logits, D::Minus1)
            .unwrap()
            .gather(&t, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
    }

    #[test]
    fn fused_target_log_probs_and_their_gradient_equal_log_softmax_and_gather() {
        let (n, v) = (5, 1037);
        let values: Vec<f32> = (0..n * v)
            .map(|k| ((k * 7919 % 1000) as f32 / 37.0).sin() * 12.0)
            .collect();
        let targets = [3u32, 1036, 0, 500, 3];
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, -1.5], &Device::Cpu).unwrap();
        let x = Var::from_vec(values, (n, v), &Device::Cpu).unwrap();
        let ours = target_log_probs(x.as_tensor(), &targets).unwrap();
        let theirs = reference(x.as_tensor(), &targets);
        let (a, b) = (
            ours.to_vec1::<f32>().unwrap(),
            theirs.to_vec1::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        let g = |t: &Tensor| {
            let loss = (t * &weights).unwrap().sum_all().unwrap();
            loss.backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (ga, gb) = (g(&ours), g(&theirs));
        assert!(ga.iter().any(|&v| v != 0.0));
        for (a, b) in ga.iter().zip(&gb) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_targets_are_refused_with_what_is_wrong() {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let e = target_log_probs(&x, &[1]).unwrap_err().to_string();
        assert!(e.contains("1 targets for 2 rows"), "{e}");
        let e = target_log_probs(&x, &[1, 4]).unwrap_err().to_string();
        assert!(
            e.contains("target token 4 is outside the vocabulary of 4"),
            "{e}"
        );
    }
}
