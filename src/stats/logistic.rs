//! Multinomial logistic regression, the linear probe: softmax(x W + b) fitted by full-batch Adam on the mean
//! cross-entropy plus a small L2 penalty on W (gradients by hand), with features standardized by the training set's mean and standard
//! deviation. The weights start at zero and every step sees all the data, so a fit is deterministic.

use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarMap};

use crate::optimizer::{Optimizer, OptimizerConfig};
use crate::{Error, Result};

/// Below this standard deviation a feature counts as constant and is only centred, not scaled.
const CONSTANT_FEATURE: f64 = 1e-6;

/// How the probe is fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticConfig {
    /// Full-batch Adam steps.
    pub steps: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Weight of the penalty 0.5 * l2 * ||W||^2.
    pub l2: f64,
}

impl Default for LogisticConfig {
    /// 300 steps of Adam at 0.05, L2 weight 1e-4.
    fn default() -> Self {
        LogisticConfig { steps: 300, learning_rate: 0.05, l2: 1e-4 }
    }
}

/// A fitted multinomial logistic regression.
#[derive(Debug, Clone)]
pub struct LogisticRegression {
    mean: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor,
}

impl LogisticRegression {
    /// Fits the classes `labels` (each below `classes`) from the features `x` (`[N, F]`, one row per label).
    pub fn fit(x: &Tensor, labels: &[u32], classes: usize, config: &LogisticConfig) -> Result<Self> {
        let (rows, features) = x.dims2()?;
        check_labels(rows, labels, classes)?;
        let mean = x.mean(0)?;
        let centred = x.broadcast_sub(&mean)?;
        let std = centred.sqr()?.mean(0)?.sqrt()?;
        let scale = constant_to_one(&std)?.recip()?;
        let standardized = centred.broadcast_mul(&scale)?;
        let varmap = VarMap::new();
        let weight = varmap.get((features, classes), "weight", Init::Const(0.0), DType::F32, x.device())?;
        let bias = varmap.get(classes, "bias", Init::Const(0.0), DType::F32, x.device())?;
        let one_hot = one_hot(labels, classes, x.device())?;
        let mut optimizer = Optimizer::new(OptimizerConfig::default(), config.learning_rate, &varmap)?;
        for _ in 0..config.steps {
            let (weight_grad, bias_grad) = gradients(&standardized, &one_hot, &weight, &bias, config.l2)?;
            optimizer.step_with(|var| {
                let is = |t: &Tensor| var.as_tensor().id() == t.id();
                [(&weight, &weight_grad), (&bias, &bias_grad)].into_iter().find(|(v, _)| is(v)).map(|(_, g)| g.clone())
            })?;
        }
        Ok(LogisticRegression { mean, scale, weight: weight.detach(), bias: bias.detach() })
    }

    /// The most probable class of each row of `x`.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        let standardized = x.broadcast_sub(&self.mean)?.broadcast_mul(&self.scale)?;
        let logits = standardized.matmul(&self.weight)?.broadcast_add(&self.bias)?;
        Ok(logits.argmax(D::Minus1)?.to_vec1()?)
    }

    /// The fraction of rows of `x` whose predicted class is the label.
    pub fn accuracy(&self, x: &Tensor, labels: &[u32]) -> Result<f64> {
        let predicted = self.predict(x)?;
        check_labels(predicted.len(), labels, usize::MAX)?;
        Ok(fraction_equal(&predicted, labels))
    }
}

/// The gradients of the mean cross-entropy of softmax(x W + b) plus 0.5 * l2 * ||W||^2, worked out by hand:
/// G = (softmax - one-hot) / N, dW = x^T G + l2 W, db = the column sums of G. (Autograd would also form the
/// gradient with respect to x, as large as the data, at every step.)
fn gradients(x: &Tensor, one_hot: &Tensor, weight: &Tensor, bias: &Tensor, l2: f64) -> Result<(Tensor, Tensor)> {
    let logits = x.matmul(weight)?.broadcast_add(bias)?;
    let probabilities = candle_nn::ops::softmax_last_dim(&logits)?;
    let g = ((probabilities - one_hot)? / x.dims2()?.0 as f64)?;
    let weight_grad = (x.t()?.matmul(&g)? + (weight * l2)?)?;
    Ok((weight_grad, g.sum(0)?))
}

/// `labels` as rows of `classes` values, 1 at the label and 0 elsewhere.
fn one_hot(labels: &[u32], classes: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut values = vec![0f32; labels.len() * classes];
    labels.iter().enumerate().for_each(|(row, &label)| values[row * classes + label as usize] = 1.0);
    Ok(Tensor::from_vec(values, (labels.len(), classes), device)?)
}

/// The fraction of positions where `a` and `b` agree (0 when empty).
pub fn fraction_equal(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len().max(1) as f64
}

/// The standard deviations with (near) zeros replaced by one.
fn constant_to_one(std: &Tensor) -> Result<Tensor> {
    let constant = std.lt(CONSTANT_FEATURE)?;
    Ok(constant.where_cond(&std.ones_like()?, std)?)
}

fn check_labels(rows: usize, labels: &[u32], classes: usize) -> Result<()> {
    if labels.len() != rows || rows == 0 {
        let problem = format!("{} labels for {rows} rows of features; need one per row, at least one", labels.len());
        return Err(Error::invalid_setting("labels", problem));
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::invalid_setting("labels", format!("label {bad} is not below the {classes} classes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn features_tensor(values: &[f32], features: usize, device: &Device) -> Tensor {
        Tensor::from_slice(values, (values.len() / features, features), device).unwrap()
    }

    /// Three Gaussian blobs in 2-d, offset by a large constant (standardization must undo it), with a constant column.
    fn blobs(count: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres = [(0.0, 0.0), (3.0, 0.0), (0.0, 3.0)];
        let mut values = Vec::new();
        let labels: Vec<u32> = (0..count).map(|i| (i % 3) as u32).collect();
        for &label in &labels {
            let (cx, cy) = centres[label as usize];
            values.extend([100.0 + cx + rng.random_range(-1.0..1.0), cy + rng.random_range(-1.0..1.0), 7.0]);
        }
        (values, labels)
    }

    #[test]
    fn separates_blobs_and_is_deterministic() {
        let (train, train_labels) = blobs(300, 1);
        let (test, test_labels) = blobs(90, 2);
        let device = Device::Cpu;
        let (x, x_test) = (features_tensor(&train, 3, &device), features_tensor(&test, 3, &device));
        let config = LogisticConfig { steps: 150, ..LogisticConfig::default() };
        let model = LogisticRegression::fit(&x, &train_labels, 3, &config).unwrap();
        let accuracy = model.accuracy(&x_test, &test_labels).unwrap();
        assert!(accuracy > 0.95, "{accuracy}");
        let again = LogisticRegression::fit(&x, &train_labels, 3, &config).unwrap();
        assert_eq!(model.predict(&x_test).unwrap(), again.predict(&x_test).unwrap());
    }

    #[test]
    fn hand_gradients_match_autograd() {
        let device = Device::Cpu;
        let (values, labels) = blobs(12, 3);
        let x = features_tensor(&values, 3, &device);
        let varmap = VarMap::new();
        let weight = varmap.get((3, 3), "w", Init::Randn { mean: 0.0, stdev: 0.1 }, DType::F32, &device).unwrap();
        let bias = varmap.get(3, "b", Init::Randn { mean: 0.0, stdev: 0.1 }, DType::F32, &device).unwrap();
        let logits = x.matmul(&weight).unwrap().broadcast_add(&bias).unwrap();
        let targets = Tensor::from_slice(&labels, 12, &device).unwrap();
        let penalty = (weight.sqr().unwrap().sum_all().unwrap() * 0.05).unwrap();
        let loss = (candle_nn::loss::cross_entropy(&logits, &targets).unwrap() + penalty).unwrap();
        let grads = loss.backward().unwrap();
        let (dw, db) = gradients(&x, &one_hot(&labels, 3, &device).unwrap(), &weight, &bias, 0.1).unwrap();
        for (hand, auto) in [(dw, grads.get(&weight).unwrap()), (db, grads.get(&bias).unwrap())] {
            let gap = (hand - auto).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(gap < 1e-4, "{gap}");
        }
    }

    #[test]
    fn labels_must_match_the_rows() {
        let x = features_tensor(&[0.0, 1.0], 1, &Device::Cpu);
        let message = LogisticRegression::fit(&x, &[0], 2, &LogisticConfig::default()).unwrap_err().to_string();
        assert!(message.contains("1 labels for 2 rows"), "{message}");
        let message = LogisticRegression::fit(&x, &[0, 4], 2, &LogisticConfig::default()).unwrap_err().to_string();
        assert!(message.contains("label 4"), "{message}");
    }
}
