//! A multi-layer perceptron: a stack of linear layers, each followed by the same activation.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::dense::Dense;
use crate::Result;

/// The non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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

/// Hidden layers `hidden.0`, `hidden.1`, ... of the given widths, each followed by the activation.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// Builds layers of widths `widths` on inputs of `input_dim` values, weights under `vb` (`hidden.{i}.*`).
    pub fn new(input_dim: usize, widths: &[usize], activation: Activation, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::with_capacity(widths.len());
        let mut previous = input_dim;
        for (index, &width) in widths.iter().enumerate() {
            layers.push(Dense::new(previous, width, Some(activation), vb.pp(format!("hidden.{index}")))?);
            previous = width;
        }
        Ok(Mlp { layers })
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// The width of the last layer's output (the input width when there are no layers).
    pub fn output_dim(&self, input_dim: usize) -> usize {
        self.layers.last().map_or(input_dim, Dense::output_dim)
    }

    /// Runs the input through every layer and activation.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layers.iter().try_fold(x.clone(), |h, layer| layer.forward(&h))
    }
}
