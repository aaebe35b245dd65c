//! A KL autoencoder judged as a compression model, on held-out images: distortion (PSNR and SSIM of the
//! reconstruction from the posterior mean, on [0, 1] pixels), rate (the KL, the cost in bits of sending the latent
//! under the prior with bits-back coding, per image pixel and per latent value) and the compression ratio; and, given
//! an LPIPS network, the perceptual distance of the reconstructions.

use candle_core::{Device, Tensor};

use super::image_quality::{psnr, ssim, ImageSize};
use crate::data::Dataset;
use crate::model::autoencoder_kl::kl_per_example;
use crate::model::{AutoencoderKl, Lpips};
use crate::objective::autoencoder::Reconstruction;
use crate::{Error, Result};

/// Distortion, rate and compression of a set of images (means over the images).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CompressionReport {
    /// Images evaluated.
    pub images: usize,
    /// PSNR in dB of the reconstructions against the inputs, on [0, 1] pixels.
    pub psnr: f64,
    /// SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5) of the reconstructions.
    pub ssim: f64,
    /// -log p(x|z) at the posterior mean, nats per image (the training term, without the sample's noise).
    pub reconstruction: f64,
    /// KL( q(z|x) || N(0, I) ) in nats per image: the rate.
    pub kl: f64,
    /// The rate in bits per image pixel: KL / ln 2 / (H x W).
    pub bits_per_pixel: f64,
    /// The rate in bits per latent value: KL / ln 2 / (C_latent x h x w).
    pub bits_per_latent_value: f64,
    /// Input values per latent value: (C x H x W) / (C_latent x h x w).
    pub compression_ratio: f64,
    /// The latent's shape per image: C_latent, h, w.
    pub latent_shape: [usize; 3],
    /// The standard deviation of every value of the images' posterior means: 1 / it is the `scaling_factor` that
    /// gives a diffusion model latents of unit variance (how Stable Diffusion's 0.18215 was found).
    #[serde(default)]
    pub latent_std: f64,
    /// LPIPS(x, x_hat) of the reconstructions (clamped to the image range), when a network was given.
    #[serde(default)]
    pub lpips: Option<f64>,
}

/// Evaluates `model` with its reconstruction term on the images of `images` (`[C, H, W]` examples in [0, 1]),
/// `batch_size` at a time; with `lpips`, the reconstructions' perceptual distance too.
pub fn evaluate_compression(
    model: &AutoencoderKl,
    reconstruction: &Reconstruction,
    images: &Dataset,
    batch_size: usize,
    lpips: Option<&Lpips>,
    device: &Device,
) -> Result<CompressionReport> {
    let shape = images.shape;
    if images.is_empty() || !shape.is_image() {
        let problem = "needs at least one image (examples of C x H x W values)";
        return Err(Error::bad_input(images.source.as_str(), "images", problem));
    }
    let size = ImageSize { channels: shape.channels, height: shape.height, width: shape.width };
    let mut sums = [0f64; 5]; // psnr, ssim, reconstruction, kl, LPIPS
    let mut moments = [0f64; 3]; // count, sum and sum of squares of the posterior means' values
    let mut latent_shape = [0; 3];
    let mut values = Vec::new();
    for first in (0..images.len()).step_by(batch_size.max(1)) {
        let count = batch_size.max(1).min(images.len() - first);
        values.clear();
        (first..first + count).for_each(|index| images.push_example(index, &mut values));
        let pixels = Tensor::from_slice(&values, (count, shape.channels, shape.height, shape.width), device)?;
        let posterior = model.encode(&pixels.affine(2.0, -1.0)?)?;
        let (_, channels, height, width) = posterior.mu.dims4()?;
        latent_shape = [channels, height, width];
        for value in posterior.mu.flatten_all()?.to_vec1::<f32>()? {
            moments = [moments[0] + 1.0, moments[1] + f64::from(value), moments[2] + f64::from(value).powi(2)];
        }
        let output = model.decode(&posterior.mu)?;
        let decoded_pixels = reconstruction.image(&output)?.affine(0.5, 0.5)?.clamp(0f32, 1f32)?;
        if let Some(network) = lpips {
            let distance = network.distance(&pixels.affine(2.0, -1.0)?, &decoded_pixels.affine(2.0, -1.0)?)?;
            sums[4] += f64::from(distance.sum_all()?.to_scalar::<f32>()?);
        }
        let decoded = decoded_pixels.flatten_all()?.to_vec1::<f32>()?;
        for (input, output) in values.chunks(size.len()).zip(decoded.chunks(size.len())) {
            sums[0] += psnr(input, output, size)?;
            sums[1] += ssim(input, output, size)?;
        }
        sums[2] += f64::from(reconstruction.loss(&output, &pixels)?.to_scalar::<f32>()?) * count as f64;
        sums[3] += f64::from(kl_per_example(&posterior)?.sum_all()?.to_scalar::<f32>()?);
    }
    let n = images.len() as f64;
    let kl = sums[3] / n;
    let latent_values = (latent_shape.iter().product::<usize>()) as f64;
    Ok(CompressionReport {
        images: images.len(),
        psnr: sums[0] / n,
        ssim: sums[1] / n,
        reconstruction: sums[2] / n,
        kl,
        // bits = nats / ln 2
        bits_per_pixel: kl / std::f64::consts::LN_2 / (shape.height * shape.width) as f64,
        bits_per_latent_value: kl / std::f64::consts::LN_2 / latent_values,
        compression_ratio: shape.dim() as f64 / latent_values,
        latent_shape,
        // std = sqrt(E[mu^2] - E[mu]^2)
        latent_std: (moments[2] / moments[0] - (moments[1] / moments[0]).powi(2)).max(0.0).sqrt(),
        lpips: lpips.map(|_| sums[4] / n),
    })
}
