//! The training settings: everything besides the data and the architecture that decides a run.

use super::optimizer::OptimizerConfig;
use crate::data::Binarization;
use crate::{Error, Result};

/// Settings of a training run. Saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimisation step.
    pub batch_size: usize,
    /// The optimiser's learning rate.
    pub learning_rate: f64,
    /// Adam or SGD with momentum.
    pub optimizer: OptimizerConfig,
    /// Weight of the KL term: loss = reconstruction + beta * KL (1 is the ELBO).
    pub beta: f64,
    /// Seeds the initial weights, the shuffling, the noise eps and dynamic binarization.
    pub seed: u64,
    /// Binarization of the inputs.
    pub binarization: Binarization,
    /// Batch size for evaluation passes (no gradients, so it can be larger).
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    /// The reference setup: Adam 1e-3, batch 128, 10 epochs, beta 1, seed 1, grey inputs.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            learning_rate: 1e-3,
            optimizer: OptimizerConfig::default(),
            beta: 1.0,
            seed: 1,
            binarization: Binarization::None,
            eval_batch_size: 1000,
        }
    }
}

impl TrainConfig {
    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid_setting("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(Error::invalid_setting("batch size", "must be at least 1"));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::invalid_setting("beta", format!("must be a non-negative number, got {}", self.beta)));
        }
        if let Binarization::Static { threshold } = self.binarization {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(Error::invalid_setting("threshold", format!("must be in [0, 1], got {threshold}")));
            }
        }
        Ok(())
    }
}
