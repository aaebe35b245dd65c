//! The decoder network: latent z -> the parameters of p(x|z) (logits, means, or per-level logits), through an MLP
//! and either a linear output layer or, for convolutional models, transposed convolutions.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::DeconvStack;
use super::dense::Dense;
use super::mlp::Mlp;
use super::vae::VaeConfig;
use crate::Result;

/// The decoder network. Weights: `decoder.hidden.{i}.*`, then `decoder.output.*` (MLP models), or
/// `decoder.grid.*` (a dense layer to the first feature map), `decoder.deconv.{i}.*` and `decoder.output.*` (the
/// last transposed convolution) for convolutional models.
#[derive(Debug, Clone)]
pub struct Decoder {
    body: Mlp,
    head: Head,
}

/// What follows the MLP.
#[derive(Debug, Clone)]
enum Head {
    /// A linear layer to the likelihood's parameters.
    Dense(Dense),
    /// A dense layer with the activation to the first feature map, then transposed convolutions.
    Deconvolution(Dense, DeconvStack),
}

impl Decoder {
    /// Builds the decoder of the architecture `config`, weights under `vb`; it gives `outputs_per_value`
    /// parameters per data value.
    pub fn new(config: &VaeConfig, outputs_per_value: usize, vb: VarBuilder) -> Result<Self> {
        let body = Mlp::new(config.latent_dim, &config.decoder_hidden, config.activation, vb.clone())?;
        let features = body.output_dim(config.latent_dim);
        let head = match &config.conv {
            Some(conv) => {
                let stack =
                    DeconvStack::new(conv, config.input_shape, outputs_per_value, config.activation, vb.clone())?;
                Head::Deconvolution(
                    Dense::new(features, stack.input_dim(), Some(config.activation), vb.pp("grid"))?,
                    stack,
                )
            }
            None => {
                let outputs = config.input_shape.dim() * outputs_per_value;
                Head::Dense(Dense::new(features, outputs, None, vb.pp("output"))?)
            }
        };
        Ok(Decoder { body, head })
    }

    /// The decoder's parts in forward order: `(hidden dense layers, dense layers after them, transposed
    /// convolutions)`: the output layer of an MLP decoder, or a convolutional one's dense layer to the feature map
    /// and its transposed convolutions.
    pub fn parts(&self) -> (&[Dense], &Dense, Option<&DeconvStack>) {
        match &self.head {
            Head::Dense(output) => (self.body.layers(), output, None),
            Head::Deconvolution(grid, stack) => (self.body.layers(), grid, Some(stack)),
        }
    }

    /// Decoder forward on z: the likelihood's raw parameters, shape `[batch, data_dim * outputs_per_value]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.body.forward(z)?;
        match &self.head {
            Head::Dense(output) => output.forward(&h),
            Head::Deconvolution(grid, stack) => stack.forward(&grid.forward(&h)?),
        }
    }
}
