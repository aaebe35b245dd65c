//! The reconstruction term of a KL autoencoder (latent diffusion's VAE): -log p(x|z) of `[batch, C, H, W]` images,
//! either as latent diffusion trains it (an L1 distance under one learned scale, a Laplace likelihood), or with
//! elbo's Bernoulli, Gaussian and categorical decoders, exactly as the other models use them.
//!
//! The model sees images in [-1, 1] (x = 2p - 1 for pixels p in [0, 1]), as diffusers does. The Laplace and
//! Gaussian terms score the decoder's output on that scale, so the decoder draws images there and a diffusers
//! pipeline decodes it as usual. The Bernoulli and categorical terms score pixels p in [0, 1] from logits; such a
//! model decodes to logits, which [`Reconstruction::image`] turns back into an image.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::ldm::laplace_reconstruction;
use crate::model::{Likelihood, LikelihoodConfig, Lpips};
use crate::{Error, Result};

/// Which reconstruction term a KL autoencoder is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ReconstructionTerm {
    /// Latent diffusion's: sum over values of |x - x_hat| / exp(s) + s, with one learned scalar s (`loss.logvar`,
    /// LDM's name): a Laplace likelihood with a learned scale, up to the constant log 2 per value.
    #[default]
    Laplace,
    /// One of elbo's decoder likelihoods (its learned Gaussian log-variance, if any, under `loss.log_var`).
    Likelihood {
        /// The likelihood.
        likelihood: LikelihoodConfig,
    },
}

impl ReconstructionTerm {
    /// The decoder's output channels for images of `channels` channels: K per channel for a categorical decoder.
    pub fn output_channels(&self, channels: usize) -> usize {
        match self {
            ReconstructionTerm::Laplace => channels,
            ReconstructionTerm::Likelihood { likelihood } => channels * likelihood.outputs_per_dimension(),
        }
    }

    /// A short name for messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            ReconstructionTerm::Laplace => "laplace",
            ReconstructionTerm::Likelihood { likelihood } => likelihood.name(),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match self {
            ReconstructionTerm::Laplace => Ok(()),
            ReconstructionTerm::Likelihood { likelihood } => likelihood.validate(),
        }
    }
}

/// Latent diffusion's perceptual term: `weight * LPIPS(x, x_hat)` per image, added to the L1 error of each of its
/// values (LDM's `perceptual_weight`, 1.0 in its configs).
#[derive(Debug, Clone)]
pub struct Perceptual {
    /// The LPIPS network.
    pub network: Lpips,
    /// The term's weight.
    pub weight: f64,
}

/// A reconstruction term with its parameters, ready to score decoder outputs.
#[derive(Debug, Clone)]
pub enum Reconstruction {
    /// The Laplace term and its log-scale s, shape `[1]`.
    Laplace {
        /// s = log b of the Laplace scale b (LDM's `logvar`).
        log_scale: Tensor,
        /// Latent diffusion's perceptual term, when the run has an LPIPS network.
        perceptual: Option<Perceptual>,
    },
    /// One of elbo's likelihoods.
    Likelihood(Likelihood),
}

impl Reconstruction {
    /// The term `config` for images of `image_values` = C x H x W values; learned parameters under `vb` (`loss`).
    pub fn new(config: &ReconstructionTerm, image_values: usize, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            ReconstructionTerm::Laplace => {
                let log_scale = vb.get_with_hints(1, "logvar", Init::Const(0.0))?;
                Reconstruction::Laplace { log_scale, perceptual: None }
            }
            ReconstructionTerm::Likelihood { likelihood } => {
                Reconstruction::Likelihood(Likelihood::new(likelihood, image_values, vb)?)
            }
        })
    }

    /// The Laplace term with latent diffusion's perceptual term added; an error for the other terms, which have no
    /// place for it.
    pub fn with_perceptual(self, perceptual: Perceptual) -> Result<Self> {
        match self {
            Reconstruction::Laplace { log_scale, .. } => {
                Ok(Reconstruction::Laplace { log_scale, perceptual: Some(perceptual) })
            }
            Reconstruction::Likelihood(_) => Err(Error::invalid_setting(
                "lpips",
                "the perceptual term joins latent diffusion's learned-scale L1 (the laplace reconstruction term); \
                 it has no place in a likelihood",
            )),
        }
    }

    /// The batch mean of -log p(x|z) per example (summed over every value) of decoder `output` `[batch, C', H, W]`
    /// for `pixels` p in [0, 1] `[batch, C, H, W]`.
    pub fn loss(&self, output: &Tensor, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.loss_and_distance(output, pixels)?.0)
    }

    /// The LPIPS network of the perceptual term, when the term has one.
    pub fn perceptual_network(&self) -> Option<&Lpips> {
        match self {
            Reconstruction::Laplace { perceptual: Some(perceptual), .. } => Some(&perceptual.network),
            _ => None,
        }
    }

    /// [`Self::loss`], with the batch's mean LPIPS distance (unweighted) when the term has the perceptual part.
    pub fn loss_and_distance(&self, output: &Tensor, pixels: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            // LDM: sum((|x - x_hat| + p_weight * LPIPS(x, x_hat)) / exp(s) + s) / batch, x = 2p - 1
            Reconstruction::Laplace { log_scale, perceptual } => {
                let x = pixels.affine(2.0, -1.0)?;
                let Some(Perceptual { network, weight }) = perceptual else {
                    return Ok((laplace_reconstruction(&x, output, log_scale, None)?, None));
                };
                let distance = network.distance(&x, output)?;
                let weighted = distance.affine(*weight, 0.0)?;
                Ok((laplace_reconstruction(&x, output, log_scale, Some(&weighted))?, Some(distance.mean_all()?)))
            }
            Reconstruction::Likelihood(likelihood) => {
                let target = match likelihood {
                    Likelihood::Gaussian(_) => pixels.affine(2.0, -1.0)?,
                    Likelihood::Bernoulli | Likelihood::Categorical(_) => pixels.clone(),
                };
                let nll = likelihood.negative_log_prob(&flat_output(likelihood, output)?, &target.flatten_from(1)?)?;
                Ok((nll.mean_all()?, None))
            }
        }
    }

    /// The image the decoder `output` stands for, `[batch, C, H, W]` in about [-1, 1]: the output itself for the
    /// Laplace and Gaussian terms, 2 p - 1 of the likelihood's mean pixel p otherwise.
    pub fn image(&self, output: &Tensor) -> Result<Tensor> {
        match self {
            Reconstruction::Laplace { .. } | Reconstruction::Likelihood(Likelihood::Gaussian(_)) => Ok(output.clone()),
            Reconstruction::Likelihood(likelihood) => {
                let (batch, _, height, width) = output.dims4()?;
                let mean = likelihood.mean(&flat_output(likelihood, output)?)?;
                Ok(mean.reshape((batch, (), height, width))?.affine(2.0, -1.0)?)
            }
        }
    }

    /// The learned log-scale s of the Laplace term, or the learned shared log-variance of a Gaussian; `None` when
    /// the term has no single learned scale.
    pub fn log_scale(&self) -> Result<Option<f64>> {
        let tensor = match self {
            Reconstruction::Laplace { log_scale, .. } => log_scale,
            Reconstruction::Likelihood(Likelihood::Gaussian(gaussian)) => match gaussian.learned_log_var() {
                Some(log_var) if log_var.elem_count() == 1 => log_var,
                _ => return Ok(None),
            },
            Reconstruction::Likelihood(_) => return Ok(None),
        };
        Ok(Some(f64::from(tensor.flatten_all()?.get(0)?.to_scalar::<f32>()?)))
    }
}

/// The decoder output `[batch, C * K, H, W]` as the likelihood takes it, `[batch, C * H * W * K]`: for K outputs per
/// value (categorical), channel c * K + k holds level k of channel c, and the levels go last.
fn flat_output(likelihood: &Likelihood, output: &Tensor) -> Result<Tensor> {
    let Likelihood::Categorical(categorical) = likelihood else { return Ok(output.flatten_from(1)?) };
    let (batch, channels, height, width) = output.dims4()?;
    let levels = categorical.levels();
    let split = output.reshape((batch, channels / levels, levels, height, width))?;
    Ok(split.permute((0, 1, 3, 4, 2))?.contiguous()?.flatten_from(1)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;
    use crate::model::likelihood::categorical::Categorical;

    #[test]
    fn a_categorical_output_is_read_level_last_per_channel() {
        let device = Device::Cpu;
        // batch 1, 2 channels, 3 levels, 1 x 2 pixels: value at (c * 3 + k, 0, w) = 100 c + 10 k + w
        let values: Vec<f32> =
            (0..6).flat_map(|ck| (0..2).map(move |w| (100 * (ck / 3) + 10 * (ck % 3) + w) as f32)).collect();
        let output = Tensor::from_vec(values, (1, 6, 1, 2), &device).unwrap();
        let likelihood = Likelihood::Categorical(Categorical::new(3, 4).unwrap());
        let flat = flat_output(&likelihood, &output).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(flat[0], vec![0., 10., 20., 1., 11., 21., 100., 110., 120., 101., 111., 121.]);
    }

    #[test]
    fn output_channels_and_the_laplace_image_are_the_decoder_output() {
        let config = ReconstructionTerm::Likelihood { likelihood: LikelihoodConfig::Categorical { levels: 16 } };
        assert_eq!(config.output_channels(3), 48);
        assert_eq!(ReconstructionTerm::Laplace.output_channels(3), 3);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let term = Reconstruction::new(&ReconstructionTerm::Laplace, 12, vb.pp("loss")).unwrap();
        assert!(varmap.data().lock().unwrap().contains_key("loss.logvar"));
        assert_eq!(term.log_scale().unwrap(), Some(0.0));
        let output = Tensor::new(&[[[[0.5f32, -0.25]]]], &Device::Cpu).unwrap();
        let pixels = Tensor::new(&[[[[1.0f32, 0.5]]]], &Device::Cpu).unwrap();
        // x = 2p - 1 = (1, 0); |x - x_hat| = (0.5, 0.25); s = 0: sum = 0.75
        let loss = term.loss(&output, &pixels).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 0.75).abs() < 1e-6, "{loss}");
        let image = term.image(&output).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(image, vec![0.5, -0.25]);
    }

    #[test]
    fn a_bernoulli_term_scores_pixels_from_logits_and_draws_its_mean() {
        let device = Device::Cpu;
        let config = ReconstructionTerm::Likelihood { likelihood: LikelihoodConfig::Bernoulli };
        let varmap = VarMap::new();
        let term = Reconstruction::new(&config, 2, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let output = Tensor::new(&[[[[0.0f32, 2.0]]]], &device).unwrap();
        let pixels = Tensor::new(&[[[[1.0f32, 0.0]]]], &device).unwrap();
        // -log sigmoid(0) - log(1 - sigmoid(2)) = ln 2 + ln(1 + e^2)
        let expected = 2f64.ln() + (1.0 + 2f64.exp()).ln();
        let loss = f64::from(term.loss(&output, &pixels).unwrap().to_scalar::<f32>().unwrap());
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        let image = term.image(&output).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sigmoid_two = 1.0 / (1.0 + (-2f32).exp());
        assert!((image[0] - 0.0).abs() < 1e-6 && (image[1] - (2.0 * sigmoid_two - 1.0)).abs() < 1e-6);
    }
}
