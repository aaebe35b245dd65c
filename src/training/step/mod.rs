//! The training step: the seed's six steps on one batch, behind one trait with two implementations.
//! - `graph`: candle's graph records the forward pass and differentiates it. It runs every model, objective and
//!   device, and is the oracle the other is tested against.
//! - `fused`: elbo's own CPU step. The forward and the backward pass are written out on plain slices with the
//!   fused kernels of `crate::kernels`, each gradient written once; MLP and convolutional VAEs with any decoder
//!   likelihood, the ELBO with every KL weighting, and the IWAE bound.
//!
//! [`step_plan`] picks one, once per run, and says why.

mod fused;
mod graph;
mod layers;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

use super::config::{Objective, TrainConfig};
use crate::kernels::kernel_threads;
use crate::model::Vae;
use crate::runtime::host_threads_may_share;
use crate::{Error, Result};

/// Which training step to use, as asked for (`--step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StepChoice {
    /// The fused CPU step where it covers the run, else candle's graph.
    #[default]
    Auto,
    /// Always candle's graph.
    Graph,
    /// The fused CPU step; an error naming the reason where it does not cover the run.
    Fused,
}

/// The training step a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPath {
    /// candle's graph and its backward pass.
    Graph,
    /// elbo's fused CPU step.
    Fused,
}

/// How [`crate::training::train`] computes each step, fixed before the first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepPlan {
    /// The step used.
    pub path: StepPath,
    /// Shards a full batch is split into, one per thread (1: the whole batch at once).
    pub shards: usize,
    /// Why this step: what the fused step covers here, or why the run falls back to the graph.
    pub reason: String,
}

/// The step for `vae` under `config` on `device`, as `config.step` asks, with the thread count set now; an error
/// when the fused step is asked for and does not cover the run.
pub fn step_plan(vae: &Vae, config: &TrainConfig, device: &Device) -> Result<StepPlan> {
    let fused = fused_coverage(vae, config, device);
    let (path, reason) = match (config.step, fused) {
        (StepChoice::Graph, _) => (StepPath::Graph, "candle's graph, as asked (--step graph)".to_string()),
        (_, Ok(covered)) => (StepPath::Fused, format!("fused CPU step: {covered}")),
        (StepChoice::Auto, Err(why)) => (StepPath::Graph, format!("candle's graph: {why}")),
        (StepChoice::Fused, Err(why)) => {
            return Err(Error::invalid_setting("step", format!("the fused step does not cover this run: {why}")))
        }
    };
    let max_shards = match path {
        // the fused step reduces the KL's batch statistics across its shards itself, so it splits every batch
        StepPath::Fused => kernel_threads(),
        StepPath::Graph if host_threads_may_share(device) && config.loss_is_mean_of_examples() => kernel_threads(),
        StepPath::Graph => 1,
    };
    Ok(StepPlan { path, shards: shard_count(max_shards, config.batch_size), reason })
}

/// What the fused step covers of this run, or why it does not: the one place that says when a run falls back.
fn fused_coverage(vae: &Vae, config: &TrainConfig, device: &Device) -> std::result::Result<String, String> {
    if !device.is_cpu() {
        return Err("the device is not the CPU (the fused step is CPU code; candle's ops run on the GPU)".into());
    }
    let layers = layers::Layers::of(vae).ok_or("a transposed convolution's shape is one the kernels do not take")?;
    if let Some(why) = layers.unsupported() {
        return Err(why.into());
    }
    let objective = match config.objective {
        Objective::Elbo if config.kl.capacity.is_some() => "the capacity objective",
        Objective::Elbo if config.kl.free_bits.is_some() => "the ELBO with free bits",
        Objective::Elbo if config.kl.is_plain_elbo() => "the ELBO",
        Objective::Elbo => "the ELBO with a KL weight",
        Objective::Iwae { .. } => "the IWAE bound",
        Objective::Tcvae { .. } => "beta-TCVAE",
    };
    let architecture = if vae.config().conv.is_some() { "convolutional" } else { "MLP" };
    Ok(format!("{architecture}, {} decoder, {objective}", vae.config().likelihood.name()))
}

/// A shard has at least this many rows: smaller ones make the matrix multiplies inefficient.
const MIN_SHARD_ROWS: usize = 32;

/// Shards for a batch of `rows`: at most `max_shards`, each of at least [`MIN_SHARD_ROWS`].
pub(crate) fn shard_count(max_shards: usize, rows: usize) -> usize {
    max_shards.min(rows / MIN_SHARD_ROWS).max(1)
}

/// Rows of a batch with their noise eps, and the fraction of the batch they are.
pub(crate) struct Shard {
    /// The examples `[rows, data_dim]`.
    pub x: Tensor,
    /// The noise `[rows * samples, latent_dim]`, example-major.
    pub eps: Tensor,
    /// rows / the batch's rows.
    pub share: f64,
}

/// What a step needs besides the model and the data.
#[derive(Clone, Copy)]
pub(crate) struct StepContext<'a> {
    /// The run's settings.
    pub config: &'a TrainConfig,
    /// The global step, from 1.
    pub step: usize,
    /// Examples in the training set (beta-TCVAE's estimator needs it).
    pub dataset_size: usize,
}

/// One training step: forward and backward on a batch given as shards.
pub(crate) trait TrainStep: Sync {
    /// The batch's figures (means over the batch) and each shard's parameter gradients, whose sum is the
    /// gradient of the batch's loss.
    fn run(&self, vae: &Vae, shards: &[Shard], context: &StepContext) -> Result<(StepFigures, Vec<GradStore>)>;
}

/// The step for `path`.
pub(crate) fn train_step(path: StepPath) -> &'static dyn TrainStep {
    match path {
        StepPath::Graph => &graph::GraphStep,
        StepPath::Fused => &fused::FusedStep,
    }
}

/// The step's terms as numbers (batch means, nats).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct StepFigures {
    /// Mean -log p(x|z~) (for the IWAE bound, over every sample).
    pub reconstruction: f64,
    /// Mean KL(q(z|x) || p(z)).
    pub kl: f64,
    /// The KL as it entered the loss; `None` for the IWAE bound.
    pub weighted_kl: Option<f64>,
    /// The minimised loss.
    pub loss: f64,
}

impl StepFigures {
    /// The figures times `share`.
    pub fn scaled(self, share: f64) -> Self {
        StepFigures {
            reconstruction: self.reconstruction * share,
            kl: self.kl * share,
            weighted_kl: self.weighted_kl.map(|w| w * share),
            loss: self.loss * share,
        }
    }

    /// The sum of two shares' figures.
    pub fn plus(self, other: &StepFigures) -> Self {
        StepFigures {
            reconstruction: self.reconstruction + other.reconstruction,
            kl: self.kl + other.kl,
            weighted_kl: other.weighted_kl.map(|w| self.weighted_kl.unwrap_or(0.0) + w),
            loss: self.loss + other.loss,
        }
    }
}

/// Runs `work` on every shard, on its own thread with its share of the kernel threads when there are several.
pub(crate) fn on_each_shard<T: Send, S: Sync>(shards: &[S], work: impl Fn(&S) -> Result<T> + Sync) -> Result<Vec<T>> {
    use rayon::prelude::*;
    match shards {
        [whole] => Ok(vec![work(whole)?]),
        _ => {
            let threads_per_shard = kernel_threads() / shards.len();
            let run = |shard| crate::kernels::with_kernel_threads(threads_per_shard, || work(shard));
            shards.par_iter().map(run).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaeConfig;
    use candle_core::DType;

    /// What the fused step does not cover falls back to the graph with the reason, or is refused when the fused
    /// step is asked for: here, weights that are not f32.
    #[test]
    fn a_run_the_fused_step_does_not_cover_falls_back_with_its_reason_or_is_refused() {
        let (vae, _) = Vae::fresh(&VaeConfig::default(), 1, DType::F16, &Device::Cpu).unwrap();
        let auto = step_plan(&vae, &TrainConfig::default(), &Device::Cpu).unwrap();
        assert_eq!(auto.path, StepPath::Graph);
        assert_eq!(auto.reason, "candle's graph: the weights are not f32");
        let asked = TrainConfig { step: StepChoice::Fused, ..TrainConfig::default() };
        let error = step_plan(&vae, &asked, &Device::Cpu).unwrap_err().to_string();
        assert!(error.contains("fused step does not cover") && error.contains("not f32"), "{error}");
        let (vae, _) = Vae::fresh(&VaeConfig::default(), 1, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(step_plan(&vae, &asked, &Device::Cpu).unwrap().path, StepPath::Fused);
    }
}

/// What the CUDA tests share: the device, garbage left in its memory, and a model's weights to load on it.
#[cfg(feature = "cuda")]
#[cfg(test)]
pub(crate) mod cuda_tests {
    use candle_core::{DType, Device, Tensor};
    use tempfile::TempDir;

    use crate::data::ExampleShape;
    use crate::model::{Vae, VaeConfig};

    /// The first CUDA device, or `None` (with a note) where there is none.
    pub(crate) fn cuda_device() -> Option<Device> {
        let device = Device::new_cuda(0).ok();
        if device.is_none() {
            eprintln!("no CUDA device: nothing to compare");
        }
        device
    }

    /// Writes 4 GiB of `value` on `device` and frees it, so that memory handed out next holds garbage.
    pub(crate) fn fill_device_memory(device: &Device, value: f32) {
        Tensor::full(value, (1usize << 30,), device).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    }

    /// The 784-400-20 MLP with weights seeded by `seed`, saved in a temporary directory (kept alive by the
    /// returned guard) for each device to load.
    pub(crate) fn mnist_mlp_weights(seed: u64) -> (VaeConfig, TempDir, std::path::PathBuf) {
        let config = VaeConfig { input_shape: ExampleShape::flat(784), ..VaeConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        Vae::fresh(&config, seed, DType::F32, &Device::Cpu).unwrap().1.save(&weights).unwrap();
        (config, dir, weights)
    }
}
