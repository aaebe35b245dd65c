//! Encoding a dataset: q(z|x) = N(mu_x, diag sigma_x^2) for every example, kept as plain rows of numbers.

use candle_core::{Device, Tensor};

use crate::data::{batch_tensor, Batcher, Dataset};
use crate::model::{DiagonalGaussian, Vae};
use crate::objective::NoiseSource;
use crate::outputs::pictures::flat_values;
use crate::{Error, Result};

/// The encodings of a dataset: one row of `latent_dim` values per example, in the dataset's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Encodings {
    /// Number of latent dimensions d.
    pub latent_dim: usize,
    /// Posterior means mu_x, `len * latent_dim` values.
    pub mu: Vec<f32>,
    /// Posterior log-variances log sigma_x^2, like `mu`.
    pub log_var: Vec<f32>,
    /// The dataset's class labels, when it has them.
    pub labels: Option<Vec<u32>>,
}

impl Encodings {
    /// Number of encoded examples.
    pub fn len(&self) -> usize {
        self.mu.len() / self.latent_dim.max(1)
    }

    /// True when nothing was encoded.
    pub fn is_empty(&self) -> bool {
        self.mu.is_empty()
    }

    /// The mean mu_x of example `index`.
    pub fn mu_row(&self, index: usize) -> &[f32] {
        &self.mu[index * self.latent_dim..(index + 1) * self.latent_dim]
    }

    /// One reparameterized draw per example, z = mu_x + sigma_x * eps, with eps ~ N(0, I) drawn from `seed`.
    pub fn sample(&self, seed: u64) -> Result<Vec<f32>> {
        let posterior = self.posterior(&Device::Cpu)?;
        let eps = NoiseSource::new(seed).like(&posterior.mu)?;
        Ok(posterior.reparameterize(&eps)?.flatten_all()?.to_vec1()?)
    }

    /// The KL of each latent dimension to the prior, averaged over the examples: how much each dimension is used.
    pub fn mean_kl_per_dimension(&self) -> Result<Vec<f32>> {
        if self.is_empty() {
            return Err(Error::invalid_setting("data", "no examples to average the KL over"));
        }
        Ok(self.posterior(&Device::Cpu)?.kl_per_dimension()?.mean(0)?.to_vec1()?)
    }

    /// The means as a `[len, latent_dim]` tensor on `device`.
    pub fn mu_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.mu, (self.len(), self.latent_dim), device)?)
    }

    fn posterior(&self, device: &Device) -> Result<DiagonalGaussian> {
        let log_var = Tensor::from_slice(&self.log_var, (self.len(), self.latent_dim), device)?;
        Ok(DiagonalGaussian::new(self.mu_tensor(device)?, log_var))
    }
}

/// Encodes every example of `dataset` in batches of `batch_size`, in order.
pub fn encode_dataset(vae: &Vae, dataset: &Dataset, batch_size: usize, device: &Device) -> Result<Encodings> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    let latent_dim = vae.config().latent_dim;
    let mut encodings = Encodings { latent_dim, mu: Vec::new(), log_var: Vec::new(), labels: dataset.labels.clone() };
    let mut batcher = Batcher::sequential(dataset, batch_size);
    while let Some((values, rows)) = batcher.next_batch() {
        let posterior = vae.encode(&batch_tensor(values, rows, dataset.shape.dim(), device)?)?;
        encodings.mu.extend(flat_values(&posterior.mu)?);
        encodings.log_var.extend(flat_values(&posterior.log_var)?);
    }
    Ok(encodings)
}

/// The examples at `indices` as one `[indices.len(), dim]` batch on `device`.
pub fn examples_tensor(dataset: &Dataset, indices: &[usize], device: &Device) -> Result<Tensor> {
    let mut values = Vec::with_capacity(indices.len() * dataset.shape.dim());
    indices.iter().for_each(|&i| dataset.push_example(i, &mut values));
    batch_tensor(values, indices.len(), dataset.shape.dim(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encodings() -> Encodings {
        Encodings {
            latent_dim: 2,
            mu: vec![0.0, 1.0, 0.0, -1.0],
            log_var: vec![0.0, 0.0, 2f32.ln(), 0.0],
            labels: None,
        }
    }

    #[test]
    fn per_dimension_kl_is_the_mean_of_the_closed_form() {
        // dim 0: KL(N(0,1)) = 0 and KL(N(0,2)) = 0.5 (2 - 1 - ln 2); dim 1: two shifted means, 0.5 each.
        let kl = encodings().mean_kl_per_dimension().unwrap();
        assert!((kl[0] - 0.25 * (1.0 - 2f32.ln())).abs() < 1e-6, "{kl:?}");
        assert!((kl[1] - 0.5).abs() < 1e-6, "{kl:?}");
    }

    #[test]
    fn samples_are_seeded_and_centred_on_mu() {
        let codes = encodings();
        let (a, b) = (codes.sample(3).unwrap(), codes.sample(3).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, codes.sample(4).unwrap());
        assert_ne!(a, codes.mu);
    }
}
