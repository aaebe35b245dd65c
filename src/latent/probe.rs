//! Representation quality as a number: a linear probe (multinomial logistic regression) fitted on the training
//! set's codes mu and scored on the held-out set's, next to the same probe on the raw inputs and on a random linear
//! projection of the inputs to as many dimensions as the latent space.

use candle_core::{DType, Device, Tensor};

use super::encode::{encode_dataset, examples_tensor};
use super::labels::{class_count, labels_of, LabelChoice};
use crate::data::{Dataset, Splits};
use crate::model::Vae;
use crate::objective::NoiseSource;
use crate::stats::logistic::{fraction_equal, LogisticConfig, LogisticRegression};
use crate::Result;

/// How the probes are fitted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeConfig {
    /// The classes to predict.
    pub labels: LabelChoice,
    /// The logistic regression's settings.
    pub logistic: LogisticConfig,
    /// Seed of the random projection.
    pub seed: u64,
}

/// One probe's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeScore {
    /// Number of input features.
    pub features: usize,
    /// Accuracy on the training set it was fitted on.
    pub train_accuracy: f64,
    /// Accuracy on the held-out set.
    pub test_accuracy: f64,
}

/// The three probes side by side.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    /// What was predicted: "labels" or "factor NAME".
    pub target: String,
    /// Number of classes.
    pub classes: usize,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub test_examples: usize,
    /// Held-out accuracy of always answering the most common training class.
    pub chance: f64,
    /// The probe on the codes mu.
    pub latent: ProbeScore,
    /// The probe on the raw inputs.
    pub raw: ProbeScore,
    /// The probe on a random Gaussian projection of the inputs to `latent_dim` dimensions.
    pub random_projection: ProbeScore,
}

/// Fits the three probes on `splits.train` and scores them on `splits.test`; codes are computed in batches of
/// `batch_size`.
pub fn probe(
    vae: &Vae,
    splits: &Splits,
    config: &ProbeConfig,
    batch_size: usize,
    device: &Device,
) -> Result<ProbeReport> {
    let train_labels = labels_of(&splits.train, &config.labels)?;
    let test_labels = labels_of(&splits.test, &config.labels)?;
    let classes = class_count(&train_labels).max(class_count(&test_labels));
    let fit =
        |train: &Tensor, test: &Tensor| score(train, &train_labels, test, &test_labels, classes, &config.logistic);
    let codes = |data: &Dataset| encode_dataset(vae, data, batch_size, device)?.mu_tensor(device);
    let latent = fit(&codes(&splits.train)?, &codes(&splits.test)?)?;
    let (raw_train, raw_test) = (all_examples(&splits.train, device)?, all_examples(&splits.test, device)?);
    let raw = fit(&raw_train, &raw_test)?;
    let projection = random_projection(splits.train.shape.dim(), vae.config().latent_dim, config.seed, device)?;
    let random_projection = fit(&raw_train.matmul(&projection)?, &raw_test.matmul(&projection)?)?;
    Ok(ProbeReport {
        target: config.labels.describe(),
        classes,
        train_examples: splits.train.len(),
        test_examples: splits.test.len(),
        chance: majority_accuracy(&train_labels, &test_labels, classes),
        latent,
        raw,
        random_projection,
    })
}

/// Fits a probe on (`train`, `train_labels`) and scores it on both sets.
fn score(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    test_labels: &[u32],
    classes: usize,
    config: &LogisticConfig,
) -> Result<ProbeScore> {
    let model = LogisticRegression::fit(train, train_labels, classes, config)?;
    Ok(ProbeScore {
        features: train.dims2()?.1,
        train_accuracy: model.accuracy(train, train_labels)?,
        test_accuracy: model.accuracy(test, test_labels)?,
    })
}

/// Every example of `dataset` as one `[len, dim]` tensor.
fn all_examples(dataset: &Dataset, device: &Device) -> Result<Tensor> {
    examples_tensor(dataset, &(0..dataset.len()).collect::<Vec<_>>(), device)
}

/// A `[inputs, outputs]` matrix of N(0, 1 / outputs) entries drawn from `seed`.
fn random_projection(inputs: usize, outputs: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let matrix = NoiseSource::new(seed).standard_normal(inputs, outputs, DType::F32, device)?;
    Ok((matrix / (outputs as f64).sqrt())?)
}

/// The held-out accuracy of always answering the most common training class.
fn majority_accuracy(train_labels: &[u32], test_labels: &[u32], classes: usize) -> f64 {
    let mut counts = vec![0usize; classes];
    train_labels.iter().for_each(|&l| counts[l as usize] += 1);
    let majority = (0..classes).max_by_key(|&c| (counts[c], std::cmp::Reverse(c))).unwrap_or(0) as u32;
    fraction_equal(&vec![majority; test_labels.len()], test_labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_is_the_majority_class_rate() {
        assert_eq!(majority_accuracy(&[0, 1, 1, 2], &[1, 1, 0, 2], 3), 0.5);
        assert_eq!(majority_accuracy(&[2, 0], &[0, 2, 2], 3), 1.0 / 3.0, "ties go to the smaller class");
    }
}
