//! The small layers every part of the KL autoencoder uses: its GroupNorm, its convolutions and the 2x up- and
//! downsampling, each in one place so a faster kernel changes one function.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

use super::config::NORM_EPS;
use crate::Result;

/// A GroupNorm over `channels` channels in `groups` groups with diffusers' epsilon, weights `weight` and `bias`:
/// y = (x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c.
pub fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    Ok(candle_nn::group_norm(groups, channels, NORM_EPS, vb)?)
}

/// A `kernel` x `kernel` convolution with bias from `in_channels` to `out_channels`.
pub fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    geometry: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Ok(candle_nn::conv2d(in_channels, out_channels, kernel, geometry, vb)?)
}

/// A 3 x 3 convolution that keeps the side (stride 1, padding 1).
pub fn conv3x3(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv(in_channels, out_channels, 3, Conv2dConfig { padding: 1, ..Default::default() }, vb)
}

/// A 1 x 1 convolution (a per-pixel linear map).
pub fn conv1x1(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv(in_channels, out_channels, 1, Conv2dConfig::default(), vb)
}

/// The convolution `layer` applied to `[batch, C, H, W]` maps.
pub fn convolve(layer: &Conv2d, x: &Tensor) -> Result<Tensor> {
    Ok(layer.forward(x)?)
}

/// The GroupNorm `norm` applied to `[batch, C, H, W]` maps.
pub fn normalize(norm: &GroupNorm, x: &Tensor) -> Result<Tensor> {
    Ok(norm.forward(x)?)
}

/// diffusers' `Downsample2D` with a convolution: zero-pad one row at the bottom and one column at the right, then a
/// 3 x 3 convolution of stride 2 and no padding, so a side n becomes floor(n / 2).
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// The downsampler of `channels` channels; weights `conv.weight` and `conv.bias`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let geometry = Conv2dConfig { stride: 2, ..Default::default() };
        Ok(Downsample { conv: conv(channels, channels, 3, geometry, vb.pp("conv"))? })
    }

    /// The maps at half the side.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // pad (left 0, right 1, top 0, bottom 1): out side = (n + 1 - 3) / 2 + 1
        let padded = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        convolve(&self.conv, &padded)
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour 2x, then a 3 x 3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// The upsampler of `channels` channels; weights `conv.weight` and `conv.bias`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Upsample { conv: conv3x3(channels, channels, vb.pp("conv"))? })
    }

    /// The maps at twice the side.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        convolve(&self.conv, &nearest_2x(x)?)
    }
}

/// Nearest-neighbour upsampling by 2 as a broadcast, so it is differentiable: y[2i + a, 2j + b] = x[i, j].
pub fn nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let spread =
        x.reshape((batch, channels, height, 1, width, 1))?.broadcast_as((batch, channels, height, 2, width, 2))?;
    Ok(spread.reshape((batch, channels, 2 * height, 2 * width))?)
}
