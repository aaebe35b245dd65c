//! The Gaussian encoder q(z|x) = N(mu_x, diag sigma_x^2): an MLP with two linear heads, `mu` and `log_var`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::dense::Dense;
use super::gaussian::DiagonalGaussian;
use super::mlp::{Activation, Mlp};
use crate::Result;

/// The encoder network. Weights: `encoder.hidden.{i}.*`, `encoder.mu.*`, `encoder.log_var.*`.
#[derive(Debug, Clone)]
pub struct Encoder {
    body: Mlp,
    mu: Dense,
    log_var: Dense,
}

impl Encoder {
    /// Builds the encoder for inputs of `input_dim` values.
    pub fn new(
        input_dim: usize,
        hidden: &[usize],
        activation: Activation,
        latent_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let body = Mlp::new(input_dim, hidden, activation, vb.clone())?;
        let features = body.output_dim(input_dim);
        let mu = Dense::new(features, latent_dim, None, vb.pp("mu"))?;
        let log_var = Dense::new(features, latent_dim, None, vb.pp("log_var"))?;
        Ok(Encoder { body, mu, log_var })
    }

    /// Encoder forward on x: (mu_x, log sigma^2_x).
    pub fn forward(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let h = self.body.forward(x)?;
        Ok(DiagonalGaussian::new(self.mu.forward(&h)?, self.log_var.forward(&h)?))
    }
}
