//! GroupNorm's normalize-scale-shift (and SiLU) over one group, and its backward pass, for the AutoencoderKL;
//! `model::autoencoder_kl::norm` holds both to candle's `GroupNorm` and to the norm composed of candle ops in its
//! tests, and the tests below hold every SIMD level to the same bits.
//!
//! Every sum (the statistics, the weight and bias gradients) keeps independent partial sums in a fixed order, so it
//! vectorises and its bits do not depend on the SIMD level; the SiLU's sigmoid is `fast_math::exp`, branch-free, so
//! the elementwise loops vectorise too.

use super::{fast_math, wide_fn};

/// A group's statistics and a channel's affine weight and bias, in f32, as the elementwise loops use them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Affine {
    /// The mean the values are centred on.
    pub mean: f32,
    /// 1 / sqrt(var + eps).
    pub rstd: f32,
    /// The channel's scale.
    pub weight: f32,
    /// The channel's shift.
    pub bias: f32,
}

/// Values per block of every sum here: within a block, [`SUM_LANES`] f32 partial sums (each of
/// `SUM_BLOCK / SUM_LANES` values), so the loop vectorises; the blocks' sums are added in f64, in order.
const SUM_BLOCK: usize = 256;

/// f32 accumulator lanes within a block.
const SUM_LANES: usize = 16;

/// The sums over i of the two values `terms(a_i, b_i)`, block by block as above: the terms of a block written
/// out first (an elementwise loop), then summed lane by lane.
#[inline(always)]
fn paired_sums(a: &[f32], b: &[f32], terms: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut total_first, mut total_second) = (0f64, 0f64);
    let (mut first, mut second) = ([0f32; SUM_BLOCK], [0f32; SUM_BLOCK]);
    for (a, b) in a.chunks(SUM_BLOCK).zip(b.chunks(SUM_BLOCK)) {
        let len = a.len();
        for (((a, b), p), q) in a.iter().zip(b).zip(&mut first[..len]).zip(&mut second[..len]) {
            (*p, *q) = terms(*a, *b);
        }
        first[len..].fill(0.0);
        second[len..].fill(0.0);
        total_first += lane_sum(&first);
        total_second += lane_sum(&second);
    }
    (total_first, total_second)
}

/// The sum of one block in [`SUM_LANES`] f32 lanes, then the lanes in f64, in order.
#[inline(always)]
fn lane_sum(block: &[f32; SUM_BLOCK]) -> f64 {
    let mut lanes = [0f32; SUM_LANES];
    for chunk in block.chunks_exact(SUM_LANES) {
        lanes.iter_mut().zip(chunk).for_each(|(lane, &value)| *lane += value);
    }
    lanes.iter().map(|&lane| f64::from(lane)).sum()
}

wide_fn! {
    /// sum (x - centre) and sum (x - centre)^2 over `values`.
    pub(super) fn centred_sums(values: &[f32], centre: f32) -> (f64, f64) {
        paired_sums(values, values, |value, _| {
            let deviation = value - centre;
            (deviation, deviation * deviation)
        })
    }
}

/// A group's mean and 1 / sqrt(var + eps), in f64: the mean first, then the biased variance about it.
fn statistics(group: &[f32], eps: f64) -> (f64, f64) {
    let n = group.len().max(1) as f64;
    let mean = centred_sums(group, 0.0).0 / n;
    // var = mean (x - mean)^2, rstd = 1 / sqrt(var + eps)
    let variance = centred_sums(group, mean as f32).1 / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// y = x_hat * w + b, x_hat = (x - mean) * rstd.
#[inline(always)]
pub(super) fn affine(value: f32, affine: Affine) -> f32 {
    (value - affine.mean) * affine.rstd * affine.weight + affine.bias
}

wide_fn! {
    /// One channel's values in place: y = (x - mean) * rstd * w + b, then silu(y) = y / (1 + e^-y) when asked.
    fn normalize_channel(values: &mut [f32], channel: Affine, silu: bool) {
        if silu {
            values.iter_mut().for_each(|v| {
                let y = affine(*v, channel);
                *v = y / (1.0 + fast_math::exp(-y));
            });
        } else {
            values.iter_mut().for_each(|v| *v = affine(*v, channel));
        }
    }
}

/// One group in place: its channels' `plane` values each normalized with the group's statistics, then scaled by
/// the channel's weight and shifted by its bias: y = (x - mean) * rstd * w + b, then silu(y) when asked.
pub(crate) fn normalize_group(group: &mut [f32], plane: usize, weight: &[f32], bias: &[f32], eps: f64, silu: bool) {
    let (mean, rstd) = statistics(group, eps);
    for (channel, values) in group.chunks_exact_mut(plane).enumerate() {
        let affine = Affine { mean: mean as f32, rstd: rstd as f32, weight: weight[channel], bias: bias[channel] };
        normalize_channel(values, affine, silu);
    }
}

wide_fn! {
    /// dL/dy in place over `upstream` (dL/d silu(y) on entry), where y = x_hat * w + b and d silu(y) / dy =
    /// s (1 + y (1 - s)), s = sigmoid(y).
    fn through_silu(upstream: &mut [f32], x: &[f32], channel: Affine) {
        for (g, &value) in upstream.iter_mut().zip(x) {
            let y = affine(value, channel);
            let s = 1.0 / (1.0 + fast_math::exp(-y));
            *g *= s * (1.0 + y * (1.0 - s));
        }
    }
}

wide_fn! {
    /// sum g x_hat and sum g over one channel (its d weight and d bias), x_hat = (x - mean) * rstd.
    pub(super) fn gradient_sums(g: &[f32], x: &[f32], channel: Affine) -> (f64, f64) {
        paired_sums(g, x, |g, x| (g * ((x - channel.mean) * channel.rstd), g))
    }
}

wide_fn! {
    /// dx = rstd (g w - mean(g w) - x_hat mean(g w x_hat)), in place over one channel's `dx` holding g.
    pub(super) fn finish_backward(dx: &mut [f32], x: &[f32], channel: Affine, means: (f32, f32)) {
        let (mean_g, mean_g_xhat) = means;
        for (slot, &value) in dx.iter_mut().zip(x) {
            let x_hat = (value - channel.mean) * channel.rstd;
            *slot = channel.rstd * (*slot * channel.weight - mean_g - x_hat * mean_g_xhat);
        }
    }
}

/// GroupNorm (and, with `silu`, the SiLU after it) as a differentiable candle op on contiguous f32 CPU maps, inputs
/// (x `[batch, C, H, W]`, weight `[C]`, bias `[C]`). The forward pass is [`normalize_group`] per group; the backward
/// pass recomputes each group's statistics and, with x_hat = (x - mean) * rstd and g = dL/dy (through the SiLU:
/// dy = dout * s (1 + y (1 - s)), s = sigmoid(y)):
/// - d weight_c = sum g x_hat, d bias_c = sum g (over the batch and the positions),
/// - dx = rstd (g w - mean_group(g w) - x_hat mean_group(g w x_hat)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupNormOp {
    /// Groups G; C / G channels each.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// SiLU after the norm.
    pub silu: bool,
}

impl GroupNormOp {
    /// (batch, channels, plane) of the input, checked against the weight, bias and group count.
    fn sizes(
        &self,
        x: &candle_core::Layout,
        weight: &candle_core::Layout,
    ) -> candle_core::Result<(usize, usize, usize)> {
        let (batch, channels, height, width) = x.shape().dims4()?;
        if self.groups == 0 || channels % self.groups != 0 || weight.shape().elem_count() != channels {
            candle_core::bail!(
                "group-norm: {channels} channels, {} groups, {} weights",
                self.groups,
                weight.shape().elem_count()
            );
        }
        Ok((batch, channels, height * width))
    }
}

impl candle_core::CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (_, channels, plane) = self.sizes(l1, l2)?;
        let x = super::contiguous_f32(s1, l1, self.name())?;
        let (weight, bias) = (super::contiguous_f32(s2, l2, self.name())?, super::contiguous_f32(s3, l3, self.name())?);
        let per_group = channels / self.groups;
        let mut out = x.to_vec();
        out.par_chunks_exact_mut(per_group * plane).enumerate().for_each(|(index, group)| {
            let first = (index % self.groups) * per_group;
            normalize_group(group, plane, &weight[first..], &bias[first..], self.eps, self.silu);
        });
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        weight: &candle_core::Tensor,
        bias: &candle_core::Tensor,
        _output: &candle_core::Tensor,
        grad_output: &candle_core::Tensor,
    ) -> candle_core::Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>, Option<candle_core::Tensor>)>
    {
        use rayon::prelude::*;
        let (x, grad) = (x.contiguous()?, grad_output.contiguous()?);
        let (batch, channels, height, width) = x.dims4()?;
        let (plane, per_group) = (height * width, channels / self.groups.max(1));
        let small = |t: &candle_core::Tensor| {
            super::with_f32(&t.contiguous()?, <[f32]>::to_vec)
                .ok_or_else(|| candle_core::Error::Msg("group-norm: needs f32 CPU tensors".into()))
        };
        let (weight_values, bias_values) = (small(weight)?, small(bias)?);
        let group_len = per_group * plane;
        let mut dx = vec![0f32; batch * channels * plane];
        let backward = |x_values: &[f32], grad_values: &[f32], dx: &mut [f32]| -> Vec<(Vec<f64>, Vec<f64>)> {
            dx.par_chunks_exact_mut(group_len)
                .zip(x_values.par_chunks_exact(group_len).zip(grad_values.par_chunks_exact(group_len)))
                .enumerate()
                .map(|(index, (dx, (x, grad)))| {
                    let first = (index % self.groups) * per_group;
                    let affine = (&weight_values[first..first + per_group], &bias_values[first..first + per_group]);
                    group_backward((x, grad, dx), plane, affine, self.eps, self.silu)
                })
                .collect()
        };
        let sums = super::with_f32(&x, |x_values| {
            super::with_f32(&grad, |grad_values| backward(x_values, grad_values, &mut dx))
        })
        .flatten()
        .ok_or_else(|| candle_core::Error::Msg("group-norm: needs f32 CPU tensors".into()))?;
        // d weight and d bias: each group's channel sums, added over the batch in order
        let (mut d_weight, mut d_bias) = (vec![0f64; channels], vec![0f64; channels]);
        for (index, (group_weight, group_bias)) in sums.iter().enumerate() {
            let first = (index % self.groups) * per_group;
            for c in 0..per_group {
                d_weight[first + c] += group_weight[c];
                d_bias[first + c] += group_bias[c];
            }
        }
        let device = x.device();
        let to_tensor = |sums: Vec<f64>| {
            candle_core::Tensor::from_vec(sums.into_iter().map(|v| v as f32).collect::<Vec<_>>(), channels, device)
        };
        let dx = candle_core::Tensor::from_vec(dx, (batch, channels, height, width), device)?;
        Ok((Some(dx), Some(to_tensor(d_weight)?), Some(to_tensor(d_bias)?)))
    }
}

/// The backward pass over one group: writes dx, returns the group's channel sums of g x_hat and g (d weight and
/// d bias). `affine` is the group's (weight, bias).
fn group_backward(
    (x, grad, dx): (&[f32], &[f32], &mut [f32]),
    plane: usize,
    (weight, bias): (&[f32], &[f32]),
    eps: f64,
    silu: bool,
) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() as f64;
    let (mean, rstd) = statistics(x, eps);
    let (mean, rstd) = (mean as f32, rstd as f32);
    let channel = |c: usize| Affine { mean, rstd, weight: weight[c], bias: bias[c] };
    dx.copy_from_slice(grad);
    let (mut d_weight, mut d_bias) = (vec![0f64; weight.len()], vec![0f64; weight.len()]);
    let (mut sum_g, mut sum_g_xhat) = (0f64, 0f64);
    for (c, (g, x)) in dx.chunks_exact_mut(plane).zip(x.chunks_exact(plane)).enumerate() {
        if silu {
            through_silu(g, x, channel(c));
        }
        (d_weight[c], d_bias[c]) = gradient_sums(g, x, channel(c));
        sum_g += d_bias[c] * f64::from(weight[c]);
        sum_g_xhat += d_weight[c] * f64::from(weight[c]);
    }
    let means = ((sum_g / n) as f32, (sum_g_xhat / n) as f32);
    for (c, (dx, x)) in dx.chunks_exact_mut(plane).zip(x.chunks_exact(plane)).enumerate() {
        finish_backward(dx, x, channel(c), means);
    }
    (d_weight, d_bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{simd::with_simd_level, SimdLevel};

    /// `count` values of a wavy pattern around `offset`.
    fn wave(count: usize, offset: f32) -> Vec<f32> {
        (0..count).map(|i| offset + (i as f32 * 0.731).sin() * 1.7 + (i % 7) as f32 * 0.1).collect()
    }

    #[test]
    fn the_statistics_are_the_plain_two_pass_mean_and_variance() {
        let values = wave(1_037, 3.0);
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / 1_037.0;
        let variance = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / 1_037.0;
        let (got_mean, rstd) = statistics(&values, 1e-6);
        assert!((got_mean - mean).abs() < 1e-6 * mean.abs(), "{got_mean} against {mean}");
        let expected = 1.0 / (variance + 1e-6).sqrt();
        assert!((rstd - expected).abs() < 1e-6 * expected, "{rstd} against {expected}");
    }

    #[test]
    fn every_simd_level_gives_the_same_bits_forward_and_backward() {
        let (plane, channels) = (37, 3);
        let (weight, bias) = (wave(channels, 1.0), wave(channels, -0.2));
        let (x, upstream) = (wave(plane * channels, 0.4), wave(plane * channels, -0.1));
        for silu in [false, true] {
            let results: Vec<_> = SimdLevel::ALL
                .iter()
                .map(|&level| {
                    with_simd_level(level, || {
                        let mut out = x.clone();
                        normalize_group(&mut out, plane, &weight, &bias, 1e-6, silu);
                        let mut dx = vec![0f32; x.len()];
                        let sums = group_backward((&x, &upstream, &mut dx), plane, (&weight, &bias), 1e-6, silu);
                        (out, dx, sums)
                    })
                })
                .collect();
            assert!(results.windows(2).all(|pair| pair[0] == pair[1]), "silu {silu}");
        }
    }
}
