//! The FactorVAE score (Kim & Mnih 2018), as disentanglement_lib computes it. The global variance of each code
//! dimension comes from `variance_samples` random configurations; dimensions whose standard deviation is below
//! `prune_threshold` are inactive and take no part. Each point picks a factor k uniformly, draws `batch_size`
//! configurations that all share one random value of k, divides each active dimension's variance within the batch by
//! its global variance and votes for (k, the dimension with the smallest ratio). The classifier maps each active
//! dimension to the factor with most of its training votes (ties to the lowest factor index, as numpy's `argmax`);
//! the score is the fraction of evaluation votes it gets right. Variances are unbiased (divided by n - 1), as
//! numpy's `var(ddof=1)` there. With no active dimension the score is 0, with a note saying why.
//!
//! The vote only needs each factor to have its own most affected dimension, not a dimension of its own: for codes
//! c = Q f (Q a rotation) the ratio of dimension i when factor k is fixed is about 1 - Q_ik^2 Var(f_k) / Var(c_i),
//! so a random rotation often keeps a high score (0.76 to 1 for ten random rotations in the tests), while factors
//! that share their most affected dimension (e.g. two factors mixed at 45 degrees, a tie) split their votes.

use serde::{Deserialize, Serialize};

use super::sampling::{code_dim, codes_of, sample_codes, FactorSampler, ROWS_PER_CALL};
use super::{require_at_least, FactorSpace, Representation};
use crate::{Error, Result};

/// The FactorVAE score's random stream (see [`FactorSampler::new`]).
const STREAM: u64 = 2;

/// Settings of the FactorVAE score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FactorVaeConfig {
    /// Configurations per vote, all sharing the fixed factor's value.
    pub batch_size: usize,
    /// Votes the majority-vote classifier is fitted on.
    pub train_points: usize,
    /// Votes it is scored on.
    pub eval_points: usize,
    /// Random configurations the global variances are estimated from.
    pub variance_samples: usize,
    /// Dimensions with a global standard deviation below this are inactive.
    pub prune_threshold: f64,
}

impl Default for FactorVaeConfig {
    /// disentanglement_lib's: batch 64, 10000 training and 5000 evaluation votes, 10000 variance samples, dimensions
    /// with standard deviation below 0.05 pruned.
    fn default() -> Self {
        FactorVaeConfig {
            batch_size: 64,
            train_points: 10000,
            eval_points: 5000,
            variance_samples: 10000,
            prune_threshold: 0.05,
        }
    }
}

impl FactorVaeConfig {
    /// Checks the sizes (variances need at least 2 samples) and that the threshold is finite and above 0 (so
    /// every active dimension has a variance to divide by).
    pub fn validate(&self) -> Result<()> {
        require_at_least("factor_vae.batch_size", self.batch_size, 2)?;
        require_at_least("factor_vae.train_points", self.train_points, 1)?;
        require_at_least("factor_vae.eval_points", self.eval_points, 1)?;
        require_at_least("factor_vae.variance_samples", self.variance_samples, 2)?;
        if !(self.prune_threshold.is_finite() && self.prune_threshold > 0.0) {
            let problem = format!("{}; need a finite number above 0", self.prune_threshold);
            return Err(Error::invalid_setting("factor_vae.prune_threshold", problem));
        }
        Ok(())
    }
}

/// The FactorVAE score: how often the majority-vote classifier names the fixed factor (chance is 1 / factors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorVaeScore {
    /// Accuracy on the votes it was fitted on.
    pub train_accuracy: f64,
    /// Accuracy on fresh votes: the score.
    pub eval_accuracy: f64,
    /// Number of active (unpruned) code dimensions.
    pub num_active_dims: usize,
    /// The active code dimensions, in order.
    pub active_dims: Vec<usize>,
    /// The factor the classifier assigns to each active dimension (same order as `active_dims`).
    pub dimension_factors: Vec<usize>,
    /// Why the score is 0 without a vote, when it is.
    pub note: Option<String>,
}

/// Votes: `counts[k * dims + d]` = how often factor k was fixed and active dimension d had the smallest ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct VoteTable {
    counts: Vec<u64>,
    factors: usize,
    dims: usize,
}

/// The FactorVAE score of `representation` over the factors of `space`, drawn from `seed`.
pub fn factor_vae_score<R: Representation + ?Sized>(
    space: &FactorSpace,
    representation: &mut R,
    config: &FactorVaeConfig,
    seed: u64,
) -> Result<FactorVaeScore> {
    space.validate()?;
    config.validate()?;
    code_dim(representation)?;
    let mut sampler = FactorSampler::new(space, seed, STREAM);
    let (_, codes) = sample_codes(representation, &mut sampler, config.variance_samples)?;
    let global = variances(&codes.values, codes.dims, &(0..codes.dims).collect::<Vec<_>>());
    // active: sqrt(Var_j) >= threshold
    let active: Vec<usize> = (0..codes.dims).filter(|&j| global[j].sqrt() >= config.prune_threshold).collect();
    if active.is_empty() {
        return Ok(no_active_dimension(config.prune_threshold));
    }
    let global_active: Vec<f64> = active.iter().map(|&j| global[j]).collect();
    let mut vote = |points| votes(representation, &mut sampler, config.batch_size, points, &active, &global_active);
    let train = vote(config.train_points)?;
    let eval = vote(config.eval_points)?;
    let dimension_factors = train.majority();
    Ok(FactorVaeScore {
        train_accuracy: train.accuracy(&dimension_factors),
        eval_accuracy: eval.accuracy(&dimension_factors),
        num_active_dims: active.len(),
        active_dims: active,
        dimension_factors,
        note: None,
    })
}

fn no_active_dimension(threshold: f64) -> FactorVaeScore {
    FactorVaeScore {
        train_accuracy: 0.0,
        eval_accuracy: 0.0,
        num_active_dims: 0,
        active_dims: Vec::new(),
        dimension_factors: Vec::new(),
        note: Some(format!("no active dimension: every code's standard deviation is below {threshold}; score 0")),
    }
}

/// `points` votes, the representation asked for whole batches at a time.
fn votes<R: Representation + ?Sized>(
    representation: &mut R,
    sampler: &mut FactorSampler,
    batch_size: usize,
    points: usize,
    active: &[usize],
    global: &[f64],
) -> Result<VoteTable> {
    let num_factors = sampler.num_factors();
    let mut table = VoteTable::new(num_factors, active.len());
    let points_per_call = (ROWS_PER_CALL / batch_size).max(1);
    let mut remaining = points;
    while remaining > 0 {
        let chunk = remaining.min(points_per_call);
        let mut factors = Vec::with_capacity(chunk * batch_size * num_factors);
        let fixed: Vec<usize> = (0..chunk).map(|_| draw_batch(sampler, batch_size, &mut factors)).collect();
        let codes = codes_of(representation, &factors, num_factors)?;
        for (batch, &k) in fixed.iter().enumerate() {
            let rows = &codes.values[batch * batch_size * codes.dims..(batch + 1) * batch_size * codes.dims];
            table.add(k, smallest_ratio(&variances(rows, codes.dims, active), global));
        }
        remaining -= chunk;
    }
    Ok(table)
}

/// Appends `batch_size` configurations sharing one random value of a uniform factor k to `factors`; returns k.
fn draw_batch(sampler: &mut FactorSampler, batch_size: usize, factors: &mut Vec<u32>) -> usize {
    let num_factors = sampler.num_factors();
    let fixed = sampler.factor();
    let mut batch = sampler.configurations(batch_size);
    let value = batch[fixed];
    batch.iter_mut().skip(fixed).step_by(num_factors).for_each(|v| *v = value);
    factors.extend(batch);
    fixed
}

/// The unbiased variance of each of the dimensions `which` of the row-major codes `values` (`dims` per row):
/// Var_j = sum_i (c_ij - mean_j)^2 / (n - 1).
fn variances(values: &[f32], dims: usize, which: &[usize]) -> Vec<f64> {
    let rows = values.len() / dims;
    let column = |j: usize| values.iter().skip(j).step_by(dims).map(|&v| v as f64);
    which
        .iter()
        .map(|&j| {
            let mean = column(j).sum::<f64>() / rows as f64;
            column(j).map(|v| (v - mean).powi(2)).sum::<f64>() / (rows.max(2) - 1) as f64
        })
        .collect()
}

/// argmin_d local_d / global_d (the first on ties, as numpy's `argmin`).
fn smallest_ratio(local: &[f64], global: &[f64]) -> usize {
    let ratios = local.iter().zip(global).map(|(l, g)| l / g);
    ratios.enumerate().fold((0, f64::INFINITY), |best, (d, r)| if r < best.1 { (d, r) } else { best }).0
}

impl VoteTable {
    /// An empty table for `factors` factors and `dims` active dimensions.
    pub fn new(factors: usize, dims: usize) -> Self {
        VoteTable { counts: vec![0; factors * dims], factors, dims }
    }

    /// One vote: factor `factor` was fixed and active dimension `dim` varied least.
    pub fn add(&mut self, factor: usize, dim: usize) {
        self.counts[factor * self.dims + dim] += 1;
    }

    /// The classifier: for each active dimension, the factor with most votes (the lowest index on ties, factor 0
    /// for a dimension without votes).
    pub fn majority(&self) -> Vec<usize> {
        let votes = |d: usize| (0..self.factors).map(move |k| (k, self.counts[k * self.dims + d]));
        let most = |d| votes(d).fold((0, 0), |best, (k, c)| if c > best.1 { (k, c) } else { best }).0;
        (0..self.dims).map(most).collect()
    }

    /// The fraction of the votes whose factor is the one `dimension_factors` assigns to their dimension
    /// (0 without votes).
    pub fn accuracy(&self, dimension_factors: &[usize]) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let right: u64 = dimension_factors.iter().enumerate().map(|(d, &k)| self.counts[k * self.dims + d]).sum();
        right as f64 / total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_vote_picks_the_most_common_factor_per_dimension() {
        let mut table = VoteTable::new(3, 4);
        for (factor, dim, times) in [(0, 0, 5), (1, 0, 2), (1, 1, 3), (2, 1, 3), (2, 2, 1), (0, 2, 4)] {
            (0..times).for_each(|_| table.add(factor, dim));
        }
        // dimension 1 is a tie (factor 1 wins, the lower index); dimension 3 has no votes (factor 0)
        assert_eq!(table.majority(), vec![0, 1, 0, 0]);
        // right: 5 (dim 0) + 3 (dim 1) + 4 (dim 2) of 18
        assert!((table.accuracy(&table.majority()) - 12.0 / 18.0).abs() < 1e-12);
        assert_eq!(VoteTable::new(2, 2).accuracy(&[0, 0]), 0.0);
    }

    #[test]
    fn unbiased_variances_and_smallest_ratio() {
        let codes = [1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0];
        // 1, 2, 3, 4: squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
        assert_eq!(variances(&codes, 2, &[0, 1]), vec![5.0 / 3.0, 0.0]);
        assert_eq!(variances(&codes, 2, &[1]), vec![0.0]);
        assert_eq!(smallest_ratio(&[2.0, 1.0, 3.0], &[1.0, 1.0, 10.0]), 2);
        assert_eq!(smallest_ratio(&[1.0, 1.0], &[1.0, 1.0]), 0);
    }

    #[test]
    fn a_batch_shares_the_fixed_factor_only() {
        let space = FactorSpace { names: vec!["a".into(), "b".into()], sizes: vec![40, 40] };
        let mut sampler = FactorSampler::new(&space, 5, STREAM);
        let mut factors = Vec::new();
        let fixed = draw_batch(&mut sampler, 30, &mut factors);
        let distinct = |k: usize| {
            let mut values: Vec<u32> = factors.iter().skip(k).step_by(2).copied().collect();
            values.sort_unstable();
            values.dedup();
            values.len()
        };
        assert_eq!(distinct(fixed), 1);
        assert!(distinct(1 - fixed) > 10);
    }
}
