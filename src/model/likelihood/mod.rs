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

/// Each row of a `[rows, columns]` tensor repeated `times` times in place: rows [a, b] -> [a, a, b, b] for
/// times = 2.
pub fn repeat_rows(t: &Tensor, times: usize) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    Ok(t.unsqueeze(1)?.broadcast_as((rows, times, cols))?.reshape((rows * times, cols))?)
}

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

    /// -log p(x_n | output_nk) for `draws` decoder outputs per example, grouped by example (`[batch * draws, ...]`,
    /// the draws of example 0 first), against the examples x `[batch, data_dim]`; shape `[batch * draws]`. The same
    /// as [`Self::negative_log_prob`] against x repeated `draws` times, which the Bernoulli and Gaussian decoders
    /// never build (for an importance-weighted bound of K = 1,000 draws, x repeated is 1,000 copies of the batch).
    pub fn negative_log_prob_of_draws(&self, output: &Tensor, x: &Tensor, draws: usize) -> Result<Tensor> {
        match self {
            Likelihood::Bernoulli => bernoulli::negative_log_prob_of_draws(output, x, draws),
            Likelihood::Gaussian(gaussian) => gaussian.negative_log_prob_of_draws(output, x, draws),
            Likelihood::Categorical(categorical) => categorical.negative_log_prob(output, &repeat_rows(x, draws)?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    fn uniform(rng: &mut rand_chacha::ChaCha8Rng, shape: (usize, usize), (low, high): (f32, f32)) -> Tensor {
        let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(low..high)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Every decoder scores a batch's draws against their examples as it scores them against the examples
    /// repeated once per draw, in values and in the gradient of the decoder output: the fused Bernoulli kernel,
    /// which reads each example in place, to the bit; the Gaussian's broadcast within float rounding.
    #[test]
    fn draws_scored_against_their_examples_match_the_examples_repeated() {
        let variances = [
            GaussianVariance::Fixed { sigma: 0.3 },
            GaussianVariance::LearnedShared,
            GaussianVariance::LearnedPerDimension,
        ];
        let configs = [LikelihoodConfig::Bernoulli, LikelihoodConfig::Categorical { levels: 5 }]
            .into_iter()
            .chain(variances.map(|variance| LikelihoodConfig::Gaussian { variance }));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for config in configs {
            for (examples, draws, dim) in [(1, 1, 1), (3, 5, 7), (2, 300, 33), (4, 3, 784)] {
                let varmap = VarMap::new();
                let likelihood =
                    Likelihood::new(&config, dim, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
                let width = dim * config.outputs_per_dimension();
                let output = Var::from_tensor(&uniform(&mut rng, (examples * draws, width), (-6.0, 6.0))).unwrap();
                let x = uniform(&mut rng, (examples, dim), (0.0, 1.0));
                let weights = uniform(&mut rng, (examples * draws, 1), (0.5, 1.5)).flatten_all().unwrap();
                let scored = |terms: Tensor| {
                    let gradient = (&terms * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                    (terms.to_vec1::<f32>().unwrap(), gradient.get(output.as_tensor()).unwrap().clone())
                };
                let (by_draws, draws_gradient) =
                    scored(likelihood.negative_log_prob_of_draws(&output, &x, draws).unwrap());
                let repeated = repeat_rows(&x, draws).unwrap();
                let (by_rows, rows_gradient) = scored(likelihood.negative_log_prob(&output, &repeated).unwrap());
                let case = format!("{config:?}, {examples} examples x {draws} draws of {dim}");
                let gradient_difference = (draws_gradient - rows_gradient).unwrap().abs().unwrap();
                let gradient_difference = gradient_difference.flatten_all().unwrap().max(0).unwrap();
                let gradient_difference = gradient_difference.to_scalar::<f32>().unwrap();
                if config == LikelihoodConfig::Bernoulli {
                    assert_eq!(by_draws, by_rows, "{case}");
                    assert_eq!(gradient_difference, 0.0, "{case}");
                    continue;
                }
                for (a, b) in by_draws.iter().zip(&by_rows) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{case}: {a} against {b}");
                }
                assert!(gradient_difference <= 1e-5, "{case}: gradients differ by {gradient_difference}");
            }
        }
    }
}
