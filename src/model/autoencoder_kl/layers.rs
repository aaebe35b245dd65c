//! The small layers every part of the KL autoencoder uses: its convolutions and the 2x up- and
//! downsampling, each in one place so a faster kernel changes one function.

use candle_core::Tensor;
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
/// On the CPU in f32: without gradients, stride-1 convolutions run `kernels::block_conv::convolve_stride_one`
/// (im2col of blocks of output rows into a reused buffer, one GEMM per block); everything else (the training path,
/// the stride-2 downsamplers) runs the differentiable GEMM op of `kernels::conv` (im2col, W · columns per example,
/// col2im and outer products for the gradients). candle 0.11's own CPU convolution unfolds element by element on one
/// thread, which took about two thirds of the decoder's time, and its weight gradient is a convolution with an
/// image-sized kernel.
pub fn convolve(layer: &Conv2d, x: &Tensor) -> Result<Tensor> {
    let config = layer.config();
    let (out_channels, in_channels, kernel, kernel_w) = layer.weight().dims4()?;
    let plain = config.stride == 1 && config.dilation == 1 && config.groups == 1 && kernel == kernel_w;
    let wants_gradient = x.track_op() || layer.weight().track_op();
    if plain && !wants_gradient && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let geometry = Geometry { in_channels, out_channels, kernel, padding: config.padding };
        if let Some(out) = convolve_stride_one(&x.contiguous()?, layer.weight(), layer.bias(), geometry)? {
            return Ok(out);
        }
    }
    crate::model::conv::convolve(layer, x, None)
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

/// Nearest-neighbour upsampling by 2, differentiable: y[2i + a, 2j + b] = x[i, j]. On f32 CPU maps one kernel
/// (`kernels::upsample`), elsewhere a broadcast.
pub fn nearest_2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return Ok(x.contiguous()?.apply_op1(crate::kernels::upsample::Nearest2x)?);
    }
    broadcast_2x(x)
}

/// Nearest-neighbour upsampling by 2 as a broadcast of candle ops.
fn broadcast_2x(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let spread =
        x.reshape((batch, channels, height, 1, width, 1))?.broadcast_as((batch, channels, height, 2, width, 2))?;
    Ok(spread.reshape((batch, channels, 2 * height, 2 * width))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};

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

    #[test]
    fn the_upsampling_kernel_and_its_gradient_match_the_broadcast() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap()).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (2, 3, 8, 10), &Device::Cpu).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (kernel, broadcast) = (nearest_2x(x.as_tensor()).unwrap(), broadcast_2x(x.as_tensor()).unwrap());
        assert_eq!(values(&kernel), values(&broadcast));
        let gradient = |y: &Tensor| {
            let grads = (y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            values(grads.get(x.as_tensor()).unwrap())
        };
        let (a, b) = (gradient(&kernel), gradient(&broadcast));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} vs {b:?}");
    }
}
