//! Per-dimension figures of a dataset's encodings (see [`crate::latent::encode_dataset`]) that tell an informative
//! latent from a collapsed one.

use crate::latent::Encodings;
use crate::Result;

/// Figures of one latent dimension over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DimensionStats {
    /// The dimension's index.
    pub dimension: usize,
    /// Mean over examples of KL( q(z_u|x) || N(0, 1) ), nats.
    pub kl: f64,
    /// Activity A_u = `Cov_x(E_q[z_u])` = the variance of mu_u across inputs (Burda et al. 2016).
    pub activity: f64,
    /// Standard deviation of mu_u across inputs.
    pub mu_spread: f64,
    /// Mean of the posterior's own sigma_u.
    pub mean_sigma: f64,
    /// Active when the activity exceeds the threshold (0.01).
    pub active: bool,
}

/// The activity threshold of Burda et al.: a unit is active when `Cov_x(E_q[z_u])` > 0.01.
pub const ACTIVITY_THRESHOLD: f64 = 0.01;

impl Encodings {
    /// Per-dimension KL (the closed form, averaged over the examples), activity, spread of mu and mean sigma.
    pub fn dimension_stats(&self) -> Result<Vec<DimensionStats>> {
        let kl = self.mean_kl_per_dimension()?;
        Ok(kl.iter().enumerate().map(|(u, &kl)| self.stats_of(u, f64::from(kl))).collect())
    }

    fn column<'a>(&'a self, values: &'a [f32], u: usize) -> impl Iterator<Item = f64> + 'a {
        values.iter().skip(u).step_by(self.latent_dim).map(|&v| v as f64)
    }

    /// Figures of dimension `u`, whose mean KL over the examples is `kl`.
    fn stats_of(&self, u: usize, kl: f64) -> DimensionStats {
        let n = self.len().max(1) as f64;
        let mean_mu = self.column(&self.mu, u).sum::<f64>() / n;
        let activity = self.column(&self.mu, u).map(|m| (m - mean_mu).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
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
