//! Optimisers: Adam and SGD with momentum, updating candle variables in place; used by the training step and by the
//! statistics (the logistic regression).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use std::sync::Mutex;

use rayon::prelude::*;

use crate::kernels::optimizer::{AdamStep, FusedAdam, FusedSgd};
use crate::kernels::worth_parallel;
use crate::runtime::host_threads_may_share;
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

/// How the update is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePath {
    /// One in-place pass per parameter (CPU, f32); falls back to tensor operations elsewhere.
    Fused,
    /// Tensor operations, on any device.
    TensorOps,
}

/// An optimiser's per-parameter state: plain buffers for the fused CPU kernels, tensors otherwise.
enum Moments {
    Buffers { first: Vec<f32>, second: Vec<f32> },
    Tensors { first: Tensor, second: Tensor },
}

/// One parameter with its optimiser state.
struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

impl Slot {
    fn new(name: String, var: Var, path: UpdatePath) -> Result<Self> {
        let fusable = path == UpdatePath::Fused && var.device().is_cpu() && var.dtype() == candle_core::DType::F32;
        let moments = if fusable {
            Moments::Buffers { first: vec![0.0; var.elem_count()], second: vec![0.0; var.elem_count()] }
        } else {
            Moments::Tensors { first: var.zeros_like()?, second: var.zeros_like()? }
        };
        Ok(Slot { name, var, moments })
    }

    /// The moments as tensors shaped like the parameter (first, second).
    fn moments(&self) -> Result<(Tensor, Tensor)> {
        match &self.moments {
            Moments::Buffers { first, second } => {
                let shape = self.var.shape();
                Ok((Tensor::from_slice(first, shape, &Device::Cpu)?, Tensor::from_slice(second, shape, &Device::Cpu)?))
            }
            Moments::Tensors { first, second } => Ok((first.clone(), second.clone())),
        }
    }

    /// Replaces the moments with `first` and `second`, which must be shaped like the parameter.
    fn set_moments(&mut self, first: &Tensor, second: &Tensor) -> Result<()> {
        for moment in [first, second] {
            if moment.dims() != self.var.dims() {
                let problem =
                    format!("the optimiser state is shaped {:?}, the parameter {:?}", moment.dims(), self.var.dims());
                return Err(Error::ShapeMismatch(format!("{}: {problem}", self.name)));
            }
        }
        match &mut self.moments {
            Moments::Buffers { first: first_buffer, second: second_buffer } => {
                *first_buffer = first.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                *second_buffer = second.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            }
            Moments::Tensors { first: first_tensor, second: second_tensor } => {
                *first_tensor = first.to_device(self.var.device())?.to_dtype(self.var.dtype())?;
                *second_tensor = second.to_device(self.var.device())?.to_dtype(self.var.dtype())?;
            }
        }
        Ok(())
    }
}

/// What an optimiser carries from one step to the next, to be saved in a checkpoint and restored exactly: the step
/// count (Adam's bias correction), the learning rate, and each parameter's moments (Adam's first and second; SGD's
/// velocity as `first`, `second` unused and zero).
#[derive(Debug, Clone)]
pub struct OptimizerState {
    /// Updates taken so far.
    pub steps: usize,
    /// The learning rate the next update uses.
    pub learning_rate: f64,
    /// Per parameter name: (first moment, second moment), shaped like the parameter.
    pub moments: Vec<(String, Tensor, Tensor)>,
}

/// An optimiser over every variable of a model, visited in name order so that updates are reproducible.
pub struct Optimizer {
    config: OptimizerConfig,
    learning_rate: f64,
    slots: Vec<Slot>,
    steps: usize,
}

impl Optimizer {
    /// Creates the optimiser for all variables in `varmap`, with fused in-place updates where possible.
    pub fn new(config: OptimizerConfig, learning_rate: f64, varmap: &VarMap) -> Result<Self> {
        Self::with_path(config, learning_rate, varmap, UpdatePath::Fused)
    }

    /// Creates the optimiser, choosing how updates are computed.
    pub fn with_path(config: OptimizerConfig, learning_rate: f64, varmap: &VarMap, path: UpdatePath) -> Result<Self> {
        validate(&config, learning_rate)?;
        let mut named: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named.into_iter().map(|(name, var)| Slot::new(name, var, path)).collect::<Result<Vec<_>>>()?;
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

    /// The state to checkpoint.
    pub fn state(&self) -> Result<OptimizerState> {
        let moments = self
            .slots
            .iter()
            .map(|slot| slot.moments().map(|(first, second)| (slot.name.clone(), first, second)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OptimizerState { steps: self.steps, learning_rate: self.learning_rate, moments })
    }

    /// Continues from a checkpointed `state`: it must hold the moments of exactly this optimiser's parameters.
    pub fn restore(&mut self, state: &OptimizerState) -> Result<()> {
        let names: Vec<&str> = state.moments.iter().map(|(name, _, _)| name.as_str()).collect();
        let expected: Vec<&str> = self.slots.iter().map(|slot| slot.name.as_str()).collect();
        if names != expected {
            return Err(Error::ShapeMismatch(format!(
                "the optimiser state is for the parameters {names:?}, the model has {expected:?}"
            )));
        }
        for (slot, (_, first, second)) in self.slots.iter_mut().zip(&state.moments) {
            slot.set_moments(first, second)?;
        }
        self.steps = state.steps;
        self.learning_rate = state.learning_rate;
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_sharded(std::slice::from_ref(grads))
    }

    /// One update of every parameter from gradients computed on shards of one batch: each parameter's gradient
    /// is the sum of the shards' (each shard's loss already carries its share of the batch mean). The fused
    /// kernels add the shards' values up as they go, so the sum is never stored.
    pub fn step_sharded(&mut self, shards: &[GradStore]) -> Result<()> {
        self.update_all(|var| shards.iter().filter_map(|grads| grads.get(var.as_tensor()).cloned()).collect())
    }

    /// One update of every parameter for which `gradient` gives a gradient (for gradients worked out by hand).
    pub fn step_with(&mut self, gradient: impl Fn(&Var) -> Option<Tensor> + Sync) -> Result<()> {
        self.update_all(|var| gradient(var).into_iter().collect())
    }

    /// Updates every parameter from the sum of the gradients `gradients` gives it (none: no update), spread over
    /// the threads when the parameters are many values on the CPU: each has its own state.
    fn update_all(&mut self, gradients: impl Fn(&Var) -> Vec<Tensor> + Sync) -> Result<()> {
        self.steps += 1;
        let (config, learning_rate, steps) = (self.config, self.learning_rate, self.steps);
        let update = |slot: &mut Slot| slot.update(&gradients(&slot.var), config, learning_rate, steps);
        let values: usize = self.slots.iter().map(|slot| slot.var.elem_count()).sum();
        let on_cpu = self.slots.iter().all(|slot| host_threads_may_share(slot.var.device()));
        if on_cpu && worth_parallel(values) {
            self.slots.par_iter_mut().try_for_each(update)
        } else {
            self.slots.iter_mut().try_for_each(update)
        }
    }
}

impl Slot {
    /// One update of this parameter from the sum of `gradients`, at optimiser step `steps`.
    fn update(
        &mut self,
        gradients: &[Tensor],
        config: OptimizerConfig,
        learning_rate: f64,
        steps: usize,
    ) -> Result<()> {
        let Some((first_gradient, more_gradients)) = gradients.split_first() else { return Ok(()) };
        match (&mut self.moments, config) {
            (Moments::Buffers { first, second }, OptimizerConfig::Adam { beta1, beta2, epsilon }) => {
                let op = FusedAdam {
                    step: adam_step(learning_rate, beta1, beta2, epsilon, steps),
                    first_moment: Mutex::new(first),
                    second_moment: Mutex::new(second),
                    more_gradients,
                };
                self.var.as_tensor().inplace_op2(&first_gradient.contiguous()?, &op)?;
            }
            (Moments::Buffers { first, .. }, OptimizerConfig::Sgd { momentum }) => {
                let op = FusedSgd {
                    learning_rate: learning_rate as f32,
                    momentum: momentum as f32,
                    velocity: Mutex::new(first),
                    more_gradients,
                };
                self.var.as_tensor().inplace_op2(&first_gradient.contiguous()?, &op)?;
            }
            (Moments::Tensors { first, second }, OptimizerConfig::Adam { beta1, beta2, epsilon }) => {
                let step = adam_step(learning_rate, beta1, beta2, epsilon, steps);
                adam_update(&self.var, first, second, &sum(gradients)?, step)?
            }
            (Moments::Tensors { first, .. }, OptimizerConfig::Sgd { momentum }) => {
                sgd_update(&self.var, first, &sum(gradients)?, learning_rate, momentum)?
            }
        }
        Ok(())
    }
}

/// The sum of a parameter's gradients from the shards of a batch.
fn sum(gradients: &[Tensor]) -> Result<Tensor> {
    let mut parts = gradients.iter();
    let first = parts.next().ok_or_else(|| candle_core::Error::Msg("no gradient to sum".into()))?.clone();
    Ok(parts.try_fold(first, |total, part| total + part)?)
}

fn adam_step(learning_rate: f64, beta1: f64, beta2: f64, epsilon: f64, step: usize) -> AdamStep {
    AdamStep {
        learning_rate: learning_rate as f32,
        beta1: beta1 as f32,
        beta2: beta2 as f32,
        epsilon: epsilon as f32,
        first_correction: (1.0 - beta1.powi(step as i32)) as f32,
        second_correction: (1.0 - beta2.powi(step as i32)) as f32,
    }
}

/// Checks the learning rate and the optimiser's own settings.
pub(crate) fn validate(config: &OptimizerConfig, learning_rate: f64) -> Result<()> {
    if !(learning_rate > 0.0 && learning_rate.is_finite()) {
        return Err(Error::invalid_setting("learning rate", format!("must be a positive number, got {learning_rate}")));
    }
    let in_unit = |v: f64| (0.0..1.0).contains(&v);
    match *config {
        OptimizerConfig::Adam { beta1, beta2, epsilon } if in_unit(beta1) && in_unit(beta2) && epsilon > 0.0 => Ok(()),
        OptimizerConfig::Adam { .. } => {
            Err(Error::invalid_setting("adam", "beta1 and beta2 must be in [0, 1), epsilon > 0"))
        }
        OptimizerConfig::Sgd { momentum } if in_unit(momentum) => Ok(()),
        OptimizerConfig::Sgd { momentum } => {
            Err(Error::invalid_setting("momentum", format!("must be in [0, 1), got {momentum}")))
        }
    }
}

/// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
fn adam_update(var: &Var, first: &mut Tensor, second: &mut Tensor, grad: &Tensor, s: AdamStep) -> Result<()> {
    let (beta1, beta2) = (f64::from(s.beta1), f64::from(s.beta2));
    *first = ((&*first * beta1)? + (grad * (1.0 - beta1))?)?;
    *second = ((&*second * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
    let denominator = ((&*second / f64::from(s.second_correction))?.sqrt()? + f64::from(s.epsilon))?;
    let update = ((&*first / denominator)? * f64::from(s.learning_rate / s.first_correction))?;
    var.set(&(var.as_tensor() - update)?)?;
    Ok(())
}

/// v = momentum * v + g;  p -= lr * v
fn sgd_update(var: &Var, velocity: &mut Tensor, grad: &Tensor, lr: f64, momentum: f64) -> Result<()> {
    *velocity = ((&*velocity * momentum)? + grad)?;
    var.set(&(var.as_tensor() - (&*velocity * lr)?)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    /// Runs a few steps of both paths on random gradients and compares the parameters.
    fn compare_paths(config: OptimizerConfig, shapes: &[&[usize]]) {
        let make = || {
            let varmap = VarMap::new();
            for (i, shape) in shapes.iter().enumerate() {
                let values: Vec<f32> =
                    (0..shape.iter().product()).map(|j| ((i * 31 + j) % 17) as f32 * 0.1 - 0.8).collect();
                let var = Var::from_tensor(&Tensor::from_vec(values, *shape, &Device::Cpu).unwrap()).unwrap();
                varmap.data().lock().unwrap().insert(format!("p{i}"), var);
            }
            varmap
        };
        let (fused_map, tensor_map) = (make(), make());
        let mut fused = Optimizer::with_path(config, 1e-2, &fused_map, UpdatePath::Fused).unwrap();
        let mut tensor = Optimizer::with_path(config, 1e-2, &tensor_map, UpdatePath::TensorOps).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..5 {
            let loss = |varmap: &VarMap, weights: &[Vec<f32>]| {
                let vars = varmap.data().lock().unwrap();
                (0..shapes.len()).fold(Tensor::zeros((), DType::F32, &Device::Cpu).unwrap(), |acc, i| {
                    let w = Tensor::from_vec(weights[i].clone(), shapes[i], &Device::Cpu).unwrap();
                    (acc + (vars[&format!("p{i}")].as_tensor().sqr().unwrap() * w).unwrap().sum_all().unwrap()).unwrap()
                })
            };
            let weights: Vec<Vec<f32>> =
                shapes.iter().map(|s| (0..s.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
            fused.step(&loss(&fused_map, &weights).backward().unwrap()).unwrap();
            tensor.step(&loss(&tensor_map, &weights).backward().unwrap()).unwrap();
        }
        for i in 0..shapes.len() {
            let get = |m: &VarMap| {
                m.data().lock().unwrap()[&format!("p{i}")].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let (a, b) = (get(&fused_map), get(&tensor_map));
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "{config:?} parameter {i}: fused and tensor paths differ by {worst}");
        }
    }

    #[test]
    fn fused_updates_match_the_tensor_operations() {
        // [600, 701] and [500, 801]: large enough to be updated in one part per thread: on the pool's own threads
        // where the parts are as many as the pool's threads (2 of 2; the two parameters' updates, on two threads at
        // once, each waiting for its parts on both), else as rayon puts them (2 of 3)
        let shapes: &[&[usize]] = &[&[1], &[7], &[13, 5], &[64, 33], &[3, 1, 2], &[600, 701], &[500, 801]];
        for (threads, pool_threads) in [(1, 2), (2, 2), (2, 3)] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(pool_threads).build().unwrap();
            pool.install(|| {
                crate::kernels::with_kernel_threads(threads, || {
                    compare_paths(OptimizerConfig::default(), shapes);
                    compare_paths(OptimizerConfig::Sgd { momentum: 0.9 }, shapes);
                })
            });
        }
    }
}
