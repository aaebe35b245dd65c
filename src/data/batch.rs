//! Turning a dataset into shuffled mini-batches of f32 values in [0, 1], with optional binarization.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Dataset;

/// How grey values are turned into binary ones before they reach a Bernoulli decoder.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Binarization {
    /// Keep grey values in [0, 1] (the classic PyTorch example).
    #[default]
    None,
    /// x > threshold becomes 1, else 0, the same every epoch.
    Static {
        /// The threshold, in [0, 1].
        threshold: f32,
    },
    /// A fresh draw x ~ Bernoulli(pixel value) each time an example is batched (the IWAE paper's MNIST).
    Dynamic,
}

impl Binarization {
    /// Applies the binarization in place; `rng` is only used by `Dynamic`.
    pub fn apply(&self, values: &mut [f32], rng: &mut ChaCha8Rng) {
        match *self {
            Binarization::None => {}
            Binarization::Static { threshold } => {
                values.iter_mut().for_each(|v| *v = if *v > threshold { 1.0 } else { 0.0 });
            }
            Binarization::Dynamic => {
                values.iter_mut().for_each(|v| *v = if rng.random::<f32>() < *v { 1.0 } else { 0.0 });
            }
        }
    }
}

/// A copy of `dataset` with `binarization` applied once, for evaluation: a dynamic binarization becomes one fixed
/// stochastic draw from `seed` (the usual practice for a binarized test set). Returns the data unchanged for `None`.
pub fn binarized(dataset: &Dataset, binarization: Binarization, seed: u64) -> Dataset {
    if binarization == Binarization::None {
        return dataset.clone();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // one example at a time, so the only copy is the bytes (memory-mapped data is never held as f32)
    let mut bytes = Vec::with_capacity(dataset.values.len());
    let mut example = Vec::with_capacity(dataset.shape.dim());
    for i in 0..dataset.len() {
        example.clear();
        dataset.push_example(i, &mut example);
        binarization.apply(&mut example, &mut rng);
        bytes.extend(example.iter().map(|&v| if v > 0.5 { 255u8 } else { 0 }));
    }
    Dataset { values: super::Values::U8(bytes), ..dataset.clone() }
}

/// Examples ahead of the one being copied into a batch whose values [`Batcher::next_batch`] asks the CPU to load:
/// the examples of a shuffled order lie anywhere in the dataset, and copied as they came, the copy waited on memory
/// (the bytes' loads 63% of its samples). Measured on a 2-core Intel Xeon (BENCHMARKS.md, the twenty-first session),
/// row 1 of the benchmark matrix: the copy 1.06% of the samples without, 0.44% with, plus 0.36% for the prefetches;
/// 4 examples ahead, prefetched into the L1 cache, 0.24% and 0.60%.
const PREFETCH_AHEAD: usize = 8;

/// Yields the examples of a dataset as mini-batches, in a seeded random order for training or in order for
/// evaluation. The last batch may be smaller.
pub struct Batcher<'a> {
    dataset: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    position: usize,
}

impl<'a> Batcher<'a> {
    /// Batches in a random order drawn from `rng` (one fresh permutation per call, i.e. per epoch).
    pub fn shuffled(dataset: &'a Dataset, batch_size: usize, rng: &mut ChaCha8Rng) -> Self {
        let mut order: Vec<usize> = (0..dataset.len()).collect();
        order.shuffle(rng);
        Batcher { dataset, order, batch_size: batch_size.max(1), position: 0 }
    }

    /// Batches in dataset order.
    pub fn sequential(dataset: &'a Dataset, batch_size: usize) -> Self {
        Batcher { dataset, order: (0..dataset.len()).collect(), batch_size: batch_size.max(1), position: 0 }
    }

    /// Number of batches in one pass.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Passes over the next `batches` batches without reading them (to continue an epoch from a checkpoint).
    pub fn skip_batches(&mut self, batches: usize) {
        self.position = self.position.saturating_add(batches.saturating_mul(self.batch_size)).min(self.order.len());
    }

    /// The next batch as (row-major values, number of examples), or `None` at the end of the pass.
    pub fn next_batch(&mut self) -> Option<(Vec<f32>, usize)> {
        if self.position >= self.order.len() {
            return None;
        }
        let end = (self.position + self.batch_size).min(self.order.len());
        let rows = end - self.position;
        let mut values = Vec::with_capacity(rows * self.dataset.shape.dim());
        let order = &self.order[self.position..end];
        for (slot, &index) in order.iter().enumerate() {
            if let Some(&ahead) = order.get(slot + PREFETCH_AHEAD) {
                self.dataset.prefetch_example(ahead);
            }
            self.dataset.push_example(index, &mut values);
        }
        self.position = end;
        Some((values, rows))
    }
}

impl Iterator for Batcher<'_> {
    /// The row-major values of a batch and its number of examples.
    type Item = (Vec<f32>, usize);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

/// A batch of `rows` examples of `dim` values as an f32 tensor `[rows, dim]` on `device`.
pub fn batch_tensor(values: Vec<f32>, rows: usize, dim: usize, device: &Device) -> crate::Result<Tensor> {
    Ok(Tensor::from_vec(values, (rows, dim), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ExampleShape, Values};

    fn tiny() -> Dataset {
        Dataset {
            source: "tiny".into(),
            values: Values::U8((0..20).map(|v| v * 10).collect()),
            shape: ExampleShape::flat(2),
            labels: None,
            class_names: None,
            factors: None,
        }
    }

    #[test]
    fn shuffled_batches_cover_every_example_once() {
        let data = tiny();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut batcher = Batcher::shuffled(&data, 4, &mut rng);
        assert_eq!(batcher.num_batches(), 3);
        let mut seen = Vec::new();
        while let Some((values, rows)) = batcher.next_batch() {
            assert_eq!(values.len(), rows * 2);
            seen.extend(values.chunks(2).map(|pair| (pair[0] * 255.0).round() as u32));
        }
        seen.sort();
        assert_eq!(seen, (0..10).map(|i| i * 20).collect::<Vec<_>>());
    }

    #[test]
    fn binarizations_give_zeros_and_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut values = vec![0.2, 0.7, 0.5, 1.0, 0.0];
        Binarization::Static { threshold: 0.5 }.apply(&mut values, &mut rng);
        assert_eq!(values, vec![0.0, 1.0, 0.0, 1.0, 0.0]);
        let mut grey = vec![0.3f32; 10_000];
        Binarization::Dynamic.apply(&mut grey, &mut rng);
        assert!(grey.iter().all(|&v| v == 0.0 || v == 1.0));
        let mean = grey.iter().sum::<f32>() / grey.len() as f32;
        assert!((mean - 0.3).abs() < 0.02, "dynamic binarization mean {mean}");
    }
}
