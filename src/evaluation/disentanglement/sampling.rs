//! Drawing factor configurations (each factor uniform over its values, independently of the others, from a seeded
//! ChaCha8 stream) and asking the representation for their codes, in chunks, with the lengths and values checked.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{FactorSpace, Representation};
use crate::{Error, Result};

/// The most rows of factors handed to [`Representation::codes`] in one call.
pub const ROWS_PER_CALL: usize = 4096;

/// Draws factor configurations and factor indices, reproducibly.
#[derive(Debug, Clone)]
pub struct FactorSampler {
    sizes: Vec<usize>,
    rng: ChaCha8Rng,
}

impl FactorSampler {
    /// A sampler over the factors of `space`, drawing from stream `stream` of `seed` (each metric has its own
    /// stream, so a metric's figures do not depend on which metrics ran before it).
    pub fn new(space: &FactorSpace, seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        FactorSampler { sizes: space.sizes.clone(), rng }
    }

    /// Number of factors.
    pub fn num_factors(&self) -> usize {
        self.sizes.len()
    }

    /// A factor index, uniform over the factors.
    pub fn factor(&mut self) -> usize {
        self.rng.random_range(0..self.sizes.len())
    }

    /// A value of factor `factor`, uniform over its values.
    pub fn value(&mut self, factor: usize) -> u32 {
        self.rng.random_range(0..self.sizes[factor]) as u32
    }

    /// `rows` configurations, row-major (`rows x num_factors` values), every factor uniform and independent.
    pub fn configurations(&mut self, rows: usize) -> Vec<u32> {
        let factors = self.sizes.len();
        (0..rows * factors).map(|i| self.value(i % factors)).collect()
    }

    /// The random stream itself, for the metrics' other draws (shuffles).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// Codes of several examples: `rows x dims` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeMatrix {
    /// The values, row-major.
    pub values: Vec<f32>,
    /// Code dimensions per row.
    pub dims: usize,
}

impl CodeMatrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.dims.max(1)
    }

    /// Row `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.dims..(row + 1) * self.dims]
    }

    /// The values of dimension `dim`, one per row.
    pub fn column(&self, dim: usize) -> Vec<f32> {
        self.values.iter().skip(dim).step_by(self.dims.max(1)).copied().collect()
    }

    /// The matrix as a `[rows, dims]` tensor on the CPU.
    pub fn to_tensor(&self) -> Result<candle_core::Tensor> {
        let shape = (self.rows(), self.dims);
        Ok(candle_core::Tensor::from_slice(&self.values, shape, &candle_core::Device::Cpu)?)
    }
}

/// The codes of the configurations `factors` (row-major, `num_factors` per row), asked for at most
/// [`ROWS_PER_CALL`] rows at a time; checks each answer's length and that every value is finite.
pub fn codes_of<R: Representation + ?Sized>(
    representation: &mut R,
    factors: &[u32],
    num_factors: usize,
) -> Result<CodeMatrix> {
    let dims = code_dim(representation)?;
    let mut values = Vec::with_capacity(factors.len() / num_factors.max(1) * dims);
    for chunk in factors.chunks(ROWS_PER_CALL * num_factors.max(1)) {
        let codes = representation.codes(chunk)?;
        check_codes(&codes, chunk.len() / num_factors.max(1), dims)?;
        values.extend_from_slice(&codes);
    }
    Ok(CodeMatrix { values, dims })
}

/// `points` configurations from `sampler` and their codes.
pub fn sample_codes<R: Representation + ?Sized>(
    representation: &mut R,
    sampler: &mut FactorSampler,
    points: usize,
) -> Result<(Vec<u32>, CodeMatrix)> {
    let factors = sampler.configurations(points);
    let codes = codes_of(representation, &factors, sampler.num_factors())?;
    Ok((factors, codes))
}

/// The representation's code dimension, refused when zero.
pub fn code_dim<R: Representation + ?Sized>(representation: &R) -> Result<usize> {
    match representation.code_dim() {
        0 => Err(Error::invalid_setting("representation", "code dimension 0; need at least one code dimension")),
        dims => Ok(dims),
    }
}

fn check_codes(codes: &[f32], rows: usize, dims: usize) -> Result<()> {
    if codes.len() != rows * dims {
        let problem = format!("the representation returned {} values for {rows} rows of {dims} codes", codes.len());
        return Err(Error::ShapeMismatch(problem));
    }
    if let Some(at) = codes.iter().position(|v| !v.is_finite()) {
        let problem = format!("code {} of row {} is {}; codes must be finite", at % dims, at / dims, codes[at]);
        return Err(Error::invalid_setting("representation", problem));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        calls: Vec<usize>,
        extra: usize,
    }

    impl Representation for Echo {
        fn code_dim(&self) -> usize {
            2
        }
        fn codes(&mut self, factors: &[u32]) -> Result<Vec<f32>> {
            self.calls.push(factors.len() / 2);
            Ok(factors.iter().map(|&f| f as f32).chain(std::iter::repeat_n(0.0, self.extra)).collect())
        }
    }

    fn space() -> FactorSpace {
        FactorSpace { names: vec!["a".into(), "b".into()], sizes: vec![3, 5] }
    }

    #[test]
    fn configurations_are_uniform_within_range_and_reproducible() {
        let mut sampler = FactorSampler::new(&space(), 7, 1);
        let rows = sampler.configurations(3000);
        assert_eq!(rows, FactorSampler::new(&space(), 7, 1).configurations(3000));
        assert_ne!(rows, FactorSampler::new(&space(), 7, 2).configurations(3000));
        let mut counts = [vec![0usize; 3], vec![0usize; 5]];
        rows.chunks(2).for_each(|row| row.iter().enumerate().for_each(|(k, &v)| counts[k][v as usize] += 1));
        assert!(counts[0].iter().all(|&c| (900..1100).contains(&c)), "{counts:?}");
        assert!(counts[1].iter().all(|&c| (520..680).contains(&c)), "{counts:?}");
    }

    #[test]
    fn codes_come_in_chunks_and_wrong_lengths_are_refused() {
        let mut echo = Echo { calls: Vec::new(), extra: 0 };
        let factors = FactorSampler::new(&space(), 1, 0).configurations(ROWS_PER_CALL + 10);
        let codes = codes_of(&mut echo, &factors, 2).unwrap();
        assert_eq!(echo.calls, vec![ROWS_PER_CALL, 10]);
        assert_eq!((codes.rows(), codes.row(3)), (ROWS_PER_CALL + 10, &[factors[6] as f32, factors[7] as f32][..]));
        assert_eq!(codes.column(1)[5], factors[11] as f32);
        let mut broken = Echo { calls: Vec::new(), extra: 1 };
        assert!(matches!(codes_of(&mut broken, &factors, 2), Err(Error::ShapeMismatch(_))));
    }
}
