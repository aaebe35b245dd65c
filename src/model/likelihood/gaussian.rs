//! Gaussian decoder: -log N(x; mu, sigma^2) = 0.5 * sum_d [ log 2pi + log sigma_d^2 + (x_d - mu_d)^2 / sigma_d^2 ],
//! the full density with its constant, so the figures are true nats.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::model::gaussian::LN_2PI;
use crate::Result;

/// How the decoder's Gaussian variance is set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum GaussianVariance {
    /// A fixed standard deviation sigma for every dimension.
    Fixed {
        /// sigma > 0.
        sigma: f64,
    },
    /// One learned log-variance shared by all dimensions (`decoder.log_var`, shape `[1]`).
    LearnedShared,
    /// One learned log-variance per data dimension (`decoder.log_var`, shape `[data_dim]`).
    LearnedPerDimension,
}

impl Default for GaussianVariance {
    fn default() -> Self {
        GaussianVariance::Fixed { sigma: 1.0 }
    }
}

/// A Gaussian likelihood whose mean is the decoder output.
#[derive(Debug, Clone)]
pub struct Gaussian {
    /// log sigma^2: a scalar for a fixed sigma, or the learned parameter.
    log_var: LogVariance,
}

#[derive(Debug, Clone)]
enum LogVariance {
    Fixed(f64),
    Learned(Tensor),
}

impl Gaussian {
    /// Creates the likelihood (its settings checked by [`super::LikelihoodConfig::validate`]); a learned log-variance is the parameter `log_var` under `vb`, initialised at 0.
    pub fn new(variance: GaussianVariance, data_dim: usize, vb: VarBuilder) -> Result<Self> {
        let log_var = match variance {
            GaussianVariance::Fixed { sigma } => LogVariance::Fixed(2.0 * sigma.ln()),
            GaussianVariance::LearnedShared => LogVariance::Learned(learned(&vb, 1)?),
            GaussianVariance::LearnedPerDimension => LogVariance::Learned(learned(&vb, data_dim)?),
        };
        Ok(Gaussian { log_var })
    }

    /// log sigma^2 as a fixed number, or `None` when it is learned.
    pub fn fixed_log_var(&self) -> Option<f64> {
        match self.log_var {
            LogVariance::Fixed(log_var) => Some(log_var),
            LogVariance::Learned(_) => None,
        }
    }

    /// The learned log sigma^2 parameter (`[1]` or `[data_dim]`), or `None` for a fixed sigma.
    pub fn learned_log_var(&self) -> Option<&Tensor> {
        match &self.log_var {
            LogVariance::Fixed(_) => None,
            LogVariance::Learned(log_var) => Some(log_var),
        }
    }

    /// -log N(x; mean, sigma^2) per example, summed over dimensions; shape `[batch]`.
    pub fn negative_log_prob(&self, mean: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.summed_terms((x - mean)?.sqr()?)
    }

    /// -log N(x_n; mean_nk, sigma^2) for `draws` means per example (grouped by example, `[batch * draws,
    /// data_dim]`) against x `[batch, data_dim]`; shape `[batch * draws]`. x is broadcast over each example's
    /// draws, never repeated.
    pub fn negative_log_prob_of_draws(&self, mean: &Tensor, x: &Tensor, draws: usize) -> Result<Tensor> {
        let (mean, x) = (mean.flatten_from(1)?, x.flatten_from(1)?);
        let (rows, dim) = mean.dims2()?;
        let grouped = mean.reshape((rows / draws.max(1), draws, dim))?;
        let squared = grouped.broadcast_sub(&x.unsqueeze(1)?)?.sqr()?;
        Ok(self.summed_terms(squared)?.flatten_all()?)
    }

    /// sum_d 0.5 * (log 2pi + log sigma^2 + (x_d - mu_d)^2 / sigma^2) over the last dimension of the squared
    /// differences `squared`.
    fn summed_terms(&self, squared: Tensor) -> Result<Tensor> {
        // -log p(x|z) = 0.5 * (log 2pi + log sigma^2 + (x - mu)^2 / sigma^2)
        let per_dimension = match &self.log_var {
            LogVariance::Fixed(log_var) => squared.affine(0.5 * (-log_var).exp(), 0.5 * (LN_2PI + log_var))?,
            LogVariance::Learned(log_var) => {
                let scaled = squared.broadcast_mul(&log_var.neg()?.exp()?)?;
                scaled.broadcast_add(log_var)?.affine(0.5, 0.5 * LN_2PI)?
            }
        };
        Ok(per_dimension.sum(D::Minus1)?)
    }
}

fn learned(vb: &VarBuilder, size: usize) -> Result<Tensor> {
    Ok(vb.get_with_hints(size, "log_var", candle_nn::Init::Const(0.0))?)
}
