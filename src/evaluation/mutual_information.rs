//! The mutual information I(x; z) between data and latent under the encoder, estimated as He et al. (2019) do:
//! I = E_x E_q(z|x)[ log q(z|x) ] - E_x E_q(z|x)[ log q(z) ], with the aggregate posterior
//! q(z) = (1/N) sum_n q(z|x_n) over the evaluated set (a log-mean-exp). The estimate cannot exceed log N.

use candle_core::{DType, Device, Tensor, D};

use crate::latent::Encodings;
use crate::model::gaussian::LN_2PI;
use crate::objective::NoiseSource;
use crate::Result;

/// Rows of z scored against all N posteriors at once (bounds memory to rows x N).
const ROWS_PER_CHUNK: usize = 512;

/// I(x; z) in nats, from one sample z_i ~ q(z|x_i) per example.
pub fn mutual_information(encodings: &Encodings, seed: u64, device: &Device) -> Result<f64> {
    let (n, d) = (encodings.len(), encodings.latent_dim);
    let mu = Tensor::from_slice(&encodings.mu, (n, d), device)?.to_dtype(DType::F64)?;
    let log_var = Tensor::from_slice(&encodings.log_var, (n, d), device)?.to_dtype(DType::F64)?;
    let eps = NoiseSource::new(seed).standard_normal(n, d, DType::F64, device)?;
    let z = (&mu + ((&log_var * 0.5)?.exp()? * eps)?)?;
    // E log q(z|x) in closed form: -0.5 * sum_d (log 2pi + 1 + log sigma^2), averaged over x
    let negative_entropy = log_var.sum(D::Minus1)?.affine(-0.5, -0.5 * d as f64 * (LN_2PI + 1.0))?.mean_all()?;
    let log_aggregate = log_aggregate_posterior(&z, &mu, &log_var)?;
    Ok(negative_entropy.to_scalar::<f64>()? - log_aggregate)
}

/// The mean over i of log q(z_i) = log (1/N) sum_n q(z_i|x_n).
fn log_aggregate_posterior(z: &Tensor, mu: &Tensor, log_var: &Tensor) -> Result<f64> {
    let (n, d) = mu.dims2()?;
    // sum_d (z - mu)^2 / var = z^2 . (1/var) - 2 z . (mu/var) + sum_d mu^2/var, as matrix products over all pairs
    let inverse_variance = log_var.neg()?.exp()?;
    let mu_scaled = (mu * &inverse_variance)?;
    let per_posterior =
        ((mu * &mu_scaled)?.sum(D::Minus1)? + log_var.sum(D::Minus1)?)?.affine(1.0, d as f64 * LN_2PI)?;
    let mut total = 0.0;
    for start in (0..n).step_by(ROWS_PER_CHUNK) {
        let rows = z.narrow(0, start, ROWS_PER_CHUNK.min(n - start))?;
        let quadratic = (rows.sqr()?.matmul(&inverse_variance.t()?)? - (rows.matmul(&mu_scaled.t()?)? * 2.0)?)?;
        let log_q = (quadratic.broadcast_add(&per_posterior.unsqueeze(0)?)? * -0.5)?; // [rows, N]: log q(z_i|x_n)
        let max = log_q.max_keepdim(D::Minus1)?;
        let log_sum = (log_q.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
        total += log_sum.sum_all()?.to_scalar::<f64>()? - rows.dim(0)? as f64 * (n as f64).ln();
    }
    Ok(total / n as f64)
}
