//! Fused CPU kernels for training in f32: a LoRA projection, RMSNorm, rotary embedding, the
//! SiLU gate, causal attention and the head's target log-probabilities, each one autograd node with a hand-written backward instead of the dozen
//! elementwise nodes candle would record (each of which, in backward, allocates a zeroed
//! gradient, adds into it and walks on). [`crate::model`] uses them when a forward pass tracks
//! gradients on the CPU in f32; elsewhere it keeps candle's composite operations.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::vector;

type OpResult<T> = candle_core::Result<T>;

/// A row-major matrix operand: its values, how many rows and columns it has and how far apart
/// its rows lie (`stride`, the columns of a larger matrix it is cut from), read transposed or
/// not.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    stride: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn plain(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Operand {
            data,
            rows,
            cols,
            stride: cols,
            transposed: false,
        }
    }

    fn t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Operand {
            transposed: true,
            ..Self::plain(data, rows, cols)
        }
    }

    /// The same operand with rows `stride` values apart.
    fn strided(self, stride: usize) -> Self {
        Operand { stride, ..self }
    }

    /// The operand's shape as read: `(rows, cols)` of `op(M)`.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Column and row strides of `op(M)`.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.stride as isize, 1)
        } else {
            (1, self.stride as isize)
        }
    }

    /// Whether every value the operand reads lies within `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.stride >= self.cols
                && self.data.len() >= (self.rows - 1) * self.stride + self.cols)
    }
}

/// `c = (accumulate ? c : 0) + scale * op(a) op(b)`, `c` row-major `[m, n]`, on every core.
fn matmul(a: Operand<'_>, b: Operand<'_>, c: &mut [f32], scale: f32, accumulate: bool) {
    let n = b.shape().1;
    matmul_on(a, b, (c, n), scale, accumulate, false);
}

/// [`matmul`] into `c` with rows `ldc` values apart (`c.0` cut from a wider matrix `c.1`
/// columns wide), on this thread alone (`serial`: the caller runs several in parallel) or on
/// every core.
fn matmul_on(
    a: Operand<'_>,
    b: Operand<'_>,
    (c, ldc): (&mut [f32], usize),
    scale: f32,
    accumulate: bool,
    serial: bool,
) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert!(
        k == k2
            && a.in_bounds()
            && b.in_bounds()
            && (m == 0 || n == 0 || (ldc >= n && c.len() >= (m - 1) * ldc + n)),
        "fused matmul: mismatched operands"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let threads = crate::threads();
    let parallelism = if threads > 1 && !serial {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above bounds every index the strides reach: op(a) is m x k within
    // a's (rows - 1) * stride + cols values, op(b) k x n within b's, c m x n with rows ldc
    // apart within c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The contiguous f32 values of a CPU storage under `layout`.
fn values<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> OpResult<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 values of the CPU tensor `t`.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> OpResult<R>) -> OpResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused kernels run on the CPU");
    };
    f(values(cpu, layout, "a fused kernel's operand")?)
}

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> OpResult<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// `x W^T` for `x` `[n, in]`, given `W^T` (`[in, out]`, f32 on the CPU): `[n, out]`, written
/// straight into the result. `gemm` reads a row-major `[in, out]` operand without repacking it;
/// `W` itself (`[out, in]`, read transposed) it repacks on every call, which made the forward
/// pass a third slower.
pub(crate) fn x_wt(x: &[f32], n: usize, weight_t: &Tensor) -> OpResult<Vec<f32>> {
    let (inp, out) = weight_t.dims2()?;
    if x.len() != n * inp {
        candle_core::bail!("x W^T: {} values for [{n}, {inp}]", x.len());
    }
    let mut y = vec![0f32; n * out];
    with_values(weight_t, |wt| {
        matmul(
            Operand::plain(x, n, inp),
            Operand::plain(wt, inp, out),
            &mut y,
            1.0,
            false,
        );
        Ok(())
    })?;
    Ok(y)
}

/// `ln(sum(exp(row)))`, stably (shifted by the row's maximum), summed in f64.
fn log_sum_exp(row: &[f32]) -> f32 {
    vector::vectorized(|| {
        let max = vector::max(row);
        if max == f32::NEG_INFINITY {
            return max;
        }
        max + vector::sum_exp(row, max).ln() as f32
    })
}

/// What a [`HeadLogProb`] keeps from forward to backward: the logits `[n, v]` (turned into
/// their gradient in place) and each row's log-sum-exp.
type HeadSaved = (Vec<f32>, Vec<f32>);

/// `log_softmax(x W^T)[i, targets[i]]` through a frozen head `W` (`[v, e]`) for `x` `[n, e]`:
/// `[n]`, one node whose backward gives `x`'s gradient. The logits (`n * v` values, 50 MB for
/// 256 rows of a 49k vocabulary) are one buffer kept from forward to backward and turned into
/// their own gradient there, instead of a logits tensor, its gradient, and the zeroed
/// gradients and sums that candle's backward makes of each node in between.
pub(crate) struct HeadLogProb {
    /// The frozen head `[v, e]`.
    pub weight: Tensor,
    /// `W^T`, `[e, v]` (the forward product's operand; see [`x_wt`]).
    pub weight_t: Tensor,
    /// The target token of each row.
    pub targets: Arc<Vec<u32>>,
    saved: Arc<std::sync::Mutex<Option<HeadSaved>>>,
}

impl HeadLogProb {
    /// The op for these targets through this head and its transpose.
    pub fn new(weight: Tensor, weight_t: Tensor, targets: Vec<u32>) -> Self {
        HeadLogProb {
            weight,
            weight_t,
            targets: Arc::new(targets),
            saved: Arc::default(),
        }
    }

    /// The logits of `x` (`[n, e]` values) and each row's log-sum-exp.
    fn logits(&self, x: &[f32], n: usize) -> OpResult<HeadSaved> {
        let (v, e) = self.weight.dims2()?;
        if x.len() != n * e || self.targets.len() != n {
            candle_core::bail!(
                "head log-probs: {} values and {} targets for [{n}, {e}]",
                x.len(),
                self.targets.len()
            );
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target token {t} is outside the vocabulary of {v}");
        }
        let logits = x_wt(x, n, &self.weight_t)?;
        let lse = logits.par_chunks(v.max(1)).map(log_sum_exp).collect();
        Ok((logits, lse))
    }
}

impl CustomOp1 for HeadLogProb {
    fn name(&self) -> &'static str {
        "head-log-prob"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> OpResult<(CpuStorage, Shape)> {
        let (n, _) = rows_features(layout.dims())?;
        let v = self.weight.dim(0)?;
        let (logits, lse) = self.logits(values(storage, layout, "x")?, n)?;
        let out = (0..n)
            .map(|i| logits[i * v + self.targets[i] as usize] - lse[i])
            .collect();
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some((logits, lse));
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> OpResult<Option<Tensor>> {
        let dims = x.dims().to_vec();
        let (n, e) = rows_features(&dims)?;
        let v = self.weight.dim(0)?;
        // Backward a second time (retained graph) finds the buffer spent: recompute it.
        let saved = self.saved.lock().ok().and_then(|mut saved| saved.take());
        let (mut logits, lse) = match saved {
            Some(saved) => saved,
            None => with_values(x, |x| self.logits(x, n))?,
        };
        let grad = grad.to_dtype(candle_core::DType::F32)?;
        with_values(&grad, |g| {
            if g.len() != n {
                candle_core::bail!("head log-probs: a gradient of {} for {n} rows", g.len());
            }
            // d/dlogit_ij of (logit_it - lse_i) = [j == t] - softmax_ij, times g_i.
            logits
                .par_chunks_mut(v.max(1))
                .enumerate()
                .for_each(|(i, row)| {
                    let (g, m) = (g[i], lse[i]);
                    vector::vectorized(|| {
                        for o in row.iter_mut() {
                            *o = -g * vector::exp(*o - m);
                        }
                    });
                    row[self.targets[i] as usize] += g;
                });
            Ok(())
        })?;
        let mut dx = vec![0f32; n * e];
        with_values(&self.weight, |w| {
            matmul(
                Operand::plain(&logits, n, v),
                Operand::plain(w, v, e),
                &mut dx,
                1.0,
                false,
            );
            Ok(())
        })?;
        Ok(Some(tensor(dx, dims)?))
    }
}

/// `(rows, features)` of an input `[.., features]`: all leading dimensions taken as rows.
pub(crate) fn rows_features(dims: &[usize]) -> OpResult<(usize, usize)> {
    match dims.split_last() {
        Some((&features, lead)) if !lead.is_empty() => Ok((lead.iter().product(), features)),
        _ => candle_core::bail!("a projection's input must be [.., features], found {dims:?}"),
    }
}

/// `dims` with the last one replaced by `last`.
pub(crate) fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut dims = dims.to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

/// `x * mask` (LoRA dropout) or `x` itself.
fn masked<'a>(x: &'a [f32], mask: Option<&[f32]>, buffer: &'a mut Vec<f32>) -> &'a [f32] {
    match mask {
        Some(m) => {
            *buffer = x.iter().zip(m).map(|(x, m)| x * m).collect();
            buffer
        }
        None => x,
    }
}

/// `y = x W^T + scaling ((x * mask) A^T) B^T`: a frozen projection with its LoRA adapter, as
/// one node whose backward gives `x`'s gradient (when it tracks one) and the adapter's.
/// Arguments: `x [.., in]` (its leading dimensions are rows: no reshape nodes around it, each
/// of which costs backward a zeroed gradient and an add), `A [r, in]`, `B [out, r]`.
pub(crate) struct LoraMatmul {
    /// The frozen weight `[out, in]`, f32 on the CPU.
    pub weight: Tensor,
    /// The same transposed, `[in, out]` (the forward product's operand; see [`x_wt`]).
    pub weight_t: Tensor,
    /// `alpha / r`.
    pub scaling: f32,
    /// The dropout mask on the adapter's input, `[n, in]` (values 0 or `1 / (1 - p)`).
    pub mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> OpResult<(CpuStorage, Shape)> {
        let (n, inp) = rows_features(l1.dims())?;
        let (r, inp2) = l2.shape().dims2()?;
        let (out, r2) = l3.shape().dims2()?;
        let (wo, wi) = self.weight.dims2()?;
        if inp != inp2 || r != r2 || wo != out || wi != inp {
            candle_core::bail!(
                "lora-matmul: x {:?}, A {:?}, B {:?}, W {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims(),
                self.weight.dims()
            );
        }
        if self.weight_t.dims() != [inp, out] {
            candle_core::bail!(
                "lora-matmul: W^T {:?} for W {:?}",
                self.weight_t.dims(),
                self.weight.dims()
            );
        }
        let x = values(s1, l1, "x")?;
        let a = values(s2, l2, "A")?;
        let b = values(s3, l3, "B")?;
        let mut y = x_wt(x, n, &self.weight_t)?;
        let mut buffer = Vec::new();
        let xm = masked(x, self.mask.as_deref().map(Vec::as_slice), &mut buffer);
        let mut h = vec![0f32; n * r];
        matmul(
            Operand::plain(xm, n, inp),
            Operand::t(a, r, inp),
            &mut h,
            1.0,
            false,
        );
        matmul(
            Operand::plain(&h, n, r),
            Operand::t(b, out, r),
            &mut y,
            self.scaling,
            true,
        );
        Ok((CpuStorage::F32(y), with_last(l1.dims(), out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> OpResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x_dims = x.dims().to_vec();
        let (n, inp) = rows_features(&x_dims)?;
        let (r, _) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let s = self.scaling;
        let want_x = x.track_op();
        with_values(x, |x| {
            with_values(a, |a| {
                with_values(b, |b| {
                    with_values(grad, |dy| {
                        let mut buffer = Vec::new();
                        let mask = self.mask.as_deref().map(Vec::as_slice);
                        let xm = masked(x, mask, &mut buffer);
                        // h = xm A^T [n, r]; dB = s dy^T h; dh = s dy B; dA = dh^T xm.
                        let mut h = vec![0f32; n * r];
                        matmul(
                            Operand::plain(xm, n, inp),
                            Operand::t(a, r, inp),
                            &mut h,
                            1.0,
                            false,
                        );
                        let mut db = vec![0f32; out * r];
                        matmul(
                            Operand::t(dy, n, out),
                            Operand::plain(&h, n, r),
                            &mut db,
                            s,
                            false,
                        );
                        let mut dh = vec![0f32; n * r];
                        matmul(
                            Operand::plain(dy, n, out),
                            Operand::plain(b, out, r),
                            &mut dh,
                            s,
                            false,
                        );
                        let mut da = vec![0f32; r * inp];
                        matmul(
                            Operand::t(&dh, n, r),
                            Operand::plain(xm, n, inp),
                            &mut da,
                            1.0,
                            false,
                        );
                        let dx = if want_x {
                            // dx = dy W + (dh A) * mask.
                            let mut dx = vec![0f32; n * inp];
                            with_values(&self.weight, |w| {
                                matmul(
                                    Operand::plain(dy, n, out),
                                    Operand::plain(w, out, inp),
                                    &mut dx,
                                    1.0,
                                    false,
                                );
                                Ok(())
                            })?;
                            match mask {
                                None => matmul(
                                    Operand::plain(&dh, n, r),
                                    Operand::plain(a, r, inp),
                                    &mut dx,
                                    1.0,
                                    true,
                                ),
                                Some(m) => {
                                    let mut dl = vec![0f32; n * inp];
                                    matmul(
                                        Operand::plain(&dh, n, r),
                                        Operand::plain(a, r, inp),
                                        &mut dl,
                                        1.0,
                                        false,
                                    );
                                    for ((dx, dl), m) in dx.iter_mut().zip(&dl).zip(m) {
                                        *dx += dl * m;
                                    }
                                }
                            }
                            Some(tensor(dx, x_dims.clone())?)
                        } else {
                            None
                        };
                        Ok((dx, Some(tensor(da, (r, inp))?), Some(tensor(db, (out, r))?)))
                    })
                })
            })
        })
    }
}

/// `x * rsqrt(mean(x^2) + eps) * weight` over the last dimension: arguments `x [.., e]` and
/// `weight [e]`. The weight's gradient is computed only when it tracks one.
pub(crate) struct RmsNormOp {
    /// Added to the mean square.
    pub eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> OpResult<(CpuStorage, Shape)> {
        let x = values(s1, l1, "x")?;
        let w = values(s2, l2, "the norm's weight")?;
        let e = w.len();
        if e == 0 || l1.dims().last() != Some(&e) {
            candle_core::bail!("rms-norm: x {:?}, weight {:?}", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(e).zip(x.par_chunks(e)).for_each(|(y, x)| {
            let r = inv_rms(x, self.eps);
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> OpResult<(Option<Tensor>, Option<Tensor>)> {
        let want_w = w.track_op();
        let shape = x.shape().clone();
        let e = w.elem_count();
        let eps = self.eps;
        with_values(x, |x| {
            with_values(w, |w| {
                with_values(grad, |dy| {
                    // xhat = x r; dx = r (dy w - xhat mean(dy w xhat)); dw = sum_rows dy xhat.
                    let mut dx = vec![0f32; x.len()];
                    dx.par_chunks_mut(e)
                        .zip(x.par_chunks(e).zip(dy.par_chunks(e)))
                        .for_each(|(dx, (x, dy))| {
                            let r = inv_rms(x, eps);
                            let dot: f32 = x
                                .iter()
                                .zip(dy)
                                .zip(w)
                                .map(|((x, dy), w)| dy * w * x * r)
                                .sum();
                            let mean = dot / e as f32;
                            for (((dx, x), dy), w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                                *dx = r * (dy * w - x * r * mean);
                            }
                        });
                    let dw = if want_w {
                        let mut dw = vec![0f32; e];
                        for (x, dy) in x.chunks(e).zip(dy.chunks(e)) {
                            let r = inv_rms(x, eps);
                            for ((dw, x), dy) in dw.iter_mut().zip(x).zip(dy) {
                                *dw += dy * x * r;
                            }
                        }
                        Some(tensor(dw, e)?)
                    } else {
                        None
                    };
                    Ok((Some(tensor(dx, shape.clone())?), dw))
                })
            })
        })
    }
}

/// `1 / sqrt(mean(x^2) + eps)` of one row.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let sum: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

/// `silu(gate) * up`, elementwise: arguments `gate` and `up` of one shape.
pub(crate) struct SiluMul;

/// `1 / (1 + exp(-x))`, inlined into the vectorized loops.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + vector::exp(-x))
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> OpResult<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("silu-mul: gate {:?}, up {:?}", l1.dims(), l2.dims());
        }
        let g = values(s1, l1, "gate")?;
        let u = values(s2, l2, "up")?;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                vector::vectorized(|| {
                    for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                        *y = g * sigmoid(*g) * u;
                    }
                });
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> OpResult<(Option<Tensor>, Option<Tensor>)> {
        let shape = gate.shape().clone();
        with_values(gate, |g| {
            with_values(up, |u| {
                with_values(grad, |dy| {
                    let mut dg = vec![0f32; g.len()];
                    let mut du = vec![0f32; g.len()];
                    dg.par_chunks_mut(4096)
                        .zip(du.par_chunks_mut(4096))
                        .zip(
                            g.par_chunks(4096)
                                .zip(u.par_chunks(4096))
                                .zip(dy.par_chunks(4096)),
                        )
                        .for_each(|((dg, du), ((g, u), dy))| {
                            vector::vectorized(|| {
                                for k in 0..g.len() {
                                    let s = sigmoid(g[k]);
                                    du[k] = dy[k] * g[k] * s;
                                    dg[k] = dy[k] * u[k] * s * (1.0 + g[k] * (1.0 - s));
                                }
                            });
                        });
                    Ok((
                        Some(tensor(dg, shape.clone())?),
                        Some(tensor(du, shape.clone())?),
                    ))
                })
            })
        })
    }
}

/// One head's rotary embedding `y = x cos + rotate_half(x) sin` at one position, or its
/// transpose (`backward`: `dx = dy cos + rotate_half^T(dy sin)`).
fn rotate(x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32], backward: bool) {
    let half = x.len() / 2;
    for i in 0..half {
        if backward {
            y[i] = x[i] * cos[i] + x[i + half] * sin[i + half];
            y[i + half] = x[i + half] * cos[i + half] - x[i] * sin[i];
        } else {
            y[i] = x[i] * cos[i] - x[i + half] * sin[i];
            y[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
        }
    }
}

/// Rotary embedding `x cos + rotate_half(x) sin` for `x [b, h, s, d]`, with the tables
/// `[b, s, d]` (shared by the heads).
pub(crate) struct RotaryOp {
    /// `cos`, `[b, s, d]`.
    pub cos: Arc<Vec<f32>>,
    /// `sin`, `[b, s, d]`.
    pub sin: Arc<Vec<f32>>,
}

impl RotaryOp {
    /// For each `[s, d]` plane of `x` (`[b, h, s, d]`), its batch row.
    fn apply(&self, x: &[f32], dims: &[usize], backward: bool) -> OpResult<Vec<f32>> {
        let &[b, h, s, d] = dims else {
            candle_core::bail!("rotary: x must be [b, h, s, d], found {dims:?}");
        };
        if self.cos.len() != b * s * d || d % 2 != 0 {
            candle_core::bail!("rotary: tables for another shape than {dims:?}");
        }
        let plane = s * d;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(k, (y, x))| {
                let row = k / h;
                let cos = &self.cos[row * plane..(row + 1) * plane];
                let sin = &self.sin[row * plane..(row + 1) * plane];
                for p in 0..s {
                    let (x, y) = (&x[p * d..(p + 1) * d], &mut y[p * d..(p + 1) * d]);
                    let (c, sn) = (&cos[p * d..(p + 1) * d], &sin[p * d..(p + 1) * d]);
                    rotate(x, y, c, sn, backward);
                }
            });
        Ok(y)
    }
}

impl CustomOp1 for RotaryOp {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> OpResult<(CpuStorage, Shape)> {
        let x = values(storage, layout, "x")?;
        let y = self.apply(x, layout.dims(), false)?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> OpResult<Option<Tensor>> {
        let dims = x.dims().to_vec();
        with_values(grad, |dy| {
            let dx = self.apply(dy, &dims, true)?;
            Ok(Some(tensor(dx, dims.clone())?))
        })
    }
}

/// Causal attention without padding, `softmax(Q K^T scale + causal) V`, for the grouped
/// layout of [`crate::model`]: `q [b, kv, r*s, d]` (the `r` query heads sharing a key/value
/// head stacked, `s` rows each), `k` and `v` `[b, kv, s, d]`. Keeps the probabilities for
/// backward (`b * heads * s * s` values).
pub(crate) struct CausalAttention {
    /// `1 / sqrt(d)`.
    pub scale: f32,
    /// Query positions per tile ([`ATTENTION_TILE`]; smaller in tests).
    pub tile: usize,
    /// The probabilities of the forward pass, `[b, kv, r*s, s]`.
    pub probs: Arc<std::sync::OnceLock<Vec<f32>>>,
}

/// Query positions per tile in causal attention: a tile reads only the keys up to its last
/// position, so the masked upper triangle is computed only within the diagonal tiles (about
/// 56% of the full square's work at 256 positions).
pub(crate) const ATTENTION_TILE: usize = 32;

/// How a block's `r * s` query rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowOrder {
    /// Row `j * s + i` holds head `j` at position `i` (candle's reshapes: [`CausalAttention`]).
    HeadMajor,
    /// Row `i * r + j` (an [`AttentionBlock`]'s own grouping): a run of positions is one run of
    /// rows, whichever head.
    PositionMajor,
}

/// The shape of a causal attention call on the grouped layout: `q [blocks, r*s, d]` in `order`,
/// `k` and `v` `[blocks, s, d]`, worked through in tiles of `tile` (at least 1) query positions.
#[derive(Clone, Copy, Debug)]
struct Grouped {
    blocks: usize,
    r: usize,
    s: usize,
    d: usize,
    order: RowOrder,
    tile: usize,
}

/// One tile of query rows: its block, its run of consecutive positions (a head's rows when
/// head-major; the whole block when position-major) and its index within the run.
#[derive(Clone, Copy)]
struct Tile {
    block: usize,
    run: usize,
    index: usize,
}

impl Grouped {
    /// `(runs per block, rows per position)`.
    fn runs(&self) -> (usize, usize) {
        match self.order {
            RowOrder::HeadMajor => (self.r, 1),
            RowOrder::PositionMajor => (1, self.r),
        }
    }

    /// The first row (within all blocks) at position `p` of `run` in `block`.
    fn row(&self, block: usize, run: usize, p: usize) -> usize {
        let per = self.runs().1;
        block * self.r * self.s + run * self.s * per + p * per
    }

    /// The positions `first..last` of query tile `index`.
    fn positions(&self, index: usize) -> (usize, usize) {
        let first = index * self.tile;
        (first, (first + self.tile).min(self.s))
    }

    /// Where query tile `tile` lies.
    fn span(&self, tile: Tile) -> TileSpan {
        let (first, keys) = self.positions(tile.index);
        let keys_from = tile.block * self.s * self.d;
        TileSpan {
            first,
            keys,
            rows: (keys - first) * self.runs().1,
            row: self.row(tile.block, tile.run, first),
            kv: keys_from..keys_from + keys * self.d,
        }
    }

    /// `buffer` (`[blocks, r*s, width]`) cut into the rows of each query tile, in order.
    fn tiles<'a>(&self, buffer: &'a mut [f32], width: usize) -> Vec<(Tile, &'a mut [f32])> {
        let (runs, per) = self.runs();
        let (rs, s, tile) = (self.r * self.s, self.s, self.tile);
        let mut out = Vec::new();
        for (block, rows) in buffer.chunks_mut(rs * width).enumerate() {
            for (run, rows) in rows.chunks_mut(s * per * width).take(runs).enumerate() {
                for (index, rows) in rows.chunks_mut(tile * per * width).enumerate() {
                    out.push((Tile { block, run, index }, rows));
                }
            }
        }
        out
    }

    /// Two buffers (`[blocks, r*s, a_width]` and `[blocks, r*s, b_width]`) cut side by side
    /// into the rows of each query tile: a work item per tile.
    fn tile_pairs<'a>(
        &self,
        (a, a_width): (&'a mut [f32], usize),
        (b, b_width): (&'a mut [f32], usize),
    ) -> Vec<(TileSpan, &'a mut [f32], &'a mut [f32])> {
        self.tiles(a, a_width)
            .into_iter()
            .zip(self.tiles(b, b_width))
            .map(|((tile, a), (_, b))| (self.span(tile), a, b))
            .collect()
    }
}

/// A query tile's place: positions `first..keys` (so it sees keys `0..keys`, at `kv` in the
/// block's keys and values), `rows` query rows from row `row` on.
struct TileSpan {
    first: usize,
    keys: usize,
    rows: usize,
    row: usize,
    kv: std::ops::Range<usize>,
}

/// The shape of a [`CausalAttention`] call, head-major.
fn attention_dims(q: &[usize], k: &[usize], v: &[usize], tile: usize) -> OpResult<Grouped> {
    let (&[b, kv, rs, d], &[b2, kv2, s, d2], true) = (q, k, k == v) else {
        candle_core::bail!("causal attention: q {q:?}, k {k:?}, v {v:?}");
    };
    if b != b2 || kv != kv2 || d != d2 || s == 0 || rs % s != 0 || tile == 0 {
        candle_core::bail!("causal attention: q {q:?}, k {k:?}, v {v:?}, tile {tile}");
    }
    Ok(Grouped {
        blocks: b * kv,
        r: rs / s,
        s,
        d,
        order: RowOrder::HeadMajor,
        tile,
    })
}

/// Runs `one` on every item, in parallel with each item's products on one thread when there
/// are enough items to share out evenly, else one after another with every core in each
/// product (`one`'s second argument: whether its products run serially).
fn for_each_item<T: Send>(items: Vec<T>, one: impl Fn(T, bool) + Sync) {
    if items.len() >= 2 * crate::threads() {
        items.into_par_iter().for_each(|item| one(item, true));
    } else {
        items.into_iter().for_each(|item| one(item, false));
    }
}

/// Causal attention on the grouped layout ([`Grouped`]); returns the output `[blocks, r*s, d]`
/// and the probabilities `[blocks, r*s, s]` (zero above the diagonal). Each tile of query
/// positions `first..last` computes scores against keys `0..last` only.
fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: Grouped,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let Grouped {
        blocks, r, s, d, ..
    } = g;
    let per = g.runs().1;
    let mut probs = vec![0f32; blocks * r * s * s];
    let mut out = vec![0f32; blocks * r * s * d];
    let items = g.tile_pairs((&mut probs, s), (&mut out, d));
    for_each_item(items, |(span, p, o), serial| {
        let TileSpan {
            first,
            keys,
            rows,
            row,
            kv,
        } = span;
        let q = &q[row * d..(row + rows) * d];
        matmul_on(
            Operand::plain(q, rows, d),
            Operand::t(&k[kv.clone()], keys, d),
            (p, s),
            scale,
            false,
            serial,
        );
        for (local, p) in p.chunks_mut(s).enumerate() {
            // This row sees keys 0..=i.
            let i = first + local / per;
            vector::vectorized(|| {
                let seen = &mut p[..=i];
                let sum = vector::exp_in_place(seen, vector::max(seen));
                let inv = 1.0 / sum;
                for x in seen {
                    *x *= inv;
                }
            });
            p[i + 1..keys].fill(0.0);
        }
        matmul_on(
            Operand::plain(p, rows, keys).strided(s),
            Operand::plain(&v[kv], keys, d),
            (o, d),
            1.0,
            false,
            serial,
        );
    });
    (out, probs)
}

/// The gradients `(dq, dk, dv)` of [`attention_forward`] for the output's gradient `dy`, from
/// its inputs, output `o` and probabilities. Two passes, each over independent tiles: query
/// tiles give `dS` and `dq`, then key tiles gather `dk` and `dv` from the query rows that see
/// them.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    dy: &[f32],
    probs: &[f32],
    g: Grouped,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Grouped {
        blocks, r, s, d, ..
    } = g;
    let (runs, per) = g.runs();
    let mut ds = vec![0f32; blocks * r * s * s];
    let mut dq = vec![0f32; blocks * r * s * d];
    let items = g.tile_pairs((&mut ds, s), (&mut dq, d));
    for_each_item(items, |(span, ds, dq), serial| {
        let TileSpan {
            keys,
            rows,
            row,
            kv,
            ..
        } = span;
        let (dy, o) = (
            &dy[row * d..(row + rows) * d],
            &o[row * d..(row + rows) * d],
        );
        // dP = dO V^T.
        matmul_on(
            Operand::plain(dy, rows, d),
            Operand::t(&v[kv.clone()], keys, d),
            (ds, s),
            1.0,
            false,
            serial,
        );
        // dS = P (dP - rowsum(dO o O)) scale.
        let p = &probs[row * s..(row + rows) * s];
        for (local, (ds, p)) in ds.chunks_mut(s).zip(p.chunks(s)).enumerate() {
            let (dy, o) = (
                &dy[local * d..(local + 1) * d],
                &o[local * d..(local + 1) * d],
            );
            let dot: f32 = dy.iter().zip(o).map(|(a, b)| a * b).sum();
            for (ds, p) in ds[..keys].iter_mut().zip(&p[..keys]) {
                *ds = p * (*ds - dot) * scale;
            }
        }
        // dQ = dS K.
        matmul_on(
            Operand::plain(ds, rows, keys).strided(s),
            Operand::plain(&k[kv], keys, d),
            (dq, d),
            1.0,
            false,
            serial,
        );
    });
    let mut dk = vec![0f32; blocks * s * d];
    let mut dv = vec![0f32; blocks * s * d];
    let tile = g.tile;
    let items: Vec<_> = dk
        .chunks_mut(s * d)
        .zip(dv.chunks_mut(s * d))
        .enumerate()
        .flat_map(|(block, (dk, dv))| {
            dk.chunks_mut(tile * d)
                .zip(dv.chunks_mut(tile * d))
                .enumerate()
                .map(move |(index, (dk, dv))| (block, index, dk, dv))
        })
        .collect();
    let ds = &ds;
    for_each_item(items, |(block, index, dk, dv), serial| {
        let (first, last) = g.positions(index);
        let cols = last - first;
        // Keys first..last are seen by the query rows at positions first..s of each run:
        // dV = P^T dO and dK = dS^T Q over those rows.
        for run in 0..runs {
            let row = g.row(block, run, first);
            let rows = (s - first) * per;
            let (at, accumulate) = (row * s + first, run > 0);
            let (dy, q) = (
                &dy[row * d..(row + rows) * d],
                &q[row * d..(row + rows) * d],
            );
            matmul_on(
                Operand::t(&probs[at..], rows, cols).strided(s),
                Operand::plain(dy, rows, d),
                (dv, d),
                1.0,
                accumulate,
                serial,
            );
            matmul_on(
                Operand::t(&ds[at..], rows, cols).strided(s),
                Operand::plain(q, rows, d),
                (dk, d),
                1.0,
                accumulate,
                serial,
            );
        }
    });
    (dq, dk, dv)
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> OpResult<(CpuStorage, Shape)> {
        let dims = attention_dims(l1.dims(), l2.dims(), l3.dims(), self.tile)?;
        let q = values(s1, l1, "q")?;
        let k = values(s2, l2, "k")?;
        let v = values(s3, l3, "v")?;
        let (out, probs) = attention_forward(q, k, v, dims, self.scale);
        let _ = self.probs.set(probs);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> OpResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = attention_dims(q.dims(), k.dims(), v.dims(), self.tile)?;
        let Some(probs) = self.probs.get() else {
            candle_core::bail!("causal attention: backward before forward");
        };
        let (dq, dk, dv) = with_values(q, |q| {
            with_values(k, |k| {
                with_values(v, |v| {
                    with_values(res, |o| {
                        with_values(grad, |dy| {
                            Ok(attention_backward(q, k, v, o, dy, probs, dims, self.scale))
                        })
                    })
                })
            })
        })?;
        Ok((
            Some(tensor(dq, q.dims().to_vec())?),
            Some(tensor(dk, k.dims().to_vec())?),
            Some(tensor(dv, v.dims().to_vec())?),
        ))
    }
}

/// The rotary tables of an [`AttentionBlock`] and whether to apply them forward or transposed.
type Rotation<'a> = Option<(&'a [f32], &'a [f32], bool)>;

/// The shape of an [`AttentionBlock`] call: batch, positions, query heads, key/value heads,
/// head size.
#[derive(Clone, Copy)]
struct BlockDims {
    b: usize,
    s: usize,
    h: usize,
    kv: usize,
    d: usize,
}

impl BlockDims {
    /// `x [b, s, heads * d]` (heads = groups * r, head `g * r + j`) to the grouped layout
    /// `[b, groups, s * r, d]`, position-major (row `p * r + j`: [`RowOrder::PositionMajor`]),
    /// rotating each head vector when asked.
    fn group(&self, x: &[f32], groups: usize, r: usize, rotation: Rotation<'_>) -> Vec<f32> {
        let BlockDims { s, d, .. } = *self;
        let heads = groups * r;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).enumerate().for_each(|(row, y)| {
            let (block, within) = (row / (r * s), row % (r * s));
            let (bi, g) = (block / groups, block % groups);
            let (p, j) = (within / r, within % r);
            let at = ((bi * s + p) * heads + g * r + j) * d;
            let x = &x[at..at + d];
            match rotation {
                Some((cos, sin, backward)) => {
                    let t = (bi * s + p) * d;
                    rotate(x, y, &cos[t..t + d], &sin[t..t + d], backward);
                }
                None => y.copy_from_slice(x),
            }
        });
        y
    }

    /// The inverse of [`Self::group`] (with the rotation applied after the move).
    fn ungroup(&self, x: &[f32], groups: usize, r: usize, rotation: Rotation<'_>) -> Vec<f32> {
        let BlockDims { s, d, .. } = *self;
        let heads = groups * r;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).enumerate().for_each(|(at, y)| {
            let (bi, p, head) = (at / (s * heads), (at / heads) % s, at % heads);
            let (g, j) = (head / r, head % r);
            let row = ((bi * groups + g) * s + p) * r + j;
            let x = &x[row * d..(row + 1) * d];
            match rotation {
                Some((cos, sin, backward)) => {
                    let t = (bi * s + p) * d;
                    rotate(x, y, &cos[t..t + d], &sin[t..t + d], backward);
                }
                None => y.copy_from_slice(x),
            }
        });
        y
    }
}

/// What an [`AttentionBlock`]'s forward pass keeps for backward, in the grouped layout.
struct BlockSaved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    probs: Vec<f32>,
}

/// A decoder layer's causal self-attention between its projections, as one node: `q`
/// `[b, s, h*d]`, `k` and `v` `[b, s, kv*d]` as the projections give them, rotary embedding,
/// grouped causal attention ([`attention_forward`]) and the heads merged back, `[b, s, h*d]`.
/// Instead of the dozen reshape, transpose, copy and rotary nodes around [`CausalAttention`],
/// each of which costs backward a zeroed gradient and an add.
pub(crate) struct AttentionBlock {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// `1 / sqrt(d)`.
    pub scale: f32,
    /// Rotary `cos`, `[b, s, d]`.
    pub cos: Arc<Vec<f32>>,
    /// Rotary `sin`, `[b, s, d]`.
    pub sin: Arc<Vec<f32>>,
    /// Query positions per tile ([`ATTENTION_TILE`]; smaller in tests).
    pub tile: usize,
    /// The forward pass's grouped values, for backward.
    saved: Arc<std::sync::OnceLock<BlockSaved>>,
}

impl AttentionBlock {
    /// A block over `heads` query and `kv_heads` key/value heads with these rotary tables.
    pub fn new(
        heads: usize,
        kv_heads: usize,
        scale: f32,
        cos: Arc<Vec<f32>>,
        sin: Arc<Vec<f32>>,
    ) -> Self {
        AttentionBlock {
            heads,
            kv_heads,
            scale,
            cos,
            sin,
            tile: ATTENTION_TILE,
            saved: Arc::default(),
        }
    }

    fn dims(&self, q: &[usize], k: &[usize], v: &[usize]) -> OpResult<BlockDims> {
        let (h, kv) = (self.heads, self.kv_heads);
        let (&[b, s, hd], true) = (q, k == v) else {
            candle_core::bail!("attention block: q {q:?}, k {k:?}, v {v:?}");
        };
        if kv == 0 || h % kv != 0 || hd % h != 0 {
            candle_core::bail!("attention block: {h} heads over {kv} key/value heads, q {q:?}");
        }
        let d = hd / h;
        if k != [b, s, kv * d]
            || d % 2 != 0
            || self.cos.len() != b * s * d
            || self.sin.len() != b * s * d
        {
            candle_core::bail!("attention block: q {q:?}, k {k:?}, v {v:?}, head size {d}");
        }
        Ok(BlockDims { b, s, h, kv, d })
    }

    /// The grouped attention this block runs, position-major.
    fn grouped(&self, dims: BlockDims) -> Grouped {
        let BlockDims { b, s, h, kv, d } = dims;
        Grouped {
            blocks: b * kv,
            r: h / kv,
            s,
            d,
            order: RowOrder::PositionMajor,
            tile: self.tile.max(1),
        }
    }
}

impl CustomOp3 for AttentionBlock {
    fn name(&self) -> &'static str {
        "attention-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> OpResult<(CpuStorage, Shape)> {
        let dims = self.dims(l1.dims(), l2.dims(), l3.dims())?;
        let BlockDims { h, kv, .. } = dims;
        let r = h / kv;
        let rotation = Some((self.cos.as_slice(), self.sin.as_slice(), false));
        let q = dims.group(values(s1, l1, "q")?, kv, r, rotation);
        let k = dims.group(values(s2, l2, "k")?, kv, 1, rotation);
        let v = dims.group(values(s3, l3, "v")?, kv, 1, None);
        let (out, probs) = attention_forward(&q, &k, &v, self.grouped(dims), self.scale);
        let merged = dims.ungroup(&out, kv, r, None);
        let _ = self.saved.set(BlockSaved {
            q,
            k,
            v,
            out,
            probs,
        });
        Ok((CpuStorage::F32(merged), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> OpResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(q.dims(), k.dims(), v.dims())?;
        let BlockDims { h, kv, .. } = dims;
        let r = h / kv;
        let Some(saved) = self.saved.get() else {
            candle_core::bail!("attention block: backward before forward");
        };
        let dy = with_values(grad, |dy| Ok(dims.group(dy, kv, r, None)))?;
        let (dq, dk, dv) = attention_backward(
            &saved.q,
            &saved.k,
            &saved.v,
            &saved.out,
            &dy,
            &saved.probs,
            self.grouped(dims),
            self.scale,
        );
        let rotation = Some((self.cos.as_slice(), self.sin.as_slice(), true));
        Ok((
            Some(tensor(
                dims.ungroup(&dq, kv, r, rotation),
                q.dims().to_vec(),
            )?),
            Some(tensor(
                dims.ungroup(&dk, kv, 1, rotation),
                k.dims().to_vec(),
            )?),
            Some(tensor(dims.ungroup(&dv, kv, 1, None), v.dims().to_vec())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Var};

    fn filled(shape: &[usize], seed: usize) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|k| (((k * 7919 + seed * 104729) % 1000) as f32 / 113.0).sin())
            .collect()
    }

    fn var(shape: &[usize], seed: usize) -> Var {
        Var::from_vec(filled(shape, seed), shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what}[{k}]: {x} vs {y}"
            );
        }
    }

    /// Checks value and gradients of `fused` against `composite` for the loss `sum(y * probe)`.
    fn check(
        inputs: &[&Var],
        fused: impl Fn() -> Tensor,
        composite: impl Fn() -> Tensor,
        what: &str,
    ) {
        let (yf, yc) = (fused(), composite());
        close(&yf, &yc, 1e-5, what);
        let probe = tensor(filled(yc.dims(), 99), yc.dims().to_vec()).unwrap();
        let gf = (&yf * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&yc * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (k, v) in inputs.iter().enumerate() {
            let (a, b) = (gf.get(v.as_tensor()), gc.get(v.as_tensor()));
            let (a, b) = (a.expect("fused gradient"), b.expect("composite gradient"));
            close(a, b, 1e-4, &format!("{what}: gradient of input {k}"));
            assert!(
                a.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0,
                "{what}: zero gradient"
            );
        }
    }

    #[test]
    fn the_lora_projection_equals_candles_composite_with_and_without_dropout() {
        let (n, inp, out, r) = (7, 24, 20, 4);
        let x = var(&[n, inp], 1);
        let w = tensor(filled(&[out, inp], 2), (out, inp)).unwrap();
        let a = var(&[r, inp], 3);
        let b = var(&[out, r], 4);
        for mask in [
            None,
            Some(Arc::new(
                (0..n * inp)
                    .map(|k| if k % 3 == 0 { 0.0 } else { 1.5 })
                    .collect::<Vec<f32>>(),
            )),
        ] {
            let op = || LoraMatmul {
                weight: w.clone(),
                weight_t: w.t().unwrap().contiguous().unwrap(),
                scaling: 2.0,
                mask: mask.clone(),
            };
            check(
                &[&x, &a, &b],
                || {
                    x.as_tensor()
                        .apply_op3(a.as_tensor(), b.as_tensor(), op())
                        .unwrap()
                },
                || {
                    let xm = match &mask {
                        Some(m) => (x.as_tensor() * tensor(m.to_vec(), (n, inp)).unwrap()).unwrap(),
                        None => x.as_tensor().clone(),
                    };
                    let base = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
                    let lora = xm
                        .matmul(&a.t().unwrap())
                        .unwrap()
                        .matmul(&b.t().unwrap())
                        .unwrap();
                    (base + (lora * 2.0).unwrap()).unwrap()
                },
                "lora-matmul",
            );
        }
        // Leading dimensions are rows: `[2, 3, in]` as `[6, in]`, the result and `dx` shaped
        // as the input.
        let x3 = var(&[2, 3, inp], 5);
        let op = LoraMatmul {
            weight: w.clone(),
            weight_t: w.t().unwrap().contiguous().unwrap(),
            scaling: 2.0,
            mask: None,
        };
        let fused = x3.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op);
        let y = fused.unwrap();
        assert_eq!(y.dims(), [2, 3, out]);
        check(
            &[&x3, &a, &b],
            || {
                let op = LoraMatmul {
                    weight: w.clone(),
                    weight_t: w.t().unwrap().contiguous().unwrap(),
                    scaling: 2.0,
                    mask: None,
                };
                x3.as_tensor()
                    .apply_op3(a.as_tensor(), b.as_tensor(), op)
                    .unwrap()
            },
            || {
                let x2 = x3.as_tensor().reshape((6, inp)).unwrap();
                let base = x2.matmul(&w.t().unwrap()).unwrap();
                let lora = x2
                    .matmul(&a.t().unwrap())
                    .unwrap()
                    .matmul(&b.t().unwrap())
                    .unwrap();
                (base + (lora * 2.0).unwrap())
                    .unwrap()
                    .reshape((2, 3, out))
                    .unwrap()
            },
            "lora-matmul on [2, 3, in]",
        );
    }

    #[test]
    fn rms_norm_equals_candles_composite_and_grads_the_weight_when_it_tracks() {
        let x = var(&[2, 3, 16], 5);
        let w = var(&[16], 6);
        check(
            &[&x, &w],
            || {
                x.as_tensor()
                    .apply_op2(w.as_tensor(), RmsNormOp { eps: 1e-5 })
                    .unwrap()
            },
            || {
                let ms = x
                    .as_tensor()
                    .sqr()
                    .unwrap()
                    .mean_keepdim(D::Minus1)
                    .unwrap();
                let r = (ms + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
                x.as_tensor()
                    .broadcast_mul(&r)
                    .unwrap()
                    .broadcast_mul(w.as_tensor())
                    .unwrap()
            },
            "rms-norm",
        );
    }

    #[test]
    fn silu_gate_equals_candles_composite() {
        let g = var(&[5, 33], 7);
        let u = var(&[5, 33], 8);
        check(
            &[&g, &u],
            || g.as_tensor().apply_op2(u.as_tensor(), SiluMul).unwrap(),
            || (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap(),
            "silu-mul",
        );
    }

    #[test]
    fn rotary_equals_candles_composite() {
        let (b, h, s, d) = (2, 3, 5, 8);
        let x = var(&[b, h, s, d], 9);
        let cos = filled(&[b, s, d], 10);
        let sin = filled(&[b, s, d], 11);
        let (ct, st) = (
            tensor(cos.clone(), (b, 1, s, d)).unwrap(),
            tensor(sin.clone(), (b, 1, s, d)).unwrap(),
        );
        let op = RotaryOp {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        };
        check(
            &[&x],
            || {
                x.as_tensor()
                    .apply_op1(RotaryOp {
                        cos: op.cos.clone(),
                        sin: op.sin.clone(),
                    })
                    .unwrap()
            },
            || {
                let x = x.as_tensor();
                let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
                let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
                let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
                (x.broadcast_mul(&ct).unwrap() + rot.broadcast_mul(&st).unwrap()).unwrap()
            },
            "rotary",
        );
    }

    #[test]
    fn causal_attention_equals_candles_masked_softmax() {
        let (b, kv, r, s, d) = (2, 2, 3, 5, 4);
        let q = var(&[b, kv, r * s, d], 12);
        let k = var(&[b, kv, s, d], 13);
        let v = var(&[b, kv, s, d], 14);
        let scale = 1.0 / (d as f32).sqrt();
        let mask: Vec<f32> = (0..s * s)
            .map(|n| if n % s <= n / s { 0.0 } else { f32::MIN })
            .collect();
        let mask = tensor(mask, (1, 1, 1, s, s)).unwrap();
        // Tiles of one position, of two (the last one short) and all positions in one.
        for tile in [1, 2, ATTENTION_TILE] {
            check(
                &[&q, &k, &v],
                || {
                    q.as_tensor()
                        .apply_op3(
                            k.as_tensor(),
                            v.as_tensor(),
                            CausalAttention {
                                scale,
                                tile,
                                probs: Arc::default(),
                            },
                        )
                        .unwrap()
                },
                || {
                    let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap()
                        * scale as f64)
                        .unwrap()
                        .reshape((b, kv, r, s, s))
                        .unwrap()
                        .broadcast_add(&mask)
                        .unwrap();
                    let probs = candle_nn::ops::softmax(&scores, D::Minus1)
                        .unwrap()
                        .reshape((b, kv, r * s, s))
                        .unwrap();
                    probs.matmul(v.as_tensor()).unwrap()
                },
                &format!("causal-attention in tiles of {tile}"),
            );
        }
    }

    #[test]
    fn head_log_probs_equal_log_softmax_and_gather_of_the_logits() {
        let (n, e, v) = (5, 12, 1037);
        let x = var(&[n, e], 31);
        let w = tensor(filled(&[v, e], 32), (v, e)).unwrap();
        let w_t = w.t().unwrap().contiguous().unwrap();
        let targets = vec![3u32, 1036, 0, 500, 3];
        let fused = || {
            x.as_tensor()
                .apply_op1(HeadLogProb::new(w.clone(), w_t.clone(), targets.clone()))
                .unwrap()
        };
        check(
            &[&x],
            fused,
            || {
                let logits = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
                let index = Tensor::from_vec(targets.clone(), (n, 1), &Device::Cpu).unwrap();
                candle_nn::ops::log_softmax(&logits, D::Minus1)
                    .unwrap()
                    .gather(&index, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
            },
            "head-log-prob",
        );
        // Without gradients: the same values.
        let plain = Tensor::from_vec(filled(&[n, e], 31), (n, e), &Device::Cpu).unwrap();
        let head = crate::model::Linear::new(w.clone(), None);
        close(
            &head.target_log_probs(&plain, &targets).unwrap(),
            &fused(),
            0.0,
            "without gradients",
        );
        // A second backward through the same graph recomputes the spent logits.
        let loss = fused().sum_all().unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        close(
            first.get(x.as_tensor()).unwrap(),
            second.get(x.as_tensor()).unwrap(),
            0.0,
            "a second backward",
        );
    }

    #[test]
    fn bad_head_targets_are_refused_with_what_is_wrong() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let head = crate::model::Linear::new(
            Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            None,
        );
        let e = head.target_log_probs(&x, &[1]).unwrap_err().to_string();
        assert!(e.contains("1 targets for 2 rows"), "{e}");
        let e = head.target_log_probs(&x, &[1, 4]).unwrap_err().to_string();
        assert!(
            e.contains("target token 4 is outside the vocabulary of 4"),
            "{e}"
        );
        let x = Var::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = x
            .as_tensor()
            .apply_op1(HeadLogProb::new(
                Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
                Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
                vec![0, 9],
            ))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
    }

    #[test]
    fn the_attention_block_equals_rotary_and_causal_attention_around_reshapes() {
        let (b, s, h, kv, d) = (2, 5, 6, 2, 4);
        let r = h / kv;
        let q = var(&[b, s, h * d], 21);
        let k = var(&[b, s, kv * d], 22);
        let v = var(&[b, s, kv * d], 23);
        let cos = Arc::new(filled(&[b, s, d], 24));
        let sin = Arc::new(filled(&[b, s, d], 25));
        let scale = 1.0 / (d as f32).sqrt();
        let rotary = || RotaryOp {
            cos: cos.clone(),
            sin: sin.clone(),
        };
        let heads = |x: &Var, n: usize| {
            x.as_tensor()
                .reshape((b, s, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        for tile in [1, 2, ATTENTION_TILE] {
            check(
                &[&q, &k, &v],
                || {
                    let mut block = AttentionBlock::new(h, kv, scale, cos.clone(), sin.clone());
                    block.tile = tile;
                    q.as_tensor()
                        .apply_op3(k.as_tensor(), v.as_tensor(), block)
                        .unwrap()
                },
                || {
                    let qh = heads(&q, h)
                        .apply_op1(rotary())
                        .unwrap()
                        .reshape((b, kv, r * s, d))
                        .unwrap();
                    let kh = heads(&k, kv).apply_op1(rotary()).unwrap();
                    let vh = heads(&v, kv);
                    let op = CausalAttention {
                        scale,
                        tile: s,
                        probs: Arc::default(),
                    };
                    qh.apply_op3(&kh, &vh, op)
                        .unwrap()
                        .reshape((b, h, s, d))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((b, s, h * d))
                        .unwrap()
                },
                &format!("attention-block in tiles of {tile}"),
            );
        }
        let wrong = q.as_tensor().apply_op3(
            q.as_tensor(),
            v.as_tensor(),
            AttentionBlock::new(h, kv, scale, cos.clone(), sin.clone()),
        );
        assert!(wrong.is_err(), "keys shaped as queries are refused");
    }
}
