//! One training step of a KL autoencoder, latent diffusion's recipe:
//! 1. encode x -> (mu, log sigma^2); z = mu + sigma * eps, eps ~ N(0, I) drawn outside the network;
//! 2. decode z, -log p(x|z) (the learned-scale L1, or one of elbo's likelihoods), the closed-form KL;
//! 3. from the adversarial start step: the generator term -mean D(x_hat), weighted by the adaptive weight
//!    ||grad_last rec|| / (||grad_last g|| + 1e-4) (both gradients at the decoder's last layer);
//! 4. loss = rec + weighted KL + adaptive weight * g; backprop, the autoencoder's Adam step;
//! 5. the discriminator's step on x and the (detached) reconstruction, with its own Adam.
//!
//! The generator term's gradient is worked out once: D runs on a detached copy of the reconstruction, its gradient
//! with respect to that image is taken, and the autoencoder's loss gets sum(x_hat * that gradient), whose gradient
//! is the same. The two last-layer gradients of the adaptive weight come from the decoder's last layer applied
//! again to its detached input, so neither needs a pass through the whole model.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::model::discriminator::PatchDiscriminator;
use crate::model::AutoencoderKl;
use crate::objective::autoencoder::Reconstruction;
use crate::objective::ldm::{
    adaptive_weight, adopt_weight, discriminator_loss, generator_loss, gradient_norm, mean_absolute_error,
};
use crate::objective::KlWeighting;
use crate::optimizer::Optimizer;
use crate::training::autoencoder::config::AdversarialConfig;
use crate::Result;

/// The name of the decoder's last layer's weight, where the adaptive weight compares gradients.
pub const LAST_LAYER: &str = "decoder.conv_out.weight";

/// Figures of one step (batch means, nats for the terms).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepFigures {
    /// -log p(x|z~), the reconstruction term as minimised.
    pub reconstruction: f64,
    /// Mean |x - x_hat| per value, on the model's [-1, 1] scale (LDM's `rec_loss`).
    pub l1: f64,
    /// The KL, summed over latent values.
    pub kl: f64,
    /// The KL as it entered the loss (its weight applied).
    pub weighted_kl: f64,
    /// The minimised loss: reconstruction + weighted KL (+ adaptive weight * generator loss).
    pub loss: f64,
    /// The generator loss -mean D(x_hat), once the discriminator is on.
    pub generator_loss: Option<f64>,
    /// The discriminator's loss, once it is on.
    pub discriminator_loss: Option<f64>,
    /// The adaptive weight of the generator loss (the discriminator weight included).
    pub adaptive_weight: Option<f64>,
    /// The reconstruction term's learned log-scale, when it has one.
    pub log_scale: Option<f64>,
}

/// The discriminator, its variables and optimiser, and its settings.
pub struct Adversary {
    /// The PatchGAN.
    pub discriminator: PatchDiscriminator,
    /// Its variables (running statistics included).
    pub varmap: VarMap,
    /// Its Adam.
    pub optimizer: Optimizer,
    /// Start step, weight, loss.
    pub config: AdversarialConfig,
}

impl Adversary {
    /// True from the start step on: LDM's adopt_weight(step, start) is 1.
    fn is_on(&self, step: usize) -> bool {
        adopt_weight(step, self.config.start) > 0.0
    }
}

/// Everything one step updates or reads.
pub struct Trainee {
    /// The autoencoder.
    pub model: AutoencoderKl,
    /// Its reconstruction term (with the term's learned scale).
    pub reconstruction: Reconstruction,
    /// The autoencoder's and the term's variables.
    pub varmap: VarMap,
    /// Their Adam (over the decoder's only, with `decoder_only`).
    pub optimizer: Optimizer,
    /// The decoder's last layer's weight.
    pub last_layer: Var,
    /// The discriminator, when the run has one.
    pub adversary: Option<Adversary>,
    /// The KL's weight over steps.
    pub kl: KlWeighting,
    /// With the encoder frozen: a copy of the model over constant (untracked) weights, whose encoder gives the
    /// posterior without building a graph through it.
    pub frozen_encoder: Option<AutoencoderKl>,
}

/// Scalar of a one-value tensor.
fn scalar(tensor: &Tensor) -> Result<f64> {
    Ok(f64::from(tensor.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?))
}

impl Trainee {
    /// One step on `pixels` `[batch, C, H, W]` in [0, 1] with noise `eps` shaped like the latent; `step` counts
    /// from 0 (the KL schedule's and the adversarial start's position).
    pub fn step(&mut self, pixels: &Tensor, eps: &Tensor, step: usize) -> Result<StepFigures> {
        let x = pixels.affine(2.0, -1.0)?;
        let posterior = self.frozen_encoder.as_ref().unwrap_or(&self.model).encode(&x)?;
        // z = mu + sigma * eps
        let z = posterior.reparameterize(eps)?;
        let features = self.model.decode_features(&z)?;
        let output = self.model.output_layer(&features)?;
        let reconstruction = self.reconstruction.loss(&output, pixels)?;
        let image = self.reconstruction.image(&output)?;
        let kl_per_value = posterior.kl_per_dimension()?.flatten_from(1)?;
        let weighted_kl = self.kl.weighted_kl(&kl_per_value, step)?;
        let mut loss = (&reconstruction + &weighted_kl)?;
        let mut figures = StepFigures {
            reconstruction: scalar(&reconstruction)?,
            l1: scalar(&mean_absolute_error(&x, &image)?)?,
            kl: scalar(&kl_per_value.sum(1)?.mean_all()?)?,
            weighted_kl: scalar(&weighted_kl)?,
            log_scale: self.reconstruction.log_scale()?,
            ..StepFigures::default()
        };
        if let Some(adversary) = self.adversary.as_ref().filter(|adversary| adversary.is_on(step)) {
            let (surrogate, generator, weight) = self.generator_term(adversary, &image, &features, pixels)?;
            loss = (loss + surrogate.affine(weight, 0.0)?)?;
            figures.generator_loss = Some(generator);
            figures.adaptive_weight = Some(weight);
        }
        // the surrogate's value is not the generator loss's: log rec + weighted KL + adaptive weight * g
        figures.loss = figures.reconstruction
            + figures.weighted_kl
            + figures.adaptive_weight.zip(figures.generator_loss).map_or(0.0, |(weight, g)| weight * g);
        self.optimizer.step(&loss.backward()?)?;
        if let Some(adversary) = self.adversary.as_mut().filter(|adversary| adversary.is_on(step)) {
            figures.discriminator_loss = Some(discriminator_step(adversary, &x, &image.detach())?);
        }
        Ok(figures)
    }

    /// The generator term of the loss: a surrogate whose gradient is that of -mean D(x_hat) (D's weights left
    /// alone), the generator loss's value, and its adaptive weight.
    fn generator_term(
        &self,
        adversary: &Adversary,
        image: &Tensor,
        features: &Tensor,
        pixels: &Tensor,
    ) -> Result<(Tensor, f64, f64)> {
        let fake = Var::from_tensor(&image.detach())?;
        let generator = generator_loss(&adversary.discriminator.forward_t(fake.as_tensor(), true)?)?;
        let image_gradient = generator.backward()?.remove(fake.as_tensor()).map_or_else(|| image.zeros_like(), Ok)?;
        // the last layer again, on its detached input: gradients at conv_out only
        let last_output = self.model.output_layer(&features.detach())?;
        let reconstruction_norm = gradient_norm(&self.reconstruction.loss(&last_output, pixels)?, &self.last_layer)?;
        let last_image = self.reconstruction.image(&last_output)?;
        let generator_norm = gradient_norm(&(last_image * &image_gradient)?.sum_all()?, &self.last_layer)?;
        // d_weight = ||grad rec|| / (||grad g|| + 1e-4), clamped to [0, 1e4], times the discriminator weight
        let weight = adaptive_weight(reconstruction_norm, generator_norm, adversary.config.weight);
        let surrogate = (image * image_gradient)?.sum_all()?;
        Ok((surrogate, scalar(&generator)?, weight))
    }
}

/// The discriminator's step on real `x` and the detached reconstruction `fake` (both in [-1, 1]); its loss.
fn discriminator_step(adversary: &mut Adversary, x: &Tensor, fake: &Tensor) -> Result<f64> {
    let real_logits = adversary.discriminator.forward_t(x, true)?;
    let fake_logits = adversary.discriminator.forward_t(fake, true)?;
    let loss = discriminator_loss(adversary.config.loss, &real_logits, &fake_logits)?;
    adversary.optimizer.step(&loss.backward()?)?;
    scalar(&loss)
}
