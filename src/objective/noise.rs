//! The noise eps ~ N(0, I), drawn OUTSIDE the network from a seeded generator, so a training step is a
//! deterministic function of (parameters, batch, eps).

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::Result;

/// A seeded source of standard-normal noise.
#[derive(Debug, Clone)]
pub struct NoiseSource {
    rng: ChaCha8Rng,
}

impl NoiseSource {
    /// A source seeded with `seed`: the same seed gives the same sequence of draws.
    pub fn new(seed: u64) -> Self {
        NoiseSource { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The stream's position (with the seed, it fixes every later draw), for checkpoints.
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves the stream to a `position` returned by [`NoiseSource::position`] for the same seed.
    pub fn set_position(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// eps ~ N(0, I) of shape `[rows, cols]`.
    pub fn standard_normal(&mut self, rows: usize, cols: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = (0..rows * cols).map(|_| self.rng.sample(StandardNormal)).collect();
        Ok(Tensor::from_vec(values, (rows, cols), device)?.to_dtype(dtype)?)
    }

    /// eps ~ N(0, I) shaped like `like`.
    pub fn like(&mut self, like: &Tensor) -> Result<Tensor> {
        let (rows, cols) = like.dims2()?;
        self.standard_normal(rows, cols, like.dtype(), like.device())
    }
}
