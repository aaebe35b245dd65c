//! Optimisers for the training step: Adam and SGD with momentum, updating candle variables in place.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::{Error, Result};

/// Which optimiser, with its hyper-parameters (the learning rate is separate).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OptimizerConfig {
    /// Adam (Kingma & Ba), as `torch.optim.Adam`: bias-corrected first and second moments.
    Adam {
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the square root of the second moment.
        epsilon: f64,
    },
    /// Stochastic gradient descent with (heavy-ball) momentum, as `torch.optim.SGD`: v = m v + g; p -= lr v.
    Sgd {
        /// The momentum m in [0, 1).
        momentum: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 }
    }
}

/// One parameter with its optimiser state.
struct Slot {
    var: Var,
    first_moment: Tensor,
    second_moment: Tensor,
}

/// An optimiser over every variable of a model, visited in name order so that updates are reproducible.
pub struct Optimizer {
    config: OptimizerConfig,
    learning_rate: f64,
    slots: Vec<Slot>,
    steps: usize,
}

impl Optimizer {
    /// Creates the optimiser for all variables in `varmap`.
    pub fn new(config: OptimizerConfig, learning_rate: f64, varmap: &VarMap) -> Result<Self> {
        validate(&config, learning_rate)?;
        let mut named: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(_, var)| {
                let zeros = var.zeros_like()?;
                Ok(Slot { first_moment: zeros.clone(), second_moment: zeros, var })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer { config, learning_rate, slots, steps: 0 })
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    /// Sets the learning rate (for schedules).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_with(|var| grads.get(var.as_tensor()).cloned())
    }

    /// One update of every parameter for which `gradient` gives a gradient (for gradients worked out by hand).
    pub fn step_with(&mut self, gradient: impl Fn(&Var) -> Option<Tensor>) -> Result<()> {
        self.steps += 1;
        for slot in &mut self.slots {
            let Some(grad) = gradient(&slot.var) else { continue };
            let grad = &grad;
            match self.config {
                OptimizerConfig::Adam { beta1, beta2, epsilon } => {
                    adam_update(slot, grad, self.learning_rate, beta1, beta2, epsilon, self.steps)?
                }
                OptimizerConfig::Sgd { momentum } => sgd_update(slot, grad, self.learning_rate, momentum)?,
            }
        }
        Ok(())
    }
}

fn validate(config: &OptimizerConfig, learning_rate: f64) -> Result<()> {
    if !(learning_rate > 0.0 && learning_rate.is_finite()) {
        return Err(Error::invalid_setting("learning rate", format!("must be a positive number, got {learning_rate}")));
    }
    let in_unit = |v: f64| (0.0..1.0).contains(&v);
    match *config {
        OptimizerConfig::Adam { beta1, beta2, epsilon } if in_unit(beta1) && in_unit(beta2) && epsilon > 0.0 => Ok(()),
        OptimizerConfig::Adam { .. } => Err(Error::invalid_setting("adam", "beta1 and beta2 must be in [0, 1), epsilon > 0")),
        OptimizerConfig::Sgd { momentum } if in_unit(momentum) => Ok(()),
        OptimizerConfig::Sgd { momentum } => Err(Error::invalid_setting("momentum", format!("must be in [0, 1), got {momentum}"))),
    }
}

/// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
fn adam_update(slot: &mut Slot, grad: &Tensor, lr: f64, beta1: f64, beta2: f64, epsilon: f64, step: usize) -> Result<()> {
    slot.first_moment = ((&slot.first_moment * beta1)? + (grad * (1.0 - beta1))?)?;
    slot.second_moment = ((&slot.second_moment * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
    let first_correction = 1.0 - beta1.powi(step as i32);
    let second_correction = 1.0 - beta2.powi(step as i32);
    let denominator = ((&slot.second_moment / second_correction)?.sqrt()? + epsilon)?;
    let update = ((&slot.first_moment / denominator)? * (lr / first_correction))?;
    slot.var.set(&(slot.var.as_tensor() - update)?)?;
    Ok(())
}

/// v = momentum * v + g;  p -= lr * v
fn sgd_update(slot: &mut Slot, grad: &Tensor, lr: f64, momentum: f64) -> Result<()> {
    slot.first_moment = ((&slot.first_moment * momentum)? + grad)?;
    slot.var.set(&(slot.var.as_tensor() - (&slot.first_moment * lr)?)?)?;
    Ok(())
}
