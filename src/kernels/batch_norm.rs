//! BatchNorm in training mode with a LeakyReLU after it, as one differentiable op on contiguous f32 CPU maps: the
//! patch discriminator's normalised layers. candle's `BatchNorm::forward_train` is about ten composed ops (a
//! transpose to channels first, two means, broadcasts) and its `leaky_relu` five more, each a pass over the maps
//! forward and more backward; in the autoencoder's adversarial step they took about two fifths of the
//! discriminator's time (BENCHMARKS.md, the ninth session). `model::discriminator` holds this op to candle's `BatchNorm` and `leaky_relu`
//! (values, running statistics and every gradient), and the tests below hold every SIMD level to the same bits.
//!
//! A channel's statistics are over the batch and the positions: its values are `batch` planes `channels` planes
//! apart. Every sum runs plane by plane in the batch's order, in f64 between planes (the planes' own sums are
//! [`super::group_norm`]'s lane sums), so the bits do not depend on the threads.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{leaky, leaky_relu_gradient};
use super::group_norm::{affine, centred_sums, finish_backward, gradient_sums, Affine};
use super::{contiguous_f32, wide_fn, with_f32};

/// (batch, channels, plane) of a `[batch, C, H, W]` layout.
fn sizes(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (batch, channels, height, width) = layout.shape().dims4()?;
    Ok((batch, channels, height * width))
}

/// The planes of `channel` in `[batch, channels, plane]` values, in the batch's order.
fn planes_of(
    values: &[f32],
    (batch, channels, plane): (usize, usize, usize),
    channel: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..batch).map(move |b| &values[(b * channels + channel) * plane..][..plane])
}

/// One channel's mean and biased variance over the batch and positions: the mean first, then the variance about
/// it, var = mean (x - mean)^2.
fn channel_moments(values: &[f32], sizes: (usize, usize, usize), channel: usize) -> (f64, f64) {
    let count = (sizes.0 * sizes.2).max(1) as f64;
    let mean = planes_of(values, sizes, channel).map(|plane| centred_sums(plane, 0.0).0).sum::<f64>() / count;
    let squares = planes_of(values, sizes, channel).map(|plane| centred_sums(plane, mean as f32).1).sum::<f64>();
    (mean, squares / count)
}

/// Per-channel mean and biased variance of `[batch, C, H, W]` maps over the batch and the positions, as a `[2, C]`
/// tensor: the means, then the variances. A statistic without a gradient: [`BatchNormLeakyRelu`]'s backward pass
/// accounts for the values' part in it.
#[derive(Debug, Clone, Copy)]
struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "channel-moments"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let sizes = sizes(layout)?;
        let values = contiguous_f32(storage, layout, self.name())?;
        let moments: Vec<(f64, f64)> =
            (0..sizes.1).into_par_iter().map(|c| channel_moments(values, sizes, c)).collect();
        let (means, variances): (Vec<f32>, Vec<f32>) = moments.iter().map(|&(m, v)| (m as f32, v as f32)).unzip();
        Ok((CpuStorage::F32([means, variances].concat()), Shape::from((2, sizes.1))))
    }
}

/// The statistics and affine weights of one channel, from `[2, C]` moments and `[2, C]` affine (scales, then
/// shifts): rstd = 1 / sqrt(var + eps).
fn channel_affine(moments: &[f32], affine: &[f32], channel: usize, eps: f64) -> Affine {
    let channels = moments.len() / 2;
    let rstd = 1.0 / (f64::from(moments[channels + channel]) + eps).sqrt();
    Affine { mean: moments[channel], rstd: rstd as f32, weight: affine[channel], bias: affine[channels + channel] }
}

wide_fn! {
    /// One plane in place: y = leaky((x - mean) * rstd * w + b).
    fn normalize_plane(values: &mut [f32], channel: Affine, slope: f32) {
        values.iter_mut().for_each(|v| *v = leaky(affine(*v, channel), slope));
    }
}

/// y = LeakyReLU(BatchNorm(x)) with the batch's statistics, inputs (x `[batch, C, H, W]`, affine `[2, C]`: the
/// scales, then the shifts, moments `[2, C]` from [`ChannelMoments`]). With x_hat = (x - mean) * rstd, n the
/// values per channel and g = dL/d(x_hat w + b) (through the LeakyReLU, from its output):
/// - d w_c = sum g x_hat, d b_c = sum g (over the batch and the positions),
/// - dx = rstd (g w - w sum(g) / n - x_hat w sum(g x_hat) / n), the moments' dependence on x included.
#[derive(Debug, Clone, Copy)]
struct BatchNormLeakyRelu {
    /// Added to the variance.
    eps: f64,
    /// The LeakyReLU's slope for negative values (>= 0).
    slope: f32,
}

impl BatchNormLeakyRelu {
    /// The backward pass over `[batch, C, plane]` values (`sizes`): x, the output y and `dx` holding dL/dy on entry
    /// and dL/dx on return; `(affine, moments)` as the op's inputs. Returns each channel's (sum g x_hat, sum g),
    /// its (d w, d b).
    fn gradients(
        &self,
        (x, y, dx): (&[f32], &[f32], &mut [f32]),
        sizes: (usize, usize, usize),
        (affine, moments): (&[f32], &[f32]),
    ) -> Vec<(f64, f64)> {
        let plane = sizes.2.max(1);
        dx.par_chunks_mut(plane).zip(y.par_chunks(plane)).for_each(|(g, y)| leaky_relu_gradient(y, g, self.slope));
        let channel = |c: usize| channel_affine(moments, affine, c, self.eps);
        // per channel: (sum g x_hat, sum g), plane by plane in the batch's order
        let sums: Vec<(f64, f64)> = (0..sizes.1)
            .into_par_iter()
            .map(|c| {
                let pairs = planes_of(dx, sizes, c).zip(planes_of(x, sizes, c));
                pairs.map(|(g, x)| gradient_sums(g, x, channel(c))).fold((0.0, 0.0), |(a, b), (p, q)| (a + p, b + q))
            })
            .collect();
        let count = (sizes.0 * sizes.2).max(1) as f64;
        dx.par_chunks_exact_mut(plane).zip(x.par_chunks_exact(plane)).enumerate().for_each(|(index, (dx, x))| {
            let c = index % sizes.1;
            let (affine, (sum_g_xhat, sum_g)) = (channel(c), sums[c]);
            let weight = f64::from(affine.weight);
            // dx = rstd (g w - mean(g w) - x_hat mean(g w x_hat))
            finish_backward(dx, x, affine, ((weight * sum_g / count) as f32, (weight * sum_g_xhat / count) as f32));
        });
        sums
    }
}

impl CustomOp3 for BatchNormLeakyRelu {
    fn name(&self) -> &'static str {
        "batch-norm-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, channels, plane) = sizes(l1)?;
        let x = contiguous_f32(s1, l1, self.name())?;
        let (affine, moments) = (contiguous_f32(s2, l2, self.name())?, contiguous_f32(s3, l3, self.name())?);
        if affine.len() != 2 * channels || moments.len() != 2 * channels {
            candle_core::bail!("batch-norm-leaky-relu: {channels} channels, {} affine values", affine.len());
        }
        let mut out = x.to_vec();
        out.par_chunks_exact_mut(plane.max(1)).enumerate().for_each(|(index, values)| {
            normalize_plane(values, channel_affine(moments, affine, index % channels, self.eps), self.slope);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        moments: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let missing = || candle_core::Error::Msg("batch-norm-leaky-relu: needs f32 CPU tensors".into());
        let read = |t: &Tensor| with_f32(&t.contiguous()?, <[f32]>::to_vec).ok_or_else(missing);
        // dx starts as a copy of the upstream gradient and is worked out in place; x and y are read where they are
        let (affine_values, moments_values, mut dx) = (read(affine)?, read(moments)?, read(grad_output)?);
        let sizes = sizes(x.layout())?;
        let (x, output) = (x.contiguous()?, output.contiguous()?);
        let sums = with_f32(&x, |x| {
            with_f32(&output, |y| self.gradients((x, y, &mut dx), sizes, (&affine_values, &moments_values)))
        })
        .flatten()
        .ok_or_else(missing)?;
        let device = x.device();
        let (d_weight, d_bias): (Vec<f32>, Vec<f32>) = sums.iter().map(|&(w, b)| (w as f32, b as f32)).unzip();
        let d_affine = Tensor::from_vec([d_weight, d_bias].concat(), (2, sizes.1), device)?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), device)?), Some(d_affine), None))
    }
}

/// LeakyReLU(BatchNorm(x)) over `[batch, C, H, W]` f32 CPU maps with the batch's statistics (biased variance, as
/// torch's training mode), scales `weight` and shifts `bias` (`[C]`), differentiable in all three; with the
/// `[2, C]` moments (means, then biased variances) for the running statistics.
pub(crate) fn batch_norm_leaky_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    slope: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let moments = x.apply_op1_no_bwd(&ChannelMoments)?;
    let affine = Tensor::stack(&[weight, bias], 0)?;
    let y = x.apply_op3(&affine, &moments, BatchNormLeakyRelu { eps, slope: slope as f32 })?;
    Ok((y, moments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};
    use candle_core::{Device, Var};

    /// The op's output and its three gradients at one SIMD level, for a fixed weighting of the output.
    fn run(level: SimdLevel) -> Vec<Vec<f32>> {
        let device = Device::Cpu;
        let shape = (3, 5, 7, 9);
        let count = 3 * 5 * 7 * 9;
        let wave = |scale: f32| (0..count).map(move |i| (i as f32 * scale).sin() * 2.0 + (i % 5) as f32 * 0.3);
        let x = Var::from_vec(wave(0.37).collect(), shape, &device).unwrap();
        let weight = Var::from_vec(vec![1.1f32, 0.9, -0.5, 1.3, 0.7], 5, &device).unwrap();
        let bias = Var::from_vec(vec![0.1f32, -0.2, 0.3, 0.0, 0.5], 5, &device).unwrap();
        let upstream = Tensor::from_vec(wave(0.11).collect(), shape, &device).unwrap();
        with_simd_level(level, || {
            let (y, moments) =
                batch_norm_leaky_relu(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), 1e-5, 0.2).unwrap();
            let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gradient = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
            vec![flat(&y), flat(&moments), gradient(&x), gradient(&weight), gradient(&bias)]
        })
    }

    #[test]
    fn every_simd_level_gives_the_same_bits_forward_and_backward() {
        let results: Vec<_> = SimdLevel::ALL.into_iter().map(run).collect();
        assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn the_moments_are_the_plain_mean_and_biased_variance_per_channel() {
        let values: Vec<f32> = (0..2 * 3 * 4).map(|i| (i * i % 11) as f32 - 3.0).collect();
        let x = Tensor::from_vec(values.clone(), (2, 3, 2, 2), &Device::Cpu).unwrap();
        let moments = x.apply_op1_no_bwd(&ChannelMoments).unwrap().to_vec2::<f32>().unwrap();
        for c in 0..3 {
            let channel: Vec<f64> =
                (0..2).flat_map(|b| values[(b * 3 + c) * 4..][..4].to_vec()).map(f64::from).collect();
            let mean = channel.iter().sum::<f64>() / 8.0;
            let variance = channel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 8.0;
            assert!((f64::from(moments[0][c]) - mean).abs() < 1e-6, "channel {c}");
            assert!((f64::from(moments[1][c]) - variance).abs() < 1e-5, "channel {c}");
        }
    }
}
