//! The beta-VAE score (Higgins et al. 2017), as disentanglement_lib computes it: each training point picks a factor
//! k uniformly and draws `batch_size` pairs of configurations that share factor k (every other factor drawn
//! independently for each side); its feature is the mean over the pairs of |code1 - code2|, per code dimension. A
//! linear classifier predicts k from the feature; the score is its accuracy. disentanglement_lib fits sklearn's
//! `LogisticRegression`; here the crate's multinomial [`LogisticRegression`] on standardized features does, with its
//! default settings (300 full-batch Adam steps).
//!
//! The classifier is linear, so the score tolerates mixing: for codes c = Q f (Q a rotation), the expected feature
//! E|Q(f1 - f2)|_j still depends on k through which factor's spread is missing from each dimension, and a linear
//! classifier can usually read that off, so rotated codes keep a high score (0.995 or more for ten random rotations
//! in the tests). It drops when two factors leave the same footprint, e.g. two factors of similar spread mixed at 45
//! degrees, and reaches chance only when the codes carry no factor at all.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::sampling::{code_dim, codes_of, FactorSampler, ROWS_PER_CALL};
use super::{require_at_least, FactorSpace, Representation};
use crate::stats::logistic::{LogisticConfig, LogisticRegression};
use crate::Result;

/// The beta-VAE score's random stream (see [`FactorSampler::new`]).
const STREAM: u64 = 1;

/// Settings of the beta-VAE score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BetaVaeConfig {
    /// Pairs of configurations averaged into one feature.
    pub batch_size: usize,
    /// Features the classifier is fitted on.
    pub train_points: usize,
    /// Features it is scored on.
    pub eval_points: usize,
}

impl Default for BetaVaeConfig {
    /// disentanglement_lib's: batch 64, 10000 training and 5000 evaluation points.
    fn default() -> Self {
        BetaVaeConfig { batch_size: 64, train_points: 10000, eval_points: 5000 }
    }
}

impl BetaVaeConfig {
    /// Checks that every size is at least 1.
    pub fn validate(&self) -> Result<()> {
        require_at_least("beta_vae.batch_size", self.batch_size, 1)?;
        require_at_least("beta_vae.train_points", self.train_points, 1)?;
        require_at_least("beta_vae.eval_points", self.eval_points, 1)
    }
}

/// The beta-VAE score: how often a linear classifier names the factor held fixed (chance is 1 / factors).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BetaVaeScore {
    /// Accuracy on the points it was fitted on.
    pub train_accuracy: f64,
    /// Accuracy on fresh points: the score.
    pub eval_accuracy: f64,
}

/// Features (mean absolute code differences) and the fixed factor of each, for the classifier.
struct Features {
    values: Vec<f32>,
    labels: Vec<u32>,
    dims: usize,
}

/// The beta-VAE score of `representation` over the factors of `space`, drawn from `seed`.
pub fn beta_vae_score<R: Representation + ?Sized>(
    space: &FactorSpace,
    representation: &mut R,
    config: &BetaVaeConfig,
    seed: u64,
) -> Result<BetaVaeScore> {
    space.validate()?;
    config.validate()?;
    let mut sampler = FactorSampler::new(space, seed, STREAM);
    let train = features(representation, &mut sampler, config.batch_size, config.train_points)?;
    let eval = features(representation, &mut sampler, config.batch_size, config.eval_points)?;
    let classes = space.num_factors();
    let model = LogisticRegression::fit(&train.tensor()?, &train.labels, classes, &LogisticConfig::default())?;
    Ok(BetaVaeScore {
        train_accuracy: model.accuracy(&train.tensor()?, &train.labels)?,
        eval_accuracy: model.accuracy(&eval.tensor()?, &eval.labels)?,
    })
}

/// `points` features, the representation asked for whole batches of pairs at a time.
fn features<R: Representation + ?Sized>(
    representation: &mut R,
    sampler: &mut FactorSampler,
    batch_size: usize,
    points: usize,
) -> Result<Features> {
    let dims = code_dim(representation)?;
    let points_per_call = (ROWS_PER_CALL / (2 * batch_size)).max(1);
    let mut features = Features { values: Vec::with_capacity(points * dims), labels: Vec::with_capacity(points), dims };
    let mut remaining = points;
    while remaining > 0 {
        let chunk = remaining.min(points_per_call);
        let mut factors = Vec::with_capacity(chunk * 2 * batch_size * sampler.num_factors());
        for _ in 0..chunk {
            features.labels.push(draw_pairs(sampler, batch_size, &mut factors) as u32);
        }
        let codes = codes_of(representation, &factors, sampler.num_factors())?;
        for pairs in codes.values.chunks(2 * batch_size * dims) {
            features.values.extend(mean_absolute_difference(pairs, batch_size, dims));
        }
        remaining -= chunk;
    }
    Ok(features)
}

/// Appends to `factors` `batch_size` first configurations then `batch_size` second ones, each second sharing the
/// value of factor k with its first (k uniform); returns k.
fn draw_pairs(sampler: &mut FactorSampler, batch_size: usize, factors: &mut Vec<u32>) -> usize {
    let num_factors = sampler.num_factors();
    let fixed = sampler.factor();
    let first = sampler.configurations(batch_size);
    let mut second = sampler.configurations(batch_size);
    for row in 0..batch_size {
        second[row * num_factors + fixed] = first[row * num_factors + fixed];
    }
    factors.extend(first);
    factors.extend(second);
    fixed
}

/// Per code dimension j: (1 / B) sum_b |code1_bj - code2_bj|, with the B first codes followed by the B second ones.
fn mean_absolute_difference(pairs: &[f32], batch_size: usize, dims: usize) -> Vec<f32> {
    let (first, second) = pairs.split_at(batch_size * dims);
    let mut sums = vec![0f64; dims];
    for (a, b) in first.chunks(dims).zip(second.chunks(dims)) {
        sums.iter_mut().zip(a.iter().zip(b)).for_each(|(sum, (x, y))| *sum += (*x as f64 - *y as f64).abs());
    }
    sums.into_iter().map(|sum| (sum / batch_size as f64) as f32).collect()
}

impl Features {
    fn tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.values, (self.labels.len(), self.dims), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_is_the_mean_absolute_difference() {
        // two pairs of 2-d codes: |1 - 3| and |2 - 2| in the first dimension, |0 - 4| and |5 - 1| in the second
        let pairs = [1.0, 0.0, 2.0, 5.0, 3.0, 4.0, 2.0, 1.0];
        assert_eq!(mean_absolute_difference(&pairs, 2, 2), vec![1.0, 4.0]);
    }

    #[test]
    fn pairs_share_exactly_the_fixed_factor() {
        let space = FactorSpace { names: vec!["a".into(), "b".into(), "c".into()], sizes: vec![50, 50, 50] };
        let mut sampler = FactorSampler::new(&space, 3, STREAM);
        let mut factors = Vec::new();
        let fixed = draw_pairs(&mut sampler, 40, &mut factors);
        let (first, second) = factors.split_at(40 * 3);
        for k in 0..3 {
            let shared = first.chunks(3).zip(second.chunks(3)).filter(|(a, b)| a[k] == b[k]).count();
            assert!(if k == fixed { shared == 40 } else { shared < 10 }, "factor {k}, fixed {fixed}: {shared}");
        }
    }
}
