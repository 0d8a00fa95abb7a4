//! Elementwise kernels of the fused training ops, written so that the compiler vectorizes them
//! for the widest instruction set the CPU has (AVX-512 or AVX2 through `pulp`'s dispatch): an
//! exponential without branches, a maximum and a sum of exponentials in independent lanes.

/// Lanes each reduction keeps apart (a multiple of every vector width up to AVX-512's).
const LANES: usize = 16;

/// Runs `f` compiled for the best instruction set this CPU supports, so that the loops it
/// inlines vectorize to that width.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `exp(x)`, within 2 ulp of the correctly rounded value, without branches: Cephes' degree-6
/// polynomial on `x - n ln 2`, scaled by `2^n` through the exponent bits. Below -87 it gives 0
/// (the true value is under 1.7e-38); above 88, `exp(88)`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer, which the low bits of the sum then hold.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts; n * LN2_HI is exact for |n| < 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let t = clamped * LOG2E + ROUND;
    let n = t - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // n lies in [-126, 127]: a normal power of two.
    let exponent = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    let e = y * f32::from_bits(exponent << 23);
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

/// The largest value of `xs` (negative infinity when empty; NaNs are passed over).
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for c in chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// `sum(exp(x - shift))` over `xs`, lanes summed in f32 over at most 16k terms each and those
/// partial sums in f64.
#[inline(always)]
pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f64 {
    let chunks = xs.chunks_exact(LANES);
    let mut total: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| f64::from(exp(x - shift)))
        .sum();
    let mut acc = [0f32; LANES];
    for (k, c) in chunks.enumerate() {
        for j in 0..LANES {
            acc[j] += exp(c[j] - shift);
        }
        if k % 1024 == 1023 {
            total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
            acc = [0f32; LANES];
        }
    }
    total + acc.iter().map(|&a| f64::from(a)).sum::<f64>()
}

/// `xs[i] = exp(xs[i] - shift)`; returns their sum (in f32: meant for rows of attention
/// scores, a few thousand values at most).
#[inline(always)]
pub(crate) fn exp_in_place(xs: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            c[j] = exp(c[j] - shift);
            acc[j] += c[j];
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_standard_library_over_the_range_training_uses() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, std) = (exp(x), x.exp());
            let ulp = f64::from(std) * f64::from(f32::EPSILON);
            worst = worst.max(f64::from(ours - std).abs() / ulp);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(100.0), exp(88.0));
    }

    #[test]
    fn vectorized_reductions_equal_plain_ones() {
        let xs: Vec<f32> = (0..40_013)
            .map(|k| ((k * 7919 % 1000) as f32 / 37.0).sin() * 12.0)
            .collect();
        for n in [0, 1, 15, 16, 17, 1000, 40_013] {
            let xs = &xs[..n];
            let plain = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(vectorized(|| max(xs)), plain, "max of {n}");
            let plain: f64 = xs.iter().map(|&x| f64::from((x - 3.0).exp())).sum();
            let ours = vectorized(|| sum_exp(xs, 3.0));
            assert!(
                (ours - plain).abs() <= 1e-6 * plain.max(1e-30),
                "{ours} vs {plain}"
            );
            let mut ys = xs[..n.min(3000)].to_vec();
            let sum = vectorized(|| exp_in_place(&mut ys, 3.0));
            let mut plain = 0f64;
            for (y, &x) in ys.iter().zip(xs) {
                let e = (x - 3.0).exp();
                assert!((y - e).abs() <= 2.0 * f32::EPSILON * e, "{y} vs {e}");
                plain += f64::from(e);
            }
            assert!(
                (f64::from(sum) - plain).abs() <= 1e-5 * plain.max(1e-30),
                "{sum} vs {plain}"
            );
        }
    }
}
