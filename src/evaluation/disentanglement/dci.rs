//! Disentanglement, completeness and informativeness (Eastwood & Williams 2018), on `train_points` and `test_points`
//! random configurations, as disentanglement_lib lays them out, with a simpler importance model than its
//! gradient-boosted trees.
//!
//! **The model.** For each factor k the crate's multinomial [`LogisticRegression`] (standardized codes) is fitted on
//! the training codes to predict the factor's value. The fitted weights are not exposed, so the importance of code j
//! for factor k, `R[j][k]`, is the classifier's permutation sensitivity: the fraction of test points whose predicted
//! value changes when code j's column is shuffled across the test points (Breiman's permutation importance, with
//! prediction changes instead of accuracy drops, so that it is never negative). It is 0 for a code the classifier
//! ignores and approaches 1 - 1/size for a code it relies on entirely. Informativeness is the classifier's accuracy
//! on the training and on the test points (disentanglement_lib reports accuracies too), averaged over the factors.
//!
//! **The scores.** With P_jk = R_jk / sum_k R_jk, the disentanglement of code j is D_j = 1 - H_K(P_j.) (entropy in
//! base K, the number of factors), and the overall disentanglement is sum_j rho_j D_j with rho_j = sum_k R_jk /
//! sum_jk R_jk. With P~_jk = R_jk / sum_j R_jk, the completeness of factor k is C_k = 1 - H_D(P~_.k) (base D, the
//! number of codes); the overall completeness is their plain mean (disentanglement_lib weights them by each factor's
//! share of the importance instead). A code or factor with no importance at all scores 0, as the uniform distribution
//! disentanglement_lib falls back to does; an all-zero matrix gives 0 for both.

use candle_core::Tensor;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::sampling::{code_dim, sample_codes, CodeMatrix, FactorSampler};
use super::{require_at_least, FactorSpace, Representation};
use crate::stats::logistic::{fraction_equal, LogisticConfig, LogisticRegression};
use crate::Result;

/// DCI's random stream (see [`FactorSampler::new`]).
const STREAM: u64 = 4;

/// Settings of DCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DciConfig {
    /// Configurations the classifiers are fitted on.
    pub train_points: usize,
    /// Configurations they are scored on, and the importances measured on.
    pub test_points: usize,
    /// Adam steps of each factor's logistic regression (at the crate's default learning rate 0.05 and L2 1e-4).
    /// More than the linear probe's 300: a factor with many values laid out along one code needs them for the
    /// classifier to separate every value, and an underfitted classifier leans on unrelated codes near its
    /// boundaries, which shows up as importance where there is none.
    pub classifier_steps: usize,
}

impl Default for DciConfig {
    /// disentanglement_lib's sizes, 10000 training and 5000 test points; 1000 classifier steps.
    fn default() -> Self {
        DciConfig { train_points: 10000, test_points: 5000, classifier_steps: 1000 }
    }
}

impl DciConfig {
    /// Checks that both sizes and the classifier steps are at least 1.
    pub fn validate(&self) -> Result<()> {
        require_at_least("dci.train_points", self.train_points, 1)?;
        require_at_least("dci.test_points", self.test_points, 1)?;
        require_at_least("dci.classifier_steps", self.classifier_steps, 1)
    }
}

/// DCI with its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DciScore {
    /// sum_j rho_j D_j, 0 to 1.
    pub disentanglement: f64,
    /// mean_k C_k, 0 to 1.
    pub completeness: f64,
    /// The classifiers' mean accuracy on the training points.
    pub informativeness_train: f64,
    /// The classifiers' mean accuracy on the test points.
    pub informativeness_test: f64,
    /// `importance[j][k]` = R_jk, the importance of code j for factor k.
    pub importance: Vec<Vec<f64>>,
    /// Per code, D_j.
    pub disentanglement_per_code: Vec<f64>,
    /// Per code, its weight rho_j in the disentanglement.
    pub code_weights: Vec<f64>,
    /// Per factor, C_k.
    pub completeness_per_factor: Vec<f64>,
    /// Per factor, the classifier's accuracy on the training points.
    pub train_accuracy_per_factor: Vec<f64>,
    /// Per factor, the classifier's accuracy on the test points.
    pub test_accuracy_per_factor: Vec<f64>,
}

/// One factor's classifier: its accuracies and the importance of each code for it.
struct FactorFit {
    train_accuracy: f64,
    test_accuracy: f64,
    importance: Vec<f64>,
}

/// The codes and factors of one set of points.
struct Points {
    factors: Vec<u32>,
    codes: CodeMatrix,
}

/// DCI of `representation` over the factors of `space`, drawn from `seed`.
pub fn dci_score<R: Representation + ?Sized>(
    space: &FactorSpace,
    representation: &mut R,
    config: &DciConfig,
    seed: u64,
) -> Result<DciScore> {
    space.validate()?;
    config.validate()?;
    code_dim(representation)?;
    let mut sampler = FactorSampler::new(space, seed, STREAM);
    let (factors, codes) = sample_codes(representation, &mut sampler, config.train_points)?;
    let train = Points { factors, codes };
    let (factors, codes) = sample_codes(representation, &mut sampler, config.test_points)?;
    let test = Points { factors, codes };
    let fits = (0..space.num_factors())
        .map(|k| fit_factor(&train, &test, k, space, config.classifier_steps, &mut sampler))
        .collect::<Result<Vec<FactorFit>>>()?;
    let importance: Vec<Vec<f64>> =
        (0..train.codes.dims).map(|j| fits.iter().map(|fit| fit.importance[j]).collect()).collect();
    Ok(DciScore {
        disentanglement: disentanglement(&importance),
        completeness: completeness(&importance),
        informativeness_train: mean(fits.iter().map(|fit| fit.train_accuracy)),
        informativeness_test: mean(fits.iter().map(|fit| fit.test_accuracy)),
        disentanglement_per_code: disentanglement_per_code(&importance),
        code_weights: code_weights(&importance),
        completeness_per_factor: completeness_per_factor(&importance),
        train_accuracy_per_factor: fits.iter().map(|fit| fit.train_accuracy).collect(),
        test_accuracy_per_factor: fits.iter().map(|fit| fit.test_accuracy).collect(),
        importance,
    })
}

/// Fits the classifier of factor `factor` and measures each code's importance for it on the test points.
fn fit_factor(
    train: &Points,
    test: &Points,
    factor: usize,
    space: &FactorSpace,
    classifier_steps: usize,
    sampler: &mut FactorSampler,
) -> Result<FactorFit> {
    let labels = |points: &Points| -> Vec<u32> {
        points.factors.iter().skip(factor).step_by(space.num_factors()).copied().collect()
    };
    let (train_labels, test_labels) = (labels(train), labels(test));
    let classes = space.sizes[factor];
    let logistic = LogisticConfig { steps: classifier_steps, ..LogisticConfig::default() };
    let model = LogisticRegression::fit(&train.codes.to_tensor()?, &train_labels, classes, &logistic)?;
    let predicted = model.predict(&test.codes.to_tensor()?)?;
    let importance = (0..test.codes.dims)
        .map(|j| permutation_sensitivity(&model, &test.codes, j, &predicted, sampler))
        .collect::<Result<Vec<f64>>>()?;
    Ok(FactorFit {
        train_accuracy: model.accuracy(&train.codes.to_tensor()?, &train_labels)?,
        test_accuracy: fraction_equal(&predicted, &test_labels),
        importance,
    })
}

/// The fraction of rows of `codes` whose prediction differs from `predicted` once code `dim` is shuffled across the
/// rows: R = (1 / N) sum_i [prediction_i(shuffled) != prediction_i].
fn permutation_sensitivity(
    model: &LogisticRegression,
    codes: &CodeMatrix,
    dim: usize,
    predicted: &[u32],
    sampler: &mut FactorSampler,
) -> Result<f64> {
    let mut column = codes.column(dim);
    column.shuffle(sampler.rng());
    let mut shuffled = codes.clone();
    shuffled.values.iter_mut().skip(dim).step_by(codes.dims).zip(column).for_each(|(value, new)| *value = new);
    let rows = shuffled.rows();
    let changed = model.predict(&Tensor::from_vec(shuffled.values, (rows, codes.dims), &candle_core::Device::Cpu)?)?;
    Ok(1.0 - fraction_equal(&changed, predicted))
}

/// Per code j: D_j = 1 - H_K(P_j.), P_jk = R_jk / sum_k R_jk, K the number of factors (negative entries count as 0).
pub fn disentanglement_per_code(importance: &[Vec<f64>]) -> Vec<f64> {
    let factors = importance.first().map_or(0, Vec::len);
    importance.iter().map(|row| one_minus_normalized_entropy(row, factors)).collect()
}

/// Per code j: rho_j = sum_k R_jk / sum_jk R_jk (all 0 when the whole matrix is 0).
pub fn code_weights(importance: &[Vec<f64>]) -> Vec<f64> {
    let row_sums: Vec<f64> = importance.iter().map(|row| row.iter().map(|&r| r.max(0.0)).sum()).collect();
    let total: f64 = row_sums.iter().sum();
    row_sums.iter().map(|&sum| if total > 0.0 { sum / total } else { 0.0 }).collect()
}

/// The disentanglement D = sum_j rho_j D_j.
pub fn disentanglement(importance: &[Vec<f64>]) -> f64 {
    let per_code = disentanglement_per_code(importance);
    code_weights(importance).iter().zip(per_code).map(|(rho, d)| rho * d).sum()
}

/// Per factor k: C_k = 1 - H_D(P~_.k), P~_jk = R_jk / sum_j R_jk, D the number of codes.
pub fn completeness_per_factor(importance: &[Vec<f64>]) -> Vec<f64> {
    let factors = importance.first().map_or(0, Vec::len);
    let column = |k: usize| importance.iter().map(|row| row.get(k).copied().unwrap_or(0.0)).collect::<Vec<f64>>();
    (0..factors).map(|k| one_minus_normalized_entropy(&column(k), importance.len())).collect()
}

/// The completeness C = (1 / K) sum_k C_k.
pub fn completeness(importance: &[Vec<f64>]) -> f64 {
    mean(completeness_per_factor(importance).into_iter())
}

/// 1 - H_base(p) with p = w / sum w and H_base(p) = -sum_i p_i ln p_i / ln base: 0 when the weights are all 0 (as
/// for the uniform distribution), 1 for a single outcome (base 1).
fn one_minus_normalized_entropy(weights: &[f64], base: usize) -> f64 {
    let total: f64 = weights.iter().map(|&w| w.max(0.0)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    if base <= 1 {
        return 1.0;
    }
    let probabilities = weights.iter().map(|&w| w.max(0.0) / total).filter(|&p| p > 0.0);
    let entropy: f64 = -probabilities.map(|p| p * p.ln()).sum::<f64>();
    1.0 - entropy / (base as f64).ln()
}

/// The mean of `values` (0 when empty).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    sum / count.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_diagonal_importance_is_perfect() {
        let diagonal = vec![vec![0.9, 0.0, 0.0], vec![0.0, 0.3, 0.0], vec![0.0, 0.0, 0.5]];
        assert!(close(disentanglement(&diagonal), 1.0));
        assert!(close(completeness(&diagonal), 1.0));
        assert!(close(code_weights(&diagonal)[0], 0.9 / 1.7));
    }

    #[test]
    fn a_uniform_importance_scores_zero() {
        let uniform = vec![vec![0.2; 4]; 3];
        assert!(close(disentanglement(&uniform), 0.0));
        assert!(close(completeness(&uniform), 0.0));
    }

    #[test]
    fn known_mixtures() {
        // code 0 splits evenly over 2 of 4 factors: D_0 = 1 - ln 2 / ln 4 = 0.5; code 1 is pure: D_1 = 1
        let importance = vec![vec![1.0, 1.0, 0.0, 0.0], vec![0.0, 0.0, 2.0, 0.0]];
        assert!(close(disentanglement_per_code(&importance)[0], 0.5));
        // rho = (2/4, 2/4): D = 0.5 * 0.5 + 0.5 * 1
        assert!(close(disentanglement(&importance), 0.75));
        // factors 0, 1, 2 each on one code (C_k = 1); factor 3 on none (C_k = 0)
        assert_eq!(completeness_per_factor(&importance), vec![1.0, 1.0, 1.0, 0.0]);
        assert!(close(completeness(&importance), 0.75));
    }

    #[test]
    fn zero_rows_columns_and_matrices_give_no_nan() {
        let with_dead_code = vec![vec![0.5, 0.0], vec![0.0, 0.0], vec![0.0, 0.5]];
        assert!(close(disentanglement(&with_dead_code), 1.0));
        assert_eq!(disentanglement_per_code(&with_dead_code)[1], 0.0);
        let zero = vec![vec![0.0; 3]; 2];
        assert_eq!((disentanglement(&zero), completeness(&zero)), (0.0, 0.0));
        assert_eq!(code_weights(&zero), vec![0.0, 0.0]);
        // a single code: completeness is trivially 1 for a factor it matters to
        assert_eq!(completeness_per_factor(&[vec![0.4, 0.0]]), vec![1.0, 0.0]);
    }
}
