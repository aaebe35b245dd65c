//! elbo's fused CPU training step, for MLP and convolutional VAEs: the seed's six steps on plain slices, with the
//! fused kernels of `crate::kernels`, and the backward pass written out instead of recorded in candle's graph. Candle's backward
//! allocates a zero buffer and adds into it for every gradient; here each gradient is written once. Tests hold the
//! figures and every gradient to those of [`super::graph`].
//!
//! The step runs in two phases over the batch's shards (each on its own thread): the encoders' forward pass, then,
//! once the KL's batch statistics are known (free bits and the capacity objective look across the batch, and
//! beta-TCVAE's estimator at every pair of its examples), the rest of the forward pass and the whole backward pass.
//! Where the decoder's last weight is large against the batch's rows, its gradient waits for both phases and is
//! made once over the whole batch (`Waiting`), each thread writing its own band of it, instead of once per shard
//! for the optimiser to add up.
//!
//! The loss of a batch of N examples is L = (1/N) sum_n [ rec_n + sum_j a_j KL_nj ] for the ELBO, a_j being the
//! KL weight's derivative (beta and its schedule, free bits' mask, the capacity's sign),
//! L = (1/N) sum_n -log (1/K) sum_k w_nk for the IWAE bound, and L = (1/N) sum_n rec_n + MI + tc_beta * TC +
//! dimension-wise KL for beta-TCVAE, whose KL part's gradients in z~, mu and log sigma^2 come from
//! [`crate::kernels::tcvae`] and join the reparameterisation's below. Backward, with c = 1/N, from the decoder's
//! output down:
//! - dL/doutput: the likelihood kernel's gradient, scaled by c (by c * w~_nk for the IWAE bound, w~ the normalised
//!   importance weights);
//! - a dense layer y = act(input W^T + b): dL/dpre = dL/dy * act'(y); dL/dW = (dL/dpre)^T input;
//!   dL/db = sum_n dL/dpre; dL/dinput = dL/dpre W;
//! - z = mu + sigma * eps, KL = 0.5 * sum(sigma^2 + mu^2 - 1 - log sigma^2), sigma = exp(log sigma^2 / 2):
//!   dL/dmu = dL/dz + c a mu;  dL/dlog sigma^2 = dL/dz * eps * sigma / 2 + c a (sigma^2 - 1) / 2;
//! - for the IWAE bound, log w = -rec(z) + log N(z; 0, I) - log N(z; mu, sigma^2), and with eps fixed
//!   log N(z; mu, sigma^2) = -0.5 sum_j (log 2pi + log sigma_j^2 + eps_j^2): dL/dz_k = c w~_k (drec/dz_k + z_k),
//!   summed over k for mu and through sigma * eps / 2 for log sigma^2, plus the direct dL/dlog sigma^2 = -c / 2.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::layers::{Kept, Layer, LayerGradients, Layers};
use super::{on_each_shard, Shard, StepContext, StepFigures, TrainStep};
use crate::kernels::likelihood::{scale_rows, LikelihoodKernel, Targets};
use crate::kernels::{add_to, cpu_f32, read_all, recycle, tcvae};
use crate::model::dense::weight_gradient;
use crate::model::{Likelihood, Vae};
use crate::training::config::Objective;
use crate::{Error, Result};

/// The fused step.
pub(crate) struct FusedStep;

/// The error for a model the fused step does not cover ([`super::step_plan`] asks first).
fn unsupported(what: &str) -> Error {
    Error::invalid_setting("step", format!("the fused training step needs {what}"))
}

impl TrainStep for FusedStep {
    fn run(&self, vae: &Vae, shards: &[Shard], context: &StepContext) -> Result<(StepFigures, Vec<GradStore>)> {
        let layers = Layers::of(vae).ok_or_else(|| unsupported("layers whose shapes its kernels take"))?;
        let mut parameters = layers.parameters().ok_or_else(|| unsupported("biases"))?;
        let layer_count = parameters.len();
        let learned_log_var = match vae.likelihood() {
            Likelihood::Gaussian(gaussian) => gaussian.learned_log_var(),
            _ => None,
        };
        parameters.extend(learned_log_var);
        let guards = read_all(parameters.iter().copied());
        let values =
            guards.iter().map(|guard| cpu_f32(guard, "fused step")).collect::<candle_core::Result<Vec<_>>>()?;
        let (layer_values, log_var_values) = values.split_at(layer_count);
        let fixed_log_var = fixed_log_var(vae.likelihood());
        let likelihood = likelihood_kernel(vae.likelihood(), log_var_values.first().copied(), &fixed_log_var);
        let network = Network::new(&layers, layer_values, likelihood)?;
        let data_guards = read_all(shards.iter().flat_map(|shard| [&shard.x, &shard.eps]));
        let data =
            data_guards.iter().map(|guard| cpu_f32(guard, "fused step")).collect::<candle_core::Result<Vec<_>>>()?;
        let batch = Batch::new(vae, shards, &data)?;
        let (figures, gradients) = network.step(&batch, context)?;
        Ok((figures, gradient_stores(&parameters, gradients)?))
    }
}

/// Each shard's gradients as a store of tensors, keyed by the `parameters` they belong to (in the same order).
fn gradient_stores(parameters: &[&Tensor], gradients: Vec<ShardGradients>) -> Result<Vec<GradStore>> {
    let store = |shard_gradients: ShardGradients| {
        let mut store = GradStore::default();
        for (tensor, gradient) in parameters.iter().zip(shard_gradients) {
            let Some(gradient) = gradient else { continue };
            store.insert(tensor, Tensor::from_vec(gradient, tensor.shape(), tensor.device())?);
        }
        Ok(store)
    };
    gradients.into_iter().map(store).collect()
}

/// log sigma^2 of a fixed-variance Gaussian decoder, as the kernel's one value (empty for other likelihoods).
fn fixed_log_var(likelihood: &Likelihood) -> Vec<f32> {
    match likelihood {
        Likelihood::Gaussian(gaussian) => gaussian.fixed_log_var().map(|v| v as f32).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The kernel of `likelihood`, with a learned log sigma^2's values or a fixed one's.
fn likelihood_kernel<'a>(
    likelihood: &Likelihood,
    learned: Option<&'a [f32]>,
    fixed: &'a [f32],
) -> LikelihoodKernel<'a> {
    match likelihood {
        Likelihood::Bernoulli => LikelihoodKernel::Bernoulli,
        Likelihood::Gaussian(_) => {
            LikelihoodKernel::Gaussian { log_var: learned.unwrap_or(fixed), learned: learned.is_some() }
        }
        Likelihood::Categorical(categorical) => LikelihoodKernel::Categorical { levels: categorical.levels() },
    }
}

/// One shard's values.
#[derive(Clone, Copy)]
struct ShardData<'a> {
    /// The examples `[rows, data_dim]`.
    x: &'a [f32],
    /// The noise `[rows * samples, latent_dim]`.
    eps: &'a [f32],
    rows: usize,
}

/// The batch's shards as slices.
struct Batch<'a> {
    shards: Vec<ShardData<'a>>,
    /// Examples in the whole batch.
    rows: usize,
    /// Noise draws per example.
    samples: usize,
}

impl<'a> Batch<'a> {
    /// The shards' (x, eps) values `data`, in shard order, checked against the model's widths.
    fn new(vae: &Vae, shards: &[Shard], data: &[&'a [f32]]) -> Result<Self> {
        let (data_dim, latent_dim) = (vae.config().input_shape.dim(), vae.config().latent_dim);
        let mut views = Vec::with_capacity(shards.len());
        let mut samples = None;
        for (shard, pair) in shards.iter().zip(data.chunks_exact(2)) {
            let ((rows, x_dim), (draws, eps_dim)) = (shard.x.dims2()?, shard.eps.dims2()?);
            let draws_per_row = (rows > 0 && draws % rows == 0).then(|| draws / rows);
            if x_dim != data_dim
                || eps_dim != latent_dim
                || draws_per_row.is_none()
                || samples.is_some_and(|s| Some(s) != draws_per_row)
            {
                return Err(Error::ShapeMismatch(format!(
                    "a training step on x {:?} with eps {:?}: expected [rows, {data_dim}] and [rows * samples, \
                     {latent_dim}], the same samples in every shard",
                    shard.x.dims(),
                    shard.eps.dims(),
                )));
            }
            samples = draws_per_row;
            views.push(ShardData { x: pair[0], eps: pair[1], rows });
        }
        let rows = views.iter().map(|view| view.rows).sum();
        Ok(Batch { shards: views, rows, samples: samples.unwrap_or(1) })
    }
}

/// The model's layers as slices, in the shape of [`Layers`], with the decoder's likelihood.
struct Network<'a> {
    encoder: Vec<Layer<'a>>,
    mu: Layer<'a>,
    log_var: Layer<'a>,
    decoder: Vec<Layer<'a>>,
    likelihood: LikelihoodKernel<'a>,
}

/// A shard after phase 1: the encoder's outputs, and each latent dimension's KL summed over its examples.
struct Encoded {
    hidden: Outputs,
    mu: Vec<f32>,
    log_var: Vec<f32>,
    kl_sums: Vec<f64>,
}

/// What the KL's batch statistics make of it: its derivative a_j per latent dimension (dL/dKL_nj = a_j / N) and
/// the weighted KL as it enters the loss.
struct KlGradient {
    coefficients: Vec<f32>,
    weighted_kl: Option<f64>,
}

/// A shard's sums over its examples, and every parameter's gradient in the order of [`Layers::parameters`], then
/// the likelihood's learned log sigma^2 (`None` for a weight whose gradient waits for the whole batch: [`Waiting`]).
struct ShardResult {
    /// The sum of -log p(x|z~) (over every sample, for the IWAE bound).
    reconstruction: f64,
    /// For the IWAE bound, the sum of the examples' -log (1/K) sum_k w_k; 0 for the ELBO, whose loss is the
    /// reconstruction plus the weighted KL of the whole batch.
    loss: f64,
    gradients: ShardGradients,
    /// The decoder's last layer's part of its weight gradient, where that waits for the whole batch.
    waiting: Option<Waiting>,
}

/// A shard's gradients in parameter order, `None` where a weight's gradient waited for the whole batch.
type ShardGradients = Vec<Option<Vec<f32>>>;

/// A shard's part of a dense layer's weight gradient dL/dW = (dL/dpre)^T input, made once for the whole batch
/// ([`Layer::weight_gradient_waits`]).
struct Waiting {
    /// dL/dpre `[rows, outputs]`.
    grad_pre: Vec<f32>,
    /// The layer's input `[rows, inner]`.
    input: Vec<f32>,
    rows: usize,
}

impl<'a> Network<'a> {
    /// Pairs `layers` with their (weight, bias) values, given in the order of [`Layers::parameters`].
    fn new(layers: &Layers, values: &[&'a [f32]], likelihood: LikelihoodKernel<'a>) -> Result<Self> {
        let (encoder, mu, log_var, decoder) =
            layers.on_values(values).ok_or_else(|| unsupported("activations like relu"))?;
        Ok(Network { encoder, mu, log_var, decoder, likelihood })
    }

    fn latent_dim(&self) -> usize {
        self.mu.bias.len()
    }

    /// The step on the batch: its figures (batch means) and each shard's gradients.
    fn step(&self, batch: &Batch, context: &StepContext) -> Result<(StepFigures, Vec<ShardGradients>)> {
        // 1. encoder forward on x: (mu_x, log sigma^2_x), and 4. the closed-form KL's sums per dimension
        let encoded = on_each_shard(&batch.shards, |shard| Ok(self.encode(shard)))?;
        let mut kl_sums = vec![0.0f64; self.latent_dim()];
        for shard in &encoded {
            kl_sums.iter_mut().zip(&shard.kl_sums).for_each(|(total, part)| *total += part);
        }
        let kl_mean = kl_sums.iter().sum::<f64>() / batch.rows as f64;
        let decomposition = match context.config.objective {
            Objective::Tcvae { tc_beta } => Some(decompose(batch, &encoded, context.dataset_size, tc_beta)?),
            _ => None,
        };
        let kl_gradient = kl_gradient(context, &kl_sums, batch.rows, decomposition.as_ref());
        let c = 1.0 / batch.rows as f32;
        let direct = direct_gradients(decomposition.as_ref(), batch, self.latent_dim());
        let pairs: Vec<_> = batch.shards.iter().zip(&encoded).zip(direct).collect();
        let draws = batch.rows * batch.samples;
        let last_waits = self.decoder.last().is_some_and(|last| last.weight_gradient_waits(draws, pairs.len()));
        // steps 2, 3, 5 and 6 on each shard
        let mut results = on_each_shard(&pairs, |((shard, encoded), direct)| {
            Ok(match context.config.objective {
                Objective::Iwae { .. } => self.iwae_backward(shard, encoded, (batch.samples, c), last_waits),
                _ => self.elbo_backward(shard, encoded, (&kl_gradient.coefficients, c), *direct, last_waits),
            })
        })?;
        encoded.into_iter().for_each(|shard| recycle_outputs(shard.hidden));
        whole_batch_weight_gradient(&mut results);
        let figures = figures(&results, &kl_gradient, kl_mean, batch);
        Ok((figures, results.into_iter().map(|result| result.gradients).collect()))
    }

    /// Phase 1 on a shard: the encoder's forward pass and the KL per latent dimension, summed over examples.
    fn encode(&self, shard: &ShardData) -> Encoded {
        let rows = shard.rows;
        let hidden = forward_chain(&self.encoder, shard.x, rows);
        let features = last_output(&hidden, shard.x);
        let (mu, log_var) = (self.mu.forward(features, rows).0, self.log_var.forward(features, rows).0);
        let mut kl_sums = vec![0.0f64; self.latent_dim()];
        for (mu_row, log_var_row) in mu.chunks_exact(self.latent_dim()).zip(log_var.chunks_exact(self.latent_dim())) {
            for ((total, &m), &lv) in kl_sums.iter_mut().zip(mu_row).zip(log_var_row) {
                // KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2)
                *total += f64::from(0.5 * (lv.exp() + m * m - 1.0 - lv));
            }
        }
        Encoded { hidden, mu, log_var, kl_sums }
    }

    /// The decoder's forward pass on `z` `[rows, latent_dim]`, with every layer's output kept.
    fn decode(&self, z: &[f32], rows: usize) -> Outputs {
        forward_chain(&self.decoder, z, rows)
    }

    /// Phase 2 of the ELBO on a shard: z~, the decoder, -log p(x|z~), and the backward pass, with the KL's
    /// derivative `coefficients` and c = 1/N, and beta-TCVAE's `direct` gradients of its KL term.
    fn elbo_backward(
        &self,
        shard: &ShardData,
        encoded: &Encoded,
        (coefficients, c): (&[f32], f32),
        direct: Option<DirectGradients>,
        last_waits: bool,
    ) -> ShardResult {
        let rows = shard.rows;
        // 2. z~ = mu_x + sigma_x * eps
        let z = reparameterize(&encoded.mu, &encoded.log_var, shard.eps);
        // 3. decoder forward and -log p(x|z~), with its gradient for the decoder's output
        let decoded = self.decode(&z, rows);
        let output = last_output(&decoded, &z);
        let x = Targets::new(shard.x, shard.x.len() / rows.max(1), 1);
        let likelihood = self.likelihood.loss_and_gradient(output, x, &vec![c; rows]);
        // 6. backward through everything, to the encoder
        let (decoder_gradients, mut grad_z, waiting) =
            backward_chain(&self.decoder, &z, &decoded, likelihood.output, rows, (true, last_waits));
        if let Some(direct) = direct {
            add_to(&mut grad_z, direct.z);
        }
        let (mut grad_mu, mut grad_log_var) =
            latent_gradients(&encoded.mu, &encoded.log_var, shard.eps, &grad_z, coefficients, c);
        if let Some(direct) = direct {
            add_to(&mut grad_mu, direct.mu);
            add_to(&mut grad_log_var, direct.log_var);
        }
        let encoder_gradients = self.encoder_backward(shard, encoded, &grad_mu, &grad_log_var);
        recycle_outputs(decoded);
        ShardResult {
            reconstruction: likelihood.losses.iter().map(|&v| f64::from(v)).sum(),
            loss: 0.0,
            gradients: gather(encoder_gradients, (decoder_gradients, waiting.is_some()), likelihood.log_var),
            waiting,
        }
    }

    /// Phase 2 of the IWAE bound on a shard with `samples` draws per example.
    fn iwae_backward(
        &self,
        shard: &ShardData,
        encoded: &Encoded,
        (samples, c): (usize, f32),
        last_waits: bool,
    ) -> ShardResult {
        let (rows, latent_dim) = (shard.rows, self.latent_dim());
        let draws = rows * samples;
        let (mu, log_var) =
            (repeat_rows(&encoded.mu, latent_dim, samples), repeat_rows(&encoded.log_var, latent_dim, samples));
        // each example's data read in place by its draws, not copied once per draw
        let x = Targets::new(shard.x, shard.x.len() / rows.max(1), samples);
        let z = reparameterize(&mu, &log_var, shard.eps);
        let decoded = self.decode(&z, draws);
        let output = last_output(&decoded, &z);
        let (reconstruction, mut grad_output) = self.likelihood.losses_and_unit_gradient(output, x, draws);
        // log w = -rec + log N(z; 0, I) - log N(z; mu, sigma^2) = -rec - 0.5 sum_j (z^2 - log sigma^2 - eps^2)
        let log_weights: Vec<f32> = (0..draws)
            .map(|draw| {
                let row = draw * latent_dim..(draw + 1) * latent_dim;
                let terms = z[row.clone()].iter().zip(&log_var[row.clone()]).zip(&shard.eps[row]);
                -reconstruction[draw] - 0.5 * terms.map(|((&z, &lv), &e)| z * z - lv - e * e).sum::<f32>()
            })
            .collect();
        let (bounds, normalised) = normalise_weights(&log_weights, samples);
        let scales: Vec<f32> = normalised.iter().map(|&w| c * w).collect();
        scale_rows(&mut grad_output, &scales);
        let grad_log_var_parameter = self.likelihood.log_var_gradient(output, x, &scales);
        let (decoder_gradients, mut grad_z, waiting) =
            backward_chain(&self.decoder, &z, &decoded, grad_output, draws, (true, last_waits));
        // dL/dz_k = c w~_k (drec/dz_k + z_k)
        for (draw, &scale) in scales.iter().enumerate() {
            let row = draw * latent_dim..(draw + 1) * latent_dim;
            grad_z[row.clone()].iter_mut().zip(&z[row]).for_each(|(g, &z)| *g += scale * z);
        }
        let (grad_mu, grad_log_var) = iwae_latent_gradients(&log_var, shard.eps, &grad_z, (latent_dim, samples), c);
        let encoder_gradients = self.encoder_backward(shard, encoded, &grad_mu, &grad_log_var);
        recycle_outputs(decoded);
        ShardResult {
            reconstruction: reconstruction.iter().map(|&v| f64::from(v)).sum(),
            loss: bounds.iter().map(|&bound| -f64::from(bound)).sum(),
            gradients: gather(encoder_gradients, (decoder_gradients, waiting.is_some()), grad_log_var_parameter),
            waiting,
        }
    }

    /// Back through the heads and the encoder from (dL/dmu, dL/dlog sigma^2): every encoder layer's gradients, the
    /// heads' last.
    fn encoder_backward(
        &self,
        shard: &ShardData,
        encoded: &Encoded,
        grad_mu: &[f32],
        grad_log_var: &[f32],
    ) -> Vec<LayerGradients> {
        let rows = shard.rows;
        let features = last_output(&encoded.hidden, shard.x);
        let (mu_gradients, grad_features) =
            self.mu.backward(features, (&encoded.mu, &Kept::default()), grad_mu.to_vec(), rows, true);
        let (log_var_gradients, grad_from_log_var) =
            self.log_var.backward(features, (&encoded.log_var, &Kept::default()), grad_log_var.to_vec(), rows, true);
        let mut grad_features = grad_features.unwrap_or_default();
        add_to(&mut grad_features, &grad_from_log_var.unwrap_or_default());
        let (mut gradients, _, _) =
            backward_chain(&self.encoder, shard.x, &encoded.hidden, grad_features, rows, (false, false));
        gradients.extend(mu_gradients.into_iter().chain(log_var_gradients));
        gradients
    }
}

/// The batch's figures (means over its examples) from its shards' sums.
fn figures(results: &[ShardResult], kl_gradient: &KlGradient, kl_mean: f64, batch: &Batch) -> StepFigures {
    let rows = batch.rows as f64;
    let reconstruction = results.iter().map(|result| result.reconstruction).sum::<f64>() / rows;
    match kl_gradient.weighted_kl {
        Some(weighted_kl) => StepFigures {
            reconstruction,
            kl: kl_mean,
            weighted_kl: Some(weighted_kl),
            loss: reconstruction + weighted_kl,
        },
        // the IWAE bound: the reconstruction term of every sample, and the bound itself as the loss
        None => StepFigures {
            reconstruction: reconstruction / batch.samples as f64,
            kl: kl_mean,
            weighted_kl: None,
            loss: results.iter().map(|result| result.loss).sum::<f64>() / rows,
        },
    }
}

/// The gradients in parameter order: the encoder's and heads', the decoder's, then a learned log sigma^2's; with
/// `last_waits`, the decoder's last weight's left out (`None`: [`whole_batch_weight_gradient`] fills it in).
fn gather(
    encoder: Vec<LayerGradients>,
    (decoder, last_waits): (Vec<LayerGradients>, bool),
    log_var: Option<Vec<f32>>,
) -> ShardGradients {
    let last = encoder.len() + decoder.len();
    let layers = encoder.into_iter().chain(decoder).enumerate();
    let pairs =
        layers.flat_map(|(index, (weight, bias))| [(!last_waits || index + 1 < last).then_some(weight), Some(bias)]);
    pairs.chain(log_var.map(Some)).collect()
}

/// The decoder's last weight gradient for the whole batch from the shards' [`Waiting`] parts, where it waited:
/// dL/dW = (dL/dpre)^T input over every row at once, the shards' rows stacked, in the first shard's gradients.
/// The product splits W's rows between the kernel threads, so each writes its own band once, with twice a
/// shard's rows as its inner dimension.
fn whole_batch_weight_gradient(results: &mut [ShardResult]) {
    let parts: Vec<Waiting> = results.iter_mut().filter_map(|result| result.waiting.take()).collect();
    let Some(slot) = results.first_mut().and_then(|first| first.gradients.iter_mut().find(|g| g.is_none())) else {
        return;
    };
    let rows = parts.iter().map(|part| part.rows).sum();
    let stacked = |values: &dyn Fn(&Waiting) -> &[f32]| {
        // a pooled buffer emptied, then filled shard by shard within its capacity
        let mut all = recycle::stale(parts.iter().map(|part| values(part).len()).sum());
        all.clear();
        parts.iter().for_each(|part| all.extend_from_slice(values(part)));
        all
    };
    let (grad_pre, input) = (stacked(&|part| &part.grad_pre), stacked(&|part| &part.input));
    *slot = Some(weight_gradient(&grad_pre, &input, rows));
    // back to the pool: the buffers taken from it (the shards' dL/dpre came from the likelihood's own allocation,
    // and handing those in as well would fill the pool with a batch's worth each step)
    [grad_pre, input].into_iter().chain(parts.into_iter().map(|part| part.input)).for_each(recycle::recycle);
}

/// The KL's derivative per latent dimension and the weighted KL, from its sums per dimension over the batch's
/// `rows` examples ([`crate::objective::KlWeighting::weighted_kl_of_means`]); for the IWAE bound, no KL term; for
/// beta-TCVAE, its `decomposition` (whose gradients reach the latents directly: [`direct_gradients`]).
fn kl_gradient(
    context: &StepContext,
    kl_sums: &[f64],
    rows: usize,
    decomposition: Option<&tcvae::Decomposition>,
) -> KlGradient {
    match context.config.objective {
        Objective::Iwae { .. } => return KlGradient { coefficients: vec![0.0; kl_sums.len()], weighted_kl: None },
        Objective::Tcvae { tc_beta } => {
            let weighted_kl = decomposition.map(|parts| parts.weighted(tc_beta));
            return KlGradient { coefficients: vec![0.0; kl_sums.len()], weighted_kl };
        }
        Objective::Elbo => {}
    }
    let means: Vec<f64> = kl_sums.iter().map(|sum| sum / rows as f64).collect();
    let (weighted_kl, derivatives) = context.config.kl.weighted_kl_of_means(&means, context.step);
    KlGradient { coefficients: derivatives.iter().map(|&d| d as f32).collect(), weighted_kl: Some(weighted_kl) }
}

/// beta-TCVAE's decomposition of the KL over the whole batch (its estimator pairs every example with every other,
/// across the shards), from each shard's posterior and z~ = mu + sigma * eps.
fn decompose(batch: &Batch, encoded: &[Encoded], dataset_size: usize, tc_beta: f64) -> Result<tcvae::Decomposition> {
    crate::objective::tcvae::check_batch(batch.rows, dataset_size)?;
    let (mut mu, mut log_var, mut z) = (Vec::new(), Vec::new(), Vec::new());
    for (shard, encoded) in batch.shards.iter().zip(encoded) {
        mu.extend_from_slice(&encoded.mu);
        log_var.extend_from_slice(&encoded.log_var);
        z.extend(reparameterize(&encoded.mu, &encoded.log_var, shard.eps));
    }
    let latent_dim = mu.len() / batch.rows;
    let posteriors = tcvae::Posteriors { mu: &mu, log_var: &log_var, z: &z, latent_dim };
    Ok(tcvae::decomposition(posteriors, dataset_size, tc_beta as f32))
}

/// A shard's rows of beta-TCVAE's gradients of its KL term in z~, mu and log sigma^2.
#[derive(Clone, Copy)]
struct DirectGradients<'a> {
    z: &'a [f32],
    mu: &'a [f32],
    log_var: &'a [f32],
}

/// Each shard's rows of `decomposition`'s gradients (`None` for every shard without one).
fn direct_gradients<'d>(
    decomposition: Option<&'d tcvae::Decomposition>,
    batch: &Batch,
    latent_dim: usize,
) -> Vec<Option<DirectGradients<'d>>> {
    let mut start = 0;
    let mut rows_of = |shard: &ShardData| {
        let range = start * latent_dim..(start + shard.rows) * latent_dim;
        start += shard.rows;
        range
    };
    batch
        .shards
        .iter()
        .map(|shard| {
            let range = rows_of(shard);
            decomposition.map(|parts| DirectGradients {
                z: &parts.grad_z[range.clone()],
                mu: &parts.grad_mu[range.clone()],
                log_var: &parts.grad_log_var[range],
            })
        })
        .collect()
}

/// The outputs of a chain of layers, each with what its backward pass keeps.
type Outputs = Vec<(Vec<f32>, Kept)>;

/// Runs `input` `[rows, _]` through `layers`, keeping every layer's output for the backward pass.
fn forward_chain(layers: &[Layer], input: &[f32], rows: usize) -> Outputs {
    let mut outputs: Outputs = Vec::with_capacity(layers.len());
    for layer in layers {
        let layer_input = outputs.last().map_or(input, |(output, _)| output.as_slice());
        outputs.push(layer.forward(layer_input, rows));
    }
    outputs
}

/// Hands a chain's outputs and what its layers kept back to [`recycle`] once the backward pass is done with them.
fn recycle_outputs(outputs: Outputs) {
    for (output, kept) in outputs {
        recycle::recycle(output);
        kept.into_buffers().for_each(recycle::recycle);
    }
}

/// The last output of a chain, or its input when the chain is empty.
fn last_output<'o>(outputs: &'o Outputs, input: &'o [f32]) -> &'o [f32] {
    outputs.last().map_or(input, |(output, _)| output.as_slice())
}

/// Back through `layers` (whose input was `input` and outputs `outputs`) from dL/d(last output): the parameter
/// gradients of each layer that has parameters, in forward order, and dL/dinput when `input_gradient_wanted`
/// (else empty: the first layer's input product is skipped); with `last_waits`, the last layer's weight gradient
/// left to the whole batch and its part returned instead ([`Waiting`]; that layer then gives its bias's alone).
fn backward_chain(
    layers: &[Layer],
    input: &[f32],
    outputs: &Outputs,
    grad_output: Vec<f32>,
    rows: usize,
    (input_gradient_wanted, last_waits): (bool, bool),
) -> (Vec<LayerGradients>, Vec<f32>, Option<Waiting>) {
    let mut gradients = Vec::with_capacity(layers.len());
    let mut grad = grad_output;
    let mut waiting = None;
    for (index, layer) in layers.iter().enumerate().rev() {
        let layer_input = if index == 0 { input } else { &outputs[index - 1].0 };
        let (output, kept) = &outputs[index];
        if last_waits && index + 1 == layers.len() {
            let (grad_bias, grad_pre, grad_input) = layer.backward_waiting((output, kept), grad, rows);
            let mut kept_input = recycle::stale(layer_input.len());
            kept_input.copy_from_slice(layer_input);
            waiting = Some(Waiting { grad_pre, input: kept_input, rows });
            // an empty weight gradient in its place, which `gather` leaves out
            gradients.push((Vec::new(), grad_bias));
            grad = grad_input;
            continue;
        }
        let wanted = index > 0 || input_gradient_wanted;
        let (parameters, grad_input) = layer.backward(layer_input, (output, kept), grad, rows, wanted);
        gradients.extend(parameters);
        grad = grad_input.unwrap_or_default();
    }
    gradients.reverse();
    (gradients, grad, waiting)
}

/// z = mu + sigma * eps with sigma = exp(0.5 * log sigma^2), value by value.
fn reparameterize(mu: &[f32], log_var: &[f32], eps: &[f32]) -> Vec<f32> {
    mu.iter().zip(log_var).zip(eps).map(|((&m, &lv), &e)| m + (0.5 * lv).exp() * e).collect()
}

/// Each row of a `[rows, columns]` matrix repeated `times` times in place.
fn repeat_rows(values: &[f32], columns: usize, times: usize) -> Vec<f32> {
    let mut repeated = Vec::with_capacity(values.len() * times);
    for row in values.chunks_exact(columns.max(1)) {
        (0..times).for_each(|_| repeated.extend_from_slice(row));
    }
    repeated
}

/// (dL/dmu, dL/dlog sigma^2) from dL/dz and the KL's own gradient, c a_j per dimension:
/// dL/dmu = dL/dz + c a mu;  dL/dlog sigma^2 = dL/dz * eps * sigma / 2 + c a (sigma^2 - 1) / 2.
fn latent_gradients(
    mu: &[f32],
    log_var: &[f32],
    eps: &[f32],
    grad_z: &[f32],
    coefficients: &[f32],
    c: f32,
) -> (Vec<f32>, Vec<f32>) {
    let latent_dim = coefficients.len();
    let scale = |index: usize| c * coefficients[index % latent_dim];
    let grad_mu = grad_z.iter().zip(mu).enumerate().map(|(i, (&g, &m))| g + scale(i) * m).collect();
    let grad_log_var = grad_z
        .iter()
        .zip(log_var)
        .zip(eps)
        .enumerate()
        .map(|(i, ((&g, &lv), &e))| g * e * 0.5 * (0.5 * lv).exp() + scale(i) * 0.5 * (lv.exp() - 1.0))
        .collect();
    (grad_mu, grad_log_var)
}

/// Each example's bound log (1/K) sum_k w_k and its normalised weights w~_k = w_k / sum_k w_k, from log w
/// `[rows * K]`, example-major.
fn normalise_weights(log_weights: &[f32], samples: usize) -> (Vec<f32>, Vec<f32>) {
    let mut normalised = Vec::with_capacity(log_weights.len());
    let bounds = log_weights
        .chunks_exact(samples)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |max, &v| max.max(v));
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            normalised.extend(row.iter().map(|&v| (v - max).exp() / sum));
            max + sum.ln() - (samples as f32).ln()
        })
        .collect();
    (bounds, normalised)
}

/// (dL/dmu, dL/dlog sigma^2) of the IWAE bound, `[rows, latent_dim]`, from dL/dz, log sigma^2 (repeated) and eps,
/// each `[rows * K, latent_dim]`: dL/dmu = sum_k dL/dz_k;  dL/dlog sigma^2 = sum_k dL/dz_k * eps_k * sigma / 2 - c / 2.
fn iwae_latent_gradients(
    log_var: &[f32],
    eps: &[f32],
    grad_z: &[f32],
    (latent_dim, samples): (usize, usize),
    c: f32,
) -> (Vec<f32>, Vec<f32>) {
    let rows = grad_z.len() / (latent_dim * samples).max(1);
    let mut grad_mu = vec![0.0f32; rows * latent_dim];
    let mut grad_log_var = vec![-0.5 * c; rows * latent_dim];
    for draw in 0..rows * samples {
        let (source, target) = (draw * latent_dim, draw / samples * latent_dim);
        for j in 0..latent_dim {
            let g = grad_z[source + j];
            grad_mu[target + j] += g;
            grad_log_var[target + j] += g * eps[source + j] * 0.5 * (0.5 * log_var[source + j]).exp();
        }
    }
    (grad_mu, grad_log_var)
}

#[cfg(test)]
mod tests {
    use super::super::graph::GraphStep;
    use super::*;
    use crate::data::ExampleShape;
    use crate::kernels::with_kernel_threads;
    use crate::model::{Activation, ConvConfig, GaussianVariance, LikelihoodConfig, VaeConfig};
    use crate::objective::{Capacity, KlSchedule, KlWeighting};
    use crate::training::TrainConfig;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    /// The encoder's and the decoder's hidden widths.
    type Hidden<'a> = (&'a [usize], &'a [usize]);

    fn config(data_dim: usize, latent_dim: usize, hidden: Hidden, activation: Activation) -> VaeConfig {
        VaeConfig {
            input_shape: ExampleShape::flat(data_dim),
            latent_dim,
            encoder_hidden: hidden.0.to_vec(),
            decoder_hidden: hidden.1.to_vec(),
            activation,
            ..VaeConfig::default()
        }
    }

    fn random(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, columns: usize, low: f32, high: f32) -> Tensor {
        let values: Vec<f32> = (0..rows * columns).map(|_| rng.random_range(low..high)).collect();
        Tensor::from_vec(values, (rows, columns), &Device::Cpu).unwrap()
    }

    /// The batch cut into `count` shards, with its noise cut the same way.
    fn split(x: &Tensor, eps: &Tensor, count: usize) -> Vec<Shard> {
        let (rows, samples) = (x.dim(0).unwrap(), eps.dim(0).unwrap() / x.dim(0).unwrap());
        (0..count)
            .map(|index| {
                let (start, end) = (index * rows / count, (index + 1) * rows / count);
                Shard {
                    x: x.narrow(0, start, end - start).unwrap(),
                    eps: eps.narrow(0, start * samples, (end - start) * samples).unwrap(),
                    share: (end - start) as f64 / rows as f64,
                }
            })
            .collect()
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * (1.0 + a.abs().max(b.abs()))
    }

    /// The fused step on `shards` shards against candle's graph on the whole batch: every figure and every
    /// parameter's gradient (summed over the shards).
    fn compare(model: &VaeConfig, train: &TrainConfig, rows: usize, shards: usize, label: &str) {
        compare_with_zeros(model, train, (rows, shards), 0.0, label)
    }

    /// [`compare`] on data whose values are zero with probability `zeros`.
    fn compare_with_zeros(
        model: &VaeConfig,
        train: &TrainConfig,
        (rows, shards): (usize, usize),
        zeros: f64,
        label: &str,
    ) {
        let (vae, varmap) = Vae::fresh(model, rows as u64, DType::F32, &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rows as u64 + 1);
        if let Some(log_var) = varmap.data().lock().unwrap().get("decoder.log_var") {
            log_var
                .set(&random(&mut rng, 1, log_var.elem_count(), -1.0, 1.0).reshape(log_var.shape()).unwrap())
                .unwrap();
        }
        let samples = match train.objective {
            Objective::Iwae { samples } => samples,
            _ => 1,
        };
        let x = random(&mut rng, rows, model.input_shape.dim(), 0.0, 1.0);
        let keep = Tensor::from_iter((0..x.elem_count()).map(|_| f32::from(!rng.random_bool(zeros))), &Device::Cpu);
        let x = (&x * keep.unwrap().reshape(x.shape()).unwrap()).unwrap();
        let eps = random(&mut rng, rows * samples, model.latent_dim, -2.0, 2.0);
        let context = StepContext { config: train, step: 4, dataset_size: 1000 };
        let (fused, fused_grads) = FusedStep.run(&vae, &split(&x, &eps, shards), &context).unwrap();
        let (graph, graph_grads) = GraphStep.run(&vae, &split(&x, &eps, 1), &context).unwrap();
        let pairs = [
            ("reconstruction", fused.reconstruction, graph.reconstruction),
            ("KL", fused.kl, graph.kl),
            ("loss", fused.loss, graph.loss),
            ("weighted KL", fused.weighted_kl.unwrap_or(-1.0), graph.weighted_kl.unwrap_or(-1.0)),
        ];
        for (name, a, b) in pairs {
            assert!(close(a, b, 1e-4), "{label}: {name} {a} (fused) vs {b} (graph)");
        }
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let expected = graph_grads[0].get(var.as_tensor()).unwrap();
            // as the optimiser does: the sum of the shards' gradients that have one (a weight gradient made for the
            // whole batch is in one shard's alone)
            let parts: Vec<&Tensor> = fused_grads.iter().filter_map(|grads| grads.get(var.as_tensor())).collect();
            assert!(!parts.is_empty(), "{label}: no gradient for {name}");
            let sum = parts[1..].iter().fold(parts[0].clone(), |sum, part| (sum + *part).unwrap());
            let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let difference = (sum - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // relative to the gradient's largest value, with a floor for sums that cancel (a shared log-variance's
            // gradient adds rows x data_dim terms of either sign, in f32 in both steps)
            assert!(difference <= 2e-4 * scale + 2e-5, "{label}: {name} differs by {difference} (scale {scale})");
        }
    }

    fn likelihoods() -> [LikelihoodConfig; 5] {
        let gaussian = |variance| LikelihoodConfig::Gaussian { variance };
        [
            LikelihoodConfig::Bernoulli,
            gaussian(GaussianVariance::Fixed { sigma: 0.7 }),
            gaussian(GaussianVariance::LearnedShared),
            gaussian(GaussianVariance::LearnedPerDimension),
            LikelihoodConfig::Categorical { levels: 5 },
        ]
    }

    fn objectives() -> Vec<TrainConfig> {
        let kl = |kl| TrainConfig { kl, ..TrainConfig::default() };
        let warm_up = KlWeighting {
            beta: 2.0,
            schedule: KlSchedule::Linear { over: crate::objective::Span::Steps(9) },
            ..KlWeighting::default()
        };
        let cycles = KlWeighting {
            schedule: KlSchedule::Cyclical { period: crate::objective::Span::Steps(6), ratio: 0.5 },
            ..KlWeighting::default()
        };
        let free_bits = KlWeighting { beta: 1.5, free_bits: Some(0.05), ..KlWeighting::default() };
        let capacity = Capacity { max_nats: 4.0, over: crate::objective::Span::Steps(10), gamma: 30.0 };
        let both = KlWeighting { free_bits: Some(0.05), capacity: Some(capacity), ..KlWeighting::default() };
        vec![
            TrainConfig::default(),
            kl(warm_up),
            kl(cycles),
            kl(free_bits),
            kl(KlWeighting { capacity: Some(capacity), ..KlWeighting::default() }),
            kl(both),
            TrainConfig { objective: Objective::Iwae { samples: 3 }, ..TrainConfig::default() },
            TrainConfig { objective: Objective::Tcvae { tc_beta: 6.0 }, ..TrainConfig::default() },
        ]
    }

    #[test]
    fn the_fused_step_matches_candles_graph_for_every_likelihood_and_objective() {
        let shapes: [(usize, usize, Hidden, Activation); 4] = [
            (13, 3, (&[], &[]), Activation::Relu),
            (30, 4, (&[16], &[16]), Activation::Tanh),
            (9, 5, (&[12, 7], &[6]), Activation::Softplus),
            (11, 3, (&[10], &[9, 5]), Activation::Silu),
        ];
        for (data_dim, latent_dim, hidden, activation) in shapes {
            for likelihood in likelihoods() {
                let model = VaeConfig { likelihood, ..config(data_dim, latent_dim, hidden, activation) };
                for train in objectives() {
                    for (rows, shards, threads) in [(7, 1, 1), (65, 2, 2), (65, 2, 1), (33, 1, 2)] {
                        let label = format!(
                            "{}, {:?} {:?}, {rows} rows in {shards} shards on {threads} threads",
                            model.describe(),
                            train.objective,
                            train.kl
                        );
                        with_kernel_threads(threads, || compare(&model, &train, rows, shards, &label));
                    }
                }
            }
        }
    }

    /// A decoder whose last weight is large against the batch's rows has that weight's gradient made once for the
    /// whole batch ([`Waiting`]): held to the graph for every likelihood and objective, on one and two threads.
    #[test]
    fn a_weight_gradient_made_for_the_whole_batch_matches_candles_graph() {
        // the Bernoulli's 200 -> 100 layer waits for 40 rows in 2 shards; the categorical's 200 -> 500 also for
        // the IWAE bound's 120 draws
        assert!(super::super::layers::weight_gradient_waits((100, 200), 40, 2));
        assert!(super::super::layers::weight_gradient_waits((500, 200), 120, 2));
        assert!(!super::super::layers::weight_gradient_waits((100, 200), 40, 1));
        for likelihood in likelihoods() {
            let model = VaeConfig { likelihood, ..config(100, 3, (&[12], &[200]), Activation::Relu) };
            for train in objectives() {
                for threads in [1, 2] {
                    let label =
                        format!("{}, {:?} {:?} on {threads} threads", model.describe(), train.objective, train.kl);
                    with_kernel_threads(threads, || compare(&model, &train, 40, 2, &label));
                }
            }
        }
    }

    #[test]
    fn the_fused_step_matches_candles_graph_for_convolutional_models() {
        let conv = |channels: Vec<usize>, kernel, stride, padding| ConvConfig { channels, kernel, stride, padding };
        let shapes = [
            (ExampleShape::image(1, 8, 8), conv(vec![3, 4], 4, 2, 1), vec![5], Activation::Relu),
            (ExampleShape::image(3, 6, 10), conv(vec![2], 3, 1, 1), vec![], Activation::Tanh),
            (ExampleShape::image(2, 9, 5), conv(vec![4, 3], 3, 2, 1), vec![6, 4], Activation::Softplus),
            (ExampleShape::image(3, 8, 8), conv(vec![4], 4, 2, 1), vec![5], Activation::Silu),
            // 32 x 4 x 4 = 512 features: the dense layer after the convolutions reads a contiguous W^T for 33 rows
            // or more, and takes the product by outputs for 7 (`dense::reads_transposed_weight`)
            (ExampleShape::image(1, 16, 16), conv(vec![8, 32], 4, 2, 1), vec![64], Activation::Relu),
            // 256 output positions: each example's weight-gradient term a product of its own, not a chunk's side by side
            (ExampleShape::image(1, 32, 32), conv(vec![2], 4, 2, 1), vec![], Activation::Relu),
        ];
        let objectives = objectives();
        for (input_shape, conv, hidden, activation) in shapes {
            for likelihood in likelihoods() {
                let model = VaeConfig {
                    input_shape,
                    latent_dim: 3,
                    encoder_hidden: hidden.clone(),
                    decoder_hidden: hidden.iter().rev().copied().collect(),
                    activation,
                    likelihood,
                    conv: Some(conv.clone()),
                };
                for train in [&objectives[0], &objectives[3], &objectives[6], &objectives[7]] {
                    for (rows, shards, threads) in [(7, 1, 1), (65, 2, 2), (40, 1, 2)] {
                        let label =
                            format!("{}, {:?}, {rows} rows in {shards} shards", model.describe(), train.objective);
                        with_kernel_threads(threads, || compare(&model, train, rows, shards, &label));
                    }
                }
            }
        }
    }

    /// Data that is mostly zeros, where dense layers of 64 outputs or more take the sparse products
    /// (`kernels::sparse`): 94% zeros is under the threshold of every SIMD level (on an Intel CPU, of every level
    /// but AVX-512, which keeps the matrix multiplies: `kernels::sparse::most_density`); the widths cross a chunk of
    /// 64.
    #[test]
    fn the_fused_step_matches_candles_graph_on_mostly_zero_data() {
        let objectives = objectives();
        for likelihood in likelihoods() {
            let model = VaeConfig { likelihood, ..config(50, 4, (&[70], &[66]), Activation::Relu) };
            for train in [&objectives[0], &objectives[3], &objectives[6], &objectives[7]] {
                for level in crate::kernels::SimdLevel::ALL {
                    for (rows, shards, threads) in [(7, 1, 1), (65, 2, 2), (40, 1, 2)] {
                        let label = format!("{}, {:?}, {rows} rows at {level}", model.describe(), train.objective);
                        let run = || compare_with_zeros(&model, train, (rows, shards), 0.94, &label);
                        with_kernel_threads(threads, || crate::kernels::simd::with_simd_level(level, run));
                    }
                }
            }
        }
    }

    #[test]
    fn the_reference_model_matches_candles_graph() {
        compare(&VaeConfig::default(), &TrainConfig::default(), 64, 2, "784-400-20");
    }

    /// At every SIMD level the CPU has (forced on this thread, so one shard and one kernel thread), the fused step
    /// stays within the same tolerance of candle's graph.
    #[test]
    fn every_simd_level_matches_candles_graph() {
        let categorical = VaeConfig {
            likelihood: LikelihoodConfig::Categorical { levels: 16 },
            ..config(50, 6, (&[40], &[40]), Activation::Tanh)
        };
        for level in crate::kernels::SimdLevel::ALL {
            for model in [VaeConfig::default(), categorical.clone()] {
                let label = format!("{} at {level}", model.describe());
                let run = || compare(&model, &TrainConfig::default(), 64, 1, &label);
                with_kernel_threads(1, || crate::kernels::simd::with_simd_level(level, run));
            }
        }
    }

    #[test]
    fn noise_or_data_of_the_wrong_width_is_an_error_not_a_panic() {
        let (vae, _) =
            Vae::fresh(&config(30, 4, (&[16], &[16]), Activation::Relu), 1, DType::F32, &Device::Cpu).unwrap();
        let train = TrainConfig::default();
        let context = StepContext { config: &train, step: 1, dataset_size: 10 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let run = |x: Tensor, eps: Tensor| FusedStep.run(&vae, &[Shard { x, eps, share: 1.0 }], &context);
        assert!(run(random(&mut rng, 5, 30, 0.0, 1.0), random(&mut rng, 5, 4, -1.0, 1.0)).is_ok());
        let message =
            run(random(&mut rng, 5, 30, 0.0, 1.0), random(&mut rng, 5, 3, -1.0, 1.0)).unwrap_err().to_string();
        assert!(message.contains("[5, 3]") && message.contains("latent") || message.contains(", 4]"), "{message}");
        assert!(run(random(&mut rng, 5, 29, 0.0, 1.0), random(&mut rng, 5, 4, -1.0, 1.0)).is_err());
        assert!(run(random(&mut rng, 5, 30, 0.0, 1.0), random(&mut rng, 7, 4, -1.0, 1.0)).is_err());
    }
}
