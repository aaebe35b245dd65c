//! The negative ELBO, per example:
//! -ELBO(x; q) = -log p(x | z~) + 0.5 * sum_dims( sigma_x^2 + mu_x^2 - 1 - log sigma_x^2 ),
//! z~ = mu_x + sigma_x * eps, eps ~ N(0, I). One Monte Carlo sample for the reconstruction, exact KL.

use candle_core::{Tensor, D};

use crate::model::{DiagonalGaussian, Vae};
use crate::Result;

/// The two terms of the negative ELBO, kept apart, one value per example (shape `[batch]`).
#[derive(Debug, Clone)]
pub struct ElboTerms {
    /// -log p(x | z~): the reconstruction term, in nats.
    pub reconstruction: Tensor,
    /// KL( q(z|x) || p(z) ) in closed form, in nats.
    pub kl: Tensor,
    /// The same KL per latent dimension, `[batch, latent_dim]` (for free bits and the diagnosis).
    pub kl_per_dimension: Tensor,
    /// The posterior q(z|x) the terms came from.
    pub posterior: DiagonalGaussian,
    /// The reparameterized sample z~ the reconstruction was computed at, `[batch, latent_dim]`.
    pub z: Tensor,
}

impl ElboTerms {
    /// Per-example loss = reconstruction + beta * KL (beta = 1 is the ELBO).
    pub fn per_example_loss(&self, beta: f64) -> Result<Tensor> {
        Ok((&self.reconstruction + (&self.kl * beta)?)?)
    }

    /// The mean over the batch of the per-example loss: the scalar that is minimised.
    pub fn loss(&self, beta: f64) -> Result<Tensor> {
        Ok(self.per_example_loss(beta)?.mean_all()?)
    }
}

/// Steps 1-4 of the training step on a batch `x`, with the noise `eps` given by the caller:
/// encoder forward, z~ = mu + sigma * eps, decoder forward and -log p(x|z~), closed-form KL.
pub fn negative_elbo_terms(vae: &Vae, x: &Tensor, eps: &Tensor) -> Result<ElboTerms> {
    let posterior = vae.encode(x)?; // 1. encoder forward: (mu_x, log sigma^2_x)
    negative_elbo_terms_given(vae, x, posterior, eps)
}

/// Steps 2-4 for a posterior the caller has already computed from `x`.
pub fn negative_elbo_terms_given(
    vae: &Vae,
    x: &Tensor,
    posterior: DiagonalGaussian,
    eps: &Tensor,
) -> Result<ElboTerms> {
    let z = posterior.reparameterize(eps)?; // 2. z~ = mu_x + sigma_x * eps
    let reconstruction = vae.likelihood().negative_log_prob(&vae.decode(&z)?, x)?; // 3. -log p(x|z~)
    let kl_per_dimension = posterior.kl_per_dimension()?; // 4. closed-form KL, summed over dimensions
    let kl = kl_per_dimension.sum(D::Minus1)?;
    Ok(ElboTerms { reconstruction, kl, kl_per_dimension, posterior, z })
}
