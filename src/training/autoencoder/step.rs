//! One training step of a KL autoencoder, latent diffusion's recipe:
//! 1. encode x -> (mu, log sigma^2); z = mu + sigma * eps, eps ~ N(0, I) drawn outside the network;
//! 2. decode z, -log p(x|z) (the learned-scale L1, with LPIPS inside it when the run has the network, or one of
//!    elbo's likelihoods), the closed-form KL;
//! 3. from the adversarial start step: the generator term -mean D(x_hat), weighted by the adaptive weight
//!    ||grad_last rec|| / (||grad_last g|| + 1e-4) (both gradients at the decoder's last layer);
//! 4. loss = rec + weighted KL + adaptive weight * g; backprop, the autoencoder's Adam step;
//! 5. the discriminator's step on x and the (detached) reconstruction, with its own Adam.
//!
//! Steps 1 and 2, and step 4's backward pass, run on shards of the batch, one per thread, each shard's graph on its
//! own thread, when the loss is a mean over the images (no free bits or capacity): the shards' gradients, each weighted
//! by its share, sum to the batch's, and candle's graph work, single-threaded within one graph, runs on every core
//! instead of leaving all but one idle between elbo's multi-threaded kernels. Step 3 runs between the forward and
//! the backward passes on the whole batch's detached reconstruction and features, so the discriminator's batch
//! norms and the adaptive weight see the same batch as without shards.
//!
//! The generator term's gradient is worked out once: D runs on a detached copy of the reconstruction, its gradient
//! with respect to that image is taken, and the autoencoder's loss gets sum(x_hat * that gradient), whose gradient
//! is the same. The two last-layer gradients of the adaptive weight come from the decoder's last layer applied
//! again to its detached input, so neither needs a pass through the whole model.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::kernels::kernel_threads;
use crate::model::discriminator::PatchDiscriminator;
use crate::model::AutoencoderKl;
use crate::objective::autoencoder::Reconstruction;
use crate::objective::ldm::{
    adaptive_weight, adopt_weight, discriminator_loss, generator_loss, gradient_norm, mean_absolute_error,
};
use crate::objective::KlWeighting;
use crate::optimizer::Optimizer;
use crate::runtime::host_threads_may_share;
use crate::training::autoencoder::config::AdversarialConfig;
use crate::training::step::on_each_shard;
use crate::{Error, Result};

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
    /// The batch's mean LPIPS distance (before its weight), when the reconstruction has the perceptual term.
    pub perceptual: Option<f64>,
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

/// What the forward pass gives a step.
struct Terms {
    /// rec + weighted KL.
    loss: Tensor,
    /// Their figures.
    figures: StepFigures,
    /// The reconstruction as an image in about [-1, 1].
    image: Tensor,
    /// The decoder's features before its last layer.
    features: Tensor,
}

impl StepFigures {
    /// The batch means' terms scaled by a shard's `share` of the batch (the learned scale kept as it is).
    fn scaled(self, share: f64) -> Self {
        StepFigures {
            reconstruction: share * self.reconstruction,
            l1: share * self.l1,
            kl: share * self.kl,
            weighted_kl: share * self.weighted_kl,
            loss: share * self.loss,
            perceptual: self.perceptual.map(|distance| share * distance),
            ..self
        }
    }

    /// The sum of two shards' scaled figures.
    fn plus(self, other: &StepFigures) -> Self {
        StepFigures {
            reconstruction: self.reconstruction + other.reconstruction,
            l1: self.l1 + other.l1,
            kl: self.kl + other.kl,
            weighted_kl: self.weighted_kl + other.weighted_kl,
            loss: self.loss + other.loss,
            perceptual: self.perceptual.zip(other.perceptual).map(|(a, b)| a + b),
            ..self
        }
    }
}

/// Scalar of a one-value tensor.
fn scalar(tensor: &Tensor) -> Result<f64> {
    Ok(f64::from(tensor.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?))
}

impl Trainee {
    /// One step on `pixels` `[batch, C, H, W]` in [0, 1] with noise `eps` shaped like the latent; `step` counts
    /// from 0 (the KL schedule's and the adversarial start's position).
    ///
    /// Each shard of the batch ([`Self::shard_count`]) runs its forward pass and its loss's backward pass on its own
    /// thread, the loss its share of the batch's mean terms; the optimiser adds the shards' gradients. Once the
    /// discriminator is on, the generator term runs between the two passes, on the whole batch.
    pub fn step(&mut self, pixels: &Tensor, eps: &Tensor, step: usize) -> Result<StepFigures> {
        let rows = pixels.dim(0)?;
        let shards = self.shard_count(rows);
        let ranges: Vec<(usize, usize)> = (0..shards).map(|i| (i * rows / shards, (i + 1) * rows / shards)).collect();
        if self.adversary.as_ref().is_some_and(|adversary| adversary.is_on(step)) {
            return self.adversarial_step(pixels, eps, step, &ranges);
        }
        let this = &*self;
        // both passes back to back on a shard's thread: a barrier between them would only add waiting
        let parts = on_each_shard(&ranges, |range| {
            let terms = this.shard_terms(pixels, eps, step, range)?;
            Ok((terms.figures, terms.loss.backward()?))
        })?;
        let figures = parts.iter().skip(1).fold(parts[0].0, |sum, (part, _)| sum.plus(part));
        let grads: Vec<_> = parts.into_iter().map(|(_, grads)| grads).collect();
        self.optimizer.step_sharded(&grads)?;
        Ok(figures)
    }

    /// [`Self::step`] with the discriminator on: the shards' forward passes on their threads; the generator term
    /// and its adaptive weight on the whole batch's detached reconstruction and features, so the discriminator's
    /// batch norms and the adaptive weight see the batch as one; each shard's loss plus its part of the surrogate
    /// sum backpropagated on its thread; then the discriminator's step on the whole batch.
    fn adversarial_step(
        &mut self,
        pixels: &Tensor,
        eps: &Tensor,
        step: usize,
        ranges: &[(usize, usize)],
    ) -> Result<StepFigures> {
        let this = &*self;
        let parts = on_each_shard(ranges, |range| this.shard_terms(pixels, eps, step, range))?;
        let mut figures = parts.iter().skip(1).fold(parts[0].figures, |sum, part| sum.plus(&part.figures));
        let image = whole_batch(parts.iter().map(|part| part.image.detach()))?;
        let features = whole_batch(parts.iter().map(|part| part.features.detach()))?;
        let adversary = self
            .adversary
            .as_ref()
            .ok_or_else(|| Error::invalid_setting("discriminator", "the adversarial step needs one"))?;
        let (image_gradient, generator, weight) = self.generator_term(adversary, &image, &features, pixels)?;
        let losses = parts
            .iter()
            .zip(ranges)
            .map(|(part, &(start, end))| {
                // the surrogate sum(x_hat * dg/dx_hat), whose gradient is the generator loss's, shard by shard
                let surrogate = (&part.image * image_gradient.narrow(0, start, end - start)?)?.sum_all()?;
                Ok((&part.loss + surrogate.affine(weight, 0.0)?)?)
            })
            .collect::<Result<Vec<Tensor>>>()?;
        drop(parts);
        let grads = on_each_shard(&losses, |loss| Ok(loss.backward()?))?;
        self.optimizer.step_sharded(&grads)?;
        figures.generator_loss = Some(generator);
        figures.adaptive_weight = Some(weight);
        // the surrogate's value is not the generator loss's: log rec + weighted KL + adaptive weight * g
        figures.loss += weight * generator;
        if let Some(adversary) = self.adversary.as_mut() {
            let x = pixels.affine(2.0, -1.0)?;
            figures.discriminator_loss = Some(discriminator_step(adversary, &x, &image)?);
        }
        Ok(figures)
    }

    /// [`Self::terms`] on the images `start..end` of the batch, the loss and figures scaled by their share of it.
    fn shard_terms(&self, pixels: &Tensor, eps: &Tensor, step: usize, &(start, end): &(usize, usize)) -> Result<Terms> {
        let share = (end - start) as f64 / pixels.dim(0)? as f64;
        let (pixels, eps) = (pixels.narrow(0, start, end - start)?, eps.narrow(0, start, end - start)?);
        let Terms { loss, figures, image, features } = self.terms(&pixels, &eps, step)?;
        Ok(Terms { loss: loss.affine(share, 0.0)?, figures: figures.scaled(share), image, features })
    }

    /// Shards a batch of `rows` images is split into, each run forward and backward on its own thread: one per
    /// kernel thread (at most one per image) where the loss is a mean over the images, so that the shards'
    /// gradients, each weighted by its share, sum to the batch's; one where the KL weight looks at the batch's mean
    /// (free bits, capacity), or where the model is not on the CPU ([`host_threads_may_share`]).
    pub fn shard_count(&self, rows: usize) -> usize {
        match self.kl.is_mean_of_examples() && host_threads_may_share(self.last_layer.device()) {
            true => kernel_threads().min(rows).max(1),
            false => 1,
        }
    }

    /// The forward pass on `pixels` (a batch or a shard of one): rec + weighted KL as the loss, its figures (batch
    /// means), the reconstructed image and the decoder's features before its last layer.
    fn terms(&self, pixels: &Tensor, eps: &Tensor, step: usize) -> Result<Terms> {
        let x = pixels.affine(2.0, -1.0)?;
        let posterior = self.frozen_encoder.as_ref().unwrap_or(&self.model).encode(&x)?;
        // z = mu + sigma * eps
        let z = posterior.reparameterize(eps)?;
        let features = self.model.decode_features(&z)?;
        let output = self.model.output_layer(&features)?;
        let (reconstruction, distance) = self.reconstruction.loss_and_distance(&output, pixels)?;
        let image = self.reconstruction.image(&output)?;
        let kl_per_value = posterior.kl_per_dimension()?.flatten_from(1)?;
        let weighted_kl = self.kl.weighted_kl(&kl_per_value, step)?;
        let figures = StepFigures {
            reconstruction: scalar(&reconstruction)?,
            l1: scalar(&mean_absolute_error(&x, &image)?)?,
            kl: scalar(&kl_per_value.sum(1)?.mean_all()?)?,
            weighted_kl: scalar(&weighted_kl)?,
            log_scale: self.reconstruction.log_scale()?,
            perceptual: distance.as_ref().map(scalar).transpose()?,
            ..StepFigures::default()
        };
        let figures = StepFigures { loss: figures.reconstruction + figures.weighted_kl, ..figures };
        Ok(Terms { loss: (&reconstruction + &weighted_kl)?, figures, image, features })
    }

    /// The generator term of the loss on the whole batch's detached reconstruction `image` and decoder `features`:
    /// the gradient of -mean D(x_hat) with respect to x_hat (D's weights left alone), the generator loss's value,
    /// and its adaptive weight.
    fn generator_term(
        &self,
        adversary: &Adversary,
        image: &Tensor,
        features: &Tensor,
        pixels: &Tensor,
    ) -> Result<(Tensor, f64, f64)> {
        let fake = Var::from_tensor(&image.detach())?;
        // through a copy of D with its weights detached, so its backward pass works out no weight gradient
        let generator = generator_loss(&adversary.discriminator.detached()?.forward_t(fake.as_tensor(), true)?)?;
        let image_gradient = generator.backward()?.remove(fake.as_tensor()).map_or_else(|| image.zeros_like(), Ok)?;
        // the last layer again, on its detached input: gradients at conv_out only (with LPIPS in the reconstruction
        // term, its network runs again on the whole batch here, as the gradient of LDM's nll_loss goes through it)
        let last_output = self.model.output_layer(&features.detach())?;
        let reconstruction_norm = gradient_norm(&self.reconstruction.loss(&last_output, pixels)?, &self.last_layer)?;
        let last_image = self.reconstruction.image(&last_output)?;
        let generator_norm = gradient_norm(&(last_image * &image_gradient)?.sum_all()?, &self.last_layer)?;
        // d_weight = ||grad rec|| / (||grad g|| + 1e-4), clamped to [0, 1e4], times the discriminator weight
        let weight = adaptive_weight(reconstruction_norm, generator_norm, adversary.config.weight);
        Ok((image_gradient, scalar(&generator)?, weight))
    }
}

/// The shards' `parts` as one batch (the one part itself when there is one).
fn whole_batch(parts: impl Iterator<Item = Tensor>) -> Result<Tensor> {
    let parts: Vec<Tensor> = parts.collect();
    Ok(match parts.as_slice() {
        [one] => one.clone(),
        _ => Tensor::cat(&parts, 0)?,
    })
}

/// The discriminator's step on real `x` and the detached reconstruction `fake` (both in [-1, 1]); its loss.
fn discriminator_step(adversary: &mut Adversary, x: &Tensor, fake: &Tensor) -> Result<f64> {
    let real_logits = adversary.discriminator.forward_t(x, true)?;
    let fake_logits = adversary.discriminator.forward_t(fake, true)?;
    let loss = discriminator_loss(adversary.config.loss, &real_logits, &fake_logits)?;
    adversary.optimizer.step(&loss.backward()?)?;
    scalar(&loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::with_kernel_threads;
    use crate::model::autoencoder_kl::AutoencoderKlConfig;
    use crate::model::discriminator::DiscriminatorConfig;
    use crate::objective::autoencoder::ReconstructionTerm;
    use crate::objective::ldm::DiscriminatorLoss;
    use crate::optimizer::OptimizerConfig;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use rand::{Rng, SeedableRng};

    /// A fresh small KL-f4 autoencoder with plain SGD (so a step moves each weight by its gradient) and `kl`;
    /// with `adversarial`, a small PatchGAN (SGD too) on from the first step.
    fn trainee(kl: KlWeighting, adversarial: bool) -> Trainee {
        let small = crate::training::autoencoder::config::small_model();
        let config = AutoencoderKlConfig { block_out_channels: vec![8, 8, 16], norm_num_groups: 4, ..small };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = AutoencoderKl::new(config, vb.clone()).unwrap();
        let reconstruction = Reconstruction::new(&ReconstructionTerm::Laplace, 3 * 16 * 16, vb.pp("loss")).unwrap();
        crate::model::init::initialize(&varmap, 3).unwrap();
        let last_layer = varmap.data().lock().unwrap()[LAST_LAYER].clone();
        let sgd = |varmap: &VarMap| Optimizer::new(OptimizerConfig::Sgd { momentum: 0.0 }, 1.0, varmap).unwrap();
        let optimizer = sgd(&varmap);
        let adversary = adversarial.then(|| {
            let discriminator = DiscriminatorConfig { in_channels: 3, base_channels: 4, layers: 2 };
            let (network, varmap) = PatchDiscriminator::fresh(&discriminator, 5, DType::F32, &Device::Cpu).unwrap();
            let config = AdversarialConfig {
                start: 0,
                weight: 0.5,
                loss: DiscriminatorLoss::Vanilla,
                discriminator,
                learning_rate: 1.0,
            };
            Adversary { discriminator: network, optimizer: sgd(&varmap), varmap, config }
        });
        Trainee { model, reconstruction, varmap, optimizer, last_layer, adversary, kl, frozen_encoder: None }
    }

    fn random(rng: &mut rand_chacha::ChaCha8Rng, shape: (usize, usize, usize, usize), low: f32) -> Tensor {
        let values: Vec<f32> = (0..shape.0 * shape.1 * shape.2 * shape.3).map(|_| rng.random_range(low..1.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Every weight of `varmap`, by name.
    fn weights(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
        let data = varmap.data().lock().unwrap();
        let mut all: Vec<_> =
            data.iter().map(|(name, var)| (name.clone(), var.flatten_all().unwrap().to_vec1().unwrap())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every weight of the autoencoder, then of the discriminator where there is one.
    fn all_weights(trainee: &Trainee) -> Vec<(String, Vec<f32>)> {
        let mut all = weights(&trainee.varmap);
        all.extend(trainee.adversary.iter().flat_map(|adversary| weights(&adversary.varmap)));
        all
    }

    /// A batch of 5 crops split over 2 and 3 threads takes the same step as on one, with and without the
    /// discriminator: the figures, and every weight of both networks moved by the same gradient (SGD with rate 1),
    /// to f32 rounding; free bits keep the batch whole.
    #[test]
    fn a_batch_in_shards_takes_the_same_step_as_the_whole_batch() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (pixels, eps) = (random(&mut rng, (5, 3, 16, 16), 0.0), random(&mut rng, (5, 4, 4, 4), -1.0));
        let beta = KlWeighting { beta: 0.5, ..KlWeighting::default() };
        let step_on = |threads, kl: KlWeighting, adversarial: bool| {
            let mut trainee = trainee(kl, adversarial);
            let before = all_weights(&trainee);
            let (shards, figures) =
                with_kernel_threads(threads, || (trainee.shard_count(5), trainee.step(&pixels, &eps, 0).unwrap()));
            (shards, figures, before, all_weights(&trainee))
        };
        for adversarial in [false, true] {
            let (_, whole, before, after) = step_on(1, beta, adversarial);
            assert_eq!(whole.adaptive_weight.is_some(), adversarial);
            for threads in [2, 3] {
                let (shards, figures, _, sharded) = step_on(threads, beta, adversarial);
                assert_eq!(shards, threads);
                let optional = |figure: Option<f64>| figure.unwrap_or(0.0);
                let pairs = [
                    (whole.loss, figures.loss),
                    (whole.kl, figures.kl),
                    (whole.l1, figures.l1),
                    (optional(whole.generator_loss), optional(figures.generator_loss)),
                    (optional(whole.adaptive_weight), optional(figures.adaptive_weight)),
                    (optional(whole.discriminator_loss), optional(figures.discriminator_loss)),
                ];
                for (a, b) in pairs {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{threads} shards: {a} vs {b}");
                }
                for (((name, start), (_, one)), (_, split)) in before.iter().zip(&after).zip(&sharded) {
                    let scale = start.iter().zip(one).map(|(s, o)| (s - o).abs()).fold(0.0f32, f32::max);
                    let differs = one.iter().zip(split).map(|(o, s)| (o - s).abs()).fold(0.0f32, f32::max);
                    assert!(differs <= 1e-4 * scale + 1e-6, "{name}: {differs} against a step of {scale}");
                    assert!(scale > 0.0 || name.contains("running"), "{name} moved");
                }
            }
        }
        let free_bits = KlWeighting { free_bits: Some(0.1), ..KlWeighting::default() };
        assert_eq!(step_on(2, free_bits, false).0, 1, "free bits look at the batch's mean KL");
    }
}
