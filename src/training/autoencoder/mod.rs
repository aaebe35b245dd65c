//! Training latent diffusion's KL autoencoder (diffusers' `AutoencoderKL`) on random crops of photos, with latent
//! diffusion's recipe (CompVis/latent-diffusion `LPIPSWithDiscriminator`, without the LPIPS term, whose VGG weights
//! elbo does not have): the learned-scale L1 reconstruction term or one of elbo's likelihoods, a small KL weight,
//! and from a start step a PatchGAN discriminator with a hinge (or vanilla) loss and LDM's adaptive weight.
//!
//! - [`config`]: the settings.
//! - [`step`]: one step, both optimisers.
//! - [`trainer`]: the loop, held-out evaluation, checkpoints.

pub mod config;
pub mod step;
pub mod trainer;

pub use config::{AdversarialConfig, AutoencoderTrainConfig, PerceptualConfig};
pub use step::{Adversary, StepFigures, Trainee};
pub use trainer::{
    train_autoencoder, AutoencoderObserver, AutoencoderOutcome, AutoencoderProgress, AutoencoderStepRecord, EvalRecord,
    TrainingImages,
};
