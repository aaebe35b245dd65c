//! The beta-TCVAE objective (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"): the KL term of the
//! ELBO split into three parts, so that the total correlation alone can be weighted:
//!
//! E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || prod_j q(z_j)) + sum_j KL(q(z_j) || p(z_j))
//!                        = index-code MI + total correlation (TC) + dimension-wise KL.
//!
//! loss = reconstruction + MI + beta * TC + dimension-wise KL (the paper's alpha = gamma = 1). The aggregate
//! posterior q(z) = (1/N) sum_n q(z|x_n) is estimated on the minibatch by minibatch-weighted sampling, with z_i one
//! reparameterized sample per example, M the batch size and N the dataset size:
//!
//! log q(z_i)       ~ logsumexp_j log q(z_i | x_j) - log(N M)
//! log q(z_i,d)     ~ logsumexp_j log q(z_i,d | x_j) - log(N M), per dimension d
//!
//! so MI = log q(z_i|x_i) - log q(z_i), TC = log q(z_i) - sum_d log q(z_i,d), dimension-wise KL =
//! sum_d log q(z_i,d) - log p(z_i), each averaged over the batch. The three add up to the one-sample KL estimate
//! log q(z_i|x_i) - log p(z_i), whose expectation is the closed-form KL.
//!
//! The estimator's normalisation puts constants into the parts: +ln(N M) in MI, +(d - 1) ln(N M) in TC and
//! -d ln(N M) in the dimension-wise KL. They cancel in the sum and do not change any gradient, but the loss (and
//! the `weighted_kl` column of `metrics.csv`) carries (beta - 1)(d - 1) ln(N M) more than a plain ELBO would: read
//! its changes, not its level. The held-out figures are always the plain, unweighted negative ELBO.

use candle_core::{Tensor, D};

use crate::model::gaussian::LN_2PI;
use crate::model::{standard_normal_log_prob, DiagonalGaussian};
use crate::{Error, Result};

/// The three parts of the KL on one batch, as batch means (scalars that keep their graph for backprop).
#[derive(Debug, Clone)]
pub struct KlDecomposition {
    /// Index-code mutual information I_q(x; z).
    pub mutual_information: Tensor,
    /// Total correlation KL(q(z) || prod_j q(z_j)).
    pub total_correlation: Tensor,
    /// Dimension-wise KL sum_j KL(q(z_j) || p(z_j)).
    pub dimension_kl: Tensor,
}

impl KlDecomposition {
    /// MI + beta * TC + dimension-wise KL: what replaces the KL in the beta-TCVAE loss.
    pub fn weighted(&self, tc_beta: f64) -> Result<Tensor> {
        Ok(((&self.mutual_information + (&self.total_correlation * tc_beta)?)? + &self.dimension_kl)?)
    }
}

/// The minibatch-weighted-sampling estimate of the decomposition for samples `z` (`[M, d]`) drawn from
/// `posterior`, on a dataset of `dataset_size` examples.
pub fn decompose_kl(posterior: &DiagonalGaussian, z: &Tensor, dataset_size: usize) -> Result<KlDecomposition> {
    let batch = z.dim(0)?;
    check_batch(batch, dataset_size)?;
    let pairwise = pairwise_log_density(posterior, z)?; // [M, M, d]: log q(z_i,d | x_j)
    let log_nm = ((dataset_size * batch) as f64).ln();
    // log q(z_i) ~ logsumexp_j sum_d log q(z_i,d | x_j) - log(N M)
    let log_qz = (pairwise.sum(D::Minus1)?.log_sum_exp(1)? - log_nm)?;
    // sum_d log q(z_i,d) ~ sum_d (logsumexp_j log q(z_i,d | x_j) - log(N M))
    let log_product_of_marginals = (pairwise.log_sum_exp(1)? - log_nm)?.sum(D::Minus1)?;
    let log_qz_given_x = posterior.log_prob(z)?;
    let log_pz = standard_normal_log_prob(z)?;
    Ok(KlDecomposition {
        mutual_information: (log_qz_given_x - &log_qz)?.mean_all()?,
        total_correlation: (&log_qz - &log_product_of_marginals)?.mean_all()?,
        dimension_kl: (log_product_of_marginals - log_pz)?.mean_all()?,
    })
}

/// An error unless the estimator can take a batch of `batch` examples from a dataset of `dataset_size`: a batch of
/// one (the last, partial batch of an epoch) is allowed, its q(z) its own posterior, scaled.
pub(crate) fn check_batch(batch: usize, dataset_size: usize) -> Result<()> {
    if batch == 0 || dataset_size < batch {
        let problem =
            format!("needs a non-empty batch from a dataset at least that large, got {batch} of {dataset_size}");
        return Err(Error::invalid_setting("tcvae", problem));
    }
    Ok(())
}

/// log q(z_i,d | x_j) for every sample i, posterior j and dimension d: `[M, M, d]`.
fn pairwise_log_density(posterior: &DiagonalGaussian, z: &Tensor) -> Result<Tensor> {
    let z = z.unsqueeze(1)?; // [M, 1, d]
    let mu = posterior.mu.unsqueeze(0)?; // [1, M, d]
    let log_var = posterior.log_var.unsqueeze(0)?;
    // log N(z; mu, sigma^2) = -0.5 * (log 2pi + log sigma^2 + (z - mu)^2 / sigma^2)
    let squared = z.broadcast_sub(&mu)?.sqr()?;
    let scaled = squared.broadcast_mul(&log_var.neg()?.exp()?)?;
    Ok(scaled.broadcast_add(&log_var)?.affine(-0.5, -0.5 * LN_2PI)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn normal(rng: &mut rand_chacha::ChaCha8Rng, shape: (usize, usize), scale: f32) -> Tensor {
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| scale * Distribution::<f32>::sample(&StandardNormal, rng))
            .collect::<Vec<f32>>();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    /// A batch of posteriors and one sample from each.
    fn batch(seed: u64, rows: usize, dims: usize) -> (DiagonalGaussian, Tensor) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let posterior = DiagonalGaussian::new(normal(&mut rng, (rows, dims), 1.0), normal(&mut rng, (rows, dims), 0.3));
        let z = posterior.reparameterize(&normal(&mut rng, (rows, dims), 1.0)).unwrap();
        (posterior, z)
    }

    #[test]
    fn the_three_parts_add_up_to_the_sampled_kl() {
        let (posterior, z) = batch(1, 32, 5);
        let parts = decompose_kl(&posterior, &z, 1000).unwrap();
        let sampled_kl = (posterior.log_prob(&z).unwrap() - standard_normal_log_prob(&z).unwrap()).unwrap();
        let total = scalar(&parts.weighted(1.0).unwrap());
        assert!((total - scalar(&sampled_kl.mean_all().unwrap())).abs() < 1e-3, "{total}");
    }

    #[test]
    fn the_total_correlation_is_small_for_independent_dimensions_and_large_for_copies() {
        // the same posteriors for every dimension: z's dimensions are copies of each other, maximally dependent
        let (independent, z_independent) = batch(2, 256, 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let column = normal(&mut rng, (256, 1), 2.0);
        let mu = column.repeat((1, 4)).unwrap();
        let log_var = Tensor::full(-4f32, (256, 4), &Device::Cpu).unwrap();
        let copies = DiagonalGaussian::new(mu.clone(), log_var);
        let z_copies =
            copies.reparameterize(&Tensor::zeros((256, 4), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let tc_independent = scalar(&decompose_kl(&independent, &z_independent, 256).unwrap().total_correlation);
        let tc_copies = scalar(&decompose_kl(&copies, &z_copies, 256).unwrap().total_correlation);
        // the true TC of the copies is about 3 x ln(2 / 0.135) = 8.1 nats, of the independent dimensions 0; the
        // estimator's constant (d - 1) ln(N M) cancels in the difference
        let difference = tc_copies - tc_independent;
        assert!((5.0..12.0).contains(&difference), "copies {tc_copies}, independent {tc_independent}");
    }

    #[test]
    fn gradients_reach_the_encoder_outputs_through_every_part() {
        let (posterior, _) = batch(4, 8, 3);
        let mu = Var::from_tensor(&posterior.mu).unwrap();
        let log_var = Var::from_tensor(&posterior.log_var).unwrap();
        let tracked = DiagonalGaussian::new(mu.as_tensor().clone(), log_var.as_tensor().clone());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let z = tracked.reparameterize(&normal(&mut rng, (8, 3), 1.0)).unwrap();
        let grads = decompose_kl(&tracked, &z, 100).unwrap().weighted(6.0).unwrap().backward().unwrap();
        for var in [&mu, &log_var] {
            let norm = scalar(&grads.get(var.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap());
            assert!(norm > 0.0 && norm.is_finite());
        }
    }

    #[test]
    fn a_last_batch_of_one_works_and_a_dataset_smaller_than_the_batch_is_refused() {
        let (posterior, z) = batch(6, 1, 2);
        let parts = decompose_kl(&posterior, &z, 10).unwrap();
        let sampled_kl = (posterior.log_prob(&z).unwrap() - standard_normal_log_prob(&z).unwrap()).unwrap();
        let total = scalar(&parts.weighted(1.0).unwrap());
        assert!((total - scalar(&sampled_kl.mean_all().unwrap())).abs() < 1e-3);
        let (posterior, z) = batch(6, 8, 2);
        assert!(decompose_kl(&posterior, &z, 4).unwrap_err().to_string().contains("tcvae"));
    }
}
