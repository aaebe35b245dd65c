//! GroupNorm's normalize-scale-shift (and SiLU) over one group, in one pass over its values, for the
//! AutoencoderKL's inference path; `model::autoencoder_kl::norm` holds it to candle's `GroupNorm` in a test.

/// One group in place: its channels' `plane` values each normalized with the group's statistics, then scaled by
/// the channel's weight and shifted by its bias: y = (x - mean) * rstd * w + b, then silu(y) when asked.
pub(crate) fn normalize_group(group: &mut [f32], plane: usize, weight: &[f32], bias: &[f32], eps: f64, silu: bool) {
    let n = group.len() as f64;
    let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    // var = mean (x - mean)^2, rstd = 1 / sqrt(var + eps)
    let variance = group.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (variance + eps).sqrt();
    for (channel, values) in group.chunks_exact_mut(plane).enumerate() {
        let scale = (rstd * f64::from(weight[channel])) as f32;
        let shift = f64::from(bias[channel]) as f32 - (mean as f32) * scale;
        if silu {
            // silu(y) = y / (1 + e^-y)
            values.iter_mut().for_each(|v| {
                let y = *v * scale + shift;
                *v = y / (1.0 + (-y).exp());
            });
        } else {
            values.iter_mut().for_each(|v| *v = *v * scale + shift);
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
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let variance = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (variance + eps).sqrt();
    let (mean32, rstd32) = (mean as f32, rstd as f32);
    let channels = weight.len();
    let (mut d_weight, mut d_bias) = (vec![0f64; channels], vec![0f64; channels]);
    let (mut sum_g, mut sum_g_xhat) = (0f64, 0f64);
    for c in 0..channels {
        let range = c * plane..(c + 1) * plane;
        let (mut channel_gx, mut channel_g) = (0f64, 0f64);
        for ((&value, &upstream), slot) in x[range.clone()].iter().zip(&grad[range.clone()]).zip(&mut dx[range]) {
            let x_hat = (value - mean32) * rstd32;
            let g = if silu {
                // d silu(y) / dy = s (1 + y (1 - s)), s = sigmoid(y)
                let y = x_hat * weight[c] + bias[c];
                let s = 1.0 / (1.0 + (-y).exp());
                upstream * s * (1.0 + y * (1.0 - s))
            } else {
                upstream
            };
            channel_gx += f64::from(g * x_hat);
            channel_g += f64::from(g);
            *slot = g * weight[c];
        }
        d_weight[c] = channel_gx;
        d_bias[c] = channel_g;
        sum_g += channel_g * f64::from(weight[c]);
        sum_g_xhat += channel_gx * f64::from(weight[c]);
    }
    // dx = rstd (g w - mean(g w) - x_hat mean(g w x_hat))
    let (mean_g, mean_g_xhat) = ((sum_g / n) as f32, (sum_g_xhat / n) as f32);
    for (slot, &value) in dx.iter_mut().zip(x) {
        let x_hat = (value - mean32) * rstd32;
        *slot = rstd32 * (*slot - mean_g - x_hat * mean_g_xhat);
    }
    (d_weight, d_bias)
}
