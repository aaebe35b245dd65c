//! The single-sample negative ELBO of a dataset, with its two terms: a bound, not a likelihood.

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{batch_tensor, Batcher, Binarization, Dataset};
use crate::model::Vae;
use crate::objective::{negative_elbo_terms, NoiseSource};
use crate::Result;

/// Mean per-example figures over a dataset, in nats.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ElboEstimate {
    /// How many examples were averaged.
    pub examples: usize,
    /// Mean -log p(x|z~) (one Monte Carlo sample per example).
    pub reconstruction: f64,
    /// Mean KL( q(z|x) || p(z) ), exact.
    pub kl: f64,
}

impl ElboEstimate {
    /// Mean negative ELBO = reconstruction + KL: an upper bound on -log p(x) (the ELBO is a lower bound on log p(x)).
    pub fn negative_elbo(&self) -> f64 {
        self.reconstruction + self.kl
    }

    /// Adds a batch's sums of the two terms.
    pub fn accumulate(&mut self, rows: usize, reconstruction_sum: f64, kl_sum: f64) {
        let total = (self.examples + rows) as f64;
        let weight = rows as f64 / total;
        self.reconstruction += (reconstruction_sum / rows as f64 - self.reconstruction) * weight;
        self.kl += (kl_sum / rows as f64 - self.kl) * weight;
        self.examples += rows;
    }
}

/// Seed offset for the evaluation noise, so evaluation draws never collide with training draws.
const EVALUATION_STREAM: u64 = 0x5eed_e7a1;

/// Most decoder outputs (rows x outputs per row) one evaluation batch sends through the decoder: 16 MiB of f32 per
/// output-sized tensor. A wide decoder (a categorical one has K outputs per value: 12,544 for 16 levels of MNIST)
/// gets fewer rows per batch, so its log-softmax's intermediates do not dominate the process's memory.
const EVALUATION_OUTPUTS: usize = 1 << 22;

/// The rows of an evaluation batch: `batch_size`, or fewer where a row's decoder outputs would pass
/// [`EVALUATION_OUTPUTS`].
fn evaluation_rows(vae: &Vae, batch_size: usize) -> usize {
    let config = vae.config();
    let outputs_per_row = config.input_shape.dim() * config.likelihood.outputs_per_dimension();
    batch_size.min(EVALUATION_OUTPUTS / outputs_per_row.max(1)).max(1)
}

/// The mean single-sample negative ELBO of `dataset` and its two terms, with noise (and any dynamic binarization)
/// drawn from `seed`: the same seed gives the same figure.
pub fn evaluate_negative_elbo(
    vae: &Vae,
    dataset: &Dataset,
    batch_size: usize,
    binarization: Binarization,
    seed: u64,
    device: &Device,
) -> Result<ElboEstimate> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    let mut noise = NoiseSource::new(seed ^ EVALUATION_STREAM);
    let mut binarize_rng = ChaCha8Rng::seed_from_u64(seed ^ EVALUATION_STREAM ^ 1);
    let mut batcher = Batcher::sequential(dataset, evaluation_rows(vae, batch_size));
    let mut estimate = ElboEstimate::default();
    while let Some((mut values, rows)) = batcher.next_batch() {
        binarization.apply(&mut values, &mut binarize_rng);
        let x = batch_tensor(values, rows, dataset.shape.dim(), device)?;
        let eps = noise.standard_normal(rows, vae.config().latent_dim, x.dtype(), device)?;
        let terms = negative_elbo_terms(vae, &x, &eps)?;
        let reconstruction: f32 = terms.reconstruction.sum_all()?.to_scalar()?;
        let kl: f32 = terms.kl.sum_all()?.to_scalar()?;
        estimate.accumulate(rows, reconstruction as f64, kl as f64);
    }
    Ok(estimate)
}
