//! The encoder's outputs over a dataset: mu and log sigma^2 of every example, and the per-dimension figures that
//! tell an informative latent from a collapsed one.

use candle_core::{Device, Tensor};

use crate::data::{batch_tensor, Batcher, Dataset};
use crate::model::Vae;
use crate::Result;

/// mu and log sigma^2 of q(z|x) for every example, row-major `[examples, latent_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encodings {
    /// Number of examples.
    pub examples: usize,
    /// Latent dimensions.
    pub latent_dim: usize,
    /// Means.
    pub mu: Vec<f32>,
    /// Log-variances.
    pub log_var: Vec<f32>,
}

/// Encodes every example of `dataset`.
pub fn encode_dataset(vae: &Vae, dataset: &Dataset, batch_size: usize, device: &Device) -> Result<Encodings> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    let latent_dim = vae.config().latent_dim;
    let mut encodings = Encodings { examples: 0, latent_dim, mu: Vec::new(), log_var: Vec::new() };
    let mut batcher = Batcher::sequential(dataset, batch_size);
    while let Some((values, rows)) = batcher.next_batch() {
        let posterior = vae.encode(&batch_tensor(values, rows, dataset.shape.dim(), device)?)?;
        encodings.mu.extend(flat(&posterior.mu)?);
        encodings.log_var.extend(flat(&posterior.log_var)?);
        encodings.examples += rows;
    }
    Ok(encodings)
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Figures of one latent dimension over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DimensionStats {
    /// The dimension's index.
    pub dimension: usize,
    /// Mean over examples of KL( q(z_u|x) || N(0, 1) ), nats.
    pub kl: f64,
    /// Activity A_u = Cov_x(E_q[z_u]) = the variance of mu_u across inputs (Burda et al. 2016).
    pub activity: f64,
    /// Standard deviation of mu_u across inputs.
    pub mu_spread: f64,
    /// Mean of the posterior's own sigma_u.
    pub mean_sigma: f64,
    /// Active when the activity exceeds the threshold (0.01).
    pub active: bool,
}

/// The activity threshold of Burda et al.: a unit is active when Cov_x(E_q[z_u]) > 0.01.
pub const ACTIVITY_THRESHOLD: f64 = 0.01;

impl Encodings {
    /// Per-dimension KL, activity, spread of mu and mean sigma.
    pub fn dimension_stats(&self) -> Vec<DimensionStats> {
        (0..self.latent_dim).map(|u| self.stats_of(u)).collect()
    }

    fn column<'a>(&'a self, values: &'a [f32], u: usize) -> impl Iterator<Item = f64> + 'a {
        values.iter().skip(u).step_by(self.latent_dim).map(|&v| v as f64)
    }

    fn stats_of(&self, u: usize) -> DimensionStats {
        let n = self.examples.max(1) as f64;
        let mean_mu = self.column(&self.mu, u).sum::<f64>() / n;
        let activity = self.column(&self.mu, u).map(|m| (m - mean_mu).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        // KL = 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2)
        let kl = self
            .column(&self.mu, u)
            .zip(self.column(&self.log_var, u))
            .map(|(m, lv)| 0.5 * (lv.exp() + m * m - 1.0 - lv))
            .sum::<f64>()
            / n;
        let mean_sigma = self.column(&self.log_var, u).map(|lv| (0.5 * lv).exp()).sum::<f64>() / n;
        DimensionStats {
            dimension: u,
            kl,
            activity,
            mu_spread: activity.sqrt(),
            mean_sigma,
            active: activity > ACTIVITY_THRESHOLD,
        }
    }
}
