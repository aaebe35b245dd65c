//! The layers of a VAE as the fused step runs them: dense layers, convolutions and transposed convolutions (and the
//! interleaving of a convolutional categorical decoder's levels), each with its forward pass and its backward pass
//! on plain `[rows, ...]` slices.
//!
//! A layer y = act(layer(input) + b): dL/dpre = dL/dy * act'(y) (SiLU's act' from the pre-activation, which its
//! layers keep), then for a dense layer dL/dW = (dL/dpre)^T input,
//! dL/db = sum_n dL/dpre, dL/dinput = dL/dpre W (the first two on the input's nonzero values alone where it is
//! mostly zeros, `crate::kernels::sparse`); for a convolution the same three products as im2col + GEMM
//! (`crate::kernels::conv`).

use candle_core::{DType, Tensor};

use crate::kernels::activation::{silu, silu_gradient, FusedActivation, OutputActivation};
use crate::kernels::conv::ConvLayer;
use crate::kernels::recycle;
use crate::kernels::sparse::{self, SparseColumns};
use crate::kernels::transpose::SharedTranspose;
use crate::model::conv::ConvParts;
use crate::model::dense::{
    column_sums, forward_values, input_gradient, parameter_gradients, reads_transposed_weight, sparse_forward_values,
    sparse_parameter_gradients, Dense,
};
use crate::model::Vae;

/// A layer as the model holds it.
pub(super) enum ModelLayer<'a> {
    /// A dense layer.
    Dense(&'a Dense),
    /// A convolution or transposed convolution.
    Conv(ConvParts<'a>),
    /// A categorical convolutional decoder's last step: `[C * K, pixels]` maps to `[C, pixels, K]` values.
    Interleave(Interleave),
}

impl<'a> ModelLayer<'a> {
    /// The weight and the bias; `None` for a layer without parameters.
    fn parameters(&self) -> Option<(&'a Tensor, Option<&'a Tensor>)> {
        match *self {
            ModelLayer::Dense(dense) => Some((dense.weight(), dense.bias())),
            ModelLayer::Conv(ref parts) => Some((parts.weight, parts.bias)),
            ModelLayer::Interleave(_) => None,
        }
    }

    /// The activation as the fused kernels apply it.
    fn activation(&self) -> FusedActivation {
        match self {
            ModelLayer::Dense(dense) => dense.fused_activation(),
            ModelLayer::Conv(parts) => FusedActivation::of(parts.activation),
            ModelLayer::Interleave(_) => FusedActivation::Output(OutputActivation::Identity),
        }
    }

    /// The layer's shape on slices.
    fn kind(&self) -> Kind {
        match self {
            ModelLayer::Dense(_) => Kind::Dense,
            ModelLayer::Conv(parts) => Kind::Conv(parts.layer),
            ModelLayer::Interleave(interleave) => Kind::Interleave(*interleave),
        }
    }
}

/// The levels of each value of a `channels` x `pixels` image, moved from `[channels * levels, pixels]` maps to
/// `[channels, pixels, levels]`, the layout the categorical likelihood reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Interleave {
    levels: usize,
    channels: usize,
    pixels: usize,
}

impl Interleave {
    /// The index in the maps of the value at `index` in the interleaved layout.
    fn source(&self, index: usize) -> usize {
        let (level, pixel, channel) =
            (index % self.levels, index / self.levels % self.pixels, index / (self.levels * self.pixels));
        (channel * self.levels + level) * self.pixels + pixel
    }

    /// `[rows, C * K, pixels]` -> `[rows, C, pixels, K]`.
    fn forward(&self, maps: &[f32]) -> Vec<f32> {
        let width = self.levels * self.channels * self.pixels;
        maps.chunks_exact(width.max(1)).flat_map(|row| (0..width).map(move |index| row[self.source(index)])).collect()
    }

    /// The gradient back to the maps' layout.
    fn backward(&self, grad: &[f32]) -> Vec<f32> {
        let width = self.levels * self.channels * self.pixels;
        let mut maps = vec![0.0; grad.len()];
        for (out, row) in maps.chunks_exact_mut(width.max(1)).zip(grad.chunks_exact(width.max(1))) {
            row.iter().enumerate().for_each(|(index, &value)| out[self.source(index)] = value);
        }
        maps
    }
}

/// The layers of a VAE in forward order: the encoder's, its mu and log_var heads, the decoder's.
pub(super) struct Layers<'a> {
    layers: Vec<ModelLayer<'a>>,
    /// Layers before the heads.
    encoder_len: usize,
}

impl<'a> Layers<'a> {
    /// Every layer of `vae`; `None` where a transposed convolution's shape is one the kernels do not take.
    pub(super) fn of(vae: &'a Vae) -> Option<Self> {
        let (convolutions, encoder_body, mu, log_var) = vae.encoder().parts();
        let mut layers: Vec<ModelLayer> = Vec::new();
        if let Some(stack) = convolutions {
            layers.extend(stack.parts()?.into_iter().map(ModelLayer::Conv));
        }
        layers.extend(encoder_body.iter().map(ModelLayer::Dense));
        let encoder_len = layers.len();
        layers.extend([ModelLayer::Dense(mu), ModelLayer::Dense(log_var)]);
        let (decoder_body, last_dense, deconvolutions) = vae.decoder().parts();
        layers.extend(decoder_body.iter().chain([last_dense]).map(ModelLayer::Dense));
        if let Some(stack) = deconvolutions {
            let (parts, (levels, channels, pixels)) = stack.parts()?;
            layers.extend(parts.into_iter().map(ModelLayer::Conv));
            if levels > 1 {
                layers.push(ModelLayer::Interleave(Interleave { levels, channels, pixels }));
            }
        }
        Some(Layers { layers, encoder_len })
    }

    /// Why the fused step cannot run these layers, if it cannot.
    pub(super) fn unsupported(&self) -> Option<&'static str> {
        let parameters = self.layers.iter().filter_map(ModelLayer::parameters);
        let (mut weights_f32, mut biases) = (true, true);
        for (weight, bias) in parameters {
            weights_f32 &= weight.dtype() == DType::F32;
            biases &= bias.is_some();
        }
        if !weights_f32 {
            return Some("the weights are not f32");
        }
        if !biases {
            return Some("a layer has no bias");
        }
        None
    }

    /// The parameters, weight then bias of each layer that has them, in forward order; `None` where a bias is
    /// missing.
    pub(super) fn parameters(&self) -> Option<Vec<&'a Tensor>> {
        let mut tensors = Vec::new();
        for (weight, bias) in self.layers.iter().filter_map(ModelLayer::parameters) {
            tensors.extend([weight, bias?]);
        }
        Some(tensors)
    }

    /// The layers on `values` (weight and bias of each layer with parameters, in the order of
    /// [`Self::parameters`]): (encoder, mu head, log_var head, decoder). `None` where values are missing.
    pub(super) fn on_values<'v>(&self, values: &[&'v [f32]]) -> Option<SliceLayers<'v>> {
        let mut pairs = values.chunks_exact(2);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (weight, bias) = match layer.parameters() {
                Some(_) => pairs.next().map(|pair| (pair[0], pair[1]))?,
                None => (&[][..], &[][..]),
            };
            let (kind, transposed) = (layer.kind(), SharedTranspose::default());
            layers.push(Layer { weight, transposed, bias, activation: layer.activation(), kind });
        }
        let decoder = layers.split_off(self.encoder_len + 2);
        let log_var = layers.pop()?;
        let mu = layers.pop()?;
        Some((layers, mu, log_var, decoder))
    }
}

/// (encoder, mu head, log_var head, decoder) on slices.
pub(super) type SliceLayers<'v> = (Vec<Layer<'v>>, Layer<'v>, Layer<'v>, Vec<Layer<'v>>);

/// How a layer computes, on slices.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Dense,
    Conv(ConvLayer),
    Interleave(Interleave),
}

/// [`Layer::weight_gradient_waits`] for a dense layer of (outputs, inputs) `shape`: the shards' extra gradient copies,
/// outputs x inputs values for each shard after the first, against the stacked rows' rows x (outputs + inputs).
/// Measured in one process on an AMD EPYC Zen 4 (BENCHMARKS.md), a 12,544-logit categorical decoder's step: 5-8%
/// faster by the median; the reference Bernoulli decoder, just past the rule's line: no difference in the noise.
pub(super) fn weight_gradient_waits((outputs, inputs): (usize, usize), rows: usize, shards: usize) -> bool {
    shards > 1 && outputs * inputs * (shards - 1) > rows * (outputs + inputs)
}

/// A layer's parameters as slices, with its activation and kind.
pub(super) struct Layer<'a> {
    pub(super) weight: &'a [f32],
    /// A dense weight's W^T, made once by the shards that need it (for a matrix multiply that reads the weight
    /// slowly in place, [`reads_transposed_weight`], or for the sparse products), then read by all.
    transposed: SharedTranspose,
    pub(super) bias: &'a [f32],
    activation: FusedActivation,
    kind: Kind,
}

/// What a layer's backward pass keeps from its forward pass besides the output.
#[derive(Default)]
pub(super) struct Kept {
    /// A convolution's unfolded inputs.
    columns: Option<Vec<f32>>,
    /// A SiLU layer's pre-activation.
    pre_activation: Option<Vec<f32>>,
    /// A dense layer's input as its nonzero values, where it has few enough for the sparse products.
    sparse_input: Option<SparseColumns>,
}

impl Kept {
    /// The buffers, to hand back to [`recycle`].
    pub(super) fn into_buffers(self) -> impl Iterator<Item = Vec<f32>> {
        self.columns.into_iter().chain(self.pre_activation)
    }
}

/// A layer's parameter gradients (dL/dW, dL/db).
pub(super) type LayerGradients = (Vec<f32>, Vec<f32>);

impl Layer<'_> {
    /// act(layer(input) + b) for `rows` inputs, with what the backward pass keeps from the forward one besides
    /// the output (a convolution's unfolded inputs, a SiLU layer's pre-activation).
    pub(super) fn forward(&self, input: &[f32], rows: usize) -> (Vec<f32>, Kept) {
        let fused = match self.activation {
            FusedActivation::Output(activation) => activation,
            FusedActivation::Silu => OutputActivation::Identity,
        };
        let (values, columns, sparse_input) = match self.kind {
            Kind::Dense => {
                let (values, sparse_input) = self.dense_forward(input, rows, fused);
                (values, None, sparse_input)
            }
            Kind::Conv(layer) => {
                let (values, columns) = layer.forward_keeping_columns(input, self.weight, self.bias, fused);
                (values, columns, None)
            }
            Kind::Interleave(interleave) => (interleave.forward(input), None, None),
        };
        if self.activation != FusedActivation::Silu {
            return (values, Kept { columns, pre_activation: None, sparse_input });
        }
        // y = silu(pre), pre kept for the derivative
        let mut output = recycle::stale(values.len());
        silu(&values, &mut output);
        (output, Kept { columns, pre_activation: Some(values), sparse_input })
    }

    /// A dense layer's act(x W^T + b), with its input as its nonzero values where it took the sparse products.
    fn dense_forward(&self, input: &[f32], rows: usize, fused: OutputActivation) -> (Vec<f32>, Option<SparseColumns>) {
        if let Some(sparse) = self.sparse_input(input, rows) {
            return (sparse_forward_values(&sparse, self.transposed(), self.bias, fused), Some(sparse));
        }
        let reads_transposed = reads_transposed_weight(rows, self.weight.len(), self.bias.len());
        let transposed = reads_transposed.then(|| self.transposed());
        (forward_values(input, (self.weight, transposed), self.bias, rows, fused), None)
    }

    /// The dense layer's W^T, made once for all shards.
    fn transposed(&self) -> &[f32] {
        self.transposed.get(self.weight, self.bias.len())
    }

    /// A dense layer's `input` (`rows` rows) as its nonzero values, where the layer has outputs enough and the
    /// input few enough nonzeros for the sparse products to pay on this CPU ([`sparse::most_density`]).
    fn sparse_input(&self, input: &[f32], rows: usize) -> Option<SparseColumns> {
        if self.bias.len() < sparse::FEWEST_OUTPUTS || rows == 0 {
            return None;
        }
        SparseColumns::of(input, input.len() / rows, sparse::most_density()?)
    }

    /// Back through the layer from dL/doutput, with what [`Self::forward`] kept: its parameter gradients (`None`
    /// for a layer without), and dL/dinput when `input_gradient_wanted`.
    pub(super) fn backward(
        &self,
        input: &[f32],
        (output, kept): (&[f32], &Kept),
        grad_output: Vec<f32>,
        rows: usize,
        input_gradient_wanted: bool,
    ) -> (Option<LayerGradients>, Option<Vec<f32>>) {
        let grad_pre = self.pre_activation_gradient((output, kept), grad_output);
        match self.kind {
            Kind::Dense => {
                let gradients = match &kept.sparse_input {
                    Some(sparse) => sparse_parameter_gradients(&grad_pre, sparse),
                    None => parameter_gradients(&grad_pre, input, rows),
                };
                (Some(gradients), input_gradient_wanted.then(|| input_gradient(&grad_pre, self.weight, rows)))
            }
            Kind::Conv(layer) => {
                let (grad_weight, grad_bias, grad_input) =
                    layer.backward(input, kept.columns.as_deref(), &grad_pre, self.weight, input_gradient_wanted);
                (Some((grad_weight, grad_bias)), grad_input)
            }
            Kind::Interleave(interleave) => (None, Some(interleave.backward(&grad_pre))),
        }
    }

    /// dL/dpre from dL/doutput: dL/dy * act'(y), or for SiLU dL/dy * act'(pre).
    fn pre_activation_gradient(&self, (output, kept): (&[f32], &Kept), grad_output: Vec<f32>) -> Vec<f32> {
        let mut grad_pre = grad_output;
        match (self.activation, &kept.pre_activation) {
            (FusedActivation::Output(activation), _) => activation.gradient_in_place(output, &mut grad_pre),
            (FusedActivation::Silu, Some(pre)) => silu_gradient(pre, &mut grad_pre),
            (FusedActivation::Silu, None) => unreachable!("a SiLU layer's forward pass keeps its pre-activation"),
        }
        grad_pre
    }

    /// A dense layer's (outputs, inputs), for [`Self::weight_gradient_waits`]; `None` for other layers.
    fn dense_shape(&self) -> Option<(usize, usize)> {
        let outputs = self.bias.len();
        matches!(self.kind, Kind::Dense).then(|| (outputs, self.weight.len() / outputs.max(1)))
    }

    /// True where this dense layer's weight gradient, for a batch of `rows` rows run as `shards` shards, is better
    /// made once for the whole batch ([`Self::backward_waiting`]) than once per shard: where the shards' own
    /// copies, which the optimiser then reads and adds, hold more values than the batch's dL/dpre and inputs,
    /// which the whole-batch product copies into one matrix each.
    pub(super) fn weight_gradient_waits(&self, rows: usize, shards: usize) -> bool {
        self.dense_shape().is_some_and(|shape| weight_gradient_waits(shape, rows, shards))
    }

    /// [`Self::backward`] of a dense layer without its weight gradient: (dL/db, dL/dpre, dL/dinput), dL/dpre kept
    /// for the weight's gradient over the whole batch (`crate::model::dense::weight_gradient`).
    pub(super) fn backward_waiting(
        &self,
        (output, kept): (&[f32], &Kept),
        grad_output: Vec<f32>,
        rows: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let grad_pre = self.pre_activation_gradient((output, kept), grad_output);
        let grad_input = input_gradient(&grad_pre, self.weight, rows);
        (column_sums(&grad_pre, self.bias.len()), grad_pre, grad_input)
    }
}
