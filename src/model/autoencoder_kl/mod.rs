//! The KL autoencoder of latent diffusion (diffusers' `AutoencoderKL`, the LDM "KL-f4/f8" models, Stable Diffusion's
//! VAE): a convolutional VAE with a spatial latent, built from diffusers' configuration with diffusers' weight names,
//! so its `diffusion_pytorch_model.safetensors` loads as it is.
//!
//! - [`config`]: `config.json`, field for field.
//! - [`resnet`], [`attention`], [`norm`], [`layers`]: the ResNet block, the middle block's
//!   attention, GroupNorm, the small layers and the CPU inference kernels.
//! - [`encoder`], [`decoder`]: the two halves.
//! - [`tiling`]: tiled encoding and decoding of large images, as diffusers' `enable_tiling`.
//! - [`mod@load`]: a diffusers directory, in f32, f16 or bf16.
//!
//! Everything is built from candle ops through a `VarBuilder`, so the model is differentiable: with a `VarMap` it
//! trains like elbo's other models. The posterior is elbo's [`DiagonalGaussian`] over `[batch, C, h, w]` tensors.

pub mod attention;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod layers;
pub mod load;
pub mod norm;
pub mod resnet;
pub mod tiling;

use candle_core::{Tensor, D};
use candle_nn::{Conv2d, VarBuilder};

pub use config::{AutoencoderKlConfig, SampleSize};
pub use load::{is_autoencoder_kl_dir, is_diffusers_dir, load, load_trainable};
pub use tiling::Tiles;

use self::decoder::Decoder;
use self::encoder::Encoder;
use self::layers::{conv1x1, convolve};
use crate::model::DiagonalGaussian;
use crate::{Error, Result};

/// The bounds diffusers clamps the posterior's log-variance to: log sigma^2 in [-30, 20].
pub const LOG_VAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// A KL autoencoder: encoder, `quant_conv`, the diagonal Gaussian posterior, `post_quant_conv`, decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    config: AutoencoderKlConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKl {
    /// The model of `config` with weights under diffusers' names in `vb` (`encoder.*`, `decoder.*`, `quant_conv`,
    /// `post_quant_conv`). The configuration is checked first.
    pub fn new(config: AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        config.validate(std::path::Path::new(load::CONFIG_FILE))?;
        let moments = 2 * config.latent_channels;
        let quant_conv = config.use_quant_conv.then(|| conv1x1(moments, moments, vb.pp("quant_conv")));
        let latent = config.latent_channels;
        let post_quant_conv = config.use_post_quant_conv.then(|| conv1x1(latent, latent, vb.pp("post_quant_conv")));
        Ok(AutoencoderKl {
            encoder: Encoder::new(&config, vb.pp("encoder"))?,
            decoder: Decoder::new(&config, vb.pp("decoder"))?,
            quant_conv: quant_conv.transpose()?,
            post_quant_conv: post_quant_conv.transpose()?,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// An error unless images of `height` x `width` go down and back up to the same size: both sides multiples of
    /// the downsampling factor 2^(blocks - 1). `source` names the images in the message.
    pub fn check_image_size(&self, (height, width): (usize, usize), source: &str) -> Result<()> {
        let factor = self.config.downsampling();
        if height == 0 || width == 0 || height % factor != 0 || width % factor != 0 {
            let problem = format!(
                "{height} x {width} (height x width): the encoder halves the side {} times, so both sides must be \
                 positive multiples of {factor}; resize them (--image-size) or crop them",
                self.config.halvings()
            );
            return Err(Error::bad_input(source, "image size", problem));
        }
        Ok(())
    }

    /// The moments `[batch, 2 * latent_channels, h, w]` of `[batch, in_channels, H, W]` images in [-1, 1].
    pub fn moments(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(x)?;
        match &self.quant_conv {
            Some(quant_conv) => convolve(quant_conv, &h),
            None => Ok(h),
        }
    }

    /// q(z|x) of `[batch, in_channels, H, W]` images in [-1, 1]: mean and log-variance `[batch, C, h, w]`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        posterior(&self.moments(x)?)
    }

    /// [`Self::encode`], in overlapping tiles when the images are larger than a tile (see [`tiling`]).
    pub fn encode_tiled(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let tiles = self.encode_tiles();
        if !tiles.needed(x)? {
            return self.encode(x);
        }
        posterior(&tiles.apply(x, |tile| self.moments(tile))?)
    }

    /// The mean of p(x|z), `[batch, out_channels, h * f, w * f]` in about [-1, 1], of unscaled latents `z`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.output_layer(&self.decode_features(z)?)
    }

    /// The decoder up to its last layer: the maps [`Self::output_layer`] turns into the image.
    pub fn decode_features(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(post_quant_conv) => convolve(post_quant_conv, z)?,
            None => z.clone(),
        };
        self.decoder.features(&z)
    }

    /// The decoder's last layer (`decoder.conv_out`) applied to [`Self::decode_features`]'s maps.
    pub fn output_layer(&self, features: &Tensor) -> Result<Tensor> {
        self.decoder.output_layer(features)
    }

    /// [`Self::decode`], in overlapping tiles when the latents are larger than a tile.
    pub fn decode_tiled(&self, z: &Tensor) -> Result<Tensor> {
        let tiles = self.decode_tiles();
        if !tiles.needed(z)? {
            return self.decode(z);
        }
        tiles.apply(z, |tile| self.decode(tile))
    }

    /// The tiles of encoding: sample_size pixels to sample_size / f latent positions.
    pub fn encode_tiles(&self) -> Tiles {
        Tiles { input_tile: self.config.tile_sample_size(), output_tile: self.config.tile_latent_size() }
    }

    /// The tiles of decoding: sample_size / f latent positions to sample_size pixels.
    pub fn decode_tiles(&self) -> Tiles {
        Tiles { input_tile: self.config.tile_latent_size(), output_tile: self.config.tile_sample_size() }
    }

    /// Latents as a diffusion model takes them: (z - shift_factor) * scaling_factor.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        // (z - shift) * scale = z * scale - shift * scale
        Ok(z.affine(self.config.scaling_factor, -shift * self.config.scaling_factor)?)
    }

    /// The inverse of [`Self::scale_latents`]: z = latents / scaling_factor + shift_factor.
    pub fn unscale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(latents.affine(1.0 / self.config.scaling_factor, shift)?)
    }
}

/// The diagonal Gaussian of encoder moments `[batch, 2C, h, w]`: the first C channels are the mean, the last C the
/// log-variance, clamped to [`LOG_VAR_RANGE`] as diffusers does.
pub fn posterior(moments: &Tensor) -> Result<DiagonalGaussian> {
    let channels = moments.dim(1)? / 2;
    let mu = moments.narrow(1, 0, channels)?;
    let log_var = moments.narrow(1, channels, channels)?.clamp(LOG_VAR_RANGE.0, LOG_VAR_RANGE.1)?;
    Ok(DiagonalGaussian::new(mu.contiguous()?, log_var.contiguous()?))
}

/// KL( q(z|x) || N(0, I) ) per example of a spatial posterior, summed over every latent value; shape `[batch]`.
pub fn kl_per_example(posterior: &DiagonalGaussian) -> Result<Tensor> {
    // KL = 0.5 * sum (sigma^2 + mu^2 - 1 - log sigma^2)
    Ok(posterior.kl_per_dimension()?.flatten_from(1)?.sum(D::Minus1)?)
}
