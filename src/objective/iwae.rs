//! Importance weights: log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x). Their log-mean-exp over
//! k is the importance-weighted bound (Burda et al. 2016): log p_K(x) = log (1/K) sum_k w_k, a lower bound on
//! log p(x) that tightens as K grows; K = 1 is a single-sample ELBO.

use candle_core::{Tensor, D};

pub use crate::model::likelihood::repeat_rows;
use crate::model::{standard_normal_log_prob, DiagonalGaussian, Vae};
use crate::Result;

/// log w for `samples` draws per example: a `[batch, samples]` tensor, with the reconstruction terms
/// -log p(x|z_k) as a second `[batch, samples]` tensor. `eps` is `[batch * samples, latent_dim]`, example-major
/// (the draws of example 0 first).
pub fn log_importance_weights(
    vae: &Vae,
    x: &Tensor,
    posterior: &DiagonalGaussian,
    eps: &Tensor,
    samples: usize,
) -> Result<(Tensor, Tensor)> {
    let batch = x.dim(0)?;
    let repeated =
        DiagonalGaussian::new(repeat_rows(&posterior.mu, samples)?, repeat_rows(&posterior.log_var, samples)?);
    let z = repeated.reparameterize(eps)?;
    let reconstruction = vae.likelihood().negative_log_prob_of_draws(&vae.decode(&z)?, x, samples)?;
    // log w = log p(x|z) + log p(z) - log q(z|x)
    let log_weight = ((standard_normal_log_prob(&z)? - repeated.log_prob(&z)?)? - &reconstruction)?;
    Ok((log_weight.reshape((batch, samples))?, reconstruction.reshape((batch, samples))?))
}

/// log (1/K) sum_k exp(log_w_k) along the last dimension, computed stably: `[batch, K]` -> `[batch]`.
pub fn log_mean_exp(log_weights: &Tensor) -> Result<Tensor> {
    let count = log_weights.dim(D::Minus1)? as f64;
    let max = log_weights.max_keepdim(D::Minus1)?.detach();
    let sum = log_weights.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    Ok((sum.log()? + max)?.squeeze(D::Minus1)?.affine(1.0, -count.ln())?)
}
