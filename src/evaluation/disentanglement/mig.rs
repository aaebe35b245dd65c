//! The mutual information gap (Chen et al. 2018), as disentanglement_lib computes it: `points` random
//! configurations and their codes; each code dimension discretized into `bins` equal-width bins over its range
//! ([`discretize`]); the mutual information I(code_j; factor_k) and the entropy H(factor_k) from the counts, in
//! nats. Per factor, the gap is (the largest I over codes - the second largest) / H(factor_k); the MIG is their mean.
//!
//! Two cases disentanglement_lib leaves undefined are handled: a factor that took a single value in the sample
//! (H = 0, e.g. a factor with one value) has no gap and is left out of the mean (its gap is `None`); with a single
//! code dimension the second largest information is taken as 0. A perfectly disentangled code still scores below 1
//! when a factor has more values than the bins resolve, or because the plug-in information between independent
//! variables is slightly positive on a finite sample.

use serde::{Deserialize, Serialize};

use super::sampling::{code_dim, sample_codes, FactorSampler};
use super::{require_at_least, FactorSpace, Representation};
use crate::stats::information::{contingency, counts, discretize, entropy, mutual_information};
use crate::{Error, Result};

/// The MIG's random stream (see [`FactorSampler::new`]).
const STREAM: u64 = 3;

/// Settings of the MIG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigConfig {
    /// Random configurations the information is estimated from.
    pub points: usize,
    /// Equal-width bins per code dimension.
    pub bins: usize,
}

impl Default for MigConfig {
    /// disentanglement_lib's: 10000 points, 20 bins.
    fn default() -> Self {
        MigConfig { points: 10000, bins: 20 }
    }
}

impl MigConfig {
    /// Checks that there are at least 2 points and 1 bin.
    pub fn validate(&self) -> Result<()> {
        require_at_least("mig.points", self.points, 2)?;
        require_at_least("mig.bins", self.bins, 1)
    }
}

/// The MIG with its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigScore {
    /// The mean of the per-factor gaps that exist: the score, 0 to 1.
    pub score: f64,
    /// Per factor, (largest I - second largest I) / H(factor); `None` for a factor with H = 0 in the sample.
    pub gaps: Vec<Option<f64>>,
    /// Per factor, H(factor) in nats.
    pub factor_entropies: Vec<f64>,
    /// `mutual_information[j][k]` = I(code_j; factor_k) in nats.
    pub mutual_information: Vec<Vec<f64>>,
}

/// The MIG of `representation` over the factors of `space`, drawn from `seed`.
pub fn mig_score<R: Representation + ?Sized>(
    space: &FactorSpace,
    representation: &mut R,
    config: &MigConfig,
    seed: u64,
) -> Result<MigScore> {
    space.validate()?;
    config.validate()?;
    code_dim(representation)?;
    let mut sampler = FactorSampler::new(space, seed, STREAM);
    let (factors, codes) = sample_codes(representation, &mut sampler, config.points)?;
    let factor_columns = columns_of(&factors, space.num_factors());
    let binned: Vec<Vec<u32>> = (0..codes.dims).map(|j| discretize(&codes.column(j), config.bins)).collect();
    let information = information_matrix(&binned, config.bins, &factor_columns, &space.sizes);
    let entropies: Vec<f64> =
        factor_columns.iter().zip(&space.sizes).map(|(f, &size)| entropy(&counts(f, size))).collect();
    let gaps: Vec<Option<f64>> = (0..space.num_factors()).map(|k| gap(&information, k, entropies[k])).collect();
    Ok(MigScore { score: mean_of_gaps(&gaps)?, gaps, factor_entropies: entropies, mutual_information: information })
}

/// The columns of the row-major `values` (`width` per row).
fn columns_of(values: &[u32], width: usize) -> Vec<Vec<u32>> {
    (0..width).map(|k| values.iter().skip(k).step_by(width).copied().collect()).collect()
}

/// `I[j][k]` = I(code_j; factor_k) from the binned codes (values below `bins`) and the factors (below their sizes).
fn information_matrix(binned: &[Vec<u32>], bins: usize, factors: &[Vec<u32>], sizes: &[usize]) -> Vec<Vec<f64>> {
    let information = |code: &Vec<u32>| {
        let per_factor = factors.iter().zip(sizes);
        per_factor.map(|(factor, &size)| mutual_information(&contingency(code, bins, factor, size))).collect()
    };
    binned.iter().map(information).collect()
}

/// (largest I(code_j; factor_k) over j - the second largest) / H(factor_k); `None` when H = 0.
fn gap(information: &[Vec<f64>], factor: usize, factor_entropy: f64) -> Option<f64> {
    if factor_entropy <= 0.0 {
        return None;
    }
    let mut column: Vec<f64> = information.iter().map(|row| row[factor]).collect();
    column.sort_by(|a, b| b.total_cmp(a));
    let second = column.get(1).copied().unwrap_or(0.0);
    Some((column[0] - second) / factor_entropy)
}

/// MIG = (1 / |K'|) sum_{k in K'} gap_k over the factors K' with a gap.
fn mean_of_gaps(gaps: &[Option<f64>]) -> Result<f64> {
    let present: Vec<f64> = gaps.iter().flatten().copied().collect();
    if present.is_empty() {
        let problem = "every factor took a single value in the sample; the MIG needs a factor that varies";
        return Err(Error::invalid_setting("factors", problem));
    }
    Ok(present.iter().sum::<f64>() / present.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_is_the_normalized_difference_of_the_two_largest() {
        let information = vec![vec![0.2, 1.0], vec![0.9, 0.1], vec![0.5, 0.0]];
        assert!((gap(&information, 0, 2.0).unwrap() - 0.2).abs() < 1e-12); // (0.9 - 0.5) / 2
        assert!((gap(&information, 1, 1.0).unwrap() - 0.9).abs() < 1e-12); // (1.0 - 0.1) / 1
        assert_eq!(gap(&information, 1, 0.0), None);
        assert_eq!(gap(&[vec![0.7]], 0, 1.0), Some(0.7)); // a single code: the second largest is 0
    }

    #[test]
    fn factors_without_entropy_are_left_out_of_the_mean() {
        assert!((mean_of_gaps(&[Some(0.5), None, Some(0.1)]).unwrap() - 0.3).abs() < 1e-12);
        assert!(mean_of_gaps(&[None, None]).is_err());
    }
}
