//! The decoder network: latent z -> the parameters of p(x|z) (logits, means, or per-level logits).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::dense::Dense;
use super::mlp::{Activation, Mlp};
use crate::Result;

/// The decoder network. Weights: `decoder.hidden.{i}.*`, `decoder.output.*`.
#[derive(Debug, Clone)]
pub struct Decoder {
    body: Mlp,
    output: Dense,
}

impl Decoder {
    /// Builds a decoder from `latent_dim` to `output_dim` raw outputs.
    pub fn new(
        latent_dim: usize,
        hidden: &[usize],
        activation: Activation,
        output_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let body = Mlp::new(latent_dim, hidden, activation, vb.clone())?;
        let output = Dense::new(body.output_dim(latent_dim), output_dim, None, vb.pp("output"))?;
        Ok(Decoder { body, output })
    }

    /// Decoder forward on z: the likelihood's raw parameters, shape `[batch, output_dim]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.output.forward(&self.body.forward(z)?)
    }
}
