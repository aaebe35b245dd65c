//! Honest evaluation: the negative ELBO (a bound) and the importance-weighted estimate of -log p(x) (still a bound,
//! tighter as K grows), per example, in nats and bits per dimension, with standard errors across examples.
//!
//! log p_K(x) = log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), computed with log-sum-exp in f64 and
//! batched so that K = 5000 fits in memory.

use candle_core::{Device, Tensor};

use super::statistics::{Figure, LogSumExp};
use crate::data::{batch_tensor, Batcher, Dataset};
use crate::model::{DiagonalGaussian, Vae};
use crate::objective::{log_importance_weights, negative_elbo_terms_given, NoiseSource};
use crate::{Error, Result};

/// The default of [`BoundsConfig::max_rows`]: 4,096 decoder rows (12.5 MiB a tensor of MNIST's 784 values). On a
/// 2-core Intel Xeon the IWAE-1000 bound of the Burda et al. MLP ran at 255-266 examples/s with chunks of 1,024 to
/// 4,096 rows, 218-243 with 8,192 and 187-190 with 16,384, whose 50 MiB tensors are fresh memory the kernel zeroes
/// for every chunk (BENCHMARKS.md).
pub const DEFAULT_MAX_ROWS: usize = 4096;

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoundsConfig {
    /// Importance samples K per example (also the S of the averaged ELBO). 0 skips both.
    pub importance_samples: usize,
    /// Most rows (examples x samples) sent through the decoder at once: bounds memory.
    pub max_rows: usize,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for BoundsConfig {
    fn default() -> Self {
        BoundsConfig { importance_samples: 1000, max_rows: DEFAULT_MAX_ROWS, seed: 1 }
    }
}

/// The figures of a dataset, per example. All are upper bounds on -log p(x) (lower bounds on log p(x) negated).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoundsReport {
    /// Examples evaluated.
    pub examples: usize,
    /// Values per example (for bits per dimension).
    pub data_dim: usize,
    /// Single-sample negative ELBO (one z per example, exact KL).
    pub negative_elbo: Figure,
    /// Its reconstruction term -log p(x|z).
    pub reconstruction: Figure,
    /// Its KL term, exact.
    pub kl: Figure,
    /// Importance samples K (= S); 0 when not computed.
    pub importance_samples: usize,
    /// Negative ELBO with the reconstruction averaged over S = K samples, exact KL.
    pub negative_elbo_averaged: Option<Figure>,
    /// -log p_K(x), the importance-weighted estimate: an upper bound on -log p(x) that tightens as K grows.
    pub negative_iwae: Option<Figure>,
}

impl BoundsReport {
    /// nats per example -> bits per dimension.
    pub fn bits_per_dim(&self, nats: f64) -> f64 {
        nats / (self.data_dim as f64 * std::f64::consts::LN_2)
    }
}

/// Per-example values gathered batch by batch.
#[derive(Default)]
struct PerExample {
    reconstruction: Vec<f64>,
    kl: Vec<f64>,
    averaged_reconstruction: Vec<f64>,
    log_iwae: Vec<f64>,
}

/// Evaluates `dataset` (already binarized if the model was trained on binary data). `progress` is called with the
/// number of examples done so far.
pub fn evaluate_bounds(
    vae: &Vae,
    dataset: &Dataset,
    config: &BoundsConfig,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<BoundsReport> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    if dataset.is_empty() {
        return Err(Error::bad_input(&dataset.source, "examples", "nothing to evaluate"));
    }
    let samples = config.importance_samples;
    let chunk = samples.clamp(1, config.max_rows.max(1));
    let examples_per_batch = (config.max_rows / chunk).max(1);
    let mut noise = NoiseSource::new(config.seed);
    let mut values = PerExample::default();
    let mut batcher = Batcher::sequential(dataset, examples_per_batch);
    while let Some((batch, rows)) = batcher.next_batch() {
        let x = batch_tensor(batch, rows, dataset.shape.dim(), device)?;
        let posterior = vae.encode(&x)?; // once per batch, for both estimates
        single_sample(vae, &x, posterior.clone(), &mut noise, &mut values)?;
        if samples > 0 {
            importance_weighted(vae, &x, &posterior, samples, chunk, &mut noise, &mut values)?;
        }
        progress(values.kl.len());
    }
    Ok(report(values, dataset.shape.dim(), samples))
}

fn single_sample(
    vae: &Vae,
    x: &Tensor,
    posterior: DiagonalGaussian,
    noise: &mut NoiseSource,
    values: &mut PerExample,
) -> Result<()> {
    let eps = noise.like(&posterior.mu)?;
    let terms = negative_elbo_terms_given(vae, x, posterior, &eps)?;
    values.reconstruction.extend(to_f64(&terms.reconstruction)?);
    values.kl.extend(to_f64(&terms.kl)?);
    Ok(())
}

/// K importance samples per example, in chunks of `chunk` samples, accumulated per example in f64.
fn importance_weighted(
    vae: &Vae,
    x: &Tensor,
    posterior: &DiagonalGaussian,
    samples: usize,
    chunk: usize,
    noise: &mut NoiseSource,
    values: &mut PerExample,
) -> Result<()> {
    let rows = x.dim(0)?;
    let mut log_sum = vec![LogSumExp::default(); rows];
    let mut reconstruction_sum = vec![0.0; rows];
    let mut done = 0;
    while done < samples {
        let take = chunk.min(samples - done);
        let eps = noise.standard_normal(rows * take, vae.config().latent_dim, x.dtype(), x.device())?;
        let (log_weights, reconstruction) = log_importance_weights(vae, x, posterior, &eps, take)?;
        let (log_weights, reconstruction) = (to_f64(&log_weights)?, to_f64(&reconstruction)?);
        for example in 0..rows {
            log_sum[example].extend(log_weights[example * take..(example + 1) * take].iter().copied());
            reconstruction_sum[example] += reconstruction[example * take..(example + 1) * take].iter().sum::<f64>();
        }
        done += take;
    }
    values.log_iwae.extend(log_sum.iter().map(LogSumExp::log_mean_exp));
    values.averaged_reconstruction.extend(reconstruction_sum.iter().map(|sum| sum / samples as f64));
    Ok(())
}

fn report(values: PerExample, data_dim: usize, samples: usize) -> BoundsReport {
    let negative_elbo: Vec<f64> = values.reconstruction.iter().zip(&values.kl).map(|(r, k)| r + k).collect();
    let averaged: Vec<f64> = values.averaged_reconstruction.iter().zip(&values.kl).map(|(r, k)| r + k).collect();
    let negative_iwae: Vec<f64> = values.log_iwae.iter().map(|v| -v).collect();
    BoundsReport {
        examples: values.kl.len(),
        data_dim,
        negative_elbo: Figure::of(&negative_elbo),
        reconstruction: Figure::of(&values.reconstruction),
        kl: Figure::of(&values.kl),
        importance_samples: samples,
        negative_elbo_averaged: (samples > 0).then(|| Figure::of(&averaged)),
        negative_iwae: (samples > 0).then(|| Figure::of(&negative_iwae)),
    }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1()?)
}
