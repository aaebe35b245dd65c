//! GroupNorm with diffusers' names (`weight`, `bias`), and a fused inference kernel for it and the activation that
//! follows it.
//!
//! y = (x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c, with the mean and (biased) variance over each group of C /
//! G channels and all positions. Without gradients, on contiguous f32 CPU maps, two passes compute each group's mean
//! and variance (f32 partial sums in blocks, the blocks added in f64) and one writes the normalized, scaled, shifted
//! and activated values, the groups spread over rayon's threads; with gradients, the same kernel as a differentiable op
//! (`kernels::group_norm::GroupNormOp`, its backward pass worked out by hand); elsewhere, candle ops compose the same
//! formula.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::config::{KlActivation, NORM_EPS};
use rayon::prelude::*;

use crate::kernels::{group_norm, with_f32, worth_parallel};
use crate::Result;

/// A GroupNorm over `channels` channels in `groups` groups, with affine weight and bias.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl GroupNorm {
    /// The norm with weights `weight` (initially 1) and `bias` (initially 0) under `vb`.
    pub fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(GroupNorm { weight, bias, groups })
    }

    /// The norm of `[batch, C, H, W]` maps, followed by `activation` when given.
    pub fn forward(&self, x: &Tensor, activation: Option<KlActivation>) -> Result<Tensor> {
        let wants_gradient = x.track_op() || self.weight.track_op() || self.bias.track_op();
        let fusable = matches!(activation, None | Some(KlActivation::Silu));
        if !wants_gradient && fusable {
            if let Some(out) = self.fused(x, activation.is_some())? {
                return Ok(out);
            }
        }
        if fusable && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let op = group_norm::GroupNormOp { groups: self.groups, eps: NORM_EPS, silu: activation.is_some() };
            return Ok(x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?);
        }
        let normed = self.composed(x)?;
        match activation {
            Some(activation) => Ok(activation.apply(&normed)?),
            None => Ok(normed),
        }
    }

    /// The norm as candle ops (differentiable).
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        let grouped = x.reshape((batch, self.groups, (channels / self.groups) * height * width))?;
        // (x - mean) / sqrt(var + eps)
        let centred = grouped.broadcast_sub(&grouped.mean_keepdim(2)?)?;
        let variance = centred.sqr()?.mean_keepdim(2)?;
        let normed =
            centred.broadcast_div(&(variance + NORM_EPS)?.sqrt()?)?.reshape((batch, channels, height, width))?;
        let weight = self.weight.reshape((1, channels, 1, 1))?;
        let bias = self.bias.reshape((1, channels, 1, 1))?;
        Ok(normed.broadcast_mul(&weight)?.broadcast_add(&bias)?)
    }

    /// The fused kernel on contiguous f32 CPU maps (`silu`: apply silu(y) = y * sigmoid(y)); `None` otherwise.
    fn fused(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let (batch, channels, height, width) = x.dims4()?;
        let x = x.contiguous()?;
        let (Some(values), Some(weight), Some(bias)) =
            (with_f32(&x, <[f32]>::to_vec), f32_vec(&self.weight)?, f32_vec(&self.bias)?)
        else {
            return Ok(None);
        };
        if weight.len() != channels || channels % self.groups != 0 {
            return Ok(None);
        }
        let plane = height * width;
        let group_len = channels / self.groups * plane;
        let mut out = values;
        let groups = self.groups;
        let one = |(index, group): (usize, &mut [f32])| {
            let first_channel = (index % groups) * (channels / groups);
            group_norm::normalize_group(group, plane, &weight[first_channel..], &bias[first_channel..], NORM_EPS, silu);
        };
        if worth_parallel(out.len()) {
            out.par_chunks_exact_mut(group_len).enumerate().for_each(one);
        } else {
            out.chunks_exact_mut(group_len).enumerate().for_each(one);
        }
        Ok(Some(Tensor::from_vec(out, (batch, channels, height, width), x.device())?))
    }
}

/// The values of a small f32 CPU tensor, copied.
fn f32_vec(tensor: &Tensor) -> Result<Option<Vec<f32>>> {
    Ok(with_f32(&tensor.contiguous()?, <[f32]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};

    #[test]
    fn the_fused_kernel_and_the_composed_norm_agree_with_candle() {
        let device = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let norm = GroupNorm::new(3, 6, vb.pp("n")).unwrap();
        let weight = Tensor::randn(1f32, 0.3, 6, &device).unwrap();
        let bias = Tensor::randn(0f32, 0.3, 6, &device).unwrap();
        let norm = GroupNorm { weight: weight.clone(), bias: bias.clone(), ..norm };
        let reference = candle_nn::GroupNorm::new(weight, bias, 6, 3, NORM_EPS).unwrap();
        let x = Tensor::randn(0.5f32, 2.0, (2, 6, 5, 7), &device).unwrap();
        let expected = reference.forward(&x).unwrap().silu().unwrap();
        let tracked = Var::from_tensor(&x).unwrap();
        for out in [
            norm.forward(&x, Some(KlActivation::Silu)).unwrap(),
            norm.forward(tracked.as_tensor(), Some(KlActivation::Silu)).unwrap(),
        ] {
            let error = (out - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(error < 1e-5, "{error}");
        }
    }

    #[test]
    fn the_differentiable_kernel_has_the_composed_norms_gradients() {
        let device = Device::Cpu;
        for silu in [false, true] {
            let x = Var::from_tensor(&Tensor::randn(0.3f32, 1.5, (3, 8, 5, 6), &device).unwrap()).unwrap();
            let weight = Var::from_tensor(&Tensor::randn(1f32, 0.4, 8, &device).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 0.4, 8, &device).unwrap()).unwrap();
            let norm = GroupNorm { weight: weight.as_tensor().clone(), bias: bias.as_tensor().clone(), groups: 4 };
            let upstream = Tensor::randn(0f32, 1.0, (3, 8, 5, 6), &device).unwrap();
            let activation = silu.then_some(KlActivation::Silu);
            let fused = norm.forward(x.as_tensor(), activation).unwrap();
            let composed = norm.composed(x.as_tensor()).unwrap();
            let composed = if silu { composed.silu().unwrap() } else { composed };
            let gradients = |out: &Tensor| {
                let grads = (out * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                [&x, &weight, &bias]
                    .map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let (a, b) = (gradients(&fused), gradients(&composed));
            for (name, (left, right)) in ["x", "weight", "bias"].iter().zip(a.iter().zip(&b)) {
                let error = left.iter().zip(right).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(error < 2e-4, "silu {silu}: d {name} differs by {error}");
            }
        }
    }
}
