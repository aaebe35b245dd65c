//! Decoder likelihoods p(x|z): each turns the decoder network's raw output into -log p(x|z) per example, in nats,
//! summed over data dimensions.

pub mod bernoulli;
pub mod categorical;
pub mod gaussian;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::data::Dataset;
use crate::{Error, Result};

pub use gaussian::GaussianVariance;

/// Which distribution the decoder parameterises.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[derive(Default)]
pub enum LikelihoodConfig {
    /// Independent Bernoulli per dimension, from logits; targets in [0, 1] (grey values allowed).
    #[default]
    Bernoulli,
    /// Independent Gaussian per dimension with the decoder output as mean.
    Gaussian {
        /// How the variance is set.
        variance: GaussianVariance,
    },
    /// A softmax over `levels` values per dimension; data in [0, 1] is quantized to those levels.
    Categorical {
        /// Number of levels K (256 for raw 8-bit pixels).
        levels: usize,
    },
}

impl LikelihoodConfig {
    /// Number of decoder outputs needed per data dimension.
    pub fn outputs_per_dimension(&self) -> usize {
        match self {
            LikelihoodConfig::Categorical { levels } => *levels,
            _ => 1,
        }
    }

    /// Checks the likelihood's own settings: a positive fixed sigma, at least 2 categorical levels.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LikelihoodConfig::Gaussian { variance: GaussianVariance::Fixed { sigma } }
                if !(sigma > 0.0 && sigma.is_finite()) =>
            {
                Err(Error::invalid_setting("gaussian sigma", format!("must be a positive number, got {sigma}")))
            }
            LikelihoodConfig::Categorical { levels } => categorical::Categorical::new(levels, 1).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Checks that `data` can be scored by this likelihood: Bernoulli and categorical targets must lie in [0, 1].
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        if matches!(self, LikelihoodConfig::Gaussian { .. }) {
            return Ok(());
        }
        let (min, max) = data.value_range();
        if min < 0.0 || max > 1.0 {
            return Err(Error::bad_input(
                &data.source,
                "values",
                format!(
                    "a {} decoder needs data in [0, 1] (8-bit data is scaled by 1/255 automatically), but the values \
                     range from {min} to {max}; rescale the data or use the gaussian likelihood",
                    self.name()
                ),
            ));
        }
        Ok(())
    }

    /// A short name for messages and file names.
    pub fn name(&self) -> &'static str {
        match self {
            LikelihoodConfig::Bernoulli => "bernoulli",
            LikelihoodConfig::Gaussian { .. } => "gaussian",
            LikelihoodConfig::Categorical { .. } => "categorical",
        }
    }
}

/// A decoder likelihood with its own parameters (a learned Gaussian log-variance), ready to score data.
#[derive(Debug, Clone)]
pub enum Likelihood {
    /// See [`bernoulli`].
    Bernoulli,
    /// See [`gaussian`].
    Gaussian(gaussian::Gaussian),
    /// See [`categorical`].
    Categorical(categorical::Categorical),
}

impl Likelihood {
    /// Builds the likelihood for data of `data_dim` values; learned parameters live under `vb` (`decoder.*`).
    pub fn new(config: &LikelihoodConfig, data_dim: usize, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(match *config {
            LikelihoodConfig::Bernoulli => Likelihood::Bernoulli,
            LikelihoodConfig::Gaussian { variance } => {
                Likelihood::Gaussian(gaussian::Gaussian::new(variance, data_dim, vb)?)
            }
            LikelihoodConfig::Categorical { levels } => {
                Likelihood::Categorical(categorical::Categorical::new(levels, data_dim)?)
            }
        })
    }

    /// -log p(x | decoder output) per example, summed over data dimensions; shape `[batch]`.
    /// `output` is the decoder network's raw output, `x` the data in [0, 1], shape `[batch, data_dim]`.
    pub fn negative_log_prob(&self, output: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Likelihood::Bernoulli => bernoulli::negative_log_prob(output, x),
            Likelihood::Gaussian(gaussian) => gaussian.negative_log_prob(output, x),
            Likelihood::Categorical(categorical) => categorical.negative_log_prob(output, x),
        }
    }

    /// The mean of p(x|z) in data space, shape `[batch, data_dim]`: what an image of the decoder shows.
    pub fn mean(&self, output: &Tensor) -> Result<Tensor> {
        match self {
            Likelihood::Bernoulli => Ok(candle_nn::ops::sigmoid(output)?),
            Likelihood::Gaussian(_) => Ok(output.clone()),
            Likelihood::Categorical(categorical) => categorical.mean(output),
        }
    }
}
