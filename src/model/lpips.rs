//! LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), version 0.1
//! with its VGG16 trunk: the perceptual distance that latent diffusion adds to its autoencoder's L1 reconstruction.
//!
//! For images x, y in [-1, 1]: each is scaled, (x - shift) / scale per channel, and run through VGG16's features;
//! at the five taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) each feature vector is divided by its norm over the
//! channels, the squared difference of the two images' normalised features is weighted per channel by the tap's
//! non-negative 1 x 1 "lin" layer, averaged over the positions, and the five taps are summed:
//!
//! ```text
//! LPIPS(x, y) = sum_l mean_{h,w} sum_c w_l,c (f_l(x)[c,h,w] / (|f_l(x)[:,h,w]| + 1e-10) - (same for y))^2
//! ```
//!
//! The network's weights are pretrained (ImageNet VGG16, then the lin layers fitted to human judgements) and elbo
//! downloads nothing: `scripts/export_lpips.py` saves them from the `lpips` package on a machine that can, and
//! [`Lpips::load`] reads that file. The tensor names are the package's own (`net.slice1.0.weight`, ...,
//! `lin0.model.1.weight`). The weights are constants: the gradient flows to the images only.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::model::conv::convolve;
use crate::model::Activation;
use crate::{Error, Result};

/// The scaling layer's shift per RGB channel (LPIPS's `ScalingLayer.shift`).
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// The scaling layer's scale per RGB channel (`ScalingLayer.scale`).
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Added to a feature vector's norm before dividing by it (`normalize_tensor`'s eps).
const NORM_EPS: f64 = 1e-10;

/// VGG16's feature stages as LPIPS slices them: each stage's 3 x 3 convolutions (their index in torchvision's
/// `vgg16().features`, their input and output channels), after a 2 x 2 max pool for every stage but the first;
/// each stage ends at a tap.
const STAGES: [&[(usize, usize, usize)]; 5] = [
    &[(0, 3, 64), (2, 64, 64)],
    &[(5, 64, 128), (7, 128, 128)],
    &[(10, 128, 256), (12, 256, 256), (14, 256, 256)],
    &[(17, 256, 512), (19, 512, 512), (21, 512, 512)],
    &[(24, 512, 512), (26, 512, 512), (28, 512, 512)],
];

/// The smallest image side the trunk takes: four 2 x 2 max pools leave at least one position at the last tap.
pub const MIN_SIDE: usize = 16;

/// The LPIPS network: the VGG16 trunk and the five lin layers.
#[derive(Debug, Clone)]
pub struct Lpips {
    /// Each stage's convolutions (each followed by a ReLU).
    stages: Vec<Vec<Conv2d>>,
    /// Each tap's lin weights, `[1, C, 1, 1]`.
    lins: Vec<Tensor>,
    /// The scaling layer's shift and scale, `[1, 3, 1, 1]`.
    shift: Tensor,
    scale: Tensor,
}

impl Lpips {
    /// The network from `vb` (the `lpips` package's tensor names).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig { padding: 1, ..Conv2dConfig::default() };
        let mut stages = Vec::with_capacity(STAGES.len());
        let mut lins = Vec::with_capacity(STAGES.len());
        for (stage, layers) in STAGES.iter().enumerate() {
            let slice = vb.pp(format!("net.slice{}", stage + 1));
            let convolutions = layers
                .iter()
                .map(|&(index, inputs, outputs)| candle_nn::conv2d(inputs, outputs, 3, config, slice.pp(index)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let channels = layers[layers.len() - 1].2;
            lins.push(vb.pp(format!("lin{stage}.model.1")).get((1, channels, 1, 1), "weight")?);
            stages.push(convolutions);
        }
        let device = vb.device();
        let per_channel = |values: [f32; 3]| Tensor::from_slice(&values, (1, 3, 1, 1), device);
        Ok(Lpips { stages, lins, shift: per_channel(SHIFT)?, scale: per_channel(SCALE)? })
    }

    /// The network in the safetensors file `path` (as `scripts/export_lpips.py` writes it) on `device`; a missing
    /// or misshapen tensor is an error naming the file and the tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        // SAFETY: the file is mapped read-only; like every memory-mapped reader, this assumes nobody truncates it
        // while the network loads (the tensors are copied out before this function returns).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
            .map_err(|error| Error::bad_input(path, "safetensors", error.to_string()))?;
        Lpips::new(vb).map_err(|error| {
            let problem = format!("{error} (expected the LPIPS VGG16 network of scripts/export_lpips.py)");
            Error::bad_input(path, "LPIPS weights", problem)
        })
    }

    /// LPIPS(x, y) per image, `[batch]`, for images `[batch, 3, H, W]` in [-1, 1] with sides of at least
    /// [`MIN_SIDE`]; differentiable with respect to both.
    pub fn distance(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (_, channels, height, width) = x.dims4()?;
        if x.dims() != y.dims() || channels != 3 || height.min(width) < MIN_SIDE {
            return Err(Error::ShapeMismatch(format!(
                "LPIPS compares two batches of RGB images of the same shape, at least {MIN_SIDE} pixels a side: got \
                 {:?} and {:?}",
                x.dims(),
                y.dims()
            )));
        }
        let (taps_x, taps_y) = (self.taps(x)?, self.taps(y)?);
        let mut total: Option<Tensor> = None;
        for ((tap_x, tap_y), lin) in taps_x.iter().zip(&taps_y).zip(&self.lins) {
            // (f(x) / (|f(x)| + eps) - f(y) / (|f(y)| + eps))^2, weighted by the lin layer and averaged over (h, w)
            let difference = (unit_features(tap_x)? - unit_features(tap_y)?)?.sqr()?;
            let term = difference.broadcast_mul(lin)?.sum(1)?.flatten_from(1)?.mean(1)?;
            total = Some(match total {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        total.ok_or_else(|| Error::ShapeMismatch("LPIPS without taps".into()))
    }

    /// The five taps' features of images in [-1, 1].
    fn taps(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        // (x - shift) / scale
        let mut features = images.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)?;
        let mut taps = Vec::with_capacity(self.stages.len());
        for (stage, convolutions) in self.stages.iter().enumerate() {
            if stage > 0 {
                features = max_pool(&features)?;
            }
            for convolution in convolutions {
                features = convolve(convolution, &features, Some(Activation::Relu))?;
            }
            taps.push(features.clone());
        }
        Ok(taps)
    }
}

/// VGG's 2 x 2 max pool with stride 2 (an odd last row or column dropped, as torch does), as the maximum over each
/// window's four values. Not candle's `max_pool2d`: its backward pass (candle-core 0.11) multiplies the gradient of
/// a window's maximum by the share of the window that holds it (a quarter for one maximum) instead of dividing by
/// their count, which `tests/lpips.rs` (the gradient against the `lpips` package's) catches.
fn max_pool(features: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = features.dims4()?;
    let (rows, columns) = (height / 2, width / 2);
    let even = features.narrow(2, 0, 2 * rows)?.narrow(3, 0, 2 * columns)?;
    Ok(even.reshape((batch, channels, rows, 2, columns, 2))?.max(5)?.max(3)?)
}

/// Each position's feature vector divided by its norm over the channels plus 1e-10 (`normalize_tensor`).
fn unit_features(features: &Tensor) -> Result<Tensor> {
    let norm = features.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(features.broadcast_div(&(norm + NORM_EPS)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Each 2 x 2 window gives its maximum, an odd last column is dropped, and the gradient reaches each window's
    /// maximum whole (candle's `max_pool2d` gave it a quarter) and nothing else.
    #[test]
    fn max_pool_takes_each_window_maximum_and_hands_it_the_whole_gradient() {
        let values =
            [1.0f32, 5.0, 2.0, 0.0, 9.0, 3.0, 4.0, 7.0, 8.0, 9.0, 6.0, 2.0, 1.0, 3.0, 9.0, 0.0, 0.5, 4.0, 2.0, 9.0];
        let x = Var::from_tensor(&Tensor::from_slice(&values, (1, 1, 4, 5), &Device::Cpu).unwrap()).unwrap();
        let pooled = max_pool(x.as_tensor()).unwrap();
        assert_eq!(pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 8.0, 6.0, 4.0]);
        let gradient = pooled.sum_all().unwrap().backward().unwrap().remove(x.as_tensor()).unwrap();
        let expected =
            [0.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(gradient.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
    }
}
