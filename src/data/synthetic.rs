//! Synthetic data for benchmarks: values drawn uniformly from [0, 1), no structure to learn.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Dataset, ExampleShape, Values};

/// `examples` rows of `dim` values drawn uniformly from [0, 1) (valid Bernoulli means), seeded with `seed`.
pub fn uniform(examples: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values = (0..examples * dim).map(|_| rng.random::<f32>()).collect();
    Dataset {
        source: format!("synthetic uniform [0, 1) ({examples} x {dim}, seed {seed})"),
        values: Values::F32(values),
        shape: ExampleShape::flat(dim),
        labels: None,
        class_names: None,
        factors: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_data_have_the_shape_asked_for_and_repeat_by_seed() {
        let data = uniform(30, 7, 3);
        assert_eq!((data.len(), data.shape.dim()), (30, 7));
        let (min, max) = data.value_range();
        assert!(min >= 0.0 && max < 1.0 && max > min);
        assert_eq!(uniform(30, 7, 3).values, data.values);
        assert_ne!(uniform(30, 7, 4).values, data.values);
    }
}
