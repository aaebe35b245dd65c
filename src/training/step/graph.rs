//! The training step through candle's graph: the loss is built from tensor ops (the model's fused layers among
//! them), and candle's backward pass differentiates it. Every model, objective and device; the oracle of the fused
//! step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::{on_each_shard, Shard, StepContext, StepFigures, TrainStep};
use crate::model::Vae;
use crate::objective::{decompose_kl, log_importance_weights, log_mean_exp, negative_elbo_terms, ElboTerms};
use crate::training::config::Objective;
use crate::Result;

/// The step through candle's graph.
pub(crate) struct GraphStep;

impl TrainStep for GraphStep {
    fn run(&self, vae: &Vae, shards: &[Shard], context: &StepContext) -> Result<(StepFigures, Vec<GradStore>)> {
        let results = on_each_shard(shards, |shard| run_shard(vae, shard, context))?;
        let figures = results.iter().fold(StepFigures::default(), |sum, (part, _)| sum.plus(part));
        Ok((figures, results.into_iter().map(|(_, grads)| grads).collect()))
    }
}

/// Forward and backward on a shard: its figures (weighted by its share) and its gradients.
fn run_shard(vae: &Vae, shard: &Shard, context: &StepContext) -> Result<(StepFigures, GradStore)> {
    let terms = match context.config.objective {
        Objective::Elbo => elbo_loss(vae, shard, context)?,
        Objective::Iwae { samples } => iwae_loss(vae, shard, samples)?,
        Objective::Tcvae { tc_beta } => tcvae_loss(vae, shard, context, tc_beta)?,
    };
    let figures = figures_of(&terms)?.scaled(shard.share);
    let loss = if shard.share == 1.0 { terms.loss } else { (terms.loss * shard.share)? };
    Ok((figures, loss.backward()?)) // step 6: backprop through everything, including the encoder
}

/// Steps 1-5 of the seed: the loss reconstruction + weighted KL, batch means as scalars.
fn elbo_loss(vae: &Vae, shard: &Shard, context: &StepContext) -> Result<StepTerms> {
    let terms = negative_elbo_terms(vae, &shard.x, &shard.eps)?; // steps 1-4
    let weighted_kl = context.config.kl.weighted_kl(&terms.kl_per_dimension, context.step)?;
    StepTerms::with_weighted_kl(&terms, weighted_kl) // step 5: reconstruction + (weighted) KL
}

/// The beta-TCVAE loss: reconstruction + MI + tc_beta * TC + dimension-wise KL, batch means; the KL parts are
/// estimated with the training set's size.
fn tcvae_loss(vae: &Vae, shard: &Shard, context: &StepContext, tc_beta: f64) -> Result<StepTerms> {
    let terms = negative_elbo_terms(vae, &shard.x, &shard.eps)?;
    let parts = decompose_kl(&terms.posterior, &terms.z, context.dataset_size)?;
    StepTerms::with_weighted_kl(&terms, parts.weighted(tc_beta)?)
}

/// The negative IWAE bound with `samples` draws per example, batch mean.
fn iwae_loss(vae: &Vae, shard: &Shard, samples: usize) -> Result<StepTerms> {
    let posterior = vae.encode(&shard.x)?;
    let (log_weights, reconstruction) = log_importance_weights(vae, &shard.x, &posterior, &shard.eps, samples)?;
    let loss = log_mean_exp(&log_weights)?.mean_all()?.neg()?;
    let kl = posterior.kl_to_standard_normal()?.mean_all()?;
    Ok(StepTerms { reconstruction: reconstruction.mean_all()?, kl, weighted_kl: None, loss })
}

/// The scalar terms of one step, still on the device (the loss keeps its graph for backprop).
struct StepTerms {
    reconstruction: Tensor,
    kl: Tensor,
    weighted_kl: Option<Tensor>,
    loss: Tensor,
}

impl StepTerms {
    /// Batch means of the terms, with `weighted_kl` (a scalar) in place of the KL in the loss.
    fn with_weighted_kl(terms: &ElboTerms, weighted_kl: Tensor) -> Result<Self> {
        let reconstruction = terms.reconstruction.mean_all()?;
        let loss = (&reconstruction + &weighted_kl)?;
        Ok(StepTerms { reconstruction, kl: terms.kl.mean_all()?, weighted_kl: Some(weighted_kl), loss })
    }
}

/// The terms as numbers.
fn figures_of(terms: &StepTerms) -> Result<StepFigures> {
    let to_f64 = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)) };
    Ok(StepFigures {
        reconstruction: to_f64(&terms.reconstruction)?,
        kl: to_f64(&terms.kl)?,
        weighted_kl: terms.weighted_kl.as_ref().map(to_f64).transpose()?,
        loss: to_f64(&terms.loss)?,
    })
}

#[cfg(feature = "cuda")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaeConfig;
    use crate::training::step::cuda_tests::{cuda_device, fill_device_memory, mnist_mlp_weights};
    use crate::training::TrainConfig;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// One step of candle's graph on `device` for the model `config` with `weights`: the loss and every gradient,
    /// by the variable's name, on the CPU.
    fn step_on(
        device: &Device,
        (config, weights): (&VaeConfig, &std::path::Path),
        (x, eps): (&Tensor, &Tensor),
    ) -> (f64, Vec<(String, Vec<f32>)>) {
        let (vae, varmap) = Vae::load(config, weights, device).unwrap();
        let shards = [Shard { x: x.to_device(device).unwrap(), eps: eps.to_device(device).unwrap(), share: 1.0 }];
        let train = TrainConfig::default();
        let context = StepContext { config: &train, step: 1, dataset_size: 60_000 };
        let (figures, grads) = GraphStep.run(&vae, &shards, &context).unwrap();
        let mut gradients: Vec<_> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| {
                let gradient = grads[0].get(var.as_tensor()).unwrap();
                (
                    name.clone(),
                    gradient.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        gradients.sort_by(|a, b| a.0.cmp(&b.0));
        (figures.loss, gradients)
    }

    /// A batch of 4,096 MNIST-sized rows (3.2 M values a tensor) on the first CUDA device, when there is one: the
    /// step's loss and gradients match the CPU's, twice, with 4 GiB of 1e30 written and freed on the device in
    /// between. (One step of the graph was right on the H200 all along; the large-batch bug was in the optimiser's
    /// threads: see `large_batch_steps_on_cuda_repeat_exactly` in the trainer's tests.)
    #[test]
    fn a_large_batch_step_on_cuda_matches_the_cpu() {
        let Some(device) = cuda_device() else { return };
        let (config, _dir, weights) = mnist_mlp_weights(1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let rows = 4096;
        let x: Vec<f32> =
            (0..rows * 784).map(|_| if rng.random_bool(0.2) { rng.random_range(0.0..1.0) } else { 0.0 }).collect();
        let eps: Vec<f32> = (0..rows * config.latent_dim).map(|_| rng.random_range(-2.0..2.0)).collect();
        let x = Tensor::from_vec(x, (rows, 784), &Device::Cpu).unwrap();
        let eps = Tensor::from_vec(eps, (rows, config.latent_dim), &Device::Cpu).unwrap();
        let (cpu_loss, cpu_gradients) = step_on(&Device::Cpu, (&config, &weights), (&x, &eps));
        for attempt in 0..2 {
            let (loss, gradients) = step_on(&device, (&config, &weights), (&x, &eps));
            assert!(
                (loss - cpu_loss).abs() <= 1e-4 * cpu_loss.abs(),
                "attempt {attempt}: loss {loss} against {cpu_loss}"
            );
            let differing: Vec<String> = gradients
                .iter()
                .zip(&cpu_gradients)
                .filter_map(|((name, on_cuda), (_, on_cpu))| {
                    let error = relative_error(on_cuda, on_cpu);
                    (error > 1e-3).then(|| format!("{name} by {error:e}"))
                })
                .collect();
            assert!(differing.is_empty(), "attempt {attempt}: gradients differ: {}", differing.join(", "));
            fill_device_memory(&device, 1e30);
        }
    }

    /// The largest difference between `values` and `reference`, relative to the largest magnitude in `reference`.
    fn relative_error(values: &[f32], reference: &[f32]) -> f32 {
        let scale = reference.iter().fold(1e-6f32, |max, v| max.max(v.abs()));
        let worst = values.iter().zip(reference).fold(0.0f32, |max, (a, b)| max.max((a - b).abs()));
        if values.len() == reference.len() {
            worst / scale
        } else {
            f32::INFINITY
        }
    }

    /// candle's ops that the graph step runs forward and backward, each on 4,096 x 784 values on the GPU with
    /// garbage left in its memory, against the same op on the CPU: names every op that differs. (Written to look
    /// for the large-batch bug in an op; every op agreed, and the bug was a race between CUDA streams: see
    /// `large_batch_steps_on_cuda_repeat_exactly` in the trainer's tests.)
    #[test]
    fn candle_ops_on_large_tensors_on_cuda_match_the_cpu() {
        type Op = fn(&[Tensor]) -> candle_core::Result<Tensor>;
        let Some(device) = cuda_device() else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut random = |shape: (usize, usize)| {
            let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-3.0..3.0)).collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        };
        let inputs = [random((4096, 784)), random((4096, 784)), random((400, 784)), random((4096, 400))];
        let ops: [(&str, Op); 22] = [
            ("sum over rows", |t| t[0].sum_keepdim(0)),
            ("sum over columns", |t| t[0].sum(1)),
            ("sum of all", |t| t[0].sum_all()),
            ("x w^T", |t| t[0].matmul(&t[2].t()?)),
            ("g w", |t| t[3].matmul(&t[2])),
            ("g^T x", |t| t[3].t()?.matmul(&t[0])),
            ("x^T g", |t| t[0].t()?.matmul(&t[3])),
            ("relu", |t| t[0].relu()),
            ("abs neg exp", |t| t[0].abs()?.neg()?.exp()),
            ("log(1 + exp)", |t| (t[0].exp()? + 1.0)?.log()),
            ("affine", |t| t[0].affine(0.5, -0.5)),
            ("x * y", |t| &t[0] * &t[1]),
            ("x - y", |t| &t[0] - &t[1]),
            ("ge zero as f32", |t| t[0].ge(&t[0].zeros_like()?)?.to_dtype(DType::F32)),
            ("where_cond", |t| t[0].ge(&t[0].zeros_like()?)?.where_cond(&t[0].ones_like()?, &t[1])),
            ("ones_like", |t| t[0].ones_like()),
            ("broadcast add of a row", |t| t[0].broadcast_add(&t[1].get(0)?)),
            ("broadcast mul of a column", |t| t[0].broadcast_mul(&t[1].narrow(1, 0, 1)?)),
            ("broadcast_as a column", |t| t[1].narrow(1, 0, 1)?.broadcast_as((4096, 784))?.contiguous()),
            ("transpose copy", |t| t[0].t()?.contiguous()),
            ("bernoulli backward", |t| {
                let logits = candle_core::Var::from_tensor(&t[0])?;
                let x = t[1].affine(1.0 / 6.0, 0.5)?;
                let loss = crate::model::likelihood::bernoulli::negative_log_prob_unfused(&logits, &x)
                    .map_err(candle_core::Error::wrap)?;
                loss.sum_all()?.backward()?.get(logits.as_tensor()).unwrap().clone().contiguous()
            }),
            ("dense tanh backward", |t| {
                let weight = candle_core::Var::from_tensor(&t[2])?;
                let layer = t[0].matmul(&weight.as_tensor().t()?)?.tanh()?;
                let grads = (layer * &t[3])?.sum_all()?.backward()?;
                grads.get(weight.as_tensor()).unwrap().clone().contiguous()
            }),
        ];
        let mut differing = Vec::new();
        for (name, op) in ops {
            let on_cpu = op(&inputs).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            fill_device_memory(&device, 1e30);
            let on_device: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&device).unwrap()).collect();
            let result = op(&on_device).unwrap().flatten_all().unwrap().to_device(&Device::Cpu).unwrap();
            let error = relative_error(&result.to_vec1::<f32>().unwrap(), &on_cpu);
            eprintln!("{name}: relative error {error:e}");
            if error > 1e-4 {
                differing.push(format!("{name} by {error:e}"));
            }
        }
        assert!(differing.is_empty(), "ops differ on CUDA: {}", differing.join(", "));
    }
}
