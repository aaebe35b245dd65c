//! The decoder network: latent z -> the parameters of p(x|z) (logits, means, or per-level logits), through an MLP
//! and either a linear output layer or, for convolutional models, transposed convolutions.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::activation::Activation;
use super::conv::ConvConfig;
use super::conv::DeconvStack;
use super::dense::Dense;
use super::mlp::Mlp;
use crate::data::ExampleShape;
use crate::Result;

/// The decoder's architecture.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecoderConfig {
    /// Latent dimensions: the size of z.
    pub latent_dim: usize,
    /// Widths of the hidden dense layers.
    pub hidden: Vec<usize>,
    /// The transposed convolutions after the dense layers (mirroring these convolutions), if any.
    pub conv: Option<ConvConfig>,
    /// The shape of one example it decodes to.
    pub output_shape: ExampleShape,
    /// Parameters of the likelihood per data value (1 for Bernoulli logits, K for K categories, ...).
    pub outputs_per_value: usize,
    /// The hidden layers' activation.
    pub activation: Activation,
}

impl Default for DecoderConfig {
    /// The mirror of [`crate::model::encoder::EncoderConfig::default`], one output per value (Bernoulli logits).
    fn default() -> Self {
        DecoderConfig {
            latent_dim: 20,
            hidden: vec![400],
            conv: None,
            output_shape: ExampleShape::flat(784),
            outputs_per_value: 1,
            activation: Activation::Relu,
        }
    }
}

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
    /// Builds the decoder of the architecture `config`, weights under `vb`.
    pub fn new(config: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (shape, outputs_per_value) = (config.output_shape, config.outputs_per_value);
        let body = Mlp::new(config.latent_dim, &config.hidden, config.activation, vb.clone())?;
        let features = body.output_dim(config.latent_dim);
        let head = match &config.conv {
            Some(conv) => {
                let stack = DeconvStack::new(conv, shape, outputs_per_value, config.activation, vb.clone())?;
                Head::Deconvolution(
                    Dense::new(features, stack.input_dim(), Some(config.activation), vb.pp("grid"))?,
                    stack,
                )
            }
            None => {
                let outputs = shape.dim() * outputs_per_value;
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
