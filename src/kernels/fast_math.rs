//! Branch-free single-precision exp, log1p, tanh and sigmoid for the fused CPU kernels. Written only with
//! arithmetic, comparisons and bit casts, so loops over them vectorise; the standard library calls scalar libm for
//! each value. Accuracy (checked against `std` by the tests below): a few ulp in the ranges the kernels use.

/// log2(e).
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and a small correction (Cody-Waite range reduction).
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUNDING: f32 = 12_582_912.0;

/// e^x, for any finite x (below ~1.2e-38 it returns ~1.2e-38 instead of a denormal; above e^88.38 it saturates).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.376_26); // keeps n in -126..=127, a normal power of two
                                            // e^x = 2^n * e^r, n = round(x / ln 2), |r| <= ln 2 / 2
    let shifted = x * LOG2_E + ROUNDING; // n sits in the low bits of its mantissa
    let n = shifted - ROUNDING;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n built from n's bits, (n + 127) << 23, with integer operations only (a float-to-integer cast would not
    // vectorise: Rust's saturates)
    let biased = shifted.to_bits().wrapping_sub(ROUNDING.to_bits()).wrapping_add(127);
    e_r * f32::from_bits(biased << 23)
}

/// ln(1 + e) for e in [0, 1], as 2 atanh(s) with s = e / (2 + e) in [0, 1/3]: no cancellation for small e.
#[inline(always)]
pub fn ln_1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    // 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^14/15)
    let mut p = 1.0 / 15.0_f32;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    2.0 * s * p
}

/// ln(x) for positive, normal, finite x: with x = 2^n * m, m in [1, 2), ln x = n ln 2 + ln(1 + (m - 1)).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    exponent as f32 * std::f32::consts::LN_2 + ln_1p_unit(mantissa - 1.0)
}

/// log(1 + exp(-|x|)), the tail of softplus(x) = max(x, 0) + log(1 + exp(-|x|)).
#[inline(always)]
pub fn softplus_tail(x: f32) -> f32 {
    ln_1p_unit(exp(-x.abs()))
}

/// softplus(x) = log(1 + e^x), stably.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + softplus_tail(x)
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh(x): an odd Taylor polynomial near 0, (1 - e^{-2|x|}) / (1 + e^{-2|x|}) elsewhere, with x's sign.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let t = exp(-2.0 * a);
    let far = (1.0 - t) / (1.0 + t);
    let a2 = a * a;
    // tanh(a) = a - a^3/3 + 2a^5/15 - 17a^7/315 + 62a^9/2835 for small a
    let near = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))));
    let magnitude = if a < 0.125 { near } else { far };
    magnitude.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worst relative error of `fast` against `exact` (in f64) over `points` values from `low` to `high`.
    fn worst(low: f32, high: f32, fast: impl Fn(f32) -> f32, exact: impl Fn(f64) -> f64) -> f64 {
        let points = 200_001;
        (0..points)
            .map(|i| low + (high - low) * i as f32 / (points - 1) as f32)
            .map(|x| {
                let truth = exact(x as f64);
                ((fast(x) as f64 - truth) / truth.abs().max(1e-30)).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exp_is_accurate_over_the_f32_range() {
        let error = worst(-87.0, 88.0, exp, f64::exp);
        assert!(error < 3e-7, "exp: worst relative error {error}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn log1p_of_unit_values_keeps_small_arguments_exact() {
        let error = worst(0.0, 1.0, ln_1p_unit, f64::ln_1p);
        assert!(error < 3e-7, "ln_1p_unit: worst relative error {error}");
        assert!((ln_1p_unit(1e-20) as f64 / 1e-20 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ln_is_accurate_over_positive_normal_values() {
        let error = worst(1.0, 256.0, ln, f64::ln);
        assert!(error < 5e-7, "ln: worst relative error {error}");
        assert!(worst(1e-30, 1e-3, ln, f64::ln) < 5e-7);
        assert!(worst(1e3, 1e30, ln, f64::ln) < 5e-7);
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn softplus_sigmoid_and_tanh_match_std() {
        let softplus_exact = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
        assert!(worst(-60.0, 60.0, softplus, softplus_exact) < 5e-7);
        assert!(worst(-60.0, 20.0, sigmoid, |x| 1.0 / (1.0 + (-x).exp())) < 5e-7);
        let error = worst(-10.0, 10.0, tanh, f64::tanh);
        assert!(error < 5e-7, "tanh: worst relative error {error}");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(-30.0), -1.0);
    }
}
