//! The PatchGAN discriminator of pix2pix, as taming-transformers' `NLayerDiscriminator` (the one latent diffusion's
//! `LPIPSWithDiscriminator` trains against its autoencoders): a stack of 4x4 convolutions that scores every
//! overlapping patch of an image as real or fake, giving a map of logits `[batch, 1, h', w']`.
//!
//! With `layers = L` and `base_channels = c` (taming's `n_layers` and `ndf`), and mult(n) = min(2^n, 8):
//!
//! - `main.0`, `main.1`: conv in -> c, stride 2, with bias; LeakyReLU(0.2);
//! - `main.{3k-1}`, `main.{3k}`, `main.{3k+1}` for k in 1..L: conv c mult(k-1) -> c mult(k), stride 2, no bias;
//!   BatchNorm; LeakyReLU(0.2);
//! - `main.{3L-1}`, `main.{3L}`, `main.{3L+1}`: conv c mult(L-1) -> c mult(L), stride 1, no bias; BatchNorm;
//!   LeakyReLU(0.2);
//! - `main.{3L+2}`: conv c mult(L) -> 1, stride 1, with bias.
//!
//! Every convolution is 4x4 with padding 1. The weights carry taming's `nn.Sequential` names (`main.0.weight`,
//! `main.3.running_mean`, ...), so the `loss.discriminator.*` tensors of a latent-diffusion checkpoint load 1:1 under
//! the prefix `loss.discriminator` (its `num_batches_tracked` counters are not read: torch only uses them when the
//! momentum is `None`).
//!
//! **Batch norm running statistics.** Each BatchNorm's `running_mean` and `running_var` are created through the
//! `VarBuilder` like the weights, so with a `VarMap` they are variables in it: `varmap.save` writes them and
//! `varmap.load` restores them (in place, so a discriminator already built sees the loaded values). A training
//! forward pass ([`PatchDiscriminator::forward_t`] with `train = true`) normalises with the batch statistics and
//! updates the running ones (momentum 0.1, unbiased variance, as torch); an evaluation pass normalises with the
//! running ones. Because they are in the `VarMap`, `varmap.all_vars()` lists them too: no gradient ever reaches them
//! (candle's optimizers skip a variable without a gradient), but hand the optimizer
//! [`PatchDiscriminator::trainable_vars`] to keep them out of it altogether.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Init, ModuleT, VarBuilder, VarMap};
use rand_distr::{Distribution, Normal};

use super::init;
use crate::{Error, Result};

/// The side of every convolution's square kernel.
const KERNEL: usize = 4;
/// The padding of every convolution, on each side.
const PADDING: usize = 1;
/// The slope of the LeakyReLU for negative inputs.
const LEAKY_SLOPE: f64 = 0.2;
/// The standard deviation of the initial convolution weights and batch norm scales (taming's `weights_init`).
const INIT_STDEV: f64 = 0.02;
/// The batch norms' epsilon (torch's default).
const BATCH_NORM_EPS: f64 = 1e-5;
/// The batch norms' running-statistics momentum (torch's default).
const BATCH_NORM_MOMENTUM: f64 = 0.1;
/// The most layers accepted: an input would need more than 2^16 pixels a side beyond this.
pub const MAX_LAYERS: usize = 16;

/// The architecture of a [`PatchDiscriminator`] (taming's `input_nc`, `ndf`, `n_layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Channels of the images scored (3 for RGB).
    pub in_channels: usize,
    /// Channels of the first convolution; deeper ones have up to 8 times as many (taming's `ndf`).
    pub base_channels: usize,
    /// Number of stride-2 convolutions, hence how large the patches are (taming's `n_layers`; 3 gives 70x70).
    pub layers: usize,
}

impl Default for DiscriminatorConfig {
    /// Taming's and latent diffusion's default: RGB, 64 base channels, 3 layers.
    fn default() -> Self {
        DiscriminatorConfig { in_channels: 3, base_channels: 64, layers: 3 }
    }
}

impl DiscriminatorConfig {
    /// Checks that the sizes can build a network.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 {
            return Err(Error::invalid_setting("in_channels", "must be at least 1"));
        }
        if self.base_channels == 0 || self.base_channels.checked_mul(8).is_none() {
            return Err(Error::invalid_setting("base_channels", format!("{}: must be at least 1", self.base_channels)));
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            let problem = format!("{}: must be between 1 and {MAX_LAYERS}", self.layers);
            return Err(Error::invalid_setting("layers", problem));
        }
        Ok(())
    }

    /// The smallest image side the network accepts: a convolution gives n values from (n - 1) stride + 2.
    pub fn min_side(&self) -> usize {
        self.plan().iter().rev().fold(1, |needed, plan| (needed - 1) * plan.stride + 2)
    }

    /// The channels after the convolution of depth `depth` (0 for the first): base x min(2^depth, 8).
    fn channels(&self, depth: usize) -> usize {
        self.base_channels << depth.min(3)
    }

    /// The convolutions in order, the last one giving the logits.
    fn plan(&self) -> Vec<ConvPlan> {
        let first =
            ConvPlan { index: 0, inputs: self.in_channels, outputs: self.base_channels, stride: 2, normed: false };
        let blocks = (1..=self.layers).map(|depth| ConvPlan {
            index: 3 * depth - 1,
            inputs: self.channels(depth - 1),
            outputs: self.channels(depth),
            stride: if depth < self.layers { 2 } else { 1 },
            normed: true,
        });
        let head = ConvPlan {
            index: 3 * self.layers + 2,
            inputs: self.channels(self.layers),
            outputs: 1,
            stride: 1,
            normed: false,
        };
        std::iter::once(first).chain(blocks).chain([head]).collect()
    }
}

/// One convolution of the stack: its place in taming's `nn.Sequential` and its sizes.
#[derive(Debug, Clone, Copy)]
struct ConvPlan {
    /// The convolution's index in `main`; its batch norm, if any, is the next one.
    index: usize,
    /// Input channels.
    inputs: usize,
    /// Output channels.
    outputs: usize,
    /// 2 to halve the map, 1 to shrink it by one.
    stride: usize,
    /// Whether a batch norm follows (and so the convolution has no bias).
    normed: bool,
}

impl ConvPlan {
    /// The output side of this convolution for an input side, `None` if the input is too small.
    fn output_side(&self, side: usize) -> Option<usize> {
        Some((side + 2 * PADDING).checked_sub(KERNEL)? / self.stride + 1)
    }
}

/// One convolution with its batch norm, if any.
#[derive(Debug, Clone)]
struct Layer {
    conv: Conv2d,
    norm: Option<BatchNorm>,
}

impl Layer {
    /// Reads or creates the layer's weights under `main.{index}` (the convolution) and `main.{index + 1}` (the
    /// norm), with taming's initial distributions as hints for a `VarMap`.
    fn new(plan: &ConvPlan, vb: &VarBuilder) -> Result<Self> {
        let conv_vb = vb.pp(plan.index.to_string());
        let weight_shape = (plan.outputs, plan.inputs, KERNEL, KERNEL);
        let weight = conv_vb.get_with_hints(weight_shape, "weight", Init::Randn { mean: 0.0, stdev: INIT_STDEV })?;
        let bias = match plan.normed {
            true => None,
            // taming's `weights_init` leaves a convolution's bias at torch's default, U(-1/sqrt(fan_in), ..).
            false => {
                let bound = 1.0 / ((plan.inputs * KERNEL * KERNEL) as f64).sqrt();
                Some(conv_vb.get_with_hints(plan.outputs, "bias", Init::Uniform { lo: -bound, up: bound })?)
            }
        };
        let config = Conv2dConfig { padding: PADDING, stride: plan.stride, ..Default::default() };
        let conv = Conv2d::new(weight, bias, config);
        let norm = match plan.normed {
            true => Some(batch_norm(plan.outputs, vb.pp((plan.index + 1).to_string()))?),
            false => None,
        };
        Ok(Layer { conv, norm })
    }

    /// The layer's convolution, then its norm, if any, and the LeakyReLU. In training mode on the CPU, the norm and
    /// the LeakyReLU run as one fused op (`kernels::batch_norm`), which updates the running statistics as candle's
    /// `BatchNorm` does; elsewhere they run as candle's ops.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = crate::model::conv::convolve(&self.conv, x, None)?;
        let Some(norm) = &self.norm else { return Ok(crate::kernels::activation::leaky_relu(&hidden, LEAKY_SLOPE)?) };
        let fused = train && hidden.device().is_cpu() && hidden.dtype() == DType::F32;
        match norm.weight_and_bias().filter(|_| fused) {
            Some((scale, shift)) => {
                let (y, moments) =
                    crate::kernels::batch_norm::batch_norm_leaky_relu(&hidden, scale, shift, norm.eps(), LEAKY_SLOPE)?;
                update_running_statistics(norm, &moments, hidden.elem_count() / hidden.dim(1)?)?;
                Ok(y)
            }
            None => Ok(crate::kernels::activation::leaky_relu(&norm.forward_t(&hidden, train)?, LEAKY_SLOPE)?),
        }
    }

    /// The layer with its weights detached: the same values (the same storage, so updates show), no gradient to
    /// them; the norm's running statistics are the same variables.
    fn detached(&self) -> Result<Self> {
        let conv = Conv2d::new(self.conv.weight().detach(), self.conv.bias().map(Tensor::detach), *self.conv.config());
        let norm = match &self.norm {
            None => None,
            Some(norm) => {
                let (scale, shift) = norm.weight_and_bias().ok_or_else(|| {
                    Error::invalid_setting("discriminator", "a batch norm without its scale and shift")
                })?;
                Some(BatchNorm::new_with_momentum(
                    scale.dim(0)?,
                    norm.running_mean().clone(),
                    norm.running_var().clone(),
                    scale.detach(),
                    shift.detach(),
                    norm.eps(),
                    norm.momentum(),
                )?)
            }
        };
        Ok(Layer { conv, norm })
    }

    /// The layer's trainable tensors: the convolution's weight and bias, the norm's scale and shift.
    fn parameters(&self) -> Vec<&Tensor> {
        let conv = std::iter::once(self.conv.weight()).chain(self.conv.bias());
        let norm = self.norm.iter().filter_map(|norm| norm.weight_and_bias()).flat_map(|(scale, shift)| [scale, shift]);
        conv.chain(norm).collect()
    }
}

/// running = (1 - momentum) running + momentum batch statistic, for the batch's `[2, C]` moments over `count`
/// values per channel, the variance made unbiased (x count / (count - 1)), as torch's and candle's `BatchNorm` do in
/// training mode.
fn update_running_statistics(norm: &BatchNorm, moments: &Tensor, count: usize) -> Result<()> {
    if count < 2 {
        return Err(Error::ShapeMismatch("a batch norm in training mode needs more than one value per channel".into()));
    }
    let momentum = norm.momentum();
    let unbiased = moments.get(1)?.affine(count as f64 / (count - 1) as f64, 0.0)?;
    for (running, batch) in [(norm.running_mean(), moments.get(0)?), (norm.running_var(), unbiased)] {
        let updated = ((running * (1.0 - momentum))? + (batch * momentum)?)?;
        Var::from_tensor(running)?.set(&updated)?;
    }
    Ok(())
}

/// A batch norm over `channels` channels: scale ~ N(1, 0.02), shift 0, running mean 0 and variance 1. The running
/// statistics come from `vb`, so with a `VarMap` they are the map's variables and the norm updates them in place.
fn batch_norm(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    let scale = vb.get_with_hints(channels, "weight", Init::Randn { mean: 1.0, stdev: INIT_STDEV })?;
    let shift = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
    let norm = BatchNorm::new_with_momentum(
        channels,
        running_mean,
        running_var,
        scale,
        shift,
        BATCH_NORM_EPS,
        BATCH_NORM_MOMENTUM,
    )?;
    Ok(norm)
}

/// The PatchGAN discriminator: patch logits for a batch of images (see the module's documentation for the layers,
/// names and the batch norms' running statistics).
#[derive(Debug, Clone)]
pub struct PatchDiscriminator {
    config: DiscriminatorConfig,
    /// Every convolution but the last, each followed by a LeakyReLU.
    layers: Vec<Layer>,
    /// The last convolution, to one channel of logits.
    head: Layer,
}

impl PatchDiscriminator {
    /// Builds the network, reading or creating its weights through `vb` under taming's names (`main.0.weight`, ...).
    /// A `VarMap` behind `vb` gets taming's initial distributions from candle's (unseeded) generator; use
    /// [`PatchDiscriminator::fresh`] for a seeded initialisation.
    pub fn new(config: &DiscriminatorConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let vb = vb.pp("main");
        let mut layers = config.plan().iter().map(|plan| Layer::new(plan, &vb)).collect::<Result<Vec<_>>>()?;
        let head = layers.pop().ok_or_else(|| Error::invalid_setting("layers", "the network has no layer"))?;
        Ok(PatchDiscriminator { config: *config, layers, head })
    }

    /// A freshly initialised discriminator, its variables in a new `VarMap`, drawn from `seed` as taming's
    /// `weights_init`: convolution weights N(0, 0.02), batch norm scales N(1, 0.02) and shifts 0, convolution biases
    /// torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); running means 0 and variances 1. Each variable draws from
    /// its own stream (seed and name, as [`crate::model::init`]), so the same seed gives the same network.
    pub fn fresh(config: &DiscriminatorConfig, seed: u64, dtype: DType, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let discriminator = PatchDiscriminator::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        init::initialize(&varmap, seed)?;
        draw_normal_weights(&varmap, seed)?;
        Ok((discriminator, varmap))
    }

    /// The architecture.
    pub fn config(&self) -> &DiscriminatorConfig {
        &self.config
    }

    /// The patch logits `[batch, 1, h', w']` of images `x` (`[batch, in_channels, height, width]`). With `train`,
    /// the batch norms normalise with the batch's statistics and update their running statistics (so a training
    /// batch needs more than one value per channel); without it, they use the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, channels, height, width) = x.dims4()?;
        if channels != self.config.in_channels || self.output_size(height, width).is_none() {
            return Err(Error::ShapeMismatch(format!(
                "the discriminator takes [batch, {}, height, width] images of at least {} pixels a side, not {:?}",
                self.config.in_channels,
                self.config.min_side(),
                x.dims()
            )));
        }
        let mut hidden = x.clone();
        for layer in &self.layers {
            hidden = layer.forward_t(&hidden, train)?;
        }
        crate::model::conv::convolve(&self.head.conv, &hidden, None)
    }

    /// The same network with its weights detached: the same logits, gradients to the images only (none is worked
    /// out for the weights), and the same running statistics, which its training passes update. The generator's
    /// loss runs through it: it needs the images' gradient, not the discriminator's.
    pub fn detached(&self) -> Result<Self> {
        let layers = self.layers.iter().map(Layer::detached).collect::<Result<Vec<_>>>()?;
        Ok(PatchDiscriminator { config: self.config, layers, head: self.head.detached()? })
    }

    /// The logits map's `(h', w')` for images of `height` x `width`, `None` if they are too small (for 3 layers:
    /// 64 -> 32 -> 16 -> 8 -> 7 -> 6; at least 24 pixels a side).
    pub fn output_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        let side = |side: usize| self.config.plan().iter().try_fold(side, |side, plan| plan.output_side(side));
        side(height).zip(side(width))
    }

    /// The trainable variables (convolution weights and biases, batch norm scales and shifts), without the batch
    /// norms' running statistics: the list to hand an optimizer. They are the `VarMap`'s own variables when the
    /// network was built from one; empty when it was built from fixed tensors (a safetensors file).
    pub fn trainable_vars(&self) -> Vec<Var> {
        let parameters = self.layers.iter().chain([&self.head]).flat_map(Layer::parameters);
        parameters.filter(|tensor| tensor.is_variable()).filter_map(|tensor| Var::from_tensor(tensor).ok()).collect()
    }
}

/// Redraws the convolution weights and batch norm scales of `varmap` as taming's `weights_init`, each from its own
/// stream of `seed`.
fn draw_normal_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap.data().lock().map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    for (name, var) in vars.iter() {
        let Some(mean) = normal_init_mean(name, var) else { continue };
        let normal = Normal::new(mean, INIT_STDEV).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut rng = init::parameter_rng(seed, name);
        let values: Vec<f64> = (0..var.elem_count()).map(|_| normal.sample(&mut rng)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The mean of the normal a variable is drawn from by taming's `weights_init`: 0 for a convolution weight (rank
/// 4), 1 for a batch norm scale (a rank-1 `weight`); `None` for the others.
fn normal_init_mean(name: &str, var: &Var) -> Option<f64> {
    match (name.ends_with(".weight"), var.rank()) {
        (true, 4) => Some(0.0),
        (true, 1) => Some(1.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    /// A small discriminator for forward passes: 3 channels in, 8 base channels, 3 layers.
    fn small() -> (PatchDiscriminator, VarMap) {
        let config = DiscriminatorConfig { in_channels: 3, base_channels: 8, layers: 3 };
        PatchDiscriminator::fresh(&config, 7, DType::F32, &Device::Cpu).unwrap()
    }

    /// Images with values ~ N(offset, 2^2).
    fn images(batch: usize, side: usize, offset: f64) -> Tensor {
        let x = Tensor::randn(0f32, 2.0, (batch, 3, side, side), &Device::Cpu).unwrap();
        (x + offset).unwrap()
    }

    /// The values of a variable of `varmap`.
    fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
        let vars = varmap.data().lock().unwrap();
        vars[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Mean and (population) standard deviation.
    fn moments(values: &[f32]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let variance = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, variance.sqrt())
    }

    #[test]
    fn logits_map_of_a_64x64_image_is_6x6() {
        let (discriminator, _) = small();
        let logits = discriminator.forward_t(&images(2, 64, 0.0), false).unwrap();
        assert_eq!(logits.dims(), &[2, 1, 6, 6]);
        assert_eq!(discriminator.output_size(64, 64), Some((6, 6)));
        assert_eq!(discriminator.output_size(256, 100), Some((30, 10)));
        assert_eq!(discriminator.output_size(24, 24), Some((1, 1)));
        assert_eq!(discriminator.output_size(23, 64), None);
        let logits = discriminator.forward_t(&images(2, 24, 0.0), true).unwrap();
        assert_eq!(logits.dims(), &[2, 1, 1, 1]);
    }

    #[test]
    fn too_small_or_wrong_channels_are_refused() {
        let (discriminator, _) = small();
        let message = discriminator.forward_t(&images(1, 23, 0.0), false).unwrap_err().to_string();
        assert!(message.contains("at least 24 pixels"), "{message}");
        let gray = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(discriminator.forward_t(&gray, false).is_err());
    }

    #[test]
    fn variables_have_taming_names_and_shapes() {
        let (_, varmap) =
            PatchDiscriminator::fresh(&DiscriminatorConfig::default(), 1, DType::F32, &Device::Cpu).unwrap();
        let vars = varmap.data().lock().unwrap();
        let mut found: Vec<(String, Vec<usize>)> =
            vars.iter().map(|(name, var)| (name.clone(), var.dims().to_vec())).collect();
        found.sort();
        let norm = |index: usize, channels: usize| {
            ["bias", "running_mean", "running_var", "weight"]
                .map(|field| (format!("main.{index}.{field}"), vec![channels]))
        };
        let mut expected = vec![
            ("main.0.weight".to_string(), vec![64, 3, 4, 4]),
            ("main.0.bias".to_string(), vec![64]),
            ("main.2.weight".to_string(), vec![128, 64, 4, 4]),
            ("main.5.weight".to_string(), vec![256, 128, 4, 4]),
            ("main.8.weight".to_string(), vec![512, 256, 4, 4]),
            ("main.11.weight".to_string(), vec![1, 512, 4, 4]),
            ("main.11.bias".to_string(), vec![1]),
        ];
        expected.extend(norm(3, 128).into_iter().chain(norm(6, 256)).chain(norm(9, 512)));
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn one_layer_follows_the_same_index_arithmetic() {
        let config = DiscriminatorConfig { in_channels: 1, base_channels: 4, layers: 1 };
        let (_, varmap) = PatchDiscriminator::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let expected = [
            "main.0.bias",
            "main.0.weight",
            "main.2.weight",
            "main.3.bias",
            "main.3.running_mean",
            "main.3.running_var",
            "main.3.weight",
            "main.5.bias",
            "main.5.weight",
        ];
        assert_eq!(names, expected);
        assert_eq!(varmap.data().lock().unwrap()["main.2.weight"].dims(), &[8, 4, 4, 4]);
    }

    #[test]
    fn initial_values_follow_taming_weights_init() {
        let (_, varmap) =
            PatchDiscriminator::fresh(&DiscriminatorConfig::default(), 3, DType::F32, &Device::Cpu).unwrap();
        let (mean, stdev) = moments(&values(&varmap, "main.8.weight"));
        assert!(mean.abs() < 1e-4 && (stdev - 0.02).abs() < 2e-4, "conv weight ~ N({mean}, {stdev}^2)");
        let (mean, stdev) = moments(&values(&varmap, "main.9.weight"));
        assert!((mean - 1.0).abs() < 0.005 && (stdev - 0.02).abs() < 0.003, "norm scale ~ N({mean}, {stdev}^2)");
        for name in ["main.3.bias", "main.6.running_mean", "main.9.bias"] {
            assert!(values(&varmap, name).iter().all(|&v| v == 0.0), "{name}");
        }
        assert!(values(&varmap, "main.9.running_var").iter().all(|&v| v == 1.0));
        let bias = values(&varmap, "main.0.bias");
        let bound = 1.0 / (3.0f32 * 16.0).sqrt();
        assert!(bias.iter().all(|v| v.abs() <= bound) && bias.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn the_same_seed_gives_the_same_network() {
        let config = DiscriminatorConfig { base_channels: 4, ..Default::default() };
        let draw = |seed| PatchDiscriminator::fresh(&config, seed, DType::F32, &Device::Cpu).unwrap().1;
        let (first, again, other) = (draw(5), draw(5), draw(6));
        for name in ["main.0.weight", "main.0.bias", "main.6.weight"] {
            assert_eq!(values(&first, name), values(&again, name));
            assert_ne!(values(&first, name), values(&other, name));
        }
    }

    /// The input of the first batch norm (`main.3`), computed from the varmap's weights by hand.
    fn first_norm_input(varmap: &VarMap, x: &Tensor) -> Tensor {
        let vars = varmap.data().lock().unwrap();
        let (w0, b0, w2) =
            (vars["main.0.weight"].as_tensor(), vars["main.0.bias"].as_tensor(), vars["main.2.weight"].as_tensor());
        let hidden = x.conv2d(w0, 1, 2, 1, 1).unwrap().broadcast_add(&b0.reshape((1, (), 1, 1)).unwrap()).unwrap();
        let hidden = (hidden.relu().unwrap() - (hidden.neg().unwrap().relu().unwrap() * 0.2).unwrap()).unwrap();
        hidden.conv2d(w2, 1, 2, 1, 1).unwrap()
    }

    #[test]
    fn a_training_pass_moves_the_running_statistics_as_torch() {
        let (discriminator, varmap) = small();
        let x = images(4, 32, 5.0);
        let normed = first_norm_input(&varmap, &x).transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let count = normed.dim(1).unwrap() as f64;
        let batch_mean = normed.mean(D::Minus1).unwrap();
        let centred = normed.broadcast_sub(&batch_mean.unsqueeze(1).unwrap()).unwrap();
        let unbiased_var = (centred.sqr().unwrap().sum(D::Minus1).unwrap() / (count - 1.0)).unwrap();
        discriminator.forward_t(&x, true).unwrap();
        // running = 0.9 running + 0.1 batch, from mean 0 and variance 1.
        let expected_mean = (batch_mean * 0.1).unwrap().to_vec1::<f32>().unwrap();
        let expected_var = ((unbiased_var * 0.1).unwrap() + 0.9).unwrap().to_vec1::<f32>().unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
        assert!(expected_mean.iter().any(|v| v.abs() > 1e-3), "the test needs non-zero means");
        assert!(close(&values(&varmap, "main.3.running_mean"), &expected_mean));
        assert!(close(&values(&varmap, "main.3.running_var"), &expected_var));
    }

    #[test]
    fn evaluation_uses_the_running_statistics() {
        let (discriminator, varmap) = small();
        let x = images(3, 32, 1.0);
        let before = values(&varmap, "main.6.running_mean");
        let eval = discriminator.forward_t(&x, false).unwrap();
        assert_eq!(values(&varmap, "main.6.running_mean"), before, "an evaluation pass leaves the statistics alone");
        // Evaluation scores each image alone: the first image's logits do not depend on its batch.
        let alone = discriminator.forward_t(&x.narrow(0, 0, 1).unwrap(), false).unwrap();
        let difference = (eval.narrow(0, 0, 1).unwrap() - &alone).unwrap().abs().unwrap().max_all().unwrap();
        assert!(difference.to_scalar::<f32>().unwrap() < 1e-5);
        // Training normalises with the batch, so it differs from evaluation with the initial statistics...
        let train = discriminator.forward_t(&x, true).unwrap();
        let gap = (&train - &eval).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(gap > 1e-3, "{gap}");
        // ...and evaluation now sees the moved running statistics.
        let after = discriminator.forward_t(&x, false).unwrap();
        let moved = (&after - &eval).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(moved > 1e-4, "{moved}");
    }

    #[test]
    fn a_checkpoint_restores_weights_and_running_statistics() {
        let (discriminator, varmap) = small();
        let x = images(2, 32, 3.0);
        discriminator.forward_t(&x, true).unwrap();
        let expected = discriminator.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("discriminator.safetensors");
        varmap.save(&path).unwrap();
        let config = *discriminator.config();
        let (restored, mut restored_map) = PatchDiscriminator::fresh(&config, 99, DType::F32, &Device::Cpu).unwrap();
        restored_map.load(&path).unwrap();
        assert_eq!(values(&restored_map, "main.3.running_var"), values(&varmap, "main.3.running_var"));
        let logits = restored.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(logits, expected);
    }

    #[test]
    fn trainable_vars_leave_out_the_running_statistics() {
        let (discriminator, varmap) =
            PatchDiscriminator::fresh(&DiscriminatorConfig::default(), 1, DType::F32, &Device::Cpu).unwrap();
        let trainable = discriminator.trainable_vars();
        // conv 0 (weight, bias), 3 x (conv weight, norm scale, shift), head (weight, bias).
        assert_eq!(trainable.len(), 2 + 3 * 3 + 2);
        let vars = varmap.data().lock().unwrap();
        for (name, var) in vars.iter() {
            let listed = trainable.iter().any(|t| t.as_tensor().id() == var.as_tensor().id());
            assert_eq!(listed, !name.contains("running"), "{name}");
        }
    }

    #[test]
    fn gradients_reach_the_input_and_every_trainable_variable() {
        let (discriminator, _) = small();
        let x = Var::from_tensor(&images(2, 32, 0.0)).unwrap();
        let grads = discriminator.forward_t(x.as_tensor(), true).unwrap().sum_all().unwrap().backward().unwrap();
        let norm = |t: &Tensor| grads.get(t).map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap());
        assert!(norm(x.as_tensor()).is_some_and(|n| n > 0.0));
        for var in discriminator.trainable_vars() {
            assert!(norm(var.as_tensor()).is_some_and(|n| n > 0.0), "{:?}", var.dims());
        }
    }

    /// The training pass composed of candle's own ops: `BatchNorm::forward_t` and `leaky_relu` (the oracle).
    fn composed_training_pass(discriminator: &PatchDiscriminator, x: &Tensor) -> Tensor {
        let mut hidden = x.clone();
        for layer in &discriminator.layers {
            hidden = crate::model::conv::convolve(&layer.conv, &hidden, None).unwrap();
            if let Some(norm) = &layer.norm {
                hidden = norm.forward_t(&hidden, true).unwrap();
            }
            hidden = candle_nn::ops::leaky_relu(&hidden, LEAKY_SLOPE).unwrap();
        }
        crate::model::conv::convolve(&discriminator.head.conv, &hidden, None).unwrap()
    }

    /// The flat values of `t`.
    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Asserts `a` and `b` agree within `tolerance` of the largest magnitude in `b`.
    fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let gap = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(a.len() == b.len() && gap <= tolerance * scale, "{what}: {gap} against {scale}");
    }

    #[test]
    fn the_fused_training_pass_matches_candles_batch_norm_and_leaky_relu() {
        let config = DiscriminatorConfig { in_channels: 3, base_channels: 8, layers: 3 };
        let (fused, fused_map) = PatchDiscriminator::fresh(&config, 11, DType::F32, &Device::Cpu).unwrap();
        let (plain, plain_map) = PatchDiscriminator::fresh(&config, 11, DType::F32, &Device::Cpu).unwrap();
        // scales and shifts away from taming's 1 and 0, so that every term of the backward pass shows
        for map in [&fused_map, &plain_map] {
            for (name, var) in
                map.data().lock().unwrap().iter().filter(|(name, var)| var.rank() == 1 && !name.contains("running"))
            {
                let channels = var.elem_count();
                let offset = if name.ends_with("weight") { 0.4 } else { -0.3 };
                let spread: Vec<f32> = (0..channels).map(|c| offset + 1.3 * c as f32 / channels as f32).collect();
                var.set(&Tensor::from_vec(spread, channels, &Device::Cpu).unwrap()).unwrap();
            }
        }
        let x = Var::from_tensor(&images(3, 34, 0.5)).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (3, 1, 2, 2), &Device::Cpu).unwrap();
        let run = |discriminator: &PatchDiscriminator, logits: Tensor| {
            let grads = (&logits * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let vars = std::iter::once(x.clone()).chain(discriminator.trainable_vars());
            let gradients: Vec<Vec<f32>> = vars.map(|v| flat(grads.get(v.as_tensor()).unwrap())).collect();
            (flat(&logits), gradients)
        };
        let (logits, gradients) = run(&fused, fused.forward_t(x.as_tensor(), true).unwrap());
        let (expected_logits, expected_gradients) = run(&plain, composed_training_pass(&plain, x.as_tensor()));
        assert_close(&logits, &expected_logits, 1e-5, "logits");
        for (index, (got, want)) in gradients.iter().zip(&expected_gradients).enumerate() {
            assert_close(got, want, 1e-5, &format!("gradient {index} (0: the images)"));
        }
        for name in ["main.3", "main.6", "main.9"]
            .iter()
            .flat_map(|n| [format!("{n}.running_mean"), format!("{n}.running_var")])
        {
            assert_close(&values(&fused_map, &name), &values(&plain_map, &name), 1e-5, &name);
        }
    }

    #[test]
    fn the_detached_copy_scores_alike_and_passes_gradients_to_the_images_only() {
        let (discriminator, varmap) = small();
        let x = Var::from_tensor(&images(2, 32, 0.0)).unwrap();
        let detached = discriminator.detached().unwrap();
        let before = values(&varmap, "main.3.running_mean");
        let logits = detached.forward_t(x.as_tensor(), true).unwrap();
        assert_ne!(values(&varmap, "main.3.running_mean"), before, "its training pass moves the shared statistics");
        let grads = logits.sum_all().unwrap().backward().unwrap();
        assert!(discriminator.trainable_vars().iter().all(|var| grads.get(var.as_tensor()).is_none()));
        // the same logits and image gradient as the network itself, whose pass sees the statistics moved once more
        // (a training pass normalises with the batch's own, so the logits do not depend on them)
        let own = discriminator.forward_t(x.as_tensor(), true).unwrap();
        let own_grads = own.sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(&logits), flat(&own));
        assert_eq!(flat(grads.get(x.as_tensor()).unwrap()), flat(own_grads.get(x.as_tensor()).unwrap()));
        assert!(detached.trainable_vars().is_empty());
    }

    #[test]
    fn config_is_validated_and_round_trips() {
        assert!(DiscriminatorConfig::default().validate().is_ok());
        let bad = [
            DiscriminatorConfig { in_channels: 0, ..Default::default() },
            DiscriminatorConfig { base_channels: 0, ..Default::default() },
            DiscriminatorConfig { layers: 0, ..Default::default() },
            DiscriminatorConfig { layers: MAX_LAYERS + 1, ..Default::default() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(Error::InvalidSetting { .. })), "{config:?}");
            assert!(PatchDiscriminator::fresh(&config, 1, DType::F32, &Device::Cpu).is_err());
        }
        let config = DiscriminatorConfig { in_channels: 1, base_channels: 32, layers: 2 };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<DiscriminatorConfig>(&json).unwrap(), config);
        assert_eq!(serde_json::from_str::<DiscriminatorConfig>("{}").unwrap(), DiscriminatorConfig::default());
    }
}
