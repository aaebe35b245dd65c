//! The training step of an MLP VAE with a Bernoulli decoder, worked out by hand on the CPU: the seed's six steps
//! on plain slices, with the fused layers' kernels, and the backward pass written out instead of recorded in
//! candle's graph. Candle's backward allocates a zero buffer and adds into it for every gradient, a tenth of a
//! step at the reference model's size; here each gradient is written once. Tests hold the figures and every
//! gradient to those of candle's graph.
//!
//! The loss of a shard of `rows` examples that is `share` of its batch: L = c * sum_n [ rec_n + w * KL_n ] with
//! c = share / rows and w the KL weight (beta and its schedule). Backward, from the decoder's output down:
//! - dL/dlogits = c * (sigmoid(logits) - x);
//! - a dense layer y = act(input W^T + b): dL/dpre = dL/dy * act'(y); dL/dW = (dL/dpre)^T input;
//!   dL/db = sum_n dL/dpre; dL/dinput = dL/dpre W;
//! - z = mu + sigma * eps, KL = 0.5 * sum(sigma^2 + mu^2 - 1 - log sigma^2), sigma = exp(log sigma^2 / 2):
//!   dL/dmu = dL/dz + c w mu;  dL/dlog sigma^2 = dL/dz * eps * sigma / 2 + c w (sigma^2 - 1) / 2.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use super::config::{Objective, TrainConfig};
use crate::cpu::{add_to, cpu_f32, read_all};
use crate::model::dense::{forward_values, input_gradient, parameter_gradients, Dense};
use crate::model::fused_activation::OutputActivation;
use crate::model::likelihood::bernoulli::loss_and_gradient;
use crate::model::{Likelihood, Vae};
use crate::{Error, Result};

/// The dense layers of an MLP VAE, in forward order.
struct Layers<'a> {
    encoder: &'a [Dense],
    mu: &'a Dense,
    log_var: &'a Dense,
    /// The decoder's hidden layers and its output layer.
    decoder: Vec<&'a Dense>,
}

impl<'a> Layers<'a> {
    fn of(vae: &'a Vae) -> Option<Self> {
        let (encoder, mu, log_var) = vae.encoder().dense_layers()?;
        let (hidden, output) = vae.decoder().dense_layers()?;
        Some(Layers { encoder, mu, log_var, decoder: hidden.iter().chain([output]).collect() })
    }

    fn all(&self) -> impl Iterator<Item = &'a Dense> + '_ {
        self.encoder.iter().chain([self.mu, self.log_var]).chain(self.decoder.iter().copied())
    }
}

/// True when a training step of `vae` under `config` can be taken by hand: an MLP with biases and activations
/// differentiable from their output (not SiLU), a Bernoulli decoder, f32 on the CPU, and the ELBO objective with
/// the KL weighted by beta and its schedule only (free bits and capacity take candle's graph).
pub(crate) fn supports(vae: &Vae, config: &TrainConfig, device: &Device) -> bool {
    let Some(layers) = Layers::of(vae) else { return false };
    let layers_fit = layers.all().all(|dense| {
        dense.bias().is_some() && dense.output_activation().is_some() && dense.weight().dtype() == DType::F32
    });
    device.is_cpu()
        && layers_fit
        && matches!(vae.likelihood(), Likelihood::Bernoulli)
        && config.objective == Objective::Elbo
        && config.kl.weight(1).is_some()
}

/// A shard's terms as means over its examples, in nats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardTerms {
    /// Mean -log p(x|z~).
    pub reconstruction: f64,
    /// Mean KL(q(z|x) || p(z)).
    pub kl: f64,
}

/// A dense layer's parameters as slices, with its activation.
struct Layer<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    activation: OutputActivation,
}

/// The model's layers as slices, in the shape of [`Layers`].
struct Network<'a> {
    encoder: Vec<Layer<'a>>,
    mu: Layer<'a>,
    log_var: Layer<'a>,
    decoder: Vec<Layer<'a>>,
}

impl<'a> Network<'a> {
    /// Pairs `layers` with their (weight, bias) values, given in the order of [`Layers::all`].
    fn new(layers: &Layers, values: &[&'a [f32]]) -> Result<Self> {
        let mut views = layers
            .all()
            .zip(values.chunks_exact(2))
            .map(|(dense, pair)| {
                let activation = dense.output_activation().ok_or_else(|| unsupported("activations like relu"))?;
                Ok(Layer { weight: pair[0], bias: pair[1], activation })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = views.split_off((layers.encoder.len() + 2).min(views.len()));
        let log_var = views.pop().ok_or_else(|| unsupported("a log_var head"))?;
        let mu = views.pop().ok_or_else(|| unsupported("a mu head"))?;
        Ok(Network { encoder: views, mu, log_var, decoder })
    }
}

/// The error for a model the step by hand does not cover (the trainer asks [`supports`] first).
fn unsupported(what: &str) -> Error {
    Error::invalid_setting("model", format!("a training step by hand needs {what}"))
}

/// A layer's parameter gradients (dL/dW, dL/db).
type LayerGradients = (Vec<f32>, Vec<f32>);

/// Forward and backward on a shard `x` `[rows, data_dim]` with its noise `eps` `[rows, latent_dim]`, for the loss
/// `share` * (mean reconstruction + `kl_weight` * mean KL): the shard's terms and every parameter's gradient.
/// The model must be [`supports`]ed.
pub(crate) fn run(vae: &Vae, x: &Tensor, eps: &Tensor, kl_weight: f64, share: f64) -> Result<(ShardTerms, GradStore)> {
    let layers = Layers::of(vae).ok_or_else(|| unsupported("an MLP VAE"))?;
    let pairs = layers.all().map(|dense| Ok([dense.weight(), dense.bias().ok_or_else(|| unsupported("biases"))?]));
    let parameters = pairs.collect::<Result<Vec<_>>>()?.concat();
    let (rows, data_dim) = x.dims2()?;
    let latent_dim = layers.mu.output_dim();
    if data_dim != vae.config().input_shape.dim() || eps.dims2()? != (rows, latent_dim) {
        return Err(Error::ShapeMismatch(format!(
            "a training step on x {:?} with eps {:?}: expected [rows, {}] and [rows, {latent_dim}]",
            x.dims(),
            eps.dims(),
            vae.config().input_shape.dim()
        )));
    }
    let guards = read_all(parameters.iter().copied().chain([x, eps]));
    let values = guards.iter().map(|guard| cpu_f32(guard, "training step")).collect::<candle_core::Result<Vec<_>>>()?;
    let (parameter_values, data) = values.split_at(parameters.len());
    let network = Network::new(&layers, parameter_values)?;
    let (terms, gradients) = network.step(data[0], data[1], rows, kl_weight, share);
    let mut store = GradStore::default();
    for (tensor, gradient) in parameters.iter().zip(gradients) {
        store.insert(tensor, Tensor::from_vec(gradient, tensor.shape(), tensor.device())?);
    }
    Ok((terms, store))
}

impl Network<'_> {
    /// The step on slices: the terms, and the gradients in the order weight, bias of each layer as in
    /// [`Layers::all`].
    fn step(&self, x: &[f32], eps: &[f32], rows: usize, kl_weight: f64, share: f64) -> (ShardTerms, Vec<Vec<f32>>) {
        let (mu_head, log_var_head) = (&self.mu, &self.log_var);
        // 1. encoder forward: (mu_x, log sigma^2_x)
        let hidden = forward_chain(&self.encoder, x, rows);
        let features = hidden.last().map_or(x, Vec::as_slice);
        let mu = forward_values(features, mu_head.weight, mu_head.bias, rows, OutputActivation::Identity);
        let log_var =
            forward_values(features, log_var_head.weight, log_var_head.bias, rows, OutputActivation::Identity);
        // 2. z~ = mu_x + sigma_x * eps; 4. closed-form KL
        let (z, kl) = reparameterize(&mu, &log_var, eps, mu_head.bias.len());
        // 3. decoder forward and -log p(x|z~)
        let decoded = forward_chain(&self.decoder, &z, rows);
        let logits = decoded.last().map_or(z.as_slice(), Vec::as_slice);
        let data_dim = x.len() / rows.max(1);
        // 6. backward, from dL/dlogits = c * (sigmoid(logits) - x)
        let c = share / rows.max(1) as f64;
        let (reconstruction, grad_logits) = loss_and_gradient(logits, x, data_dim, c as f32);
        let (decoder_gradients, grad_z) = backward_chain(&self.decoder, &z, &decoded, grad_logits, rows, true);
        let (grad_mu, grad_log_var) = latent_gradients(&mu, &log_var, eps, &grad_z, (c * kl_weight) as f32);
        let mu_gradients = parameter_gradients(&grad_mu, features, rows);
        let log_var_gradients = parameter_gradients(&grad_log_var, features, rows);
        let mut grad_features = input_gradient(&grad_mu, mu_head.weight, rows);
        add_to(&mut grad_features, &input_gradient(&grad_log_var, log_var_head.weight, rows));
        let (encoder_gradients, _) = backward_chain(&self.encoder, x, &hidden, grad_features, rows, false);
        let gradients = encoder_gradients.into_iter().chain([mu_gradients, log_var_gradients]).chain(decoder_gradients);
        let mean = |values: &[f32]| values.iter().map(|&v| f64::from(v)).sum::<f64>() / rows.max(1) as f64;
        let terms = ShardTerms { reconstruction: mean(&reconstruction), kl: mean(&kl) };
        (terms, gradients.flat_map(|(weight, bias)| [weight, bias]).collect())
    }
}

/// Runs `input` `[rows, _]` through `layers`, keeping every layer's output for the backward pass.
fn forward_chain(layers: &[Layer], input: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(layers.len());
    for layer in layers {
        let layer_input = outputs.last().map_or(input, Vec::as_slice);
        outputs.push(forward_values(layer_input, layer.weight, layer.bias, rows, layer.activation));
    }
    outputs
}

/// Back through `layers` (whose input was `input` and outputs `outputs`) from dL/d(last output): each layer's
/// parameter gradients, in forward order, and dL/dinput when `input_gradient_wanted` (else, with that product
/// skipped, the first layer's dL/dpre).
fn backward_chain(
    layers: &[Layer],
    input: &[f32],
    outputs: &[Vec<f32>],
    grad_output: Vec<f32>,
    rows: usize,
    input_gradient_wanted: bool,
) -> (Vec<LayerGradients>, Vec<f32>) {
    let mut gradients = Vec::with_capacity(layers.len());
    let mut grad = grad_output;
    for (index, layer) in layers.iter().enumerate().rev() {
        // dL/dpre = dL/dy * act'(y)
        let grad_pre = match layer.activation {
            OutputActivation::Identity => grad,
            activation => activation.gradient(&outputs[index], &grad),
        };
        let layer_input = if index == 0 { input } else { &outputs[index - 1] };
        gradients.push(parameter_gradients(&grad_pre, layer_input, rows));
        grad =
            if index > 0 || input_gradient_wanted { input_gradient(&grad_pre, layer.weight, rows) } else { grad_pre };
    }
    gradients.reverse();
    (gradients, grad)
}

/// z = mu + sigma * eps with sigma = exp(0.5 * log sigma^2), and each example's closed-form KL,
/// 0.5 * sum_dims(sigma^2 + mu^2 - 1 - log sigma^2).
fn reparameterize(mu: &[f32], log_var: &[f32], eps: &[f32], latent_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let z = mu.iter().zip(log_var).zip(eps).map(|((&m, &lv), &e)| m + (0.5 * lv).exp() * e).collect();
    let kl = mu
        .chunks(latent_dim.max(1))
        .zip(log_var.chunks(latent_dim.max(1)))
        .map(|(m, lv)| 0.5 * m.iter().zip(lv).map(|(&m, &lv)| lv.exp() + m * m - 1.0 - lv).sum::<f32>())
        .collect();
    (z, kl)
}

/// (dL/dmu, dL/dlog sigma^2) from dL/dz and the KL's own gradient with weight `kl_scale` = c * w:
/// dL/dmu = dL/dz + c w mu;  dL/dlog sigma^2 = dL/dz * eps * sigma / 2 + c w (sigma^2 - 1) / 2.
fn latent_gradients(mu: &[f32], log_var: &[f32], eps: &[f32], grad_z: &[f32], kl_scale: f32) -> (Vec<f32>, Vec<f32>) {
    let grad_mu = grad_z.iter().zip(mu).map(|(&g, &m)| g + kl_scale * m).collect();
    let grad_log_var = grad_z
        .iter()
        .zip(log_var)
        .zip(eps)
        .map(|((&g, &lv), &e)| g * e * 0.5 * (0.5 * lv).exp() + kl_scale * 0.5 * (lv.exp() - 1.0))
        .collect();
    (grad_mu, grad_log_var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ExampleShape;
    use crate::model::{Activation, LikelihoodConfig, VaeConfig};
    use crate::objective::{negative_elbo_terms, KlWeighting};
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

    /// The step by hand against candle's graph of the same loss: terms and every parameter's gradient.
    fn compare(config: &VaeConfig, rows: usize, kl_weight: f64, share: f64) {
        let (vae, varmap) = Vae::fresh(config, rows as u64, DType::F32, &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rows as u64 + 1);
        let x = random(&mut rng, rows, config.input_shape.dim(), 0.0, 1.0);
        let eps = random(&mut rng, rows, config.latent_dim, -2.0, 2.0);
        let (terms, grads) = run(&vae, &x, &eps, kl_weight, share).unwrap();

        let graph = negative_elbo_terms(&vae, &x, &eps).unwrap();
        let reconstruction = graph.reconstruction.mean_all().unwrap();
        let kl = graph.kl.mean_all().unwrap();
        let loss = ((&reconstruction + (&kl * kl_weight).unwrap()).unwrap() * share).unwrap();
        let graph_grads = loss.backward().unwrap();
        let scalar = |t: &Tensor| f64::from(t.to_scalar::<f32>().unwrap());
        let label = format!("{}, {rows} rows, w {kl_weight}, share {share}", config.describe());
        assert!((terms.reconstruction - scalar(&reconstruction)).abs() < 1e-4 * scalar(&reconstruction), "{label}");
        assert!((terms.kl - scalar(&kl)).abs() < 1e-4 * (1.0 + scalar(&kl)), "{label}");
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let (by_hand, expected) = (grads.get(var.as_tensor()).unwrap(), graph_grads.get(var.as_tensor()).unwrap());
            let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let difference =
                (by_hand - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(difference <= 1e-4 * scale, "{label}: {name} differs by {difference} (scale {scale})");
        }
    }

    #[test]
    fn the_step_by_hand_matches_candles_graph_in_terms_and_every_gradient() {
        let shapes: [(usize, usize, Hidden); 4] =
            [(30, 4, (&[16], &[16])), (13, 3, (&[], &[])), (9, 5, (&[12, 7], &[6])), (784, 20, (&[400], &[400]))];
        for (data_dim, latent_dim, hidden) in shapes {
            for activation in [Activation::Relu, Activation::Tanh, Activation::Softplus] {
                let config = config(data_dim, latent_dim, hidden, activation);
                compare(&config, 7, 1.0, 1.0);
                compare(&config, 33, 0.3, 0.5);
            }
        }
        compare(&VaeConfig::default(), 64, 4.0, 0.5);
    }

    #[test]
    fn noise_or_data_of_the_wrong_width_is_an_error_not_a_panic() {
        let (vae, _) =
            Vae::fresh(&config(30, 4, (&[16], &[16]), Activation::Relu), 1, DType::F32, &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (x, eps) = (random(&mut rng, 5, 30, 0.0, 1.0), random(&mut rng, 5, 4, -1.0, 1.0));
        assert!(run(&vae, &x, &eps, 1.0, 1.0).is_ok());
        let wrong_eps = random(&mut rng, 5, 3, -1.0, 1.0);
        let message = run(&vae, &x, &wrong_eps, 1.0, 1.0).unwrap_err().to_string();
        assert!(message.contains("[5, 3]") && message.contains("[rows, 4]"), "{message}");
        assert!(run(&vae, &random(&mut rng, 5, 29, 0.0, 1.0), &eps, 1.0, 1.0).is_err());
        assert!(run(&vae, &x, &random(&mut rng, 4, 4, -1.0, 1.0), 1.0, 1.0).is_err());
    }

    #[test]
    fn only_mlps_with_a_bernoulli_decoder_and_a_per_example_loss_are_taken_by_hand() {
        let cpu = Device::Cpu;
        let fits = |config: &VaeConfig, train: &TrainConfig| {
            let (vae, _) = Vae::fresh(config, 1, DType::F32, &cpu).unwrap();
            supports(&vae, train, &cpu)
        };
        let small = config(30, 4, (&[16], &[16]), Activation::Relu);
        let default = TrainConfig::default();
        assert!(fits(&small, &default));
        let warm_up = KlWeighting {
            beta: 4.0,
            schedule: crate::objective::KlSchedule::Linear { steps: 9 },
            ..KlWeighting::default()
        };
        assert!(fits(&small, &TrainConfig { kl: warm_up, ..default.clone() }));
        assert!(!fits(&config(30, 4, (&[16], &[16]), Activation::Silu), &default));
        let gaussian = VaeConfig {
            likelihood: LikelihoodConfig::Gaussian { variance: crate::model::GaussianVariance::Fixed { sigma: 1.0 } },
            ..small.clone()
        };
        assert!(!fits(&gaussian, &default));
        let convolutional = VaeConfig::convolutional(
            ExampleShape { channels: 1, height: 16, width: 16 },
            4,
            LikelihoodConfig::Bernoulli,
        );
        assert!(!fits(&convolutional, &default));
        let free_bits = KlWeighting { free_bits: Some(0.5), ..KlWeighting::default() };
        assert!(!fits(&small, &TrainConfig { kl: free_bits, ..default.clone() }));
        assert!(!fits(&small, &TrainConfig { objective: Objective::Iwae { samples: 2 }, ..default.clone() }));
    }
}
