//! The Gaussian encoder q(z|x) = N(mu_x, diag sigma_x^2): optional convolutions, an MLP, and two linear heads,
//! `mu` and `log_var`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::activation::Activation;
use super::conv::ConvConfig;
use super::conv::ConvStack;
use super::dense::Dense;
use super::gaussian::DiagonalGaussian;
use super::mlp::Mlp;
use crate::data::ExampleShape;
use crate::Result;

/// The encoder's architecture.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    /// The shape of one input example.
    pub input_shape: ExampleShape,
    /// The strided convolutions before the dense layers, if any.
    pub conv: Option<ConvConfig>,
    /// Widths of the hidden dense layers.
    pub hidden: Vec<usize>,
    /// Latent dimensions: the size of mu and of log sigma^2.
    pub latent_dim: usize,
    /// The hidden layers' activation.
    pub activation: Activation,
}

impl Default for EncoderConfig {
    /// The classic MLP encoder: 784 inputs, one 400-unit ReLU layer, 20 latent dimensions.
    fn default() -> Self {
        EncoderConfig {
            input_shape: ExampleShape::flat(784),
            conv: None,
            hidden: vec![400],
            latent_dim: 20,
            activation: Activation::Relu,
        }
    }
}

/// The encoder network. Weights: `encoder.conv.{i}.*` (convolutional models), `encoder.hidden.{i}.*`,
/// `encoder.mu.*`, `encoder.log_var.*`.
#[derive(Debug, Clone)]
pub struct Encoder {
    convolutions: Option<ConvStack>,
    body: Mlp,
    mu: Dense,
    log_var: Dense,
}

impl Encoder {
    /// Builds the encoder of the architecture `config`, weights under `vb`.
    pub fn new(config: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (convolutions, input_dim) = match &config.conv {
            Some(conv) => {
                let (channels, height, width) = conv.feature_map(&config.input_shape)?;
                let stack = ConvStack::new(conv, config.input_shape, config.activation, vb.clone())?;
                (Some(stack), channels * height * width)
            }
            None => (None, config.input_shape.dim()),
        };
        let body = Mlp::new(input_dim, &config.hidden, config.activation, vb.clone())?;
        let features = body.output_dim(input_dim);
        let mu = Dense::new(features, config.latent_dim, None, vb.pp("mu"))?;
        let log_var = Dense::new(features, config.latent_dim, None, vb.pp("log_var"))?;
        Ok(Encoder { convolutions, body, mu, log_var })
    }

    /// The encoder's parts in forward order: `(convolutions, hidden dense layers, mu head, log_var head)`.
    pub fn parts(&self) -> (Option<&ConvStack>, &[Dense], &Dense, &Dense) {
        (self.convolutions.as_ref(), self.body.layers(), &self.mu, &self.log_var)
    }

    /// Encoder forward on x (`[batch, data_dim]`): (mu_x, log sigma^2_x).
    pub fn forward(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let features = match &self.convolutions {
            Some(convolutions) => convolutions.forward(x)?,
            None => x.clone(),
        };
        let h = self.body.forward(&features)?;
        Ok(DiagonalGaussian::new(self.mu.forward(&h)?, self.log_var.forward(&h)?))
    }
}
