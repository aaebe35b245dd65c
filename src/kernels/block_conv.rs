//! An inference kernel for stride-1 convolutions on the CPU: im2col one block of output rows at a time into a
//! reused buffer, and one GEMM per block (3 x 3 kernels over a batch of at least one image per thread take
//! [`super::winograd`] instead).
//!
//! With the maps zero-padded, the patch row c * k^2 + dy * k + dx of output position (y, x) is padded[c, y + dy,
//! x + dx], so each row of a block's patch matrix is a run of whole padded rows copied as they are. Then
//!
//! ```text
//! out[:, block] = W (O x C k^2) · patches (C k^2 x positions of the block) + b
//! ```
//!
//! A block holds about [`BLOCK_VALUES`] patch values, so the buffer stays small and is reused (no fresh pages), and
//! each output value is written once by a GEMM with the full C k^2 inner dimension. (Accumulating k^2 GEMMs over
//! shifted views of the padded maps instead needs no patches, but rewrites the output k^2 times; at 128 channels and
//! 256 x 256 that was memory-bound and slower.) It makes no autograd graph, so `model::autoencoder_kl::layers::convolve` uses it
//! only when no gradient is wanted.

use candle_core::Tensor;

use rayon::prelude::*;

use super::conv::copy_short;
use super::winograd::Winograd;
use super::{gemm_parallelism, matmul, padded_stride, with_f32, worth_parallel, Destination, Operand};

/// Patch values per block: 2^21 (8 MiB).
pub const BLOCK_VALUES: usize = 1 << 21;
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
    let (Some(taps), Some(bias)) = (weight_matrix(weight, geometry)?, bias_values(bias, out_channels)?) else {
        return Ok(None);
    };
    let sides = Sides { channels, height, width, out_h, out_w };
    let winograd =
        (kernel == 3).then(|| Winograd::new(channels, (height, width), padding, out_channels)?.for_batch(batch));
    let out = with_f32(x, |input| match winograd.flatten() {
        Some(winograd) => with_bias(winograd.convolve(input, &taps), bias.as_deref(), out_h * out_w),
        None => SCRATCH.with_borrow_mut(|scratch| run(input, &taps, bias.as_deref(), geometry, sides, scratch)),
    });
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

/// The padded maps, one block's patches and its product, kept per thread so that the next convolution reuses their
/// memory instead of faulting in fresh pages. They hold at most the largest layer's padded maps and one block.
#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    patches: Vec<f32>,
    product: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The convolution of every example of `input` with the `[O, C k^2]` weight matrix, as the module documentation
/// describes.
fn run(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    geometry: Geometry,
    sides: Sides,
    scratch: &mut Scratch,
) -> Vec<f32> {
    let Sides { channels, height, width, out_h, out_w } = sides;
    let Geometry { out_channels, kernel, padding, .. } = geometry;
    let patch_len = channels * kernel * kernel;
    let rows_per_block = (BLOCK_VALUES / (patch_len * out_w)).clamp(1, out_h);
    let out_plane = out_h * out_w;
    let mut out = vec![0f32; input.len() / (channels * height * width) * out_channels * out_plane];
    for (example, out_example) in
        input.chunks_exact(channels * height * width).zip(out.chunks_exact_mut(out_channels * out_plane))
    {
        pad(example, (channels, height, width), padding, kernel, &mut scratch.padded);
        for first_row in (0..out_h).step_by(rows_per_block) {
            let rows = rows_per_block.min(out_h - first_row);
            let (positions, stride) = (rows * out_w, padded_stride(rows * out_w));
            unfold_rows(&scratch.padded, (geometry, sides), (first_row, rows), &mut scratch.patches);
            scratch.product.resize(out_channels * positions, 0.0);
            // product (O x positions) = W (O x C k^2) · patches (C k^2 x positions)
            let dims = (out_channels, patch_len, positions);
            let (lhs, rhs) = (Operand::rows(weight, patch_len), Operand::rows(&scratch.patches, stride));
            let parallelism = gemm_parallelism(out_channels * patch_len * positions);
            matmul(&mut scratch.product, lhs, rhs, dims, Destination::Overwrite, parallelism);
            let add_bias = |(o, (plane, values)): (usize, (&mut [f32], &[f32]))| {
                let b = bias.map_or(0.0, |b| b[o]);
                // out = W · patches + b
                let block = &mut plane[first_row * out_w..][..positions];
                block.iter_mut().zip(values).for_each(|(y, v)| *y = v + b);
            };
            let (outs, products) = (&mut *out_example, &scratch.product);
            match worth_parallel(out_channels * positions) {
                true => outs
                    .par_chunks_exact_mut(out_plane)
                    .zip(products.par_chunks_exact(positions))
                    .enumerate()
                    .for_each(add_bias),
                false => outs
                    .chunks_exact_mut(out_plane)
                    .zip(products.chunks_exact(positions))
                    .enumerate()
                    .for_each(add_bias),
            }
        }
    }
    out
}

/// `maps` (`[batch, O, plane]`) + the bias of each channel, if any.
fn with_bias(mut maps: Vec<f32>, bias: Option<&[f32]>, plane: usize) -> Vec<f32> {
    if let Some(bias) = bias {
        for (channel_plane, &b) in maps.chunks_exact_mut(plane).zip(bias.iter().cycle()) {
            channel_plane.iter_mut().for_each(|value| *value += b);
        }
    }
    maps
}

/// The patches of output rows `first_row .. first_row + rows` into `patches` (C k^2 rows of rows * Wo values, each
/// [`padded_stride`] values from the next).
fn unfold_rows(
    padded: &[f32],
    (geometry, sides): (Geometry, Sides),
    (first_row, rows): (usize, usize),
    patches: &mut Vec<f32>,
) {
    let Geometry { kernel, padding, .. } = geometry;
    let Sides { channels, height, width, out_w, .. } = sides;
    let padded_w = width + 2 * padding;
    let plane = (height + 2 * padding) * padded_w;
    let (positions, stride) = (rows * out_w, padded_stride(rows * out_w));
    patches.resize(channels * kernel * kernel * stride, 0.0);
    let unfold_row = |(row_index, patch_row): (usize, &mut [f32])| {
        let (c, tap) = (row_index / (kernel * kernel), row_index % (kernel * kernel));
        let (dy, dx) = (tap / kernel, tap % kernel);
        for (r, run) in patch_row[..positions].chunks_exact_mut(out_w).enumerate() {
            let start = c * plane + (first_row + r + dy) * padded_w + dx;
            copy_short(run, &padded[start..start + out_w]);
        }
    };
    match worth_parallel(patches.len()) {
        true => patches.par_chunks_exact_mut(stride).enumerate().for_each(unfold_row),
        false => patches.chunks_exact_mut(stride).enumerate().for_each(unfold_row),
    }
}

/// The values of a contiguous f32 CPU tensor, copied; `None` otherwise.
fn f32_values(tensor: &Tensor) -> Result<Option<Vec<f32>>> {
    Ok(with_f32(tensor, <[f32]>::to_vec))
}

/// The bias values, `None` for no bias; an outer `None` when it cannot be read.
fn bias_values(bias: Option<&Tensor>, out_channels: usize) -> Result<Option<Option<Vec<f32>>>> {
    match bias {
        None => Ok(Some(None)),
        Some(bias) if bias.elem_count() == out_channels => Ok(f32_values(&bias.contiguous()?)?.map(Some)),
        Some(_) => Ok(None),
    }
}

/// The weight `[O, C, k, k]` as its row-major `[O, C k^2]` matrix.
fn weight_matrix(weight: &Tensor, geometry: Geometry) -> Result<Option<Vec<f32>>> {
    let Geometry { in_channels, out_channels, kernel, .. } = geometry;
    if weight.dims() != [out_channels, in_channels, kernel, kernel] {
        return Ok(None);
    }
    f32_values(&weight.contiguous()?)
}

/// One example's channels zero-padded by `padding` on every side into `padded`, flat (k spare zeros at the end).
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
    let copy_channel = |(padded, channel): (&mut [f32], &[f32])| {
        for (y, row) in channel.chunks_exact(width).enumerate() {
            let start = (y + padding) * padded_w + padding;
            padded[start..start + width].copy_from_slice(row);
        }
    };
    let (padded_plane, plane) = (padded_h * padded_w, height * width);
    match worth_parallel(example.len()) {
        true => padded.par_chunks_exact_mut(padded_plane).zip(example.par_chunks_exact(plane)).for_each(copy_channel),
        false => padded.chunks_exact_mut(padded_plane).zip(example.chunks_exact(plane)).for_each(copy_channel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// The kernel against candle's own convolution, with and without a bias, on odd sides and on 512 output
    /// positions (whose patch rows are padded to a longer stride), its reused buffers left dirty by a larger one.
    #[test]
    fn the_block_kernel_matches_candles_convolution() {
        let device = Device::Cpu;
        // a larger convolution first leaves this thread's scratch full of values, which the padding must not keep
        let (x, weight) = (
            Tensor::ones((1, 6, 17, 33), DType::F32, &device).unwrap(),
            Tensor::ones((2, 6, 3, 3), DType::F32, &device).unwrap(),
        );
        let geometry = Geometry { in_channels: 6, out_channels: 2, kernel: 3, padding: 0 };
        convolve_stride_one(&x, &weight, None, geometry).unwrap().unwrap();
        for (batch, channels, (height, width), out_channels, kernel, padding) in
            [(2, 3, (7, 5), 4, 3, 1), (1, 2, (16, 32), 3, 3, 1), (2, 5, (6, 9), 2, 1, 0)]
        {
            let x = Tensor::randn(0f32, 1.0, (batch, channels, height, width), &device).unwrap();
            let weight = Tensor::randn(0f32, 0.5, (out_channels, channels, kernel, kernel), &device).unwrap();
            let bias = Tensor::randn(0f32, 0.5, out_channels, &device).unwrap();
            let geometry = Geometry { in_channels: channels, out_channels, kernel, padding };
            let plain = x.conv2d(&weight, padding, 1, 1, 1).unwrap();
            for bias in [None, Some(&bias)] {
                let expected = match bias {
                    Some(bias) => plain.broadcast_add(&bias.reshape((1, out_channels, 1, 1)).unwrap()).unwrap(),
                    None => plain.clone(),
                };
                let got = convolve_stride_one(&x, &weight, bias, geometry).unwrap().unwrap();
                let error = (got - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(error < 1e-4, "{batch}x{channels}x{height}x{width}, k{kernel}: differs by {error}");
            }
        }
    }
}
