//! The small layers every part of the KL autoencoder uses: its convolutions and the 2x up- and
//! downsampling, each in one place so a faster kernel changes one function.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::kernels::block_conv::{convolve_stride_one, Geometry};
use crate::Result;

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
///
/// Stride-1 convolutions on the CPU: without gradients, `kernels::block_conv::convolve_stride_one` (im2col of blocks of output rows
/// into a reused buffer, one GEMM per block); with gradients, one matrix product over unfolded patches,
/// out = W · im2col(x) + b, with im2col built from k x k shifted views of the padded maps, all candle ops, so it
/// stays differentiable. candle 0.11's own CPU convolution unfolds element by element on one thread, which took about
/// two thirds of the decoder's time. Other convolutions (the stride-2 downsamplers) use candle's.
pub fn convolve(layer: &Conv2d, x: &Tensor) -> Result<Tensor> {
    let config = layer.config();
    let (out_channels, in_channels, kernel, kernel_w) = layer.weight().dims4()?;
    let plain = config.stride == 1 && config.dilation == 1 && config.groups == 1 && kernel == kernel_w;
    if !plain || !x.device().is_cpu() {
        return Ok(layer.forward(x)?);
    }
    let (batch, _, height, width) = x.dims4()?;
    let padding = config.padding;
    // out side = n + 2 * padding - kernel + 1
    let (Some(out_h), Some(out_w)) =
        ((height + 2 * padding + 1).checked_sub(kernel), (width + 2 * padding + 1).checked_sub(kernel))
    else {
        return Ok(layer.forward(x)?);
    };
    let wants_gradient = x.track_op() || layer.weight().track_op();
    if !wants_gradient && x.dtype() == candle_core::DType::F32 {
        let geometry = Geometry { in_channels, out_channels, kernel, padding };
        if let Some(out) = convolve_stride_one(&x.contiguous()?, layer.weight(), layer.bias(), geometry)? {
            return Ok(out);
        }
    }
    let columns = unfold(x, kernel, padding, (out_h, out_w))?;
    let weight = layer.weight().reshape((out_channels, in_channels * kernel * kernel))?;
    let product = if batch == 1 {
        weight.matmul(&columns.squeeze(0)?)?.unsqueeze(0)?
    } else {
        weight.broadcast_left(batch)?.matmul(&columns)?
    };
    let out = match layer.bias() {
        Some(bias) => product.broadcast_add(&bias.reshape((1, out_channels, 1))?)?,
        None => product,
    };
    Ok(out.reshape((batch, out_channels, out_h, out_w))?)
}

/// im2col: `[batch, C, H, W]` maps to `[batch, C * k * k, out_h * out_w]` patches, row c * k * k + dy * k + dx
/// holding x[c, y + dy - padding, x + dx - padding] (zero outside the maps).
fn unfold(x: &Tensor, kernel: usize, padding: usize, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    if kernel == 1 && padding == 0 {
        return Ok(x.reshape((batch, channels, height * width))?);
    }
    let padded = x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?;
    let mut shifts = Vec::with_capacity(kernel * kernel);
    for dy in 0..kernel {
        for dx in 0..kernel {
            shifts.push(padded.narrow(2, dy, out_h)?.narrow(3, dx, out_w)?);
        }
    }
    Ok(Tensor::stack(&shifts, 2)?.reshape((batch, channels * kernel * kernel, out_h * out_w))?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn the_inference_kernel_and_the_differentiable_path_agree_with_candle() {
        let device = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let layer = conv3x3(5, 7, vb.pp("c")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 6, 9), &device).unwrap();
        let reference = layer.forward(&x).unwrap();
        let fast = convolve(&layer, &x).unwrap();
        let tracked = convolve(&layer, Var::from_tensor(&x).unwrap().as_tensor()).unwrap();
        for out in [fast, tracked] {
            let error = (out - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(error < 1e-4, "{error}");
        }
    }
}
