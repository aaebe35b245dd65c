//! 3 x 3 stride-1 convolutions and their weight gradients by Winograd's minimal filtering F(4 x 4, 3 x 3) (Lavin
//! and Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): 36 multiplies for a 4 x 4 block of outputs
//! where im2col + GEMM does 144, so the products do 4 times fewer multiply-adds.
//!
//! The output is cut into 4 x 4 tiles; tile t reads the 6 x 6 input patch d_t under it. With the points 0, 1, -1,
//! 2, -2 and infinity,
//!
//! ```text
//! B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//! G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//! A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
//! U_oc = G g_oc G^T,   V_ct = B^T d_ct B,   M_ot = sum_c U_oc (.) V_ct,   Y_ot = A^T M_ot A
//! ```
//!
//! the sum over channels of each of the 36 values (xi) of M is a matrix product, M_xi (`[m, tiles]`) = U_xi (`[m,
//! C]`) · V_xi (`[C, tiles]`). The weight gradient is the adjoint: dU_oc = sum_t (A dY_ot A^T) (.) V_ct, 36 products
//! dU_xi = Ŷ_xi · V_xi^T, and dg_oc = G^T dU_oc G. (The input gradient of a 3 x 3 stride-1 convolution is itself such
//! a convolution, with the flipped kernel: `conv::flipped_convolution`.)
//!
//! The tiles are taken a block of [`BLOCK_TILES`] at a time (rows of tiles of one or a few images), so that a block's
//! transforms and products stay in the cache; blocks of different images run on different threads, each product on
//! one. The transforms run over the whole block at once: the 6 x 6 input values under each tile (or the 4 x 4
//! output gradients of each) are first laid out as 36 (16) runs over the block's tiles, so that each pass of a
//! transform is one loop, long enough to vectorise, over every tile of the block. Tests hold both kernels to a direct
//! convolution and to the im2col kernels, at every SIMD level.

use rayon::prelude::*;

use super::{kernel_threads, matmul, recycle, wide_fn, Destination, Operand};

/// Outputs on a tile's side.
const TILE: usize = 4;

/// Input values on the side of the patch a tile reads: the tile and the kernel's 2 more.
const PATCH: usize = TILE + 2;

/// Values of a tile's transform (6 x 6): the number of products.
const TRANSFORM: usize = PATCH * PATCH;

/// Tiles per block: a block's transformed input and products (36 x (C + m) x tiles values) then take 1.1 MiB, about
/// a Zen 4 core's L2 cache, for 64 channels a side. Measured by in-process A/B on the KL autoencoder's training step
/// (AMD EPYC Zen 4, AVX-512), the sizes alternating step by step: 64 tiles ran 2-3% faster than 128 (two runs of 18
/// pairs), 128 ran 2.7% faster than 32 and 4% faster than 256.
pub const BLOCK_TILES: usize = 64;

/// Values added to each row of a block's transformed values: one 64-byte cache line ([`Block::stride`]).
const ROW_PADDING: usize = 16;

/// One 3 x 3, stride-1 convolution of `channels` x `height` x `width` images to `maps` channels, zero padding
/// `padding` (at most 2) on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winograd {
    channels: usize,
    height: usize,
    width: usize,
    padding: usize,
    maps: usize,
    out_height: usize,
    out_width: usize,
}

/// A run of consecutive tile rows ("strips") of the images one task holds, and the tiles across one.
#[derive(Debug, Clone, Copy)]
struct Block {
    first_strip: usize,
    strips: usize,
    tiles_across: usize,
}

impl Block {
    /// Tiles in the block.
    fn tiles(&self) -> usize {
        self.strips * self.tiles_across
    }

    /// The row stride of the block's transformed values: the tiles and a cache line more. Rows of a power of two of
    /// tiles fall on the same cache sets every few rows, which the products read down; the extra line made the KL
    /// autoencoder's training step 4% faster with F(2 x 2, 3 x 3)'s blocks of 256 tiles (in-process A/B, AMD EPYC
    /// Zen 4, AVX-512).
    fn stride(&self) -> usize {
        self.tiles() + ROW_PADDING
    }
}

impl Winograd {
    /// The convolution, `None` for a padding above 2 or an image the kernel does not fit.
    pub fn new(channels: usize, (height, width): (usize, usize), padding: usize, maps: usize) -> Option<Self> {
        let out = |side: usize| (side + 2 * padding).checked_sub(2).filter(|&out| out > 0);
        let (out_height, out_width) = (out(height)?, out(width)?);
        (padding <= 2 && channels > 0 && maps > 0).then_some(Winograd {
            channels,
            height,
            width,
            padding,
            maps,
            out_height,
            out_width,
        })
    }

    /// The convolution for a batch of `batch` on this thread's kernel threads, where it pays: `None` when the batch
    /// has fewer images than threads (the blocks of one image run on one thread, where im2col's products spread
    /// over all of them).
    pub fn for_batch(self, batch: usize) -> Option<Self> {
        (batch >= kernel_threads()).then_some(self)
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn map_len(&self) -> usize {
        self.maps * self.out_height * self.out_width
    }

    fn tiles_down(&self) -> usize {
        self.out_height.div_ceil(TILE)
    }

    fn tiles_across(&self) -> usize {
        self.out_width.div_ceil(TILE)
    }

    /// Images per task: one, or as many as make a block where an image has fewer tiles.
    fn images_per_task(&self) -> usize {
        (BLOCK_TILES / (self.tiles_down() * self.tiles_across())).max(1)
    }

    /// The blocks of a task of `images` images.
    fn blocks(&self, images: usize) -> impl Iterator<Item = Block> {
        let (strips, tiles_across) = (images * self.tiles_down(), self.tiles_across());
        let per_block = (BLOCK_TILES / tiles_across).max(1);
        (0..strips).step_by(per_block).map(move |first_strip| Block {
            first_strip,
            strips: per_block.min(strips - first_strip),
            tiles_across,
        })
    }

    /// The convolution of every image of `images` (`[batch, C, H, W]`) with `weight` (`[m, C, 3, 3]`), no bias:
    /// `[batch, m, out_height, out_width]`.
    pub fn convolve(&self, images: &[f32], weight: &[f32]) -> Vec<f32> {
        let transformed = self.transform_weight(weight);
        let per_task = self.images_per_task();
        let mut out = recycle::stale(images.len() / self.image_len() * self.map_len());
        let tasks = out.par_chunks_mut(per_task * self.map_len()).zip(images.par_chunks(per_task * self.image_len()));
        tasks.for_each(|(out, images)| {
            with_scratch(|scratch| {
                for block in self.blocks(images.len() / self.image_len()) {
                    self.convolve_block(images, &transformed, block, out, scratch);
                }
            })
        });
        recycle::recycle(transformed);
        out
    }

    /// One block of [`Self::convolve`]: V = B^T d B of its tiles, the 36 products M_xi = U_xi · V_xi, and Y = A^T M A
    /// into `out`.
    fn convolve_block(
        &self,
        images: &[f32],
        transformed: &[f32],
        block: Block,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let (channels, maps, stride, tiles) = (self.channels, self.maps, block.stride(), block.tiles());
        self.transform_input(images, block, scratch);
        // M (`[36, m, tiles]`): each product's dst is a contiguous m x tiles matrix
        scratch.products.resize(TRANSFORM * maps * tiles, 0.0);
        for xi in 0..TRANSFORM {
            // M_xi = U_xi · V_xi
            let lhs = Operand::rows(&transformed[xi * maps * channels..][..maps * channels], channels);
            let rhs = Operand::rows(&scratch.inputs[xi * channels * stride..][..channels * stride], stride);
            let dst = &mut scratch.products[xi * maps * tiles..][..maps * tiles];
            matmul(dst, lhs, rhs, (maps, channels, tiles), Destination::Overwrite, gemm::Parallelism::None);
        }
        let (out_plane, across) = (self.out_height * self.out_width, block.tiles_across);
        // the window is free once the input is transformed: A^T M's rows, then the output lines
        let Scratch { products, window, .. } = scratch;
        window.resize((TILE * PATCH + TILE * TILE) * tiles, 0.0);
        let (rows, lines) = window[..(TILE * PATCH + TILE * TILE) * tiles].split_at_mut(TILE * PATCH * tiles);
        for o in 0..maps {
            output_block(products, (maps * tiles, o * tiles), rows, lines);
            // Y = A^T M A: each strip's rows 4 row .. 4 row + 3 of the output, where they lie inside it
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let plane = &mut out[(image * maps + o) * out_plane..][..out_plane];
                for (line, values) in lines.chunks_exact(TILE * tiles).enumerate() {
                    let y = TILE * row + line;
                    if y < self.out_height {
                        let values = &values[TILE * strip * across..][..self.out_width];
                        plane[y * self.out_width..][..self.out_width].copy_from_slice(values);
                    }
                }
            }
        }
    }

    /// The weight gradient sum_b maps_b ⋆ images_b (`maps` `[batch, m, out_height, out_width]`, `images` `[batch,
    /// C, H, W]`): `[m, C, 3, 3]`, summed as the im2col kernels sum theirs ([`super::conv::chunked_sum`]: a partial
    /// sum per fixed chunk of images, added in order, so the bits do not depend on the threads).
    pub fn weight_gradient(&self, maps: &[f32], images: &[f32]) -> Vec<f32> {
        let (batch, len) = (images.len() / self.image_len(), TRANSFORM * self.maps * self.channels);
        let total = super::conv::chunked_sum(batch, len, &mut [], |range, sum, _| {
            let maps = &maps[range.start * self.map_len()..range.end * self.map_len()];
            let images = &images[range.start * self.image_len()..range.end * self.image_len()];
            with_scratch(|scratch| {
                for block in self.blocks(range.len()) {
                    self.add_block_gradient(maps, images, block, sum, scratch);
                }
            })
        });
        let gradient = self.gradient_of_weight(&total);
        recycle::recycle(total);
        gradient
    }

    /// Adds one block's dU_xi = Ŷ_xi · V_xi^T to `sum` (`[36, m, C]`), Ŷ = A dY A^T.
    fn add_block_gradient(&self, maps: &[f32], images: &[f32], block: Block, sum: &mut [f32], scratch: &mut Scratch) {
        let (channels, map_channels, stride) = (self.channels, self.maps, block.stride());
        self.transform_input(images, block, scratch);
        self.transform_output_gradient(maps, block, scratch);
        for xi in 0..TRANSFORM {
            // dU_xi += Ŷ_xi · V_xi^T
            let lhs = Operand::rows(&scratch.products[xi * map_channels * stride..][..map_channels * stride], stride);
            let rhs = Operand::transposed(&scratch.inputs[xi * channels * stride..][..channels * stride], stride);
            let dst = &mut sum[xi * map_channels * channels..][..map_channels * channels];
            let dims = (map_channels, block.tiles(), channels);
            matmul(dst, lhs, rhs, dims, Destination::Accumulate, gemm::Parallelism::None);
        }
    }

    /// V = B^T d B of every tile of the block, channel by channel, into `scratch.inputs` (`[36, C, stride]`).
    fn transform_input(&self, images: &[f32], block: Block, scratch: &mut Scratch) {
        let (tiles, stride, plane) = (block.tiles(), block.stride(), self.height * self.width);
        let Scratch { inputs, window, row: padded, .. } = scratch;
        inputs.resize(TRANSFORM * self.channels * stride, 0.0);
        window.resize(2 * TRANSFORM * tiles, 0.0);
        padded.clear();
        // zeros once: the padded row's columns in the padding are never written
        padded.resize(TILE * (block.tiles_across + 1), 0.0);
        let (window, combined) = window[..2 * TRANSFORM * tiles].split_at_mut(TRANSFORM * tiles);
        for c in 0..self.channels {
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let channel = &images[(image * self.channels + c) * plane..][..plane];
                self.fill_window(channel, row, padded, window, (strip * block.tiles_across, tiles));
            }
            input_block(
                window,
                combined,
                (self.channels * stride, c * stride),
                &mut inputs[..TRANSFORM * self.channels * stride],
            );
        }
    }

    /// (image, tile row in it) of strip `strip` of `block`.
    fn strip_place(&self, block: Block, strip: usize) -> (usize, usize) {
        let global = block.first_strip + strip;
        (global / self.tiles_down(), global % self.tiles_down())
    }

    /// The 6 x 6 input values under each tile of tile row `row` (input rows 4 row - padding ..) as runs over the
    /// block's `tiles`: `window[(6 i + l) tiles + first + j]` = the value in row i and column l of the strip's tile
    /// j, whose first tile is the block's `first`. `padded` holds one padded input row (4 (tiles across + 1)
    /// values), zero in the padding.
    fn fill_window(&self, channel: &[f32], row: usize, padded: &mut [f32], window: &mut [f32], place: (usize, usize)) {
        let ((first, tiles), across) = (place, padded.len() / TILE - 1);
        for (i, columns) in window.chunks_exact_mut(PATCH * tiles).enumerate() {
            match (TILE * row + i).checked_sub(self.padding).filter(|&y| y < self.height) {
                Some(y) => {
                    padded[self.padding..][..self.width].copy_from_slice(&channel[y * self.width..][..self.width]);
                    tile_columns(padded, &mut columns[first..], (tiles, across), PATCH);
                }
                None => columns.chunks_exact_mut(tiles).for_each(|column| column[first..][..across].fill(0.0)),
            }
        }
    }

    /// Ŷ = A dY A^T of every tile of the block, map by map, into `scratch.products` (`[36, m, stride]`).
    fn transform_output_gradient(&self, maps: &[f32], block: Block, scratch: &mut Scratch) {
        let (tiles, stride, out_plane) = (block.tiles(), block.stride(), self.out_height * self.out_width);
        let (across, width) = (block.tiles_across, self.out_width);
        let Scratch { products, window, row: padded, .. } = scratch;
        products.resize(TRANSFORM * self.maps * stride, 0.0);
        window.resize((TILE + PATCH) * TILE * tiles, 0.0);
        padded.clear();
        // zeros once: a width that is not a multiple of 4 leaves the last tile's right columns outside
        padded.resize(TILE * across, 0.0);
        let (rows, combined) = window[..(TILE + PATCH) * TILE * tiles].split_at_mut(TILE * TILE * tiles);
        for o in 0..self.maps {
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let (plane, first) = (&maps[(image * self.maps + o) * out_plane..][..out_plane], strip * across);
                // dY's four rows under the strip as runs of its tiles' columns, zeros past the output's edge
                for (line, columns) in rows.chunks_exact_mut(TILE * tiles).enumerate() {
                    match Some(TILE * row + line).filter(|&y| y < self.out_height) {
                        Some(y) => {
                            padded[..width].copy_from_slice(&plane[y * width..][..width]);
                            tile_columns(padded, &mut columns[first..], (tiles, across), TILE);
                        }
                        None => columns.chunks_exact_mut(tiles).for_each(|column| column[first..][..across].fill(0.0)),
                    }
                }
            }
            let place = (self.maps * stride, o * stride);
            gradient_block(rows, combined, place, &mut products[..TRANSFORM * self.maps * stride]);
        }
    }

    /// U = G g G^T of every kernel of `weight` (`[m, C, 3, 3]`): `[36, m, C]`.
    fn transform_weight(&self, weight: &[f32]) -> Vec<f32> {
        let pairs = self.maps * self.channels;
        // the kernels' 9 values as 9 runs over the (m, C) pairs
        let planes = super::transpose(&weight[..9 * pairs], pairs);
        let (mut left, mut transformed) = (recycle::stale(3 * PATCH * pairs), recycle::stale(TRANSFORM * pairs));
        kernel_planes(&planes, &mut left, &mut transformed);
        recycle::recycle(left);
        transformed
    }

    /// dg = G^T dU G of every (m, C) pair of `sum` (`[36, m, C]`): `[m, C, 3, 3]`.
    fn gradient_of_weight(&self, sum: &[f32]) -> Vec<f32> {
        let pairs = self.maps * self.channels;
        let (mut left, mut planes) = (recycle::stale(3 * PATCH * pairs), recycle::stale(9 * pairs));
        kernel_gradient_planes(sum, &mut left, &mut planes);
        let gradient = super::transpose(&planes, 9);
        recycle::recycle(left);
        recycle::recycle(planes);
        gradient
    }
}

/// A block's buffers, kept per thread so that the next block and the next convolution reuse their memory.
#[derive(Default)]
struct Scratch {
    /// V (`[36, C, stride]`).
    inputs: Vec<f32>,
    /// M or Ŷ (`[36, m, stride]`).
    products: Vec<f32>,
    /// The block's input values under its tiles and their column transforms, or dY's and theirs; then A^T M's rows
    /// and the output lines.
    window: Vec<f32>,
    /// One padded row.
    row: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `work` on this thread's scratch (a fresh one for a call nested in another, which none of the kernels makes).
fn with_scratch<R>(work: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => work(&mut scratch),
        Err(_) => work(&mut Scratch::default()),
    })
}

/// The `len` values of `values` from `at` on.
#[inline(always)]
fn run_at(values: &mut [f32], at: usize, len: usize) -> &mut [f32] {
    &mut values[at..][..len]
}

/// out[j] = value(j) for every value of `out`: the plain form, for the kernel gradient's transform, whose sums of
/// five runs [`combine3`] and [`combine4`] do not take (it runs once per batch, off the hot path).
#[inline(always)]
fn fill(out: &mut [f32], value: impl Fn(usize) -> f32) {
    for (j, out) in out.iter_mut().enumerate() {
        *out = value(j);
    }
}

/// out = combine(a, b, c) value by value (the runs as separate arguments, so that the compiler knows they do not
/// overlap the output and vectorises without checking at run time).
#[inline(always)]
fn combine3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], combine: impl Fn(f32, f32, f32) -> f32) {
    for (out, ((&a, &b), &c)) in out.iter_mut().zip(a.iter().zip(b).zip(c)) {
        *out = combine(a, b, c);
    }
}

/// out = combine(a, b, c, d) value by value, as [`combine3`].
#[inline(always)]
fn combine4(out: &mut [f32], [a, b, c, d]: [&[f32]; 4], combine: impl Fn(f32, f32, f32, f32) -> f32) {
    for (out, (((&a, &b), &c), &d)) in out.iter_mut().zip(a.iter().zip(b).zip(c).zip(d)) {
        *out = combine(a, b, c, d);
    }
}

/// B^T d of the runs `d` (one value of each of 6 rows or columns per tile) into the 6 runs of `out` at `starts`.
#[inline(always)]
fn input_transform(d: [&[f32]; PATCH], out: &mut [f32], starts: [usize; PATCH], len: usize) {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (d0, d1, d2, d3, d4, d5) = (&d0[..len], &d1[..len], &d2[..len], &d3[..len], &d4[..len], &d5[..len]);
    // B^T d = (4 d0 - 5 d2 + d4, (d3 + d4) - 4 (d1 + d2), (d4 - d3) + 4 (d1 - d2), (d4 - d2) + 2 (d3 - d1),
    //          (d4 - d2) - 2 (d3 - d1), 4 d1 - 5 d3 + d5)
    let ends = |a: f32, b: f32, c: f32| 4.0 * a - 5.0 * b + c;
    combine3(run_at(out, starts[0], len), d0, d2, d4, ends);
    combine4(run_at(out, starts[1], len), [d1, d2, d3, d4], |d1, d2, d3, d4| (d3 + d4) - 4.0 * (d1 + d2));
    combine4(run_at(out, starts[2], len), [d1, d2, d3, d4], |d1, d2, d3, d4| (d4 - d3) + 4.0 * (d1 - d2));
    combine4(run_at(out, starts[3], len), [d1, d2, d3, d4], |d1, d2, d3, d4| (d4 - d2) + 2.0 * (d3 - d1));
    combine4(run_at(out, starts[4], len), [d1, d2, d3, d4], |d1, d2, d3, d4| (d4 - d2) - 2.0 * (d3 - d1));
    combine3(run_at(out, starts[5], len), d1, d3, d5, ends);
}

/// A^T m of 6 values: (m0 + m1 + m2 + m3 + m4, (m1 - m2) + 2 (m3 - m4), (m1 + m2) + 4 (m3 + m4),
/// (m1 - m2) + 8 (m3 - m4) + m5).
#[inline(always)]
fn output_transform([m0, m1, m2, m3, m4, m5]: [f32; PATCH]) -> [f32; TILE] {
    let (sum12, difference12, sum34, difference34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + sum12 + sum34, difference12 + 2.0 * difference34, sum12 + 4.0 * sum34, difference12 + 8.0 * difference34 + m5]
}

/// A^T m of the runs `m` (one value of each of a column's 6 rows per tile) into the runs of its 4 output rows (as
/// separate arguments, so that the compiler knows they do not overlap).
#[inline(always)]
fn output_columns(m: [&[f32]; PATCH], top: &mut [f32], second: &mut [f32], third: &mut [f32], bottom: &mut [f32]) {
    let len = top.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|run| &run[..len]);
    for (j, (((top, second), third), bottom)) in top.iter_mut().zip(second).zip(third).zip(bottom).enumerate() {
        [*top, *second, *third, *bottom] = output_transform([m0[j], m1[j], m2[j], m3[j], m4[j], m5[j]]);
    }
}

/// A x of the runs `x` (one value of each of 4 rows or columns per tile) into the 6 runs of `out` at `starts`.
#[inline(always)]
fn gradient_transform(x: [&[f32]; TILE], out: &mut [f32], starts: [usize; PATCH], len: usize) {
    let [x0, x1, x2, x3] = x;
    let (x0, x1, x2, x3) = (&x0[..len], &x1[..len], &x2[..len], &x3[..len]);
    // A x = (x0, (x0 + x2) + (x1 + x3), (x0 + x2) - (x1 + x3), (x0 + 4 x2) + 2 (x1 + 4 x3), (x0 + 4 x2) - 2 (x1 +
    //        4 x3), x3)
    run_at(out, starts[0], len).copy_from_slice(x0);
    let x = [x0, x1, x2, x3];
    combine4(run_at(out, starts[1], len), x, |x0, x1, x2, x3| (x0 + x2) + (x1 + x3));
    combine4(run_at(out, starts[2], len), x, |x0, x1, x2, x3| (x0 + x2) - (x1 + x3));
    combine4(run_at(out, starts[3], len), x, |x0, x1, x2, x3| (x0 + 4.0 * x2) + 2.0 * (x1 + 4.0 * x3));
    combine4(run_at(out, starts[4], len), x, |x0, x1, x2, x3| (x0 + 4.0 * x2) - 2.0 * (x1 + 4.0 * x3));
    run_at(out, starts[5], len).copy_from_slice(x3);
}

/// G g of the runs `g` (one value of each of a kernel's 3 rows or columns per kernel) into the 6 runs of `out` at
/// `starts`.
#[inline(always)]
fn kernel_transform(g: [&[f32]; 3], out: &mut [f32], starts: [usize; PATCH], len: usize) {
    let [g0, g1, g2] = g;
    let (g0, g1, g2) = (&g0[..len], &g1[..len], &g2[..len]);
    let (sixth, twelfth, twenty_fourth) = (1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0);
    // G g = (g0 / 4, -(g0 + g1 + g2) / 6, -(g0 - g1 + g2) / 6, g0 / 24 + g1 / 12 + g2 / 6, g0 / 24 - g1 / 12 +
    //        g2 / 6, g2)
    run_at(out, starts[0], len).iter_mut().zip(g0).for_each(|(out, &g0)| *out = 0.25 * g0);
    combine3(run_at(out, starts[1], len), g0, g1, g2, |g0, g1, g2| -sixth * ((g0 + g2) + g1));
    combine3(run_at(out, starts[2], len), g0, g1, g2, |g0, g1, g2| -sixth * ((g0 + g2) - g1));
    combine3(run_at(out, starts[3], len), g0, g1, g2, |g0, g1, g2| (twenty_fourth * g0 + sixth * g2) + twelfth * g1);
    combine3(run_at(out, starts[4], len), g0, g1, g2, |g0, g1, g2| (twenty_fourth * g0 + sixth * g2) - twelfth * g1);
    run_at(out, starts[5], len).copy_from_slice(g2);
}

/// G^T x of the runs `x` (one value of each of 6 rows or columns per kernel) into the 3 runs of `out` at `starts`.
#[inline(always)]
fn kernel_gradient_transform(x: [&[f32]; PATCH], out: &mut [f32], starts: [usize; 3], len: usize) {
    let [x0, x1, x2, x3, x4, x5] = x;
    let (x0, x1, x2, x3, x4, x5) = (&x0[..len], &x1[..len], &x2[..len], &x3[..len], &x4[..len], &x5[..len]);
    let (sixth, twelfth, twenty_fourth) = (1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0);
    // G^T x = (x0 / 4 - (x1 + x2) / 6 + (x3 + x4) / 24, (x2 - x1) / 6 + (x3 - x4) / 12, (x3 + x4 - x1 - x2) / 6 + x5)
    fill(run_at(out, starts[0], len), |j| 0.25 * x0[j] - sixth * (x1[j] + x2[j]) + twenty_fourth * (x3[j] + x4[j]));
    fill(run_at(out, starts[1], len), |j| sixth * (x2[j] - x1[j]) + twelfth * (x3[j] - x4[j]));
    fill(run_at(out, starts[2], len), |j| sixth * ((x3[j] + x4[j]) - (x1[j] + x2[j])) + x5[j]);
}

wide_fn! {
    /// U = G g G^T of kernels given as their 9 values' runs (`planes`, `[9, pairs]`) into `out` (`[36, pairs]`);
    /// `left` holds G g's 18 runs.
    fn kernel_planes(planes: &[f32], left: &mut [f32], out: &mut [f32]) {
        let pairs = planes.len() / 9;
        let plane = |index: usize| &planes[index * pairs..][..pairs];
        // G g down each column j: left[(6 j + a) pairs]
        for j in 0..3 {
            let column = [plane(j), plane(3 + j), plane(6 + j)];
            kernel_transform(column, left, std::array::from_fn(|a| (PATCH * j + a) * pairs), pairs);
        }
        // (G g) G^T along each row a
        for a in 0..PATCH {
            let row = std::array::from_fn(|j| &left[(PATCH * j + a) * pairs..][..pairs]);
            kernel_transform(row, out, std::array::from_fn(|b| (PATCH * a + b) * pairs), pairs);
        }
    }
}

wide_fn! {
    /// dg = G^T dU G of kernels' dU given as 36 runs (`sum`, `[36, pairs]`) into the 9 runs of `planes` (`[9,
    /// pairs]`); `left` holds G^T dU's 18 runs.
    fn kernel_gradient_planes(sum: &[f32], left: &mut [f32], planes: &mut [f32]) {
        let pairs = planes.len() / 9;
        // G^T dU down each column b: left[(3 b + i) pairs]
        for b in 0..PATCH {
            let column = std::array::from_fn(|a| &sum[(PATCH * a + b) * pairs..][..pairs]);
            kernel_gradient_transform(column, left, std::array::from_fn(|i| (3 * b + i) * pairs), pairs);
        }
        // (G^T dU) G along each row i
        for i in 0..3 {
            let row = std::array::from_fn(|b| &left[(3 * b + i) * pairs..][..pairs]);
            kernel_gradient_transform(row, planes, std::array::from_fn(|j| (3 * i + j) * pairs), pairs);
        }
    }
}

wide_fn! {
    /// columns[l stride + j] = row[4 j + l] (`place` = (stride, across)) for the tiles j < across and the first
    /// `count` columns l of each: 4 (a tile's output columns) or 6 (the input columns under it, of which 4 and 5 are
    /// columns 0 and 1 of the next tile; `row` then holds 4 (across + 1) values).
    fn tile_columns(row: &[f32], columns: &mut [f32], place: (usize, usize), count: usize) {
        let (stride, across) = place;
        let (zero, rest) = columns.split_at_mut(stride);
        let (one, rest) = rest.split_at_mut(stride);
        let (two, rest) = rest.split_at_mut(stride);
        let (three, rest) = rest.split_at_mut(stride.min(rest.len()));
        four_phases(&row[..TILE * across], &mut zero[..across], &mut one[..across], &mut two[..across], &mut three[..across]);
        if count == PATCH {
            let (four, five) = rest.split_at_mut(stride);
            two_phases(&row[TILE..][..TILE * across], &mut four[..across], &mut five[..across]);
        }
    }
}

/// zero[j], one[j], two[j], three[j] = row[4 j], row[4 j + 1], row[4 j + 2], row[4 j + 3] (the runs as separate
/// arguments, so that the compiler knows they do not overlap).
#[inline(always)]
fn four_phases(row: &[f32], zero: &mut [f32], one: &mut [f32], two: &mut [f32], three: &mut [f32]) {
    for ((((tile, zero), one), two), three) in row.chunks_exact(TILE).zip(zero).zip(one).zip(two).zip(three) {
        (*zero, *one, *two, *three) = (tile[0], tile[1], tile[2], tile[3]);
    }
}

/// zero[j], one[j] = row[4 j], row[4 j + 1].
#[inline(always)]
fn two_phases(row: &[f32], zero: &mut [f32], one: &mut [f32]) {
    for ((tile, zero), one) in row.chunks_exact(TILE).zip(zero).zip(one) {
        (*zero, *one) = (tile[0], tile[1]);
    }
}

wide_fn! {
    /// V = B^T d B of a block's tiles, from the window of [`Winograd::fill_window`] (36 runs of tiles values), into
    /// `out`'s 36 runs (xi = 6 row + column) at `place` (xi's stride, the first tile's offset); `combined` holds
    /// B^T d's 36 runs.
    fn input_block(window: &[f32], combined: &mut [f32], place: (usize, usize), out: &mut [f32]) {
        let (tiles, (xi_stride, start)) = (window.len() / TRANSFORM, place);
        // B^T d down each column l: combined[(6 l + k) tiles]
        for l in 0..PATCH {
            let rows = std::array::from_fn(|i| &window[(PATCH * i + l) * tiles..][..tiles]);
            input_transform(rows, combined, std::array::from_fn(|k| (PATCH * l + k) * tiles), tiles);
        }
        // (B^T d) B along each row k
        for k in 0..PATCH {
            let columns = std::array::from_fn(|l| &combined[(PATCH * l + k) * tiles..][..tiles]);
            input_transform(columns, out, std::array::from_fn(|l| (PATCH * k + l) * xi_stride + start), tiles);
        }
    }
}

wide_fn! {
    /// Y = A^T M A of a block's tiles: M's 36 runs start at `start` of `products`, `xi_stride` apart; `rows` holds
    /// A^T M's 24 runs; `lines` gets the four output rows of every tile, 4 tiles values each.
    fn output_block(products: &[f32], place: (usize, usize), rows: &mut [f32], lines: &mut [f32]) {
        let ((xi_stride, start), tiles) = (place, lines.len() / (TILE * TILE));
        let m = |xi: usize| &products[xi * xi_stride + start..][..tiles];
        // A^T M down each column l: output row r's runs at rows[(4 l + r) tiles]
        for l in 0..PATCH {
            let (top, rest) = rows[TILE * l * tiles..][..TILE * tiles].split_at_mut(tiles);
            let (second, rest) = rest.split_at_mut(tiles);
            let (third, bottom) = rest.split_at_mut(tiles);
            output_columns(std::array::from_fn(|i| m(PATCH * i + l)), top, second, third, bottom);
        }
        // (A^T M) A along each output row: 4 output columns per tile
        for (r, line) in lines.chunks_exact_mut(TILE * tiles).enumerate() {
            let run = |l: usize| &rows[(TILE * l + r) * tiles..][..tiles];
            let (s0, s1, s2, s3, s4, s5) = (run(0), run(1), run(2), run(3), run(4), run(5));
            for (j, values) in line.chunks_exact_mut(TILE).enumerate() {
                values.copy_from_slice(&output_transform([s0[j], s1[j], s2[j], s3[j], s4[j], s5[j]]));
            }
        }
    }
}

wide_fn! {
    /// Ŷ = A dY A^T of a block's tiles from dY's values under them (`rows`: 16 runs of `tiles` values, by (row,
    /// column) of the tile), into `out`'s 36 runs (xi = 6 row + column) at `place` (xi's stride, the first tile's
    /// offset); `combined` holds A dY's 24 runs. Its two passes are [`input_block`]'s, written out again: one generic
    /// function taking the 1-D transform as a closure left the closure's calls un-inlined, outside the SIMD level's
    /// code (8% of the KL autoencoder's step in them, measured by `perf`).
    fn gradient_block(rows: &[f32], combined: &mut [f32], place: (usize, usize), out: &mut [f32]) {
        let (tiles, (xi_stride, start)) = (rows.len() / (TILE * TILE), place);
        // A dY down each column q: combined[(6 q + k) tiles]
        for q in 0..TILE {
            let column = std::array::from_fn(|line| &rows[(TILE * line + q) * tiles..][..tiles]);
            gradient_transform(column, combined, std::array::from_fn(|k| (PATCH * q + k) * tiles), tiles);
        }
        // (A dY) A^T along each row k
        for k in 0..PATCH {
            let columns = std::array::from_fn(|q| &combined[(PATCH * q + k) * tiles..][..tiles]);
            gradient_transform(columns, out, std::array::from_fn(|l| (PATCH * k + l) * xi_stride + start), tiles);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};

    /// (batch, channels, height, width, maps, padding): odd sides, every padding, an image with more tiles across
    /// than a block holds (and as many as make its rows a padded stride), images smaller than a block (several to a
    /// task, the last task short, tiles cut by the output's edge) and a 2 x 2 output, part of one tile.
    const CASES: [(usize, usize, usize, usize, usize, usize); 10] = [
        (2, 3, 7, 5, 4, 1),
        (3, 2, 9, 8, 3, 0),
        (2, 4, 5, 6, 5, 2),
        (1, 2, 3, 600, 2, 1),
        // 256 tiles across: the transformed input's rows padded to a longer stride than the products'
        (1, 1, 2, 1024, 2, 1),
        (5, 3, 6, 6, 2, 1),
        (2, 17, 34, 33, 19, 1),
        (3, 5, 13, 11, 6, 1),
        (9, 2, 16, 16, 3, 1),
        (1, 1, 2, 2, 1, 1),
    ];

    /// A deterministic spread of values in [-1, 1).
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0) - 1.0).collect()
    }

    /// The plain twin: out[b, o, y, x] = sum_c,i,j image[b, c, y + i - p, x + j - p] g[o, c, i, j], in f64.
    fn direct(w: &Winograd, images: &[f32], weight: &[f32]) -> Vec<f64> {
        let batch = images.len() / w.image_len();
        let mut out = vec![0f64; batch * w.map_len()];
        for (b, o, y, x) in (0..batch).flat_map(|b| {
            (0..w.maps)
                .flat_map(move |o| (0..w.out_height).flat_map(move |y| (0..w.out_width).map(move |x| (b, o, y, x))))
        }) {
            let mut sum = 0f64;
            for (c, i, j) in (0..w.channels).flat_map(|c| (0..3).flat_map(move |i| (0..3).map(move |j| (c, i, j)))) {
                let (Some(yy), Some(xx)) = ((y + i).checked_sub(w.padding), (x + j).checked_sub(w.padding)) else {
                    continue;
                };
                if yy < w.height && xx < w.width {
                    let pixel = images[((b * w.channels + c) * w.height + yy) * w.width + xx];
                    sum += f64::from(pixel) * f64::from(weight[((o * w.channels + c) * 3 + i) * 3 + j]);
                }
            }
            out[((b * w.maps + o) * w.out_height + y) * w.out_width + x] = sum;
        }
        out
    }

    /// The plain twin of the weight gradient: dg[o, c, i, j] = sum_b,y,x maps[b, o, y, x] image[b, c, y + i - p,
    /// x + j - p], in f64.
    fn direct_weight_gradient(w: &Winograd, maps: &[f32], images: &[f32]) -> Vec<f64> {
        let batch = images.len() / w.image_len();
        let mut gradient = vec![0f64; w.maps * w.channels * 9];
        for (b, o, y, x) in (0..batch).flat_map(|b| {
            (0..w.maps)
                .flat_map(move |o| (0..w.out_height).flat_map(move |y| (0..w.out_width).map(move |x| (b, o, y, x))))
        }) {
            let map = f64::from(maps[((b * w.maps + o) * w.out_height + y) * w.out_width + x]);
            for (c, i, j) in (0..w.channels).flat_map(|c| (0..3).flat_map(move |i| (0..3).map(move |j| (c, i, j)))) {
                let (Some(yy), Some(xx)) = ((y + i).checked_sub(w.padding), (x + j).checked_sub(w.padding)) else {
                    continue;
                };
                if yy < w.height && xx < w.width {
                    let pixel = images[((b * w.channels + c) * w.height + yy) * w.width + xx];
                    gradient[((o * w.channels + c) * 3 + i) * 3 + j] += map * f64::from(pixel);
                }
            }
        }
        gradient
    }

    /// The largest difference of `got` from `expected`, relative to expected's largest magnitude.
    fn relative_error(got: &[f32], expected: &[f64]) -> f64 {
        assert_eq!(got.len(), expected.len());
        let scale = expected.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        got.iter().zip(expected).map(|(&g, &e)| (f64::from(g) - e).abs()).fold(0.0, f64::max) / scale
    }

    #[test]
    fn the_convolution_and_its_weight_gradient_match_the_direct_sums_at_every_level() {
        for (batch, channels, height, width, maps, padding) in CASES {
            let w = Winograd::new(channels, (height, width), padding, maps).unwrap();
            let images = values(batch * w.image_len(), 1);
            let weight = values(maps * channels * 9, 2);
            let grads = values(batch * w.map_len(), 3);
            let (expected, expected_gradient) =
                (direct(&w, &images, &weight), direct_weight_gradient(&w, &grads, &images));
            for level in SimdLevel::ALL {
                let (out, gradient) =
                    with_simd_level(level, || (w.convolve(&images, &weight), w.weight_gradient(&grads, &images)));
                let name = format!("{batch}x{channels}x{height}x{width} -> {maps}, padding {padding}, {level}");
                assert!(relative_error(&out, &expected) < 1e-5, "{name}: {}", relative_error(&out, &expected));
                let error = relative_error(&gradient, &expected_gradient);
                assert!(error < 1e-5, "{name}: weight gradient off by {error}");
            }
        }
    }

    #[test]
    fn one_and_two_threads_give_the_same_bits() {
        let w = Winograd::new(6, (20, 18), 1, 5).unwrap();
        let (images, weight, grads) = (values(4 * w.image_len(), 4), values(5 * 6 * 9, 5), values(4 * w.map_len(), 6));
        let run = |threads| {
            crate::kernels::with_kernel_threads(threads, || {
                (w.convolve(&images, &weight), w.weight_gradient(&grads, &images))
            })
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(run(1), pool.install(|| run(2)));
    }

    #[test]
    fn only_the_shapes_it_computes_are_taken() {
        assert!(Winograd::new(3, (1, 1), 0, 2).is_none(), "a 3 x 3 kernel does not fit a 1 x 1 image unpadded");
        assert!(Winograd::new(3, (8, 8), 3, 2).is_none(), "padding 3 puts whole tiles in the padding");
        assert_eq!(Winograd::new(3, (8, 8), 1, 2).unwrap().for_batch(usize::MAX).map(|w| w.maps), Some(2));
    }
}
