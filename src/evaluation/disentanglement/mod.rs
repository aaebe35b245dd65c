//! Disentanglement metrics: how well the code dimensions of a representation line up with the ground-truth factors
//! of variation of a dataset whose factors are known (e.g. the sprites). Four published scores, each with
//! disentanglement_lib's (Locatello et al. 2019) sample sizes and estimators unless its module says otherwise:
//!
//! - [`beta_vae`]: the beta-VAE score (Higgins et al. 2017), a linear classifier predicting which factor was held fixed
//!   from the mean absolute code difference of pairs sharing it;
//! - [`factor_vae`]: the FactorVAE score (Kim & Mnih 2018), a majority vote from the code dimension with the least
//!   normalized variance when one factor is held fixed;
//! - [`mig`]: the mutual information gap (Chen et al. 2018) on histogram-discretized codes;
//! - [`dci`]: disentanglement, completeness and informativeness (Eastwood & Williams 2018), with the importance matrix
//!   taken from a logistic regression instead of gradient-boosted trees (see that module).
//!
//! The metrics draw factor configurations themselves (each factor uniform and independent, from a seeded ChaCha8
//! stream per metric) and ask a [`Representation`] for their codes, at most [`ROWS_PER_CALL`] rows per call.
//! [`compute_metrics`] runs all four; each is also public on its own.

pub mod beta_vae;
pub mod dci;
pub mod factor_vae;
pub mod mig;
pub mod sampling;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use beta_vae::{beta_vae_score, BetaVaeConfig, BetaVaeScore};
pub use dci::{dci_score, DciConfig, DciScore};
pub use factor_vae::{factor_vae_score, FactorVaeConfig, FactorVaeScore};
pub use mig::{mig_score, MigConfig, MigScore};
pub use sampling::{CodeMatrix, FactorSampler, ROWS_PER_CALL};

/// The ground-truth factors of a dataset: their names and how many values each takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactorSpace {
    /// One name per factor, e.g. "shape", "scale".
    pub names: Vec<String>,
    /// How many values each factor takes (values are 0..size).
    pub sizes: Vec<usize>,
}

/// Maps factor configurations to codes (e.g. renders the images and returns the encoder's means).
pub trait Representation {
    /// Number of code dimensions.
    fn code_dim(&self) -> usize;
    /// Codes for `factors` (row-major, one row of factor indices per example, `factors.len() / num_factors` rows):
    /// returns rows x code_dim values, row-major.
    fn codes(&mut self, factors: &[u32]) -> crate::Result<Vec<f32>>;
}

impl FactorSpace {
    /// Number of factors.
    pub fn num_factors(&self) -> usize {
        self.sizes.len()
    }

    /// Checks that the metrics can work on this space: at least two factors, one name per factor, every factor with
    /// at least one value and no more than `u32` can index.
    pub fn validate(&self) -> Result<()> {
        if self.names.len() != self.sizes.len() {
            let problem = format!("{} names for {} factor sizes", self.names.len(), self.sizes.len());
            return Err(Error::ShapeMismatch(problem));
        }
        if self.sizes.len() < 2 {
            let problem =
                format!("{} factor(s); the metrics compare factors, so they need at least 2", self.sizes.len());
            return Err(Error::invalid_setting("factors", problem));
        }
        if let Some(k) = self.sizes.iter().position(|&size| size == 0 || size > u32::MAX as usize) {
            let problem = format!("factor `{}` has {} values; need 1 to {}", self.names[k], self.sizes[k], u32::MAX);
            return Err(Error::invalid_setting("factors", problem));
        }
        Ok(())
    }
}

/// Sizes of every metric's samples, and the seed they are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// The beta-VAE score's settings.
    pub beta_vae: BetaVaeConfig,
    /// The FactorVAE score's settings.
    pub factor_vae: FactorVaeConfig,
    /// The MIG's settings.
    pub mig: MigConfig,
    /// DCI's settings.
    pub dci: DciConfig,
    /// Seed of all the sampling (each metric draws from its own stream of it).
    pub seed: u64,
}

impl Default for MetricsConfig {
    /// disentanglement_lib's sizes: beta-VAE batch 64, 10000 train, 5000 eval; FactorVAE batch 64, 10000 train,
    /// 5000 eval, 10000 variance samples, prune threshold 0.05; MIG 10000 points, 20 bins; DCI 10000 train, 5000
    /// test (and 1000 classifier steps, this crate's choice); seed 0.
    fn default() -> Self {
        MetricsConfig {
            beta_vae: BetaVaeConfig::default(),
            factor_vae: FactorVaeConfig::default(),
            mig: MigConfig::default(),
            dci: DciConfig::default(),
            seed: 0,
        }
    }
}

impl MetricsConfig {
    /// A cheaper (or dearer) run with the same proportions: every number of points or samples multiplied by
    /// `fraction` (rounded, at least 2); batch sizes, bins, the prune threshold, the classifier steps and the seed
    /// unchanged.
    pub fn scaled(&self, fraction: f64) -> Result<MetricsConfig> {
        if !(fraction.is_finite() && fraction > 0.0) {
            return Err(Error::invalid_setting("fraction", format!("{fraction}; need a finite number above 0")));
        }
        // count' = max(2, round(count * fraction))
        let scale = |count: usize| ((count as f64 * fraction).round() as usize).max(2);
        let mut scaled = *self;
        scaled.beta_vae.train_points = scale(self.beta_vae.train_points);
        scaled.beta_vae.eval_points = scale(self.beta_vae.eval_points);
        scaled.factor_vae.train_points = scale(self.factor_vae.train_points);
        scaled.factor_vae.eval_points = scale(self.factor_vae.eval_points);
        scaled.factor_vae.variance_samples = scale(self.factor_vae.variance_samples);
        scaled.mig.points = scale(self.mig.points);
        scaled.dci.train_points = scale(self.dci.train_points);
        scaled.dci.test_points = scale(self.dci.test_points);
        Ok(scaled)
    }

    /// How many codes the four metrics ask for in all: beta-VAE (train + eval points) x batch x 2 (pairs),
    /// FactorVAE (train + eval points) x batch + variance samples, MIG points, DCI train + test points.
    pub fn code_rows(&self) -> usize {
        let beta = (self.beta_vae.train_points + self.beta_vae.eval_points) * self.beta_vae.batch_size * 2;
        let factor = (self.factor_vae.train_points + self.factor_vae.eval_points) * self.factor_vae.batch_size
            + self.factor_vae.variance_samples;
        beta + factor + self.mig.points + self.dci.train_points + self.dci.test_points
    }

    /// Checks every metric's settings.
    pub fn validate(&self) -> Result<()> {
        self.beta_vae.validate()?;
        self.factor_vae.validate()?;
        self.mig.validate()?;
        self.dci.validate()
    }
}

/// Every score with its sub-figures, and what it was computed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// The factors' names, in the order of every per-factor figure.
    pub factor_names: Vec<String>,
    /// How many values each factor takes.
    pub factor_sizes: Vec<usize>,
    /// Number of code dimensions.
    pub code_dim: usize,
    /// The settings used.
    pub config: MetricsConfig,
    /// The beta-VAE score.
    pub beta_vae: BetaVaeScore,
    /// The FactorVAE score.
    pub factor_vae: FactorVaeScore,
    /// The mutual information gap.
    pub mig: MigScore,
    /// Disentanglement, completeness and informativeness.
    pub dci: DciScore,
}

/// Runs the four metrics on `representation` over the factors of `space` (settings checked before any work).
pub fn compute_metrics<R: Representation + ?Sized>(
    space: &FactorSpace,
    representation: &mut R,
    config: &MetricsConfig,
) -> Result<MetricsReport> {
    space.validate()?;
    config.validate()?;
    Ok(MetricsReport {
        factor_names: space.names.clone(),
        factor_sizes: space.sizes.clone(),
        code_dim: representation.code_dim(),
        config: *config,
        beta_vae: beta_vae_score(space, representation, &config.beta_vae, config.seed)?,
        factor_vae: factor_vae_score(space, representation, &config.factor_vae, config.seed)?,
        mig: mig_score(space, representation, &config.mig, config.seed)?,
        dci: dci_score(space, representation, &config.dci, config.seed)?,
    })
}

/// An `InvalidSetting` error unless `value` is at least `minimum`.
fn require_at_least(name: &str, value: usize, minimum: usize) -> Result<()> {
    if value < minimum {
        return Err(Error::invalid_setting(name, format!("{value}; need at least {minimum}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(sizes: &[usize]) -> FactorSpace {
        FactorSpace { names: sizes.iter().map(|s| format!("f{s}")).collect(), sizes: sizes.to_vec() }
    }

    #[test]
    fn scaled_keeps_proportions_and_refuses_non_positive_fractions() {
        let scaled = MetricsConfig::default().scaled(0.1).unwrap();
        assert_eq!((scaled.beta_vae.train_points, scaled.beta_vae.eval_points), (1000, 500));
        assert_eq!((scaled.factor_vae.variance_samples, scaled.factor_vae.batch_size), (1000, 64));
        assert_eq!((scaled.mig.points, scaled.mig.bins, scaled.dci.test_points), (1000, 20, 500));
        assert_eq!(MetricsConfig::default().scaled(1e-9).unwrap().dci.train_points, 2);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(MetricsConfig::default().scaled(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn factor_space_needs_two_factors_with_values_and_names() {
        assert!(space(&[3, 4]).validate().is_ok());
        assert!(space(&[3]).validate().unwrap_err().to_string().contains("at least 2"));
        assert!(space(&[3, 0]).validate().is_err());
        let unnamed = FactorSpace { names: vec!["a".into()], sizes: vec![2, 2] };
        assert!(matches!(unnamed.validate(), Err(Error::ShapeMismatch(_))));
    }
}
