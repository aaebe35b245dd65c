//! The non-linearity between hidden layers, shared by the dense and convolutional layers, the fused training step
//! and its kernels.

use candle_core::Tensor;

use crate::Result;

/// The non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// x * sigmoid(x).
    Silu,
    /// log(1 + exp(x)).
    Softplus,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Tanh => x.tanh()?,
            Activation::Silu => x.silu()?,
            // softplus(x) = max(x, 0) + log(1 + exp(-|x|))
            Activation::Softplus => (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?,
        })
    }
}
