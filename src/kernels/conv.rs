//! CPU kernels for 2-D convolutions and transposed convolutions, with their gradients, as matrix multiplies.
//!
//! candle 0.11 runs transposed convolutions on the CPU as direct loops and computes a convolution's weight gradient
//! as a convolution with a kernel the size of the image; for the disentanglement architecture that made a training
//! step about ten times slower than its arithmetic needs. Here everything is three products per example, each a
//! `gemm` call on one thread, examples spread over rayon's threads:
//!
//! - gather:  out_b = W · im2col(image_b)           (convolution forward; transposed convolution's input gradient)
//! - scatter: image_b = col2im(W^T · maps_b)        (convolution's input gradient; transposed convolution forward)
//! - outer:   dW = sum_b maps_b · im2col(image_b)^T (both weight gradients)
//!
//! A 3 x 3 stride-1 convolution's gather and outer (the autoencoders' and LPIPS's layers) run Winograd's F(4 x 4,
//! 3 x 3) instead ([`super::winograd`]), with 4 times fewer multiply-adds.
//!
//! im2col(image) has one row per (channel, kernel row, kernel column) and one column per output position, so a
//! convolution weight `[out, in, k, k]` and a transposed convolution weight `[in, out, k, k]` are already the matrices
//! these products need. Tests hold every path to candle's own convolution ops, values and gradients.

use std::thread::LocalKey;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::OutputActivation;
use super::block_conv::{convolve_stride_one, Geometry};
use super::recycle;
use super::winograd::Winograd;
use crate::kernels::{
    add_to, contiguous_f32, matmul, padded_stride, transpose, wide_fn, worth_parallel, Destination, Operand,
};

mod phases;

/// The per-example products run on one thread each: the callers spread the examples over the threads.
const ONE: gemm::Parallelism = gemm::Parallelism::None;

/// The shape of one convolution, seen from its image side: images of `channels` x `height` x `width`, a square
/// kernel, and the `out_height` x `out_width` positions the kernel visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Channels of the image side.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Output positions down: (height + 2 * padding - kernel) / stride + 1.
    pub out_height: usize,
    /// Output positions across: (width + 2 * padding - kernel) / stride + 1.
    pub out_width: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution over `channels` x `height` x `width` images; `None` when the kernel does not
    /// fit the padded image.
    pub fn new(
        channels: usize,
        (height, width): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Option<Self> {
        let out = |side: usize| (side + 2 * padding).checked_sub(kernel).map(|room| room / stride + 1);
        Some(ConvGeometry {
            channels,
            height,
            width,
            kernel,
            stride,
            padding,
            out_height: out(height)?,
            out_width: out(width)?,
        })
    }

    /// Rows of im2col: channels x kernel x kernel.
    #[inline(always)]
    fn patch_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Columns of im2col: the output positions.
    #[inline(always)]
    fn positions(&self) -> usize {
        self.out_height * self.out_width
    }

    /// The row stride of im2col's `[patch, positions]` columns: the positions, padded where their count would put
    /// every row on the same cache sets ([`padded_stride`]).
    #[inline(always)]
    fn column_stride(&self) -> usize {
        padded_stride(self.positions())
    }

    /// (patch rows, positions, row stride) of im2col's columns of one image.
    #[inline(always)]
    fn columns_shape(&self) -> (usize, usize, usize) {
        (self.patch_len(), self.positions(), self.column_stride())
    }

    /// Values of im2col's columns of one image: patch rows of [`Self::column_stride`] values.
    #[inline(always)]
    fn columns_len(&self) -> usize {
        self.patch_len() * self.column_stride()
    }

    /// Values of one image.
    #[inline(always)]
    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The output positions along an axis of `outputs` whose kernel offset `offset` lands inside the image: o with
    /// padding <= o * stride + offset < side + padding, i.e. from ceil((padding - offset) / stride) up to
    /// ceil((side + padding - offset) / stride), exclusive.
    #[inline(always)]
    fn inside(&self, offset: usize, side: usize, outputs: usize) -> std::ops::Range<usize> {
        let first = self.padding.saturating_sub(offset).div_ceil(self.stride);
        let end = (side + self.padding).checked_sub(offset).map_or(0, |room| room.div_ceil(self.stride)).min(outputs);
        first.min(end)..end
    }

    /// For each im2col row: its channel and kernel offsets (row = (channel * k + ky) * k + kx).
    #[inline(always)]
    fn rows(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let k = self.kernel;
        (0..self.patch_len()).map(move |row| (row, row / (k * k), row / k % k, row % k))
    }

    /// For im2col row (channel, ky, kx): the output lines and columns whose pixel lies inside the image, the
    /// index in the channel's plane of the first one's pixel, and the span of a line's pixels (a stride per
    /// column: one past the last pixel, and the stride's remainder, which [`copy_strided`] and [`add_strided`]
    /// may read to run whole blocks; cut at the plane's end by the callers); `None` when none lies inside.
    #[inline(always)]
    fn reach(&self, ky: usize, kx: usize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>, usize, usize)> {
        let (lines, columns) =
            (self.inside(ky, self.height, self.out_height), self.inside(kx, self.width, self.out_width));
        if lines.is_empty() || columns.is_empty() {
            return None;
        }
        let first = (lines.start * self.stride + ky - self.padding) * self.width + columns.start * self.stride + kx
            - self.padding;
        Some((lines, columns.clone(), first, columns.len() * self.stride))
    }

    /// im2col: `cols[row][position]` = the image value under kernel offset `row` at output `position` (0 in the
    /// padding), rows [`Self::column_stride`] values apart, one pass over `cols` writing every value once.
    #[inline(always)]
    fn unfold(&self, image: &[f32], cols: &mut [f32]) {
        let (positions, plane_len) = (self.positions(), self.height * self.width);
        for (row, channel, ky, kx) in self.rows() {
            let row_cols = &mut cols[row * self.column_stride()..][..positions];
            let Some((lines, columns, first, span)) = self.reach(ky, kx) else {
                row_cols.fill(0.0);
                continue;
            };
            let plane = &image[channel * plane_len..][..plane_len];
            let (before, rest) = row_cols.split_at_mut(lines.start * self.out_width);
            let (inside, after) = rest.split_at_mut(lines.len() * self.out_width);
            before.fill(0.0);
            after.fill(0.0);
            for (index, line) in inside.chunks_exact_mut(self.out_width).enumerate() {
                let (head, rest) = line.split_at_mut(columns.start);
                let (body, tail) = rest.split_at_mut(columns.len());
                // the padding's columns: none or one for the autoencoders' 3 x 3 kernels, where a `memset` call
                // per line cost more than its work
                for part in [head, tail] {
                    match part {
                        [] => {}
                        [value] => *value = 0.0,
                        _ => part.fill(0.0),
                    }
                }
                let source = first + index * self.stride * self.width;
                copy_strided(body, &plane[source..(source + span).min(plane_len)], self.stride);
            }
        }
    }

    /// col2im, the adjoint of im2col, written into `image` (its old values are not read): each image value is the
    /// sum of the column values read from it.
    #[inline(always)]
    fn fold(&self, cols: &[f32], image: &mut [f32]) {
        image.fill(0.0);
        let (positions, plane_len) = (self.positions(), self.height * self.width);
        for (row, channel, ky, kx) in self.rows() {
            let Some((lines, columns, first, span)) = self.reach(ky, kx) else { continue };
            let plane = &mut image[channel * plane_len..][..plane_len];
            let row_cols = &cols[row * positions..][..positions];
            for (index, oy) in lines.enumerate() {
                let source = first + index * self.stride * self.width;
                let line = &row_cols[oy * self.out_width..][columns.clone()];
                add_strided(&mut plane[source..(source + span).min(plane_len)], line, self.stride);
            }
        }
    }
}

/// dst[i] = src[i * stride] for every i; `src` holds at least (dst.len() - 1) * stride + 1 values.
///
/// im2col's copies. Stride 2 (the common downsampling convolution) runs four values at a time through SSE shuffles
/// (x86-64's baseline, so every SIMD level): a plain indexed loop compiled to one bounds-checked scalar move per
/// value, and im2col was a fifth of a conv model's training step.
#[inline(always)]
fn copy_strided(dst: &mut [f32], src: &[f32], stride: usize) {
    let done = match stride {
        1 => {
            copy_short(dst, &src[..dst.len()]);
            return;
        }
        2 => strided_pairs::copy_evens(dst, src),
        _ => 0,
    };
    for (value, &source) in dst[done..].iter_mut().zip(src[done * stride..].iter().step_by(stride)) {
        *value = source;
    }
}

/// dst = src for the short lines of an im2col row (15-64 values in the autoencoders), inline: a `memcpy` call per
/// line cost more than its copy (4.6% of the KL autoencoder's step). Blocks of `N` values, the last block
/// overlapping the one before where the length is not a multiple of `N`, so no line ends in a one-by-one loop (which
/// the compiler turns back into a `memcpy` call).
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    match dst.len() {
        16.. => copy_blocks::<16>(dst, src),
        4.. => copy_blocks::<4>(dst, src),
        _ => dst.iter_mut().zip(src).for_each(|(target, &source)| *target = source),
    }
}

/// dst = src (at least `N` values each) in blocks of `N` values, the last block ending at the end.
#[inline(always)]
fn copy_blocks<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let len = dst.len();
    let copy = |start: usize, dst: &mut [f32]| {
        // N, a constant, is the copy's length: compiled to vector moves, not a call
        dst[start..start + N].copy_from_slice(&src[start..start + N]);
    };
    (0..len / N).for_each(|block| copy(block * N, dst));
    if !len.is_multiple_of(N) {
        copy(len - N, dst);
    }
}

/// dst[i * stride] += src[i] for every i; `dst` holds at least (src.len() - 1) * stride + 1 values (the others
/// keep their bits, though a block may write them back). col2im's additions, stride 2 four values at a time as in
/// [`copy_strided`]; each value gets the same single addition at every SIMD level.
#[inline(always)]
fn add_strided(dst: &mut [f32], src: &[f32], stride: usize) {
    let done = match stride {
        1 => {
            dst.iter_mut().zip(src).for_each(|(value, &addend)| *value += addend);
            return;
        }
        2 => strided_pairs::add_to_evens(dst, src),
        _ => 0,
    };
    for (value, &addend) in dst[done * stride..].iter_mut().step_by(stride).zip(&src[done..]) {
        *value += addend;
    }
}

/// Stride-2 copies and additions in blocks of four values, through 128-bit shuffles; each function returns how many
/// values of the strided side it covered (whole blocks only), the caller finishing the rest one by one.
#[cfg(target_arch = "x86_64")]
mod strided_pairs {
    use std::arch::x86_64::{
        _mm_add_ps, _mm_loadu_ps, _mm_shuffle_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };

    /// Lanes 0 and 2 of each operand: [a0, a2, b0, b2].
    const EVENS: i32 = 0b10_00_10_00;
    /// Lanes 1 and 3 of each operand: [a1, a3, b1, b3].
    const ODDS: i32 = 0b11_01_11_01;

    /// dst[i] = src[2 i] for the first whole blocks of four; returns their values.
    #[inline(always)]
    pub(super) fn copy_evens(dst: &mut [f32], src: &[f32]) -> usize {
        let blocks = (dst.len() / 4).min(src.len() / 8);
        for block in 0..blocks {
            // SAFETY: block < src.len() / 8 and block < dst.len() / 4 keep the 8 values read and the 4 written
            // inside the slices; SSE is part of x86-64's baseline.
            unsafe {
                let (low, high) =
                    (_mm_loadu_ps(src.as_ptr().add(8 * block)), _mm_loadu_ps(src.as_ptr().add(8 * block + 4)));
                _mm_storeu_ps(dst.as_mut_ptr().add(4 * block), _mm_shuffle_ps::<EVENS>(low, high));
            }
        }
        4 * blocks
    }

    /// dst[2 i] += src[i] for the first whole blocks of four; the odd values are written back unchanged. Returns the
    /// values of `src` covered.
    #[inline(always)]
    pub(super) fn add_to_evens(dst: &mut [f32], src: &[f32]) -> usize {
        let blocks = (dst.len() / 8).min(src.len() / 4);
        for block in 0..blocks {
            // SAFETY: block < dst.len() / 8 and block < src.len() / 4 keep the 8 values read and written and the
            // 4 read inside the slices; SSE is part of x86-64's baseline.
            unsafe {
                let target = dst.as_mut_ptr().add(8 * block);
                let (low, high) = (_mm_loadu_ps(target), _mm_loadu_ps(target.add(4)));
                let evens = _mm_add_ps(_mm_shuffle_ps::<EVENS>(low, high), _mm_loadu_ps(src.as_ptr().add(4 * block)));
                let odds = _mm_shuffle_ps::<ODDS>(low, high);
                _mm_storeu_ps(target, _mm_unpacklo_ps(evens, odds));
                _mm_storeu_ps(target.add(4), _mm_unpackhi_ps(evens, odds));
            }
        }
        4 * blocks
    }
}

/// Without x86-64's shuffles, every value goes through the callers' plain loops.
#[cfg(not(target_arch = "x86_64"))]
mod strided_pairs {
    pub(super) fn copy_evens(_dst: &mut [f32], _src: &[f32]) -> usize {
        0
    }

    pub(super) fn add_to_evens(_dst: &mut [f32], _src: &[f32]) -> usize {
        0
    }
}

impl ConvGeometry {
    /// im2col of one image into `cols` (`[patch, positions]`), compiled for the SIMD level in use.
    fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        im2col_at_level(self, image, cols)
    }

    /// col2im of `cols` written into one image, compiled for the SIMD level in use.
    fn col2im(&self, cols: &[f32], image: &mut [f32]) {
        col2im_at_level(self, cols, image)
    }
}

wide_fn! {
    /// [`ConvGeometry::unfold`] at the SIMD level in use, through the image's phases where they take the geometry.
    fn im2col_at_level(geometry: &ConvGeometry, image: &[f32], cols: &mut [f32]) {
        match geometry.splits_into_phases() {
            true => geometry.unfold_by_phases(image, cols),
            false => geometry.unfold(image, cols),
        }
    }
}

wide_fn! {
    /// [`ConvGeometry::fold`] at the SIMD level in use, through the image's phases where they take the geometry.
    fn col2im_at_level(geometry: &ConvGeometry, cols: &[f32], image: &mut [f32]) {
        match geometry.splits_into_phases() {
            true => geometry.fold_by_phases(cols, image),
            false => geometry.fold(cols, image),
        }
    }
}

/// A thread's scratch buffer, grown to the largest asked for and kept ([`take_scratch`]).
type Scratch = std::cell::Cell<Vec<f32>>;

thread_local! {
    /// This thread's buffer for one image's columns: a fresh buffer per call was a zeroed allocation of every value
    /// (mimalloc's memset, ~3% of the KL autoencoder's training step).
    static COLUMNS: Scratch = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `work` on this thread's columns buffer cut to `len` values, whose contents are unspecified (what im2col or
/// an overwriting product left there): for callers that write every value they read.
fn with_columns<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(&COLUMNS, len, work)
}

/// Runs `work` on the thread's `scratch` buffer cut to `len` values, its contents unspecified. A call nested in
/// another on the same buffer and thread (none of the kernels here makes one: their products inside run on one
/// thread) gets a fresh buffer instead.
fn with_scratch<R>(scratch: &'static LocalKey<Scratch>, len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buffer = take_scratch(scratch, len);
    let result = work(&mut buffer[..len]);
    put_scratch(scratch, buffer);
    result
}

/// The thread's `scratch` buffer with at least `len` values, its contents unspecified, taken out until
/// [`put_scratch`] hands it back (a call in between gets a fresh one). It keeps the longest length asked for, so
/// that callers of different sizes do not zero its tail again at each growth. Taken and handed back rather than lent
/// to a closure, so that a kernel compiled for each SIMD level can use it in its own body
/// ([`ConvGeometry::phase_rows`] says why).
#[inline(always)]
pub(super) fn take_scratch(scratch: &'static LocalKey<Scratch>, len: usize) -> Vec<f32> {
    let mut buffer = scratch.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    buffer
}

/// Hands a buffer from [`take_scratch`] back to the thread's `scratch`.
#[inline(always)]
pub(super) fn put_scratch(scratch: &'static LocalKey<Scratch>, buffer: Vec<f32>) {
    scratch.set(buffer);
}

/// The Winograd kernel of a 3 x 3 stride-1 `geometry` to `m` map channels over a batch of `images`, where it applies
/// ([`Winograd::for_batch`]).
fn winograd(geometry: &ConvGeometry, m: usize, images: &[f32]) -> Option<Winograd> {
    let sides = (geometry.height, geometry.width);
    let batch = images.len() / geometry.image_len().max(1);
    (geometry.kernel == 3 && geometry.stride == 1)
        .then(|| Winograd::new(geometry.channels, sides, geometry.padding, m)?.for_batch(batch))?
}

/// gather: out_b (`[m, positions]`) = W (`[m, patch]`) · im2col(image_b), for every image of the batch (by
/// [`super::winograd`] for a 3 x 3 stride-1 convolution).
fn gather(geometry: &ConvGeometry, images: &[f32], weight: &[f32], m: usize) -> Vec<f32> {
    if let Some(winograd) = winograd(geometry, m, images) {
        return winograd.convolve(images, weight);
    }
    let (patch, positions) = (geometry.patch_len(), geometry.positions());
    let mut out = recycle::stale(images.len() / geometry.image_len() * m * positions);
    let pairs = out.par_chunks_mut(m * positions).zip(images.par_chunks(geometry.image_len()));
    pairs.for_each(|(out_b, image)| {
        with_columns(geometry.columns_len(), |cols| {
            geometry.im2col(image, cols);
            let (lhs, rhs) = (Operand::rows(weight, patch), Operand::rows(cols, geometry.column_stride()));
            matmul(out_b, lhs, rhs, (m, patch, positions), Destination::Overwrite, ONE);
        })
    });
    out
}

/// scatter: image_b = col2im(W^T · maps_b), W `[m, patch]`, maps_b `[m, positions]`, for every map of the batch.
fn scatter(geometry: &ConvGeometry, maps: &[f32], weight: &[f32], m: usize) -> Vec<f32> {
    let (patch, positions) = (geometry.patch_len(), geometry.positions());
    // every value written by col2im
    let mut images = recycle::stale(maps.len() / (m * positions) * geometry.image_len());
    let pairs = images.par_chunks_mut(geometry.image_len()).zip(maps.par_chunks(m * positions));
    pairs.for_each(|(image, map)| {
        with_columns(patch * positions, |cols| {
            let (lhs, rhs) = (Operand::transposed(weight, patch), Operand::rows(map, positions));
            matmul(cols, lhs, rhs, (patch, m, positions), Destination::Overwrite, ONE);
            geometry.col2im(cols, image);
        })
    });
    images
}

/// Examples per partial sum of a weight gradient: fixed, so the sum's order, and its bits, do not depend on the
/// threads.
const OUTER_CHUNK: usize = 8;

/// The sum over `examples` of what `add_chunk(range, sum, outputs)` adds to a `len`-value sum for each chunk of
/// [`OUTER_CHUNK`] examples, the chunks on the threads and their sums added in order; `outputs` (`[examples, ...]`,
/// or empty) is handed to each chunk as its examples' rows.
pub(super) fn chunked_sum(
    examples: usize,
    len: usize,
    outputs: &mut [f32],
    add_chunk: impl Fn(std::ops::Range<usize>, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let chunks = examples.div_ceil(OUTER_CHUNK);
    let rows_of_chunk = outputs.len() / examples.max(1) * OUTER_CHUNK;
    let mut pieces: Vec<&mut [f32]> = match rows_of_chunk {
        0 => (0..chunks).map(|_| &mut [][..]).collect(),
        rows => outputs.chunks_mut(rows).collect(),
    };
    let partial_sums: Vec<Vec<f32>> = pieces
        .par_iter_mut()
        .enumerate()
        .map(|(chunk, piece)| {
            // a recycled buffer: fresh ones on every call were pages for the kernel to clear
            let mut sum = recycle::zeroed(len);
            add_chunk(chunk * OUTER_CHUNK..examples.min((chunk + 1) * OUTER_CHUNK), &mut sum, piece);
            sum
        })
        .collect();
    let mut parts = partial_sums.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0.0; len]);
    parts.for_each(|part| {
        add_to(&mut total, &part);
        recycle::recycle(part);
    });
    total
}

/// Whether a weight gradient's terms are summed transposed: `[patch, m]` from cols · map^T, or as they are,
/// `[m, patch]` from map · cols^T. The GEMM reads its right operand (map^T or cols^T) down the columns of a row-major
/// matrix, and that read costs with the operand's width: transposed, it is map^T's m channels, as they are, cols^T's
/// patch values. Summing transposed (8911e6e) made the autoencoder's wide patches (C k^2 = 576-1,152 against 64-128
/// channels) fast; a first convolution's patch (1 x 4 x 4 = 16 against 32 channels, rows of 1,024 positions)
/// ran 50 us a term transposed against 22 us as it is (one thread, AMD EPYC, AVX-512).
fn summed_transposed(m: usize, patch: usize) -> bool {
    patch >= m
}

/// The sizes of one weight-gradient term's columns: (patch rows, positions, the row stride).
type ColumnsShape = (usize, usize, usize);

/// sum += the weight gradient's term map (`[m, positions]`) · cols^T (`cols` `[patch, positions]`, rows `stride`
/// apart), in the layout [`summed_transposed`] picks ([`weight_gradient_sum`] turns a transposed sum back). Read
/// transposed, the map's rows are copied to the padded stride first where they are a multiple of 512 values long
/// (the copy is one m x positions pass; the product reads it patch / 64 times).
fn add_outer(sum: &mut [f32], map: &[f32], cols: &[f32], (patch, positions, stride): ColumnsShape, m: usize) {
    if !summed_transposed(m, patch) {
        let (map_rows, cols_t) = (Operand::rows(map, positions), Operand::transposed(cols, stride));
        matmul(sum, map_rows, cols_t, (m, positions, patch), Destination::Accumulate, ONE);
        return;
    }
    let map_stride = padded_stride(positions);
    let padded = (map_stride != positions).then(|| {
        let mut padded = recycle::stale(m * map_stride);
        let rows = padded.chunks_exact_mut(map_stride).zip(map.chunks_exact(positions));
        rows.for_each(|(row, values)| row[..positions].copy_from_slice(values));
        padded
    });
    let map_t = padded.as_deref().map_or(Operand::transposed(map, positions), |p| Operand::transposed(p, map_stride));
    matmul(sum, Operand::rows(cols, stride), map_t, (patch, positions, m), Destination::Accumulate, ONE);
    if let Some(padded) = padded {
        recycle::recycle(padded);
    }
}

/// Output positions below which a chunk's weight-gradient terms run as one product: each term's inner dimension
/// is the positions, and every term reads and writes the whole `m x patch` sum, which for a 4 x 4 kernel over
/// 256-512 channels is megabytes against a few dozen multiply-adds per value (the patch discriminator's last
/// layers, 49 and 36 positions; the conv models' 4 x 4 maps).
const WIDE_TERMS_BELOW: usize = 128;

/// A chunk's weight-gradient terms map_b · cols_b^T added to a sum: one product per example, or, where the
/// positions are few ([`WIDE_TERMS_BELOW`]), the examples' maps and columns copied side by side (`[m, n
/// positions]` and `[patch, n positions]`) and added as one product whose inner dimension is the chunk's positions.
struct ChunkTerms<'a> {
    /// The weight gradient's sum, in [`add_outer`]'s layout.
    sum: &'a mut [f32],
    /// (patch, positions, stride) of one example's columns.
    shape: ColumnsShape,
    /// Channels on the map side.
    m: usize,
    /// The maps side by side (rows of n positions) and the columns side by side (rows `width` apart, padded),
    /// and `width`, when the terms are put together.
    wide: Option<(Vec<f32>, Vec<f32>, usize)>,
    /// Examples in the chunk.
    examples: usize,
}

impl<'a> ChunkTerms<'a> {
    /// The terms of `examples` examples to add to `sum` (`m x patch` values).
    fn new(sum: &'a mut [f32], shape: ColumnsShape, m: usize, examples: usize) -> Self {
        let (patch, positions, _) = shape;
        let wide = (positions < WIDE_TERMS_BELOW && examples > 1).then(|| {
            let width = padded_stride(positions * examples);
            (recycle::stale(m * positions * examples), recycle::stale(patch * width), width)
        });
        ChunkTerms { sum, shape, m, wide, examples }
    }

    /// Adds, or puts in place, example `index`'s term: its map `[m, positions]` and columns `[patch, positions]`
    /// (rows `stride` apart).
    fn add(&mut self, index: usize, map: &[f32], cols: &[f32]) {
        let (patch, positions, stride) = self.shape;
        let Some((maps, columns, width)) = &mut self.wide else {
            return add_outer(self.sum, map, cols, self.shape, self.m);
        };
        let offset = index * positions;
        for (row, values) in maps.chunks_exact_mut(positions * self.examples).zip(map.chunks_exact(positions)) {
            row[offset..][..positions].copy_from_slice(values);
        }
        for (row, values) in columns.chunks_exact_mut(*width).zip(cols.chunks(stride)).take(patch) {
            row[offset..][..positions].copy_from_slice(&values[..positions]);
        }
    }

    /// Adds the terms put side by side, if any.
    fn finish(self) {
        if let Some((maps, columns, width)) = self.wide {
            let (patch, positions, _) = self.shape;
            add_outer(self.sum, &maps, &columns, (patch, positions * self.examples, width), self.m);
            recycle::recycle(maps);
            recycle::recycle(columns);
        }
    }
}

/// A weight gradient `[m, patch]` summed by [`chunked_sum`] from [`add_outer`]'s terms.
fn weight_gradient_sum(
    examples: usize,
    (m, patch): (usize, usize),
    outputs: &mut [f32],
    add_chunk: impl Fn(std::ops::Range<usize>, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let sum = chunked_sum(examples, m * patch, outputs, add_chunk);
    match summed_transposed(m, patch) {
        // in 4 x 4 blocks rather than value by value, where every write would touch a cache line of its own
        true => {
            let transposed = transpose(&sum, patch);
            recycle::recycle(sum);
            transposed
        }
        false => sum,
    }
}

/// outer: dW (`[m, patch]`) = sum over the batch of maps_b (`[m, positions]`) · im2col(image_b)^T (by
/// [`super::winograd`] for a 3 x 3 stride-1 convolution).
fn outer(geometry: &ConvGeometry, maps: &[f32], images: &[f32], m: usize) -> Vec<f32> {
    if let Some(winograd) = winograd(geometry, m, images) {
        return winograd.weight_gradient(maps, images);
    }
    let (patch, positions, image_len) = (geometry.patch_len(), geometry.positions(), geometry.image_len());
    weight_gradient_sum(images.len() / image_len.max(1), (m, patch), &mut [], |range, sum, _| {
        let mut terms = ChunkTerms::new(sum, geometry.columns_shape(), m, range.len());
        with_columns(geometry.columns_len(), |cols| {
            for (index, b) in range.enumerate() {
                geometry.im2col(&images[b * image_len..][..image_len], cols);
                terms.add(index, &maps[b * m * positions..][..m * positions], cols);
            }
        });
        terms.finish()
    })
}

/// gather that keeps im2col(image_b) of every image: (out, columns `[batch, patch, positions]`).
fn gather_keeping_columns(geometry: &ConvGeometry, images: &[f32], weight: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
    let (patch, positions, image_len) = (geometry.patch_len(), geometry.positions(), geometry.image_len());
    let batch = images.len() / image_len.max(1);
    // both overwritten whole: every output by its product, every column by im2col
    let columns_len = geometry.columns_len();
    let (mut out, mut columns) = (recycle::stale(batch * m * positions), recycle::stale(batch * columns_len));
    out.par_chunks_mut(m * positions)
        .zip(columns.par_chunks_mut(columns_len))
        .zip(images.par_chunks(image_len))
        .for_each(|((out_b, cols), image)| {
            geometry.im2col(image, cols);
            let (lhs, rhs) = (Operand::rows(weight, patch), Operand::rows(cols, geometry.column_stride()));
            matmul(out_b, lhs, rhs, (m, patch, positions), Destination::Overwrite, ONE);
        });
    (out, columns)
}

/// A transposed convolution's weight gradient and input gradient from one im2col of each example's output
/// gradient: dW = sum_b maps_b · im2col(grad_b)^T and (when `input_gradient_wanted`) d maps_b = W · im2col(grad_b).
fn transposed_gradients(
    geometry: &ConvGeometry,
    maps: &[f32],
    grad: &[f32],
    weight: &[f32],
    m: usize,
    input_gradient_wanted: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (patch, positions, image_len) = (geometry.patch_len(), geometry.positions(), geometry.image_len());
    let map_len = m * positions;
    let batch = grad.len() / image_len.max(1);
    let mut grad_maps = recycle::stale(if input_gradient_wanted { batch * map_len } else { 0 });
    let grad_weight = weight_gradient_sum(batch, (m, patch), &mut grad_maps, |range, sum, grad_maps| {
        let mut terms = ChunkTerms::new(sum, geometry.columns_shape(), m, range.len());
        with_columns(geometry.columns_len(), |cols| {
            for (index, b) in range.enumerate() {
                geometry.im2col(&grad[b * image_len..][..image_len], cols);
                terms.add(index, &maps[b * map_len..][..map_len], cols);
                if input_gradient_wanted {
                    let out = &mut grad_maps[index * map_len..][..map_len];
                    let (lhs, rhs) = (Operand::rows(weight, patch), Operand::rows(cols, geometry.column_stride()));
                    matmul(out, lhs, rhs, (m, patch, positions), Destination::Overwrite, ONE);
                }
            }
        });
        terms.finish()
    });
    (grad_weight, input_gradient_wanted.then_some(grad_maps))
}

/// A convolution or transposed convolution layer's shape, for its forward and backward passes on slices of
/// `[batch, ...]` values (the fused training step's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvLayer {
    /// The geometry, seen from the image side.
    pub geometry: ConvGeometry,
    /// Channels on the map side (a convolution's outputs, a transposed convolution's inputs).
    pub map_channels: usize,
    /// True for a transposed convolution (maps in, images out).
    pub transposed: bool,
}

/// What [`ConvLayer::backward`] gives: (dL/dweight, dL/dbias, dL/dinput when asked for).
pub(crate) type ConvGradients = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

impl ConvLayer {
    /// activation(layer(input) + bias) for a batch of inputs.
    pub(crate) fn forward(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        activation: OutputActivation,
    ) -> Vec<f32> {
        let (geometry, m) = (&self.geometry, self.map_channels);
        let values =
            if self.transposed { scatter(geometry, input, weight, m) } else { gather(geometry, input, weight, m) };
        self.finish(values, bias, activation)
    }

    /// [`Self::forward`], keeping a convolution's im2col of every input for [`Self::backward`]'s weight gradient
    /// (`None` for a transposed convolution, whose backward pass unfolds the output gradient instead).
    pub(crate) fn forward_keeping_columns(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        activation: OutputActivation,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        if self.transposed {
            return (self.forward(input, weight, bias, activation), None);
        }
        let (values, columns) = gather_keeping_columns(&self.geometry, input, weight, self.map_channels);
        (self.finish(values, bias, activation), Some(columns))
    }

    /// Adds the bias to the products and applies the activation, one channel plane at a time.
    fn finish(&self, mut values: Vec<f32>, bias: &[f32], activation: OutputActivation) -> Vec<f32> {
        let geometry = &self.geometry;
        let plane = if self.transposed { geometry.height * geometry.width } else { geometry.positions() };
        for (channel_plane, &b) in values.chunks_exact_mut(plane).zip(bias.iter().cycle()) {
            // activation(convolution + bias)
            channel_plane.iter_mut().for_each(|v| *v += b);
            activation.apply_in_place(channel_plane);
        }
        values
    }

    /// The gradients from dL/dpre (`grad`, the output's shape) and the layer's `input` (with a convolution's
    /// columns from [`Self::forward_keeping_columns`], if kept): dW, db (sums over examples and positions), and
    /// dL/dinput when `input_gradient_wanted`.
    pub(crate) fn backward(
        &self,
        input: &[f32],
        columns: Option<&[f32]>,
        grad: &[f32],
        weight: &[f32],
        input_gradient_wanted: bool,
    ) -> ConvGradients {
        let (geometry, m) = (&self.geometry, self.map_channels);
        let (grad_weight, grad_input) = if self.transposed {
            // input = maps, output = images: dW = sum maps · im2col(d output)^T, d input = W · im2col(d output)
            transposed_gradients(geometry, input, grad, weight, m, input_gradient_wanted)
        } else {
            // input = images, output = maps: dW = sum d output · im2col(images)^T, d input = col2im(W^T · d output)
            let grad_weight = match columns {
                Some(columns) => self.outer_from_columns(grad, columns),
                None => outer(geometry, grad, input, m),
            };
            (grad_weight, input_gradient_wanted.then(|| scatter(geometry, grad, weight, m)))
        };
        let (channels, plane) = match self.transposed {
            true => (geometry.channels, geometry.height * geometry.width),
            false => (m, geometry.positions()),
        };
        (grad_weight, channel_sums(grad, channels, plane), grad_input)
    }

    /// dW = sum_b maps_b · columns_b^T, from kept columns.
    fn outer_from_columns(&self, maps: &[f32], columns: &[f32]) -> Vec<f32> {
        let (geometry, m) = (&self.geometry, self.map_channels);
        let (patch, positions, columns_len) = (geometry.patch_len(), geometry.positions(), geometry.columns_len());
        weight_gradient_sum(maps.len() / (m * positions).max(1), (m, patch), &mut [], |range, sum, _| {
            let mut terms = ChunkTerms::new(sum, geometry.columns_shape(), m, range.len());
            for (index, b) in range.enumerate() {
                let cols = &columns[b * columns_len..][..columns_len];
                terms.add(index, &maps[b * m * positions..][..m * positions], cols);
            }
            terms.finish()
        })
    }
}

/// The sum of `[batch, channels, plane]` values per channel, in f64 (a convolution's bias gradient), the channels
/// spread over the threads. Each channel's sum runs in a fixed order, so its bits do not depend on the threads.
fn channel_sums(values: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    let sum = |channel: usize| channel_sum(values, (channels.max(1), plane.max(1)), channel) as f32;
    match worth_parallel(values.len()) {
        true => (0..channels).into_par_iter().map(sum).collect(),
        false => (0..channels).map(sum).collect(),
    }
}

/// Accumulator lanes of [`channel_sum`]: independent partial sums let it vectorise (one f64 sum in order cannot
/// be reordered by the compiler, and ran at an addition's latency per value); the order is fixed, so the sum is
/// the same at every SIMD level.
const SUM_LANES: usize = 8;

wide_fn! {
    /// The sum over the batch of channel `channel`'s plane of `[batch, channels, plane]` values (`layout`:
    /// (channels, plane)), in f64: each plane
    /// in [`SUM_LANES`] lanes, then the lanes and the planes in order.
    fn channel_sum(values: &[f32], layout: (usize, usize), channel: usize) -> f64 {
        let (channels, plane) = layout;
        let mut total = 0.0;
        for values in values.chunks_exact(plane).skip(channel).step_by(channels) {
            let mut lanes = [0f64; SUM_LANES];
            let mut chunks = values.chunks_exact(SUM_LANES);
            for chunk in &mut chunks {
                lanes.iter_mut().zip(chunk).for_each(|(lane, &value)| *lane += f64::from(value));
            }
            let tail: f64 = chunks.remainder().iter().map(|&value| f64::from(value)).sum();
            total += lanes.iter().sum::<f64>() + tail;
        }
        total
    }
}

/// Which product a [`ConvProduct`] computes, and so what its two inputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    /// (images, weight) -> W · im2col(image) per example.
    Gather,
    /// (maps, weight) -> col2im(W^T · map) per example.
    Scatter,
    /// (maps, images) -> sum of map · im2col(image)^T.
    Outer,
}

/// One of the three products as a candle op without a gradient of its own (the gradients are built from them).
#[derive(Debug, Clone, Copy)]
struct ConvProduct {
    geometry: ConvGeometry,
    product: Product,
    /// Rows of the weight: the channels on the map side.
    map_channels: usize,
    /// The output shape.
    shape: (usize, usize, usize, usize),
}

impl ConvProduct {
    /// The product of the two inputs' values.
    fn compute(&self, first: &[f32], second: &[f32]) -> Vec<f32> {
        match self.product {
            Product::Gather => gather(&self.geometry, first, second, self.map_channels),
            Product::Scatter => scatter(&self.geometry, first, second, self.map_channels),
            Product::Outer => outer(&self.geometry, first, second, self.map_channels),
        }
    }
}

impl CustomOp2 for ConvProduct {
    fn name(&self) -> &'static str {
        "conv-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (first, second) = (contiguous_f32(s1, l1, self.name())?, contiguous_f32(s2, l2, self.name())?);
        Ok((CpuStorage::F32(self.compute(first, second)), Shape::from(self.shape)))
    }
}

/// activation(convolution + bias), or the same with a transposed convolution, as a differentiable candle op with
/// inputs (input, weight, bias).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2dOp {
    geometry: ConvGeometry,
    map_channels: usize,
    transposed: bool,
    batch: usize,
    activation: OutputActivation,
}

impl Conv2dOp {
    /// The convolution of `geometry` to `out_channels` channels, on a batch of `batch` images.
    pub(crate) fn convolution(
        geometry: ConvGeometry,
        out_channels: usize,
        batch: usize,
        activation: OutputActivation,
    ) -> Self {
        Conv2dOp { geometry, map_channels: out_channels, transposed: false, batch, activation }
    }

    /// The transposed convolution from `in_channels` x out_height x out_width maps back to `geometry`'s images.
    pub(crate) fn transposed(
        geometry: ConvGeometry,
        in_channels: usize,
        batch: usize,
        activation: OutputActivation,
    ) -> Self {
        Conv2dOp { geometry, map_channels: in_channels, transposed: true, batch, activation }
    }

    fn layer(&self) -> ConvLayer {
        ConvLayer { geometry: self.geometry, map_channels: self.map_channels, transposed: self.transposed }
    }

    fn image_shape(&self) -> (usize, usize, usize, usize) {
        let g = &self.geometry;
        (self.batch, g.channels, g.height, g.width)
    }

    fn map_shape(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.map_channels, self.geometry.out_height, self.geometry.out_width)
    }

    /// `[out, in, k, k]` for a convolution and `[in, out, k, k]` for a transposed one: the map side first in both.
    fn weight_shape(&self) -> (usize, usize, usize, usize) {
        let k = self.geometry.kernel;
        (self.map_channels, self.geometry.channels, k, k)
    }

    /// The input's and the output's shapes.
    fn shapes(&self) -> [(usize, usize, usize, usize); 2] {
        if self.transposed {
            [self.map_shape(), self.image_shape()]
        } else {
            [self.image_shape(), self.map_shape()]
        }
    }

    fn product(&self, product: Product, shape: (usize, usize, usize, usize)) -> ConvProduct {
        ConvProduct { geometry: self.geometry, product, map_channels: self.map_channels, shape }
    }

    /// For a stride-1 convolution whose padding p is at most k - 1: the geometry of its input gradient as a
    /// stride-1 convolution of the output gradient with the flipped, transposed kernel and padding k - 1 - p.
    fn flipped_geometry(&self) -> Option<Geometry> {
        let g = &self.geometry;
        let stride_one = !self.transposed && g.stride == 1;
        let padding = (g.kernel - 1).checked_sub(g.padding).filter(|_| stride_one)?;
        Some(Geometry { in_channels: self.map_channels, out_channels: g.channels, kernel: g.kernel, padding })
    }

    fn check(&self, input: &Layout, weight: &Layout, bias: &Layout) -> candle_core::Result<()> {
        let channels = self.shapes()[1].1;
        let expected = [Shape::from(self.shapes()[0]), Shape::from(self.weight_shape()), Shape::from(channels)];
        if input.shape() != &expected[0] || weight.shape() != &expected[1] || bias.shape() != &expected[2] {
            candle_core::bail!(
                "{}: expected input {:?}, weight {:?} and bias {:?}, got {:?}, {:?} and {:?}",
                self.name(),
                expected[0].dims(),
                expected[1].dims(),
                expected[2].dims(),
                input.dims(),
                weight.dims(),
                bias.dims()
            );
        }
        Ok(())
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        if self.transposed {
            "conv-transpose2d-gemm"
        } else {
            "conv2d-gemm"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let (input, weight) = (contiguous_f32(s1, l1, self.name())?, contiguous_f32(s2, l2, self.name())?);
        let bias = contiguous_f32(s3, l3, self.name())?;
        let values = self.layer().forward(input, weight, bias, self.activation);
        Ok((CpuStorage::F32(values), Shape::from(self.shapes()[1])))
    }

    /// Each gradient is worked out only for an input that wants one: the data batch needs none, nor do weights
    /// held fixed (a frozen network, or the discriminator seen by the generator's loss).
    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.activation.gradient_through(output, grad_output)?.contiguous()?;
        let weight_gradient = self.product(Product::Outer, self.weight_shape());
        let (input_gradient, grad_weight) = if self.transposed {
            // input = maps, output = images: d input = W · im2col(d output), dW = sum maps · im2col(d output)^T
            let grad_weight = weight.track_op().then(|| input.apply_op2_no_bwd(&grad, &weight_gradient));
            (self.product(Product::Gather, self.map_shape()), grad_weight)
        } else {
            // input = images, output = maps: d input = col2im(W^T · d output), dW = sum d output · im2col(images)^T
            let grad_weight = weight.track_op().then(|| grad.apply_op2_no_bwd(input, &weight_gradient));
            (self.product(Product::Scatter, self.image_shape()), grad_weight)
        };
        let grad_input = match self.flipped_geometry().filter(|_| input.track_op()) {
            Some(geometry) => Some(flipped_convolution(&grad, weight, geometry)?),
            None => input.track_op().then(|| grad.apply_op2_no_bwd(weight, &input_gradient)).transpose()?,
        };
        let grad_bias = bias.track_op().then(|| grad.apply_op1_no_bwd(&ChannelSums)).transpose()?;
        Ok((grad_input, grad_weight.transpose()?, grad_bias))
    }
}

/// The input gradient of a stride-1 convolution with weight `[O, C, k, k]` as a stride-1 convolution of the output
/// gradient `grad` `[batch, O, h, w]`: dx = conv(grad, W'), W'[c, o, i, j] = W[o, c, k - 1 - i, k - 1 - j], padding
/// k - 1 - p (`geometry`). It runs [`super::block_conv`]'s kernel: im2col of blocks into a reused buffer and a GEMM
/// with the full O k^2 inner dimension, instead of W^T · grad (inner dimension O) and a col2im scatter.
fn flipped_convolution(grad: &Tensor, weight: &Tensor, geometry: Geometry) -> candle_core::Result<Tensor> {
    let (out_channels, channels, kernel, _) = weight.dims4()?;
    let values = super::with_f32(&weight.contiguous()?, <[f32]>::to_vec)
        .ok_or_else(|| candle_core::Error::Msg("conv2d-gemm: needs an f32 CPU weight".into()))?;
    let taps = kernel * kernel;
    let mut flipped = vec![0f32; values.len()];
    for (o, c, tap) in
        (0..out_channels).flat_map(|o| (0..channels).flat_map(move |c| (0..taps).map(move |t| (o, c, t))))
    {
        // W'[c, o, i, j] = W[o, c, k - 1 - i, k - 1 - j]: tap t = i k + j becomes k^2 - 1 - t
        flipped[(c * out_channels + o) * taps + (taps - 1 - tap)] = values[(o * channels + c) * taps + tap];
    }
    let flipped = Tensor::from_vec(flipped, (channels, out_channels, kernel, kernel), weight.device())?;
    convolve_stride_one(grad, &flipped, None, geometry)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .ok_or_else(|| candle_core::Error::Msg("conv2d-gemm: the input gradient's convolution does not fit".into()))
}

/// The sum of `[batch, channels, height, width]` values per channel: a convolution's bias gradient,
/// d bias_c = sum over examples and positions of d output_c.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "channel-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = contiguous_f32(storage, layout, self.name())?;
        let (_, channels, height, width) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(channel_sums(values, channels, height * width)), Shape::from(channels)))
    }
}

#[cfg(test)]
mod tests {
    use super::{add_strided, channel_sums, copy_strided, with_columns};

    /// The strided copies and additions, shuffles and tails, hold to plain indexing for every length and stride,
    /// bit for bit (each value is one copy or one addition).
    #[test]
    fn strided_copies_and_additions_match_plain_indexing() {
        let value = |i: usize| (i as f32 * 0.37).sin() * 3.0;
        for stride in 1..=3 {
            for len in 1..=37 {
                // the least the callers hand in, and a stride's worth more (what lets a block run to the end)
                for span in [(len - 1) * stride + 1, len * stride] {
                    check_strided(len, span, stride, value);
                }
            }
        }
    }

    /// The bias gradient's sums per channel: the plain f64 sum within rounding, the same bits on 1 and 2 threads
    /// (large enough to be split over them), at every plane length around the lanes' width.
    #[test]
    fn a_nested_columns_buffer_is_a_separate_one() {
        let inner_values = with_columns(8, |outer| {
            outer.fill(1.0);
            let inner = with_columns(4, |inner| {
                inner.fill(2.0);
                inner.to_vec()
            });
            assert!(outer.iter().all(|&value| value == 1.0), "the nested call wrote into the outer buffer");
            inner
        });
        assert_eq!(inner_values, vec![2.0; 4]);
        assert_eq!(with_columns(6, |columns| columns.len()), 6);
    }

    #[test]
    fn channel_sums_match_a_plain_sum_on_any_thread_count() {
        for (batch, channels, plane) in [(3, 2, 1), (2, 5, 7), (4, 3, 17), (64, 32, 1024)] {
            let values: Vec<f32> =
                (0..batch * channels * plane).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
            let sums = crate::kernels::with_kernel_threads(1, || channel_sums(&values, channels, plane));
            let on_two = crate::kernels::with_kernel_threads(2, || channel_sums(&values, channels, plane));
            assert_eq!(sums, on_two, "{batch} x {channels} x {plane}");
            for (channel, &sum) in sums.iter().enumerate() {
                let plain: f64 = (0..batch)
                    .flat_map(|b| &values[(b * channels + channel) * plane..][..plane])
                    .map(|&v| f64::from(v))
                    .sum();
                assert!((f64::from(sum) - plain).abs() <= 1e-6 * plain.abs().max(1.0), "{sum} against {plain}");
            }
        }
    }

    /// Copies `len` values out of `span` with the stride, and adds `len` values into them, against plain indexing.
    fn check_strided(len: usize, span: usize, stride: usize, value: impl Fn(usize) -> f32) {
        let source: Vec<f32> = (0..span).map(&value).collect();
        let mut copied = vec![f32::NAN; len];
        copy_strided(&mut copied, &source, stride);
        let expected: Vec<f32> = (0..len).map(|i| source[i * stride]).collect();
        assert_eq!(copied, expected, "copy, stride {stride}, {len} values of {span}");

        let addends: Vec<f32> = (0..len).map(|i| value(i + 100)).collect();
        let mut sums = source.clone();
        add_strided(&mut sums, &addends, stride);
        let mut expected = source;
        (0..len).for_each(|i| expected[i * stride] += addends[i]);
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&sums), bits(&expected), "addition, stride {stride}, {len} values of {span}");
    }
}
