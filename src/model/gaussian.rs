//! The encoder's output distribution q(z|x) = N(mu_x, diag sigma_x^2), parameterised by mu and log sigma^2.

use candle_core::{Tensor, D};

use crate::Result;

/// ln(2 pi), used by every Gaussian density.
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// A diagonal Gaussian per example: rows of `mu` and `log_var` are examples, columns latent dimensions.
///
/// The encoder predicts log sigma^2, never sigma^2: "Predict log sigma^2 (not sigma^2); exponentiate for positivity."
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// Means, shape `[batch, latent_dim]`.
    pub mu: Tensor,
    /// Log-variances log sigma^2, shape `[batch, latent_dim]`.
    pub log_var: Tensor,
}

impl DiagonalGaussian {
    /// Wraps encoder outputs.
    pub fn new(mu: Tensor, log_var: Tensor) -> Self {
        DiagonalGaussian { mu, log_var }
    }

    /// Standard deviations sigma = exp(0.5 * log sigma^2).
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.log_var * 0.5)?.exp()?)
    }

    /// The reparameterized sample: z = mu_x + sigma_x * eps, with eps ~ N(0, I) drawn OUTSIDE the network by the
    /// caller. Deterministic in (mu, sigma), so gradients flow from z back to the encoder.
    pub fn reparameterize(&self, eps: &Tensor) -> Result<Tensor> {
        // z = mu_x + sigma_x * eps
        Ok((&self.mu + (self.std()? * eps)?)?)
    }

    /// Closed-form KL( N(mu, sigma^2) || N(0, I) ) per example, summed over latent dimensions; shape `[batch]`.
    pub fn kl_to_standard_normal(&self) -> Result<Tensor> {
        Ok(self.kl_per_dimension()?.sum(D::Minus1)?)
    }

    /// The KL of each latent dimension separately; shape `[batch, latent_dim]`.
    pub fn kl_per_dimension(&self) -> Result<Tensor> {
        // KL = 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2)
        let variance = self.log_var.exp()?;
        let terms = ((variance + self.mu.sqr()?)? - &self.log_var)?;
        Ok(terms.affine(0.5, -0.5)?)
    }

    /// log q(z|x) per example, summed over dimensions; `z` has the shape of `mu`. Shape `[batch]`.
    pub fn log_prob(&self, z: &Tensor) -> Result<Tensor> {
        // log N(z; mu, sigma^2) = -0.5 * (log 2pi + log sigma^2 + (z - mu)^2 / sigma^2)
        let squared = (z - &self.mu)?.sqr()?;
        let scaled = (squared * (self.log_var.neg()?.exp()?))?;
        let terms = (scaled + &self.log_var)?.affine(-0.5, -0.5 * LN_2PI)?;
        Ok(terms.sum(D::Minus1)?)
    }
}

/// log N(z; 0, I) per example, summed over dimensions; shape `[batch]`. The prior p(z).
pub fn standard_normal_log_prob(z: &Tensor) -> Result<Tensor> {
    // log N(z; 0, I) = -0.5 * (log 2pi + z^2)
    Ok(z.sqr()?.affine(-0.5, -0.5 * LN_2PI)?.sum(D::Minus1)?)
}
