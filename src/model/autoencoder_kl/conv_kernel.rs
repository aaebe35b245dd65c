//! An inference kernel for stride-1 convolutions on the CPU: k x k accumulated matrix products over shifted views of
//! the padded maps, with no im2col buffer.
//!
//! With the maps zero-padded to Hp x Wp and each channel flattened, the input of kernel tap (dy, dx) for every
//! output position is one contiguous run of the flat channel starting at dy * Wp + dx, if each output row is computed
//! Wp wide (its last Wp - Wo columns are junk and dropped). So
//!
//! ```text
//! wide[o, y * Wp + x] = sum over taps of W_tap[o, c] · padded[c, y * Wp + x + dy * Wp + dx]
//! ```
//!
//! is k^2 GEMMs accumulating into one buffer, reading the padded maps in place, and
//!
//! ```text
//! out[o, y, x] = wide[o, y * Wp + x] + b[o]   for x < Wo
//! ```
//! It makes no autograd graph, so [`super::layers::convolve`] uses it only when no gradient is wanted.

use candle_core::{Storage, Tensor};

use crate::kernels::{contiguous_f32, gemm_parallelism, matmul, Destination, Operand};
use crate::Result;

/// The geometry of one stride-1 convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel side k.
    pub kernel: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

/// The convolution of contiguous f32 CPU `[batch, C, H, W]` maps `x` with weight `[O, C, k, k]` and bias `[O]`;
/// `None` when the tensors are not contiguous f32 on the CPU or the kernel does not fit.
pub fn convolve_stride_one(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Geometry,
) -> Result<Option<Tensor>> {
    let (batch, channels, height, width) = x.dims4()?;
    let Geometry { out_channels, kernel, padding, .. } = geometry;
    let (padded_h, padded_w) = (height + 2 * padding, width + 2 * padding);
    let (Some(out_h), Some(out_w)) = ((padded_h + 1).checked_sub(kernel), (padded_w + 1).checked_sub(kernel)) else {
        return Ok(None);
    };
    if channels != geometry.in_channels || out_h == 0 || out_w == 0 {
        return Ok(None);
    }
    let (Some(taps), Some(bias)) = (tap_major(weight, geometry)?, bias_values(bias, out_channels)?) else {
        return Ok(None);
    };
    let sides = Sides { channels, height, width, out_h, out_w };
    let out = with_f32(x, |input| {
        SCRATCH.with_borrow_mut(|scratch| run(input, &taps, bias.as_deref(), geometry, sides, scratch))
    })?;
    let Some(out) = out else { return Ok(None) };
    Ok(Some(Tensor::from_vec(out, (batch, out_channels, out_h, out_w), x.device())?))
}

/// The sides of one convolution's input and output.
#[derive(Debug, Clone, Copy)]
struct Sides {
    channels: usize,
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
}

/// The padded maps and the wide output of the last convolution on this thread, kept so that the next one reuses
/// their memory instead of faulting in fresh pages (a fifth of the time otherwise). They hold at most the largest
/// layer's maps.
#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    wide: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The convolution of every example of `input` (tap-major weights `taps`), as the module documentation describes.
fn run(
    input: &[f32],
    taps: &[f32],
    bias: Option<&[f32]>,
    geometry: Geometry,
    sides: Sides,
    scratch: &mut Scratch,
) -> Vec<f32> {
    let Sides { channels, height, width, out_h, out_w } = sides;
    let Geometry { out_channels, kernel, padding, .. } = geometry;
    let padded_w = width + 2 * padding;
    let plane = (height + 2 * padding) * padded_w;
    let wide_len = out_h * padded_w;
    let batch = input.len() / (channels * height * width);
    let mut out = Vec::with_capacity(batch * out_channels * out_h * out_w);
    scratch.wide.resize(out_channels * wide_len, 0.0);
    for example in input.chunks_exact(channels * height * width) {
        pad(example, (channels, height, width), padding, kernel, &mut scratch.padded);
        for (tap, tap_weight) in taps.chunks_exact(out_channels * channels).enumerate() {
            let (dy, dx) = (tap / kernel, tap % kernel);
            // wide (O x Ho*Wp) (+)= W_tap (O x C) · padded[:, dy * Wp + dx ..] (C x Ho*Wp, row stride Hp * Wp)
            let rhs = Operand::rows(&scratch.padded[dy * padded_w + dx..], plane);
            let lhs = Operand::rows(tap_weight, channels);
            let destination = if tap == 0 { Destination::Overwrite } else { Destination::Accumulate };
            let dims = (out_channels, channels, wide_len);
            let parallelism = gemm_parallelism(out_channels * channels * wide_len);
            matmul(&mut scratch.wide, lhs, rhs, dims, destination, parallelism);
        }
        for (o, row_block) in scratch.wide.chunks_exact(wide_len).enumerate() {
            let b = bias.map_or(0.0, |b| b[o]);
            for row in row_block.chunks_exact(padded_w) {
                // out = wide + b, junk columns dropped
                out.extend(row[..out_w].iter().map(|v| v + b));
            }
        }
    }
    out
}

/// `read` applied to the values of a contiguous f32 CPU tensor; `None` for anything else.
fn with_f32<R>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Ok(None) };
    Ok(contiguous_f32(cpu, layout, "convolution").ok().map(read))
}

/// The values of a contiguous f32 CPU tensor, copied; `None` otherwise.
fn f32_values(tensor: &Tensor) -> Result<Option<Vec<f32>>> {
    with_f32(tensor, <[f32]>::to_vec)
}

/// The bias values, `None` for no bias; an outer `None` when it cannot be read.
fn bias_values(bias: Option<&Tensor>, out_channels: usize) -> Result<Option<Option<Vec<f32>>>> {
    match bias {
        None => Ok(Some(None)),
        Some(bias) if bias.elem_count() == out_channels => Ok(f32_values(&bias.contiguous()?)?.map(Some)),
        Some(_) => Ok(None),
    }
}

/// The weight `[O, C, k, k]` reordered tap by tap: k^2 row-major O x C matrices, W_tap[o, c] = W[o, c, dy, dx].
fn tap_major(weight: &Tensor, geometry: Geometry) -> Result<Option<Vec<f32>>> {
    let Geometry { in_channels, out_channels, kernel, .. } = geometry;
    if weight.dims() != [out_channels, in_channels, kernel, kernel] {
        return Ok(None);
    }
    let weight = weight.reshape((out_channels * in_channels, kernel * kernel))?.t()?.contiguous()?;
    f32_values(&weight)
}

/// One example's channels zero-padded by `padding` on every side into `padded`, flat, with k zeros after the last
/// channel so the last tap's run stays inside the buffer.
fn pad(
    example: &[f32],
    (channels, height, width): (usize, usize, usize),
    padding: usize,
    kernel: usize,
    padded: &mut Vec<f32>,
) {
    let (padded_h, padded_w) = (height + 2 * padding, width + 2 * padding);
    padded.clear();
    padded.resize(channels * padded_h * padded_w + kernel, 0.0);
    for (c, channel) in example.chunks_exact(height * width).enumerate() {
        for (y, row) in channel.chunks_exact(width).enumerate() {
            let start = c * padded_h * padded_w + (y + padding) * padded_w + padding;
            padded[start..start + width].copy_from_slice(row);
        }
    }
}
