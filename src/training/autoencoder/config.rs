//! The settings of a KL autoencoder's training: the model's size, the reconstruction term, the KL weight, the
//! optional discriminator, the crops, and the optimiser.

use std::path::PathBuf;

use crate::data::crops::CropConfig;
use crate::model::discriminator::DiscriminatorConfig;
use crate::model::AutoencoderKlConfig;
use crate::objective::autoencoder::ReconstructionTerm;
use crate::objective::ldm::DiscriminatorLoss;
use crate::objective::KlWeighting;
use crate::optimizer::OptimizerConfig;
use crate::training::CheckpointEvery;
use crate::{Error, Result};

/// The KL weight latent diffusion's KL autoencoders train with (`kl_weight: 0.000001` in the LDM configs).
pub const LDM_KL_WEIGHT: f64 = 1e-6;

/// The adversarial part of latent diffusion's loss: a PatchGAN discriminator from a given step on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarialConfig {
    /// The first step whose loss has the adversarial term (LDM's `disc_start`); the discriminator trains from it.
    pub start: usize,
    /// The weight of the adversarial term, times the adaptive weight (LDM's `disc_weight`, 0.5 by default).
    pub weight: f64,
    /// The discriminator's loss.
    pub loss: DiscriminatorLoss,
    /// The discriminator's architecture.
    pub discriminator: DiscriminatorConfig,
    /// The discriminator's learning rate (LDM uses the autoencoder's).
    pub learning_rate: f64,
}

/// Latent diffusion's perceptual term: LPIPS between each crop and its reconstruction, added inside the learned-scale
/// L1 (`rec_loss = |x - x_hat| + weight * LPIPS(x, x_hat)`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceptualConfig {
    /// The LPIPS network's safetensors file (`scripts/export_lpips.py` writes it); read again on resume.
    pub lpips: PathBuf,
    /// The term's weight (LDM's `perceptual_weight`, 1.0 in its configs).
    pub weight: f64,
}

/// LDM's `perceptual_weight`.
pub const LDM_PERCEPTUAL_WEIGHT: f64 = 1.0;

/// Settings of a KL autoencoder's training run. Saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderTrainConfig {
    /// Optimisation steps in all.
    pub steps: usize,
    /// Crops per step.
    pub batch_size: usize,
    /// The autoencoder's learning rate.
    pub learning_rate: f64,
    /// The autoencoder's optimiser: Adam with betas (0.5, 0.9), as latent diffusion.
    pub optimizer: OptimizerConfig,
    /// -log p(x|z): latent diffusion's learned-scale L1, or one of elbo's likelihoods.
    pub reconstruction: ReconstructionTerm,
    /// How the KL enters the loss: beta 1e-6 as latent diffusion by default; warm-up, cycles, free bits and
    /// capacity as for the other models.
    pub kl: KlWeighting,
    /// The discriminator, from a start step on; `None`: reconstruction + KL only.
    #[serde(default)]
    pub adversarial: Option<AdversarialConfig>,
    /// The LPIPS term inside the reconstruction, when the user supplies the network; `None`: the pixel term alone.
    #[serde(default)]
    pub perceptual: Option<PerceptualConfig>,
    /// The training crops.
    pub crops: CropConfig,
    /// Photos held out of training; the held-out crops are cut from them.
    pub held_out_photos: usize,
    /// Fixed held-out crops per held-out photo.
    pub held_out_crops_per_photo: usize,
    /// The held-out crops are evaluated every this many steps (and after the last).
    pub eval_every: usize,
    /// Seeds the initial weights, the crops, the held-out split and crops, and the noise eps.
    pub seed: u64,
    /// Start from this diffusers `AutoencoderKL` directory instead of fresh weights.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Train the decoder (and `post_quant_conv`) only: the encoder and `quant_conv` stay as they are, so the
    /// latent space of a diffusion model trained on it is kept.
    #[serde(default)]
    pub train_decoder_only: bool,
    /// A checkpoint every this many steps or minutes, besides the one at each evaluation.
    #[serde(default)]
    pub checkpoint_every: Option<CheckpointEvery>,
}

impl Default for AutoencoderTrainConfig {
    /// 2000 steps of 16 crops of 64 x 64, Adam 1e-4 with betas (0.5, 0.9), the learned-scale L1, KL weight 1e-6,
    /// no discriminator, one photo held out.
    fn default() -> Self {
        AutoencoderTrainConfig {
            steps: 2000,
            batch_size: 16,
            learning_rate: 1e-4,
            optimizer: OptimizerConfig::Adam { beta1: 0.5, beta2: 0.9, epsilon: 1e-8 },
            reconstruction: ReconstructionTerm::Laplace,
            kl: KlWeighting { beta: LDM_KL_WEIGHT, ..KlWeighting::default() },
            adversarial: None,
            perceptual: None,
            crops: CropConfig::default(),
            held_out_photos: 1,
            held_out_crops_per_photo: 8,
            eval_every: 250,
            seed: 1,
            init_from: None,
            train_decoder_only: false,
            checkpoint_every: None,
        }
    }
}

impl AutoencoderTrainConfig {
    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid_setting("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid_setting("batch size", "must be at least 1"));
        }
        if self.eval_every == 0 {
            return Err(Error::invalid_setting("eval-every", "must be at least 1"));
        }
        crate::optimizer::validate(&self.optimizer, self.learning_rate)?;
        self.reconstruction.validate()?;
        self.kl.validate()?;
        if let Some(every) = self.checkpoint_every {
            every.validate()?;
        }
        if let Some(perceptual) = &self.perceptual {
            if !(perceptual.weight.is_finite() && perceptual.weight > 0.0) {
                return Err(Error::invalid_setting("perceptual-weight", "must be a positive number"));
            }
            if self.reconstruction != ReconstructionTerm::Laplace {
                return Err(Error::invalid_setting(
                    "lpips",
                    "the perceptual term joins latent diffusion's learned-scale L1: use --likelihood laplace",
                ));
            }
        }
        if let Some(adversarial) = &self.adversarial {
            adversarial.validate()?;
        }
        Ok(())
    }

    /// The model's output channels for images of `channels` channels (K per channel for a categorical decoder).
    pub fn output_channels(&self, channels: usize) -> usize {
        self.reconstruction.output_channels(channels)
    }
}

impl AdversarialConfig {
    /// LDM's defaults from step `start`: weight 0.5, the hinge loss, the 3-layer PatchGAN, learning rate
    /// `learning_rate`.
    pub fn from_step(start: usize, learning_rate: f64) -> Self {
        AdversarialConfig {
            start,
            weight: 0.5,
            loss: DiscriminatorLoss::Hinge,
            discriminator: DiscriminatorConfig::default(),
            learning_rate,
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            let problem = format!("must be a finite number >= 0, got {}", self.weight);
            return Err(Error::invalid_setting("discriminator-weight", problem));
        }
        crate::optimizer::validate(&OptimizerConfig::default(), self.learning_rate)?;
        self.discriminator.validate()
    }
}

/// The model a run trains: `model` as configured, with `out_channels` set for the reconstruction term.
pub fn model_for(model: &AutoencoderKlConfig, training: &AutoencoderTrainConfig) -> AutoencoderKlConfig {
    AutoencoderKlConfig { out_channels: training.output_channels(model.in_channels), ..model.clone() }
}

/// A KL-f4 autoencoder that trains on a CPU: blocks of 64, 128 and 128 channels (so the latent is H/4 x W/4), one
/// ResNet per block, 4 latent channels, 32 groups, attention in the middle block, RGB, tiles of 256.
pub fn small_model() -> AutoencoderKlConfig {
    AutoencoderKlConfig {
        block_out_channels: vec![64, 128, 128],
        down_block_types: vec![crate::model::autoencoder_kl::config::DOWN_BLOCK.to_string(); 3],
        up_block_types: vec![crate::model::autoencoder_kl::config::UP_BLOCK.to_string(); 3],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 32,
        sample_size: crate::model::autoencoder_kl::SampleSize::Square(256),
        ..AutoencoderKlConfig::default()
    }
}
