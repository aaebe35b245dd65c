//! Convolutional feature stacks for image data: strided convolutions that shrink an image to a small feature map
//! (the encoder's front), and transposed convolutions that grow a feature map back to an image (the decoder's back).
//!
//! Every layer has the same kernel, stride and padding. A convolution maps a side of n pixels to
//! (n + 2 * padding - kernel) / stride + 1, and the transposed convolution maps it back with
//! (n - 1) * stride - 2 * padding + kernel; the sizes must divide exactly so the decoder rebuilds the input's size.
//! The default, 4 x 4 kernels with stride 2 and padding 1, halves the side at each layer.

use candle_core::Tensor;
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Module, VarBuilder};

use super::activation::Activation;
use crate::data::ExampleShape;
use crate::kernels::activation::OutputActivation;
use crate::kernels::conv::{Conv2dOp, ConvGeometry, ConvLayer};
use crate::{Error, Result};

/// The convolutional layers of a model. Saved in `config.json` as part of the architecture.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvConfig {
    /// Output channels of each encoder convolution, from the input side; the decoder mirrors them.
    pub channels: Vec<usize>,
    /// Kernel side.
    pub kernel: usize,
    /// Stride of every layer.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Default for ConvConfig {
    /// The disentanglement architecture for 64 x 64 inputs (Higgins et al. 2017, as in disentanglement_lib):
    /// four 4 x 4 stride-2 convolutions of 32, 32, 64 and 64 channels.
    fn default() -> Self {
        ConvConfig { channels: vec![32, 32, 64, 64], kernel: 4, stride: 2, padding: 1 }
    }
}

impl ConvConfig {
    /// The preset for small images (28 x 28, 32 x 32): two 4 x 4 stride-2 convolutions of 32 and 64 channels,
    /// down to a 7 x 7 or 8 x 8 map.
    pub fn small() -> Self {
        ConvConfig { channels: vec![32, 64], ..ConvConfig::default() }
    }

    /// The preset for images of `side` pixels: [`ConvConfig::default`] from 64 pixels up, else [`ConvConfig::small`].
    pub fn preset_for(side: usize) -> Self {
        if side >= 64 {
            ConvConfig::default()
        } else {
            ConvConfig::small()
        }
    }

    /// The `(channels, height, width)` of the feature map the encoder's convolutions leave from images of `input`;
    /// an error naming the layer where a side stops dividing exactly.
    pub fn feature_map(&self, input: &ExampleShape) -> Result<(usize, usize, usize)> {
        self.validate()?;
        if !input.is_image() {
            let problem = "convolutional models need images (H x W, H > 1); this data is flat vectors: use the mlp \
                           architecture";
            return Err(Error::invalid_setting("architecture", problem));
        }
        let mut sides = (input.height, input.width);
        for layer in 0..self.channels.len() {
            sides = (self.shrink(sides.0, layer, "height")?, self.shrink(sides.1, layer, "width")?);
        }
        Ok((self.channels.last().copied().unwrap_or(input.channels), sides.0, sides.1))
    }

    /// Checks the layer settings themselves.
    fn validate(&self) -> Result<()> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(Error::invalid_setting("conv channels", "give at least one layer, each with >= 1 channel"));
        }
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::invalid_setting("conv kernel/stride", "kernel and stride must be at least 1"));
        }
        if 2 * self.padding >= self.kernel {
            let problem = format!("padding {} must be below half the kernel {}", self.padding, self.kernel);
            return Err(Error::invalid_setting("conv padding", problem));
        }
        Ok(())
    }

    /// The side after encoder layer `layer`: (n + 2 * padding - kernel) / stride + 1, exactly.
    fn shrink(&self, side: usize, layer: usize, axis: &str) -> Result<usize> {
        let padded = side + 2 * self.padding;
        if padded < self.kernel || !(padded - self.kernel).is_multiple_of(self.stride) {
            let problem = format!(
                "the input {axis} is {side} pixels at convolution {} ({} channels): with kernel {}, stride {} and \
                 padding {}, {side} + 2 x {} - {} must be a non-negative multiple of {}; resize the images \
                 (a multiple of {} works) or use fewer layers",
                layer + 1,
                self.channels[layer],
                self.kernel,
                self.stride,
                self.padding,
                self.padding,
                self.kernel,
                self.stride,
                self.stride.pow(self.channels.len() as u32),
            );
            return Err(Error::ShapeMismatch(problem));
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    fn conv_config(&self) -> Conv2dConfig {
        Conv2dConfig { padding: self.padding, stride: self.stride, ..Default::default() }
    }

    fn transposed_config(&self) -> ConvTranspose2dConfig {
        ConvTranspose2dConfig { padding: self.padding, stride: self.stride, ..Default::default() }
    }
}

/// The encoder's convolutions, each followed by the activation. Weights: `conv.{i}.weight` `[out, in, k, k]` and
/// `conv.{i}.bias`.
#[derive(Debug, Clone)]
pub struct ConvStack {
    layers: Vec<Conv2d>,
    activation: Activation,
    input: ExampleShape,
}

impl ConvStack {
    /// Builds the convolutions for images of `input`, weights under `vb`.
    pub fn new(config: &ConvConfig, input: ExampleShape, activation: Activation, vb: VarBuilder) -> Result<Self> {
        config.feature_map(&input)?;
        let mut layers = Vec::with_capacity(config.channels.len());
        let mut previous = input.channels;
        for (index, &channels) in config.channels.iter().enumerate() {
            let vb = vb.pp(format!("conv.{index}"));
            layers.push(candle_nn::conv2d(previous, channels, config.kernel, config.conv_config(), vb)?);
            previous = channels;
        }
        Ok(ConvStack { layers, activation, input })
    }

    /// Flat images `[batch, C*H*W]` to flat features `[batch, C'*H'*W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let image = x.reshape((batch, self.input.channels, self.input.height, self.input.width))?;
        let features = self.layers.iter().try_fold(image, |h, layer| convolve(layer, &h, Some(self.activation)))?;
        Ok(features.flatten_from(1)?)
    }
}

/// One layer of a convolutional stack as the fused training step runs it: its parameters, its shape and its
/// activation.
pub(crate) struct ConvParts<'a> {
    /// `[out, in, k, k]`, or `[in, out, k, k]` for a transposed convolution.
    pub weight: &'a Tensor,
    /// One value per output channel.
    pub bias: Option<&'a Tensor>,
    /// The shape of the products.
    pub layer: ConvLayer,
    /// The activation after it, if any.
    pub activation: Option<Activation>,
}

impl ConvStack {
    /// The layers in forward order, for the fused training step.
    pub(crate) fn parts(&self) -> Option<Vec<ConvParts<'_>>> {
        let (mut channels, mut sides) = (self.input.channels, (self.input.height, self.input.width));
        let mut parts = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let config = layer.config();
            let geometry =
                ConvGeometry::new(channels, sides, layer.weight().dim(2).ok()?, config.stride, config.padding)?;
            let map_channels = layer.weight().dim(0).ok()?;
            parts.push(ConvParts {
                weight: layer.weight(),
                bias: layer.bias(),
                layer: ConvLayer { geometry, map_channels, transposed: false },
                activation: Some(self.activation),
            });
            (channels, sides) = (map_channels, (geometry.out_height, geometry.out_width));
        }
        Some(parts)
    }
}

/// The decoder's transposed convolutions: the activation after each but the last, whose output channels are the
/// likelihood's parameters. Weights: `deconv.{i}.weight` `[in, out, k, k]` and `deconv.{i}.bias`, the last one
/// named `output`.
#[derive(Debug, Clone)]
pub struct DeconvStack {
    layers: Vec<ConvTranspose2d>,
    activation: Activation,
    feature_map: (usize, usize, usize),
    output: ExampleShape,
    outputs_per_value: usize,
}

impl DeconvStack {
    /// Builds the layers that mirror `config`'s convolutions on images of `output`; the last layer gives
    /// `outputs_per_value` parameters per pixel and channel.
    pub fn new(
        config: &ConvConfig,
        output: ExampleShape,
        outputs_per_value: usize,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let feature_map = config.feature_map(&output)?;
        let mut widths: Vec<usize> = config.channels.iter().rev().copied().collect();
        widths.push(output.channels * outputs_per_value);
        let last = widths.len() - 2;
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(index, pair)| {
                let name = if index == last { "output".to_string() } else { format!("deconv.{index}") };
                candle_nn::conv_transpose2d(pair[0], pair[1], config.kernel, config.transposed_config(), vb.pp(name))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DeconvStack { layers, activation, feature_map, output, outputs_per_value })
    }

    /// The layers in forward order, for the fused training step; then the number of outputs per value and the
    /// output's channels and pixels, for the interleaving of a categorical decoder's levels.
    pub(crate) fn parts(&self) -> Option<(Vec<ConvParts<'_>>, (usize, usize, usize))> {
        let (mut channels, mut sides) = (self.feature_map.0, (self.feature_map.1, self.feature_map.2));
        let mut parts = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let config = layer.config();
            let (out_channels, kernel) = (layer.weight().dim(1).ok()?, layer.weight().dim(2).ok()?);
            // the output side of a transposed convolution: (n - 1) * stride - 2 * padding + kernel
            let side = |n: usize| (n.checked_sub(1)? * config.stride + kernel).checked_sub(2 * config.padding);
            let out_sides = (side(sides.0)?, side(sides.1)?);
            let geometry = ConvGeometry::new(out_channels, out_sides, kernel, config.stride, config.padding)?;
            let fits = (geometry.out_height, geometry.out_width) == sides && config.output_padding == 0;
            if !fits || config.dilation != 1 {
                return None;
            }
            parts.push(ConvParts {
                weight: layer.weight(),
                bias: layer.bias(),
                layer: ConvLayer { geometry, map_channels: channels, transposed: true },
                activation: (index + 1 < self.layers.len()).then_some(self.activation),
            });
            (channels, sides) = (out_channels, out_sides);
        }
        let pixels = self.output.height * self.output.width;
        Some((parts, (self.outputs_per_value, self.output.channels, pixels)))
    }

    /// Number of values of the feature map the layers start from.
    pub fn input_dim(&self) -> usize {
        self.feature_map.0 * self.feature_map.1 * self.feature_map.2
    }

    /// Flat feature maps `[batch, input_dim]` to the likelihood's flat parameters `[batch, C*H*W*outputs]`, the
    /// parameters of each value contiguous (the layout the categorical likelihood reads).
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let batch = h.dim(0)?;
        let (channels, height, width) = self.feature_map;
        let mut map = h.reshape((batch, channels, height, width))?;
        for (index, layer) in self.layers.iter().enumerate() {
            let activation = (index + 1 < self.layers.len()).then_some(self.activation);
            map = convolve_transposed(layer, &map, activation)?;
        }
        if self.outputs_per_value == 1 {
            return Ok(map.flatten_from(1)?);
        }
        // [batch, C * K, H, W] -> [batch, C, H * W, K]: the K parameters of each value side by side
        let pixels = self.output.height * self.output.width;
        let split = map.reshape((batch, self.output.channels, self.outputs_per_value, pixels))?;
        Ok(split.transpose(2, 3)?.contiguous()?.flatten_from(1)?)
    }
}

/// activation(convolution layer(x)) on `[batch, C, H, W]` maps: one fused op from `crate::kernels::conv` for f32 on
/// the CPU, candle's ops elsewhere.
pub fn convolve(layer: &Conv2d, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
    let config = layer.config();
    let (batch, channels, height, width) = x.dims4()?;
    let out_channels = layer.weight().dim(0)?;
    let geometry = ConvGeometry::new(channels, (height, width), layer.weight().dim(2)?, config.stride, config.padding);
    let plain = config.dilation == 1 && config.groups == 1;
    // a convolution without bias (before a batch norm) runs the same op with a constant zero bias
    let zeros = match layer.bias() {
        Some(_) => None,
        None => Some(Tensor::zeros(out_channels, x.dtype(), x.device())?),
    };
    match fused(x, geometry.filter(|_| plain), activation, layer.bias().or(zeros.as_ref())) {
        Some((geometry, fused_activation, bias)) => {
            let op = Conv2dOp::convolution(geometry, out_channels, batch, fused_activation);
            Ok(x.contiguous()?.apply_op3(layer.weight(), bias, op)?)
        }
        None => apply(activation, layer.forward(x)?),
    }
}

/// activation(transposed convolution layer(x)) on `[batch, C, H, W]` maps, like [`convolve`].
pub fn convolve_transposed(layer: &ConvTranspose2d, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
    let config = layer.config();
    let (batch, channels, height, width) = x.dims4()?;
    let (out_channels, kernel) = (layer.weight().dim(1)?, layer.weight().dim(2)?);
    // the output side of a transposed convolution: (n - 1) * stride - 2 * padding + kernel + output_padding
    let side = |n: usize| {
        n.checked_sub(1)
            .and_then(|n| (n * config.stride + kernel + config.output_padding).checked_sub(2 * config.padding))
    };
    let geometry = side(height)
        .zip(side(width))
        .and_then(|sides| ConvGeometry::new(out_channels, sides, kernel, config.stride, config.padding))
        .filter(|g| config.dilation == 1 && (g.out_height, g.out_width) == (height, width));
    match fused(x, geometry, activation, layer.bias()) {
        Some((geometry, fused_activation, bias)) => {
            let op = Conv2dOp::transposed(geometry, channels, batch, fused_activation);
            Ok(x.contiguous()?.apply_op3(layer.weight(), bias, op)?)
        }
        None => apply(activation, layer.forward(x)?),
    }
}

/// The geometry, activation and bias of the fused CPU op, when it applies: f32 values on the CPU, a geometry the
/// kernels handle, a bias, and an activation differentiable from its output.
fn fused<'a>(
    x: &Tensor,
    geometry: Option<ConvGeometry>,
    activation: Option<Activation>,
    bias: Option<&'a Tensor>,
) -> Option<(ConvGeometry, OutputActivation, &'a Tensor)> {
    let on_cpu = x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
    Some((geometry.filter(|_| on_cpu)?, OutputActivation::of(activation)?, bias?))
}

/// The activation, if any, with candle's ops.
fn apply(activation: Option<Activation>, x: Tensor) -> Result<Tensor> {
    match activation {
        Some(activation) => activation.apply(&x),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// One layer's geometry: (batch, in channels, height, width, out channels, kernel, stride, padding).
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    const CASES: [Case; 14] = [
        (2, 1, 8, 8, 3, 4, 2, 1),
        // stride 2 with kernel - 2 padding = 1 on even sides: im2col through the phases, as for 4 x 4 padding 1
        (2, 2, 6, 8, 3, 3, 2, 1),
        // a patch (C k^2) narrower than the channels on the map side: the weight gradient summed as it is, not
        // transposed (one case for each kind of layer)
        (2, 1, 8, 8, 20, 4, 2, 1),
        (2, 20, 4, 4, 1, 4, 2, 1),
        (3, 2, 7, 5, 4, 3, 1, 1),
        (2, 6, 9, 7, 5, 3, 1, 1),
        (2, 4, 5, 6, 3, 1, 1, 0),
        (1, 3, 6, 6, 2, 2, 1, 1),
        (1, 3, 9, 9, 2, 3, 2, 0),
        (4, 5, 6, 10, 3, 2, 2, 0),
        (2, 32, 16, 16, 32, 4, 2, 1),
        (1, 1, 1, 1, 1, 1, 1, 0),
        // 512 output positions: im2col's rows padded to a stride of 528 (`kernels::matmul::padded_stride`), line
        // by line and through the phases
        (2, 2, 16, 32, 3, 3, 1, 1),
        (1, 2, 32, 64, 3, 4, 2, 1),
    ];

    /// Runs `layer` through the fused path (`forward`) and candle's (`reference`), comparing values and the
    /// gradients of x and every variable in `varmap`.
    fn compare(
        name: &str,
        x: &Var,
        varmap: &VarMap,
        forward: impl Fn(&Tensor) -> Tensor,
        reference: impl Fn(&Tensor) -> Tensor,
    ) {
        let (fused, unfused) = (forward(x.as_tensor()), reference(x.as_tensor()));
        assert_eq!(fused.dims(), unfused.dims(), "{name}: shapes differ");
        assert!(
            max_difference(&fused, &unfused) < 1e-4,
            "{name}: values differ by {}",
            max_difference(&fused, &unfused)
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let weights = random(&mut rng, fused.dims());
        let grads_of = |y: Tensor| (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (fused_grads, unfused_grads) = (grads_of(fused), grads_of(unfused));
        let vars = varmap.all_vars();
        for tensor in std::iter::once(x.as_tensor()).chain(vars.iter().map(|v| v.as_tensor())) {
            let (a, b) = (fused_grads.get(tensor).unwrap(), unfused_grads.get(tensor).unwrap());
            // relative to the gradient's scale: a ReLU whose input is within rounding of 0 may pass the gradient in
            // one computation and not the other, which moves one entry by a few thousandths of the scale
            let scale = 1.0 + b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let difference = max_difference(a, b);
            assert!(difference < 1e-3 * scale, "{name}: gradients differ by {difference} (scale {scale})");
        }
    }

    /// Every case and activation through a fresh layer: `transposed` picks the transposed convolution.
    fn check_every_case(transposed: bool, activations: [Option<Activation>; 3]) {
        for (batch, channels, height, width, out, kernel, stride, padding) in CASES {
            for activation in activations {
                let varmap = VarMap::new();
                let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
                let (conv, deconv) = if transposed {
                    let config = ConvTranspose2dConfig { padding, stride, ..Default::default() };
                    (None, Some(candle_nn::conv_transpose2d(channels, out, kernel, config, vb).unwrap()))
                } else {
                    let config = Conv2dConfig { padding, stride, ..Default::default() };
                    (Some(candle_nn::conv2d(channels, out, kernel, config, vb).unwrap()), None)
                };
                crate::model::init::initialize(&varmap, 5).unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(batch as u64 + height as u64 + width as u64);
                let x = Var::from_tensor(&random(&mut rng, &[batch, channels, height, width])).unwrap();
                let name = format!(
                    "transposed {transposed} {batch}x{channels}x{height}x{width} -> {out}, k{kernel} s{stride} \
                     p{padding} {activation:?}"
                );
                let forward = |x: &Tensor| match (&conv, &deconv) {
                    (Some(layer), _) => convolve(layer, x, activation).unwrap(),
                    (_, Some(layer)) => convolve_transposed(layer, x, activation).unwrap(),
                    _ => unreachable!(),
                };
                let reference = |x: &Tensor| {
                    let plain = conv.as_ref().map_or_else(|| deconv.as_ref().unwrap().forward(x), |l| l.forward(x));
                    apply(activation, plain.unwrap()).unwrap()
                };
                compare(&name, &x, &varmap, forward, reference);
            }
        }
    }

    #[test]
    fn fused_convolutions_match_candles_ops_in_values_and_gradients() {
        check_every_case(false, [None, Some(Activation::Relu), Some(Activation::Tanh)]);
    }

    #[test]
    fn fused_transposed_convolutions_match_candles_ops_in_values_and_gradients() {
        check_every_case(true, [None, Some(Activation::Relu), Some(Activation::Softplus)]);
    }

    #[test]
    fn sizes_that_do_not_divide_are_named_in_the_error() {
        let config = ConvConfig::default();
        assert_eq!(config.feature_map(&ExampleShape::image(3, 64, 64)).unwrap(), (64, 4, 4));
        assert_eq!(ConvConfig::small().feature_map(&ExampleShape::image(1, 28, 28)).unwrap(), (64, 7, 7));
        let error = config.feature_map(&ExampleShape::image(1, 28, 28)).unwrap_err().to_string();
        assert!(error.contains("height is 7 pixels at convolution 3") && error.contains("multiple of 16"), "{error}");
        assert!(config.feature_map(&ExampleShape::flat(784)).unwrap_err().to_string().contains("mlp"));
        let no_layers = ConvConfig { channels: vec![], ..ConvConfig::default() };
        assert!(no_layers.feature_map(&ExampleShape::image(1, 64, 64)).is_err());
    }

    #[test]
    fn convolutions_without_bias_match_candles_ops_in_values_and_gradients() {
        // (sides the strides divide: candle's own backward pass, the reference, mis-sizes the input gradient otherwise)
        for (kernel, stride, padding) in [(4, 2, 1), (3, 1, 1)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let config = Conv2dConfig { padding, stride, ..Default::default() };
            let layer = candle_nn::conv2d_no_bias(3, 5, kernel, config, vb).unwrap();
            crate::model::init::initialize(&varmap, 3).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let x = Var::from_tensor(&random(&mut rng, &[2, 3, 10, 8])).unwrap();
            let name = format!("no bias, k{kernel} s{stride} p{padding}");
            compare(&name, &x, &varmap, |x| convolve(&layer, x, None).unwrap(), |x| layer.forward(x).unwrap());
        }
    }
}
