//! The decoder-only transformer (Qwen2 / Llama / Qwen3), written top to bottom from differentiable
//! candle operations only, so that a loss backpropagates into every weight (candle's fused
//! `rms_norm`, `rope` and `softmax_last_dim` kernels have no backward pass: candle issue #2168).
//!
//! Shapes: `b` batch, `s` new tokens, `t` keys (cached + new), `h` query heads, `kv` key/value
//! heads, `r = h / kv`, `d` head width, `e` hidden size, `m` MLP width, `v` vocabulary.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::VarMap;

use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::quantized::QuantizedMatrix;
use crate::weights::Weights;

/// A low-rank adapter on a [`Linear`]: `y += scaling * x A^T B^T`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection, `[rank, in]`.
    pub a: Tensor,
    /// Up projection, `[out, rank]`.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scaling: f64,
    /// Dropout on the adapter's input (training only; `None` for inference).
    pub dropout: Option<LoraDropout>,
}

/// PEFT's `lora_dropout` while training: each input feature of the adapter's path is zeroed
/// with probability `p` and the rest scaled by `1 / (1 - p)`; the base path sees the input
/// unchanged. Masks come from one seeded generator shared by every adapter of the model, drawn
/// in the forward pass's fixed module order, so a seed gives the same masks on every run.
#[derive(Debug, Clone)]
pub struct LoraDropout {
    /// Probability of zeroing a feature, in `[0, 1)`.
    pub p: f64,
    /// The masks' generator.
    pub rng: Arc<std::sync::Mutex<crate::sampling::SplitMix64>>,
}

impl LoraDropout {
    /// A mask of `0` and `1 / (1 - p)` of `x`'s shape, drawn in row-major order.
    fn mask(&self, x: &Tensor) -> Result<Tensor> {
        let keep = 1.0 / (1.0 - self.p);
        let threshold = (self.p * (1u64 << 53) as f64) as u64;
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| ModelError::Invalid("a LoRA dropout generator was poisoned".into()))?;
        let values: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.next_u64() >> 11 < threshold {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        drop(rng);
        Ok(Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// The weight of a [`Linear`]: a dense tensor, or quantized GGUF blocks (inference only).
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// `[out, in]` (Hugging Face layout) in the model dtype.
    Dense(Tensor),
    /// `[out, in]` quantized blocks on the CPU (see [`crate::quantized`]).
    Quantized(Arc<QuantizedMatrix>),
}

/// Whether `x W^T` runs in training through a frozen weight: `x` tracks gradients, `W` does not,
/// both are f32 on the CPU.
fn frozen_weight_training(x: &Tensor, weight: &Tensor) -> bool {
    x.track_op()
        && !weight.track_op()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device().is_cpu()
}

/// Whether [`Linear::forward`] runs a LoRA projection as one fused node
/// ([`crate::fused::LoraMatmul`]): training (the adapter tracks gradients) through a frozen f32
/// weight, with f32 adapters and input, on the CPU.
fn fused_lora(x: &Tensor, weight: &Tensor, lora: &LoraAdapter) -> bool {
    (lora.a.track_op() || lora.b.track_op())
        && !weight.track_op()
        && x.device().is_cpu()
        && [x.dtype(), weight.dtype(), lora.a.dtype(), lora.b.dtype()]
            .iter()
            .all(|d| *d == DType::F32)
}

/// Whether a forward pass runs the fused training kernels of [`crate::fused`]: `x` tracks
/// gradients, and it and `other` are f32 on the CPU.
fn fused_training(x: &Tensor, other: &Tensor) -> bool {
    x.track_op()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && other.dtype() == DType::F32
        && other.device().is_cpu()
}

/// `x W^T` with a constant `W` (`[out, in]`): its backward gives `x`'s gradient only
/// (`grad W`), never the frozen weight's, which candle's matmul would compute and discard,
/// a third of a LoRA step's matrix products.
struct FrozenMatmul {
    weight: Tensor,
    /// `W^T`, `[in, out]` (the forward product's operand; see [`crate::fused::x_wt`]).
    weight_t: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let data = storage.as_slice::<f32>()?;
        let (n, _) = crate::fused::rows_features(layout.dims())?;
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => &data[start..end],
            None => {
                return Err(candle_core::Error::Msg(
                    "frozen-matmul needs a contiguous input".into(),
                ));
            }
        };
        let values = crate::fused::x_wt(x, n, &self.weight_t)?; // [n, out]
        let out = self.weight.dim(0)?;
        Ok((
            candle_core::CpuStorage::F32(values),
            crate::fused::with_last(layout.dims(), out),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // y = x W^T, so dx = dy W.
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}

/// A projection `y = x W^T + bias`, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, `[out, in]`.
    pub weight: LinearWeight,
    /// Bias, `[out]`.
    pub bias: Option<Tensor>,
    /// The adapter slot the trainer fills.
    pub lora: Option<LoraAdapter>,
    /// `W^T` (`[in, out]`, contiguous) with the id of the weight it was made from: made on the
    /// first training forward through a frozen f32 weight on the CPU, for
    /// [`crate::fused::x_wt`], and made again if the weight is replaced. Costs a second copy of
    /// the frozen weights while the model lives; the forward pass runs a third faster.
    transposed: Arc<std::sync::Mutex<Option<(candle_core::TensorId, Tensor)>>>,
}

impl Linear {
    /// A projection without adapter.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: LinearWeight::Dense(weight),
            bias,
            lora: None,
            transposed: Arc::default(),
        }
    }

    /// `weight^T`, contiguous, made once per weight (see the `transposed` field).
    fn transposed(&self, weight: &Tensor) -> Result<Tensor> {
        let mut cached = self.transposed.lock().map_err(|_| {
            ModelError::Invalid("a projection's transposed weight: poisoned".into())
        })?;
        if let Some((id, t)) = cached.as_ref()
            && *id == weight.id()
        {
            return Ok(t.clone());
        }
        let t = weight.t()?.contiguous()?;
        *cached = Some((weight.id(), t.clone()));
        Ok(t)
    }

    /// `log_softmax(self.forward(x))[i, targets[i]]` for `x` `[n, in]`: the log-probability of
    /// each row's target, `[n]` in f32. Through a frozen f32 head on the CPU it is one node
    /// ([`crate::fused::HeadLogProb`]) that never makes the `[n, out]` logits a tensor;
    /// otherwise the logits, candle's log-softmax and a gather.
    pub fn target_log_probs(&self, x: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        let out = self.out_features()?;
        if targets.len() != n {
            return Err(ModelError::Invalid(format!(
                "{} targets for {n} rows",
                targets.len()
            )));
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= out) {
            return Err(ModelError::Invalid(format!(
                "target token {t} is outside the vocabulary of {out}"
            )));
        }
        // Also without gradients (a reference model's log-probabilities): one pass, no logits
        // tensor, and nothing kept, as candle drops an op whose result tracks nothing.
        if self.lora.is_none()
            && self.bias.is_none()
            && let LinearWeight::Dense(weight) = &self.weight
            && !weight.track_op()
            && [x.dtype(), weight.dtype()].iter().all(|d| *d == DType::F32)
            && x.device().is_cpu()
        {
            let op = crate::fused::HeadLogProb::new(
                weight.clone(),
                self.transposed(weight)?,
                targets.to_vec(),
            );
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
        let logits = self.forward(x)?.to_dtype(DType::F32)?;
        let index = Tensor::from_vec(targets.to_vec(), (n, 1), x.device())?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .gather(&index, 1)?
            .squeeze(1)?)
    }

    /// `(out, in)` features.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.dims2()?),
            LinearWeight::Quantized(q) => Ok(q.dims()),
        }
    }

    /// Bytes the weight holds (the bias and adapter aside).
    pub fn weight_bytes(&self) -> u64 {
        match &self.weight {
            LinearWeight::Dense(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
            LinearWeight::Quantized(q) => q.byte_len() as u64,
        }
    }

    /// Output features.
    pub fn out_features(&self) -> Result<usize> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.dim(0)?),
            LinearWeight::Quantized(q) => Ok(q.dims().0),
        }
    }

    /// The weight as a dense tensor (a quantized one is dequantized to f32 on the CPU).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.clone()),
            LinearWeight::Quantized(q) => q.dequantize(&Device::Cpu),
        }
    }

    /// `[.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let features = dims[dims.len() - 1];
        let rows = x.elem_count() / features.max(1);
        if let Some(lora) = &self.lora
            && let LinearWeight::Dense(weight) = &self.weight
            && fused_lora(x, weight, lora)
        {
            // Training on the CPU in f32: the projection and its adapter as one node, on `x`
            // as it is (the node takes its leading dimensions as rows; reshapes would be nodes
            // of their own in backward).
            let mask = match &lora.dropout {
                Some(dropout) if dropout.p > 0.0 => {
                    Some(Arc::new(dropout.mask(x)?.flatten_all()?.to_vec1::<f32>()?))
                }
                _ => None,
            };
            let op = crate::fused::LoraMatmul {
                weight: weight.clone(),
                weight_t: self.transposed(weight)?,
                scaling: lora.scaling as f32,
                mask,
            };
            let mut y = x.contiguous()?.apply_op3(&lora.a, &lora.b, op)?;
            if let Some(bias) = &self.bias {
                y = y.broadcast_add(bias)?;
            }
            return Ok(y);
        }
        let x2 = x.reshape((rows, features))?; // [n, in]
        let mut y = match &self.weight {
            LinearWeight::Quantized(q) => q.forward(&x2)?,
            LinearWeight::Dense(weight) => {
                let fast = if MATVEC_ENABLED {
                    decode_matvec(&x2, weight)?
                } else {
                    None
                };
                match fast {
                    Some(y) => y,
                    // Training through a frozen f32 weight on the CPU: the weight's gradient is
                    // never used, and candle's matmul backward would compute it anyway.
                    None if frozen_weight_training(&x2, weight) => x2.apply_op1(FrozenMatmul {
                        weight: weight.clone(),
                        weight_t: self.transposed(weight)?,
                    })?,
                    // (W x^T)^T rather than x W^T: candle's CPU gemm is several times faster
                    // this way for small n and no slower for long prefills.
                    None => weight.matmul(&x2.t()?)?.t()?, // [n, out]
                }
            }
        };
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some(lora) = &self.lora {
            // Adapters may be kept in f32 (master weights) on a lower-precision base.
            let (a, b) = (lora.a.to_dtype(x2.dtype())?, lora.b.to_dtype(x2.dtype())?);
            let input = match &lora.dropout {
                Some(dropout) if dropout.p > 0.0 => (&x2 * dropout.mask(&x2)?)?,
                _ => x2.clone(),
            };
            let down = input.matmul(&a.t()?)?; // [n, rank]
            let up = down.matmul(&b.t()?)?; // [n, out]
            y = (y + (up * lora.scaling)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_features()?;
        Ok(y.reshape(out_dims)?)
    }
}

/// Most rows [`decode_matvec`] handles: batch-1 decoding. From two rows on candle's gemm wins
/// (measured: 8 rows x [4864, 896] take 3 ms in gemm, 12 ms as dot products).
const MATVEC_MAX_ROWS: usize = 1;

/// Whether [`Linear::forward`] uses [`decode_matvec`]: only in optimised builds (in this crate's
/// unoptimised debug build the hand-written loop is ~30x slower than candle's optimised gemm).
const MATVEC_ENABLED: bool = !cfg!(debug_assertions);

/// `x W^T` for one row of f32 on the CPU outside autograd (batch-1 decoding), as dot products
/// of weight rows parallel over output features: it streams the weights at memory bandwidth
/// (measured: [151936, 896] in 51-72 ms against 123-130 ms for candle's gemm, same run). `None` when not applicable
/// (other device or dtype, more rows, or a tensor that tracks gradients).
fn decode_matvec(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let (n, features) = x.dims2()?;
    if n > MATVEC_MAX_ROWS
        || !x.device().is_cpu()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || x.track_op()
        || weight.track_op()
        || !weight.is_contiguous()
    {
        return Ok(None);
    }
    let (out, inp) = weight.dims2()?;
    if inp != features {
        return Ok(None); // let candle report the shape mismatch
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?; // [n * in]
    let (storage, layout) = weight.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + out * inp];
    const ROWS_PER_TASK: usize = 64;
    let mut yt = vec![0f32; out * n]; // [out, n]
    yt.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (k, ys) in chunk.chunks_mut(n).enumerate() {
                let j = task * ROWS_PER_TASK + k;
                let w_row = &data[j * inp..(j + 1) * inp];
                for (r, y) in ys.iter_mut().enumerate() {
                    *y = dot(w_row, &xs[r * inp..(r + 1) * inp]);
                }
            }
        });
    drop(storage);
    Ok(Some(Tensor::from_vec(yt, (out, n), x.device())?.t()?)) // [n, out]
}

/// Dot product with eight independent accumulators (vectorises).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Root-mean-square normalisation over the last dimension, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Scale, `[width]`.
    pub weight: Tensor,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// `x * rsqrt(mean(x^2) + eps) * weight`, as transformers' `Qwen2RMSNorm`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused_training(x, &self.weight) {
            let op = crate::fused::RmsNormOp {
                eps: self.eps as f32,
            };
            return Ok(x.contiguous()?.apply_op2(&self.weight, op)?);
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let mean_square = x32.sqr()?.mean_keepdim(D::Minus1)?; // [.., 1]
        let inv_rms = (mean_square + self.eps)?.sqrt()?.recip()?;
        let normed = x32.broadcast_mul(&inv_rms)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

/// Rotary position tables for one forward call: `cos`/`sin` of shape `[b, 1, s, d]`.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// The f32 tables, `[b, s, d]`, for the fused training kernel.
    values: (Arc<Vec<f32>>, Arc<Vec<f32>>),
}

impl Rotary {
    /// Tables for integer `positions` (`[b][s]`), computed in f32 and cast to `dtype`.
    fn new(
        positions: &[Vec<u32>],
        head_dim: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        // inv_freq[i] = 1 / theta^(2i / d), in f32 as transformers computes it.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(b * s * head_dim);
        let mut sin = Vec::with_capacity(b * s * head_dim);
        for row in positions {
            for &p in row {
                let freqs: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
                // emb = cat(freqs, freqs)
                for _ in 0..2 {
                    cos.extend(freqs.iter().map(|x| x.cos()));
                    sin.extend(freqs.iter().map(|x| x.sin()));
                }
            }
        }
        let values = (Arc::new(cos.clone()), Arc::new(sin.clone()));
        let cos = Tensor::from_vec(cos, (b, 1, s, head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, 1, s, head_dim), device)?.to_dtype(dtype)?;
        Ok(Rotary { cos, sin, values })
    }

    /// `x * cos + rotate_half(x) * sin` for `x` of shape `[b, heads, s, d]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if fused_training(x, &self.cos) {
            let op = crate::fused::RotaryOp {
                cos: self.values.0.clone(),
                sin: self.values.1.clone(),
            };
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?)
    }
}

/// The preallocated key/value buffers of one layer: `[b, kv, capacity, d]`.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// A key/value cache preallocated to a fixed number of positions for a fixed batch size.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    batch: usize,
}

impl KvCache {
    /// Buffers for `batch` sequences of up to `capacity` positions.
    pub fn new(
        config: &ModelConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, config.num_key_value_heads, capacity, config.head_dim);
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                Ok(LayerCache {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions the buffers hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every stored position (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// Which positions [`CausalLm::forward`] returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsOutput {
    /// Every position: `[b, s, v]` (training, scoring, parity).
    All,
    /// The last position of each row: `[b, v]` (generation; rows are left-padded).
    Last,
}

/// Multi-head attention with grouped key/value heads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[h*d, e]`.
    pub q_proj: Linear,
    /// `[kv*d, e]`.
    pub k_proj: Linear,
    /// `[kv*d, e]`.
    pub v_proj: Linear,
    /// `[e, h*d]`.
    pub o_proj: Linear,
    /// Per-head RMSNorm of queries (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head RMSNorm of keys (Qwen3).
    pub k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `x [b, s, e] -> [b, s, e]`; `mask` is additive, `[b, 1, 1, s, t]` in f32; `causal`: it
    /// is the plain causal mask (no padding, no past positions).
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        mask: Option<&Tensor>,
        causal: bool,
        cache: Option<(&mut LayerCache, usize)>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let r = h / kv;
        let q = self.q_proj.forward(x)?; // [b, s, h*d]
        let k = self.k_proj.forward(x)?; // [b, s, kv*d]
        let v = self.v_proj.forward(x)?; // [b, s, kv*d]
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if causal
            && cache.is_none()
            && self.q_norm.is_none()
            && self.k_norm.is_none()
            && (q.track_op() || k.track_op() || v.track_op())
            && [&q, &k, &v].into_iter().all(cpu_f32)
        {
            // Training on the CPU in f32 without padding, cache or head norms: rotary, causal
            // attention and the heads' merge as one node on the projections as they are.
            let op = crate::fused::AttentionBlock::new(
                h,
                kv,
                1.0 / (d as f32).sqrt(),
                rotary.values.0.clone(),
                rotary.values.1.clone(),
            );
            let out = q
                .contiguous()?
                .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?; // [b, s, h*d]
            return self.o_proj.forward(&out);
        }
        let q = q.reshape((b, s, h, d))?; // [b, s, h, d]
        let k = k.reshape((b, s, kv, d))?; // [b, s, kv, d]
        let v = v.reshape((b, s, kv, d))?; // [b, s, kv, d]
        let q = match &self.q_norm {
            Some(norm) => norm.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(norm) => norm.forward(&k)?,
            None => k,
        };
        let q = rotary.apply(&q.transpose(1, 2)?)?; // [b, h, s, d]
        let k = rotary.apply(&k.transpose(1, 2)?)?.contiguous()?; // [b, kv, s, d]
        let v = v.transpose(1, 2)?.contiguous()?; // [b, kv, s, d]
        let (k, v) = match cache {
            Some((layer, past)) => {
                layer.k.slice_set(&k, 2, past)?;
                layer.v.slice_set(&v, 2, past)?;
                let t = past + s;
                (layer.k.narrow(2, 0, t)?, layer.v.narrow(2, 0, t)?) // [b, kv, t, d]
            }
            None => (k, v),
        };
        let t = k.dim(2)?;
        // Query heads h = g*r + j share key/value head g (transformers' repeat_kv): group them
        // instead of copying keys and values r times.
        let q = q.contiguous()?.reshape((b, kv, r * s, d))?; // [b, kv, r*s, d]
        if causal && t == s && fused_training(&q, &k) && fused_training(&v, &k) {
            // Training on the CPU in f32 without padding or cache: one fused node.
            let op = crate::fused::CausalAttention {
                scale: 1.0 / (d as f32).sqrt(),
                tile: crate::fused::ATTENTION_TILE,
                probs: Arc::default(),
            };
            let out = q.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?; // [b, kv, r*s, d]
            let out = out
                .reshape((b, h, s, d))?
                .transpose(1, 2)?
                .reshape((b, s, h * d))?; // [b, s, h*d]
            return self.o_proj.forward(&out);
        }
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?; // [b, kv, r*s, t]
        let scores = scores.to_dtype(DType::F32)?.reshape((b, kv, r, s, t))?; // [b, kv, r, s, t]
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?; // differentiable softmax
        let probs = probs.to_dtype(v.dtype())?.reshape((b, kv, r * s, t))?;
        let out = probs.matmul(&v)?; // [b, kv, r*s, d]
        let out = out
            .reshape((b, h, s, d))?
            .transpose(1, 2)?
            .reshape((b, s, h * d))?; // [b, s, h*d]
        self.o_proj.forward(&out)
    }
}

/// The SiLU-gated feed-forward block.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[m, e]`.
    pub gate_proj: Linear,
    /// `[m, e]`.
    pub up_proj: Linear,
    /// `[e, m]`.
    pub down_proj: Linear,
}

impl Mlp {
    /// `down(silu(gate(x)) * up(x))`, `[b, s, e] -> [b, s, e]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        let hidden = if fused_training(&gate, &up) {
            gate.contiguous()?
                .apply_op2(&up.contiguous()?, crate::fused::SiluMul)?
        } else {
            (gate.silu()? * up)?
        };
        self.down_proj.forward(&hidden)
    }
}

/// One pre-norm decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

/// A causal language model: embedding, decoder layers, final norm and `lm_head`.
#[derive(Debug, Clone)]
pub struct CausalLm {
    config: ModelConfig,
    /// Token embedding, `[v, e]`.
    pub embed_tokens: Tensor,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output projection `[v, e]` (the embedding's tensor when tied).
    pub lm_head: Linear,
    dtype: DType,
    device: Device,
}

impl CausalLm {
    /// Builds the model, asking `tensor(name, shape)` for each weight in Hugging Face names.
    pub fn build(
        config: &ModelConfig,
        dtype: DType,
        device: &Device,
        tensor: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|message| ModelError::Invalid(format!("model config: {message}")))?;
        let (e, m, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let (h, kv, d) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let eps = config.rms_norm_eps;
        let mut linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let weight = tensor(&format!("{name}.weight"), &[out, inp])?;
            let bias = if bias {
                Some(tensor(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear::new(weight, bias))
        };
        let mut layers_linear = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers_linear.push((
                linear(&format!("{p}.self_attn.q_proj"), h * d, e, config.qkv_bias)?,
                linear(&format!("{p}.self_attn.k_proj"), kv * d, e, config.qkv_bias)?,
                linear(&format!("{p}.self_attn.v_proj"), kv * d, e, config.qkv_bias)?,
                linear(&format!("{p}.self_attn.o_proj"), e, h * d, config.o_bias)?,
                linear(&format!("{p}.mlp.gate_proj"), m, e, config.mlp_bias)?,
                linear(&format!("{p}.mlp.up_proj"), m, e, config.mlp_bias)?,
                linear(&format!("{p}.mlp.down_proj"), e, m, config.mlp_bias)?,
            ));
        }
        let lm_head_untied = if config.tie_word_embeddings {
            None
        } else {
            Some(linear("lm_head", v, e, false)?)
        };
        let mut norm = |name: &str, width: usize| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: tensor(&format!("{name}.weight"), &[width])?,
                eps,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (i, (q, k, vp, o, gate, up, down)) in layers_linear.into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(norm(&format!("{p}.self_attn.q_norm"), d)?),
                    Some(norm(&format!("{p}.self_attn.k_norm"), d)?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"), e)?,
                self_attn: Attention {
                    q_proj: q,
                    k_proj: k,
                    v_proj: vp,
                    o_proj: o,
                    q_norm,
                    k_norm,
                    num_heads: h,
                    num_kv_heads: kv,
                    head_dim: d,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"), e)?,
                mlp: Mlp {
                    gate_proj: gate,
                    up_proj: up,
                    down_proj: down,
                },
            });
        }
        let final_norm = norm("model.norm", e)?;
        let embed_tokens = tensor("model.embed_tokens.weight", &[v, e])?;
        let lm_head = lm_head_untied.unwrap_or_else(|| Linear::new(embed_tokens.clone(), None));
        Ok(CausalLm {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            dtype,
            device: device.clone(),
        })
    }

    /// Loads the weights of `config` from `weights`, converted to `dtype` on `device`.
    pub fn load(
        config: &ModelConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, dtype, device, &mut |name, shape| {
            weights.get(name, shape, dtype, device)
        })
    }

    /// Loads the weights as trainable variables registered in `varmap` under their Hugging Face
    /// names (full fine-tuning, gradient checks).
    pub fn load_trainable(
        config: &ModelConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
        varmap: &VarMap,
    ) -> Result<Self> {
        Self::build(config, dtype, device, &mut |name, shape| {
            let var = Var::from_tensor(&weights.get(name, shape, dtype, device)?)?;
            let tensor = var.as_tensor().clone();
            varmap
                .data()
                .lock()
                .map_err(|_| ModelError::Invalid("the VarMap's lock is poisoned".into()))?
                .insert(name.to_string(), var);
            Ok(tensor)
        })
    }

    /// A model with random weights from `seed` (normal, std 0.02; norms around 1), registered as
    /// trainable variables in `varmap` (tests and benchmarks).
    pub fn random(
        config: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
        varmap: &VarMap,
    ) -> Result<Self> {
        let mut rng = crate::sampling::SplitMix64::new(seed);
        Self::build(config, dtype, device, &mut |name, shape| {
            let count: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    let z = rng.next_normal() as f32;
                    if is_norm { 1.0 + 0.1 * z } else { 0.02 * z }
                })
                .collect();
            let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            let var = Var::from_tensor(&tensor)?;
            let out = var.as_tensor().clone();
            varmap
                .data()
                .lock()
                .map_err(|_| ModelError::Invalid("the VarMap's lock is poisoned".into()))?
                .insert(name.to_string(), var);
            Ok(out)
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The dtype of weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A key/value cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.config, batch, capacity, self.dtype, &self.device)
    }

    /// Every weight tensor by Hugging Face name (the tied `lm_head` is listed once, as the
    /// embedding; quantized projections are dequantized to f32).
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            ));
            if let Some(n) = &layer.self_attn.q_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), n.weight.clone()));
            }
            if let Some(n) = &layer.self_attn.k_norm {
                out.push((format!("{p}.self_attn.k_norm.weight"), n.weight.clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        let tied = self.config.tie_word_embeddings;
        for (name, linear) in self.linears() {
            if tied && name == "lm_head" {
                continue;
            }
            out.push((format!("{name}.weight"), linear.dense_weight()?));
            if let Some(bias) = &linear.bias {
                out.push((format!("{name}.bias"), bias.clone()));
            }
        }
        Ok(out)
    }

    /// Makes every weight trainable for full fine-tuning: each becomes a variable (a tied
    /// `lm_head` shares the embedding's), returned under its Hugging Face name in
    /// [`Self::named_parameters`]' order. Dense f32 weights only (quantized blocks cannot be
    /// trained, and full fine-tuning keeps f32 master weights).
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        if self.dtype != DType::F32 {
            return Err(ModelError::Invalid(format!(
                "full fine-tuning needs the model in f32 (it is {:?})",
                self.dtype
            )));
        }
        let make = |name: String, t: &mut Tensor, out: &mut Vec<(String, Var)>| -> Result<()> {
            let var = Var::from_tensor(t)?;
            *t = var.as_tensor().clone();
            out.push((name, var));
            Ok(())
        };
        let mut out = Vec::new();
        make(
            "model.embed_tokens.weight".into(),
            &mut self.embed_tokens,
            &mut out,
        )?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            make(
                format!("{p}.input_layernorm.weight"),
                &mut layer.input_layernorm.weight,
                &mut out,
            )?;
            make(
                format!("{p}.post_attention_layernorm.weight"),
                &mut layer.post_attention_layernorm.weight,
                &mut out,
            )?;
            if let Some(n) = &mut layer.self_attn.q_norm {
                make(
                    format!("{p}.self_attn.q_norm.weight"),
                    &mut n.weight,
                    &mut out,
                )?;
            }
            if let Some(n) = &mut layer.self_attn.k_norm {
                make(
                    format!("{p}.self_attn.k_norm.weight"),
                    &mut n.weight,
                    &mut out,
                )?;
            }
        }
        make("model.norm.weight".into(), &mut self.norm.weight, &mut out)?;
        let tied = self.config.tie_word_embeddings;
        let embedding = self.embed_tokens.clone();
        for (name, linear) in self.linears_mut() {
            let LinearWeight::Dense(weight) = &mut linear.weight else {
                return Err(ModelError::Invalid(format!(
                    "`{name}` holds quantized blocks, which cannot be trained in full; load the \
                     model densely (--dtype f32)"
                )));
            };
            if tied && name == "lm_head" {
                *weight = embedding.clone();
                continue;
            }
            make(format!("{name}.weight"), weight, &mut out)?;
            if let Some(bias) = &mut linear.bias {
                make(format!("{name}.bias"), bias, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Bytes of every weight in memory (a tied dense `lm_head` counted once, with the embedding).
    pub fn weights_bytes(&self) -> u64 {
        let tensor_bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        let mut total = tensor_bytes(&self.embed_tokens) + tensor_bytes(&self.norm.weight);
        for layer in &self.layers {
            total += tensor_bytes(&layer.input_layernorm.weight);
            total += tensor_bytes(&layer.post_attention_layernorm.weight);
            for norm in [&layer.self_attn.q_norm, &layer.self_attn.k_norm]
                .into_iter()
                .flatten()
            {
                total += tensor_bytes(&norm.weight);
            }
        }
        let tied_dense = self.config.tie_word_embeddings
            && matches!(self.lm_head.weight, LinearWeight::Dense(_));
        for (name, linear) in self.linears() {
            if !(tied_dense && name == "lm_head") {
                total += linear.weight_bytes();
            }
            total += linear.bias.as_ref().map_or(0, tensor_bytes);
        }
        total
    }

    /// Replaces the weight of every projection whose tensor in `quantized` (Hugging Face names;
    /// a tied `lm_head` takes `model.embed_tokens.weight`) is in a block format
    /// [`crate::quantized`] multiplies (Q4_0, Q4_1, Q8_0), dropping the dense copy. Returns how
    /// many projections are now quantized. CPU only; for inference (see [`LinearWeight`]).
    pub fn use_quantized_weights(
        &mut self,
        quantized: &std::collections::HashMap<String, candle_core::quantized::QTensor>,
    ) -> Result<usize> {
        if !self.device.is_cpu() {
            return Err(ModelError::Invalid(
                "quantized weights run on the CPU only; load the model on the CPU or use a dense dtype"
                    .into(),
            ));
        }
        let tied = self.config.tie_word_embeddings;
        let mut replaced = 0;
        for (name, linear) in self.linears_mut() {
            let key = if tied && name == "lm_head" {
                "model.embed_tokens.weight".to_string()
            } else {
                format!("{name}.weight")
            };
            let Some(qtensor) = quantized.get(&key) else {
                continue;
            };
            let Some(matrix) = QuantizedMatrix::from_qtensor(qtensor)? else {
                continue;
            };
            if matrix.dims() != linear.dims()? {
                return Err(ModelError::Invalid(format!(
                    "quantized `{key}` is {:?}, the model's `{name}` is {:?}",
                    matrix.dims(),
                    linear.dims()?
                )));
            }
            linear.weight = LinearWeight::Quantized(Arc::new(matrix));
            replaced += 1;
        }
        Ok(replaced)
    }

    /// Every projection by Hugging Face module name (`model.layers.0.self_attn.q_proj`, ...,
    /// `lm_head`).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("{p}.{name}"), linear));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// Every projection by Hugging Face module name, mutable (to attach LoRA adapters).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("{p}.{name}"), linear));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    /// Runs the model on `input_ids` (`[b, s]`, u32).
    ///
    /// `attention_mask` (`[b, past + s]`, 1 = token, 0 = left padding; any integer or float
    /// dtype) covers the cached positions and the new ones, as in transformers; `None` means no
    /// padding. Positions are `cumsum(mask) - 1` (clamped at 0). With a `cache`, the new keys and
    /// values are written after the cached ones. Returns logits in the model dtype, `[b, s, v]`
    /// or `[b, v]` (see [`LogitsOutput`]).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output: LogitsOutput,
    ) -> Result<Tensor> {
        let x = self.hidden_states(input_ids, attention_mask, cache)?; // [b, s, e]
        let s = x.dim(1)?;
        let x = match output {
            LogitsOutput::All => x,
            LogitsOutput::Last => x.narrow(1, s - 1, 1)?, // [b, 1, e]
        };
        let logits = self.head(&x)?;
        Ok(match output {
            LogitsOutput::All => logits,              // [b, s, v]
            LogitsOutput::Last => logits.squeeze(1)?, // [b, v]
        })
    }

    /// The final norm and `lm_head`: hidden states `[.., e]` (from [`Self::hidden_states`]) to
    /// logits `[.., v]`. Training applies it to the positions a loss is taken at only, as
    /// transformers' `logits_to_keep`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(hidden)?)
    }

    /// The log-probability of each row's target token under [`Self::head`]: hidden states
    /// `[n, e]` to `[n]` in f32, without a logits tensor when training on the CPU
    /// ([`Linear::target_log_probs`]).
    pub fn head_log_probs(&self, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
        self.lm_head
            .target_log_probs(&self.norm.forward(hidden)?, targets)
    }

    /// The decoder's output before the final norm, `[b, s, e]`; arguments as [`Self::forward`].
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2().map_err(|_| {
            ModelError::Invalid(format!(
                "input_ids must be [batch, seq], found {:?}",
                input_ids.dims()
            ))
        })?;
        if s == 0 {
            return Err(ModelError::Invalid("input_ids has no positions".into()));
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        let t = past + s;
        if let Some(cache) = cache.as_ref() {
            if cache.batch != b {
                return Err(ModelError::Invalid(format!(
                    "the cache holds {} sequences, input_ids {b}",
                    cache.batch
                )));
            }
            if t > cache.capacity {
                return Err(ModelError::Invalid(format!(
                    "{t} positions exceed the cache's capacity of {}",
                    cache.capacity
                )));
            }
        }
        // keep[b][j]: whether key position j holds a token (not padding).
        let keep: Vec<Vec<u32>> = match attention_mask {
            Some(mask) => {
                if mask.dims() != [b, t] {
                    return Err(ModelError::Invalid(format!(
                        "attention_mask must be [{b}, {t}] (cached + new positions), found {:?}",
                        mask.dims()
                    )));
                }
                mask.to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(|row| row.into_iter().map(|x| u32::from(x != 0.0)).collect())
                    .collect()
            }
            None => vec![vec![1; t]; b],
        };
        let max_position = self.config.max_position_embeddings;
        let positions: Vec<Vec<u32>> = keep
            .iter()
            .map(|row| {
                let mut sum = 0u32;
                let all: Vec<u32> = row
                    .iter()
                    .map(|&k| {
                        sum += k;
                        sum.saturating_sub(1)
                    })
                    .collect();
                all[past..].to_vec()
            })
            .collect();
        if let Some(p) = positions
            .iter()
            .flatten()
            .find(|&&p| p as usize >= max_position)
        {
            return Err(ModelError::Invalid(format!(
                "position {p} is beyond the model's context of {max_position} tokens"
            )));
        }
        let padded = keep.iter().any(|row| row.contains(&0));
        let causal = !padded && past == 0;
        // Additive mask [b, 1, 1, s, t]: 0 where query i (absolute past + i) may see key j.
        let mask = if s == 1 && !padded {
            None
        } else {
            let mut values = Vec::with_capacity(b * s * t);
            for row in &keep {
                for i in 0..s {
                    for (j, &k) in row.iter().enumerate() {
                        values.push(if j <= past + i && k != 0 {
                            0.0f32
                        } else {
                            f32::MIN
                        });
                    }
                }
            }
            Some(Tensor::from_vec(values, (b, 1, 1, s, t), &self.device)?)
        };
        let rotary = Rotary::new(
            &positions,
            self.config.head_dim,
            self.config.rope_theta,
            self.dtype,
            &self.device,
        )?;

        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let mut x =
            self.embed_tokens
                .index_select(&ids, 0)?
                .reshape((b, s, self.config.hidden_size))?; // [b, s, e]
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = &x;
            let h = layer.input_layernorm.forward(&x)?;
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], past));
            let h = layer
                .self_attn
                .forward(&h, &rotary, mask.as_ref(), causal, layer_cache)?;
            let x1 = (residual + h)?;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x1)?)?;
            x = (x1 + h)?;
        }
        if let Some(cache) = cache {
            cache.len = t;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_dropout_zeroes_about_p_of_the_inputs_scales_the_rest_and_repeats_with_its_seed() {
        let dropout = |seed| LoraDropout {
            p: 0.3,
            rng: Arc::new(std::sync::Mutex::new(crate::sampling::SplitMix64::new(
                seed,
            ))),
        };
        let x = Tensor::ones((200, 100), DType::F32, &Device::Cpu).unwrap();
        let mask = |seed| {
            dropout(seed)
                .mask(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let values = mask(7);
        let zeros = values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64;
        assert!((zeros - 0.3).abs() < 0.02, "{zeros}");
        let kept = 1.0 / 0.7;
        assert!(values.iter().all(|v| *v == 0.0 || (*v - kept).abs() < 1e-6));
        assert_eq!(values, mask(7), "the same seed, the same mask");
        assert_ne!(values, mask(8));
        // The mean is preserved in expectation.
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / values.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
    }

    #[test]
    fn the_transposed_weight_is_made_once_and_again_for_a_replaced_weight() {
        let dev = Device::Cpu;
        let w1 = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let mut linear = Linear::new(w1.clone(), None);
        let t1 = linear.transposed(&w1).unwrap();
        assert_eq!(t1.dims(), [3, 5]);
        assert!(t1.is_contiguous());
        assert_eq!(
            t1.to_vec2::<f32>().unwrap(),
            w1.t().unwrap().to_vec2::<f32>().unwrap()
        );
        let again = linear.transposed(&w1).unwrap();
        assert_eq!(again.id(), t1.id(), "kept, not made again");
        let w2 = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        linear.weight = LinearWeight::Dense(w2.clone());
        let t2 = linear.transposed(&w2).unwrap();
        assert_eq!(
            t2.to_vec2::<f32>().unwrap(),
            w2.t().unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn the_decode_matvec_equals_candles_matmul_and_declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 29), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 29), &dev).unwrap();
        let fast = decode_matvec(&x, &w).unwrap().unwrap();
        let slow = x.matmul(&w.t().unwrap()).unwrap();
        let diff = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
        let two_rows = Tensor::randn(0f32, 1.0, (2, 29), &dev).unwrap();
        assert!(decode_matvec(&two_rows, &w).unwrap().is_none());
        let var = Var::from_tensor(&w).unwrap();
        assert!(
            decode_matvec(&x, var.as_tensor()).unwrap().is_none(),
            "trainable weights use autograd ops"
        );
        assert!(
            decode_matvec(&x, &w.to_dtype(DType::BF16).unwrap())
                .unwrap()
                .is_none()
        );
    }
}
