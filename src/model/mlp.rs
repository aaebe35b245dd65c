//! A multi-layer perceptron: a stack of linear layers, each followed by the same activation.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::activation::Activation;
use super::dense::Dense;
use crate::Result;

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
