//! 3 x 3 stride-1 convolutions and their weight gradients by Winograd's minimal filtering F(2 x 2, 3 x 3) (Lavin
//! and Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): 16 multiplies for a 2 x 2 block of outputs
//! where im2col + GEMM does 36, so the products do 2.25 times fewer multiply-adds.
//!
//! The output is cut into 2 x 2 tiles; tile t reads the 4 x 4 input patch d_t under it. With
//!
//! ```text
//! B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1]
//! U_oc = G g_oc G^T,   V_ct = B^T d_ct B,   M_ot = sum_c U_oc (.) V_ct,   Y_ot = A^T M_ot A
//! ```
//!
//! the sum over channels of each of the 16 values (xi) of M is a matrix product, M_xi (`[m, tiles]`) = U_xi (`[m,
//! C]`) · V_xi (`[C, tiles]`). The weight gradient is the adjoint: dU_oc = sum_t (A dY_ot A^T) (.) V_ct, 16 products
//! dU_xi = Ŷ_xi · V_xi^T, and dg_oc = G^T dU_oc G. (The input gradient of a 3 x 3 stride-1 convolution is itself such
//! a convolution, with the flipped kernel: `conv::flipped_convolution`.)
//!
//! The tiles are taken a block of [`BLOCK_TILES`] at a time (rows of tiles of one or a few images), so that a block's
//! transforms and products stay in the cache; blocks of different images run on different threads, each product on
//! one. Tests hold both kernels to a direct convolution and to the im2col kernels, at every SIMD level.

use rayon::prelude::*;

use super::{kernel_threads, matmul, wide_fn, Destination, Operand};

/// Values of a tile's transform (4 x 4): the number of products.
const TRANSFORM: usize = 16;

/// Tiles per block: a block's transformed input and products (16 x (C + m) x tiles values) then take 1 MiB, a Zen 4
/// core's L2 cache, for 64 channels a side. Measured by in-process A/B on the KL autoencoder's training step (AMD
/// EPYC Zen 4, AVX-512), the sizes alternating step by step: 256 tiles ran 2-5% slower than 128 (two runs of 18
/// pairs; 256 against itself 1.00), 64 the same as 128, 32 about 2% slower; 512 ran 5% slower than 256.
pub const BLOCK_TILES: usize = 128;

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
    /// tiles fall on the same cache sets every few rows (every 4 for 256 tiles, 1 KiB), which the products read
    /// down; the extra line made the KL autoencoder's training step 4% faster with blocks of 256 tiles (in-process
    /// A/B, AMD EPYC Zen 4, AVX-512).
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
        self.out_height.div_ceil(2)
    }

    fn tiles_across(&self) -> usize {
        self.out_width.div_ceil(2)
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
        let mut out = super::recycle::stale(images.len() / self.image_len() * self.map_len());
        let tasks = out.par_chunks_mut(per_task * self.map_len()).zip(images.par_chunks(per_task * self.image_len()));
        tasks.for_each(|(out, images)| {
            with_scratch(|scratch| {
                for block in self.blocks(images.len() / self.image_len()) {
                    self.convolve_block(images, &transformed, block, out, scratch);
                }
            })
        });
        out
    }

    /// One block of [`Self::convolve`]: V = B^T d B of its tiles, the 16 products M_xi = U_xi · V_xi, and Y = A^T M A
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
        // M (`[16, m, tiles]`): each product's dst is a contiguous m x tiles matrix
        scratch.products.resize(TRANSFORM * maps * tiles, 0.0);
        for xi in 0..TRANSFORM {
            // M_xi = U_xi · V_xi
            let lhs = Operand::rows(&transformed[xi * maps * channels..][..maps * channels], channels);
            let rhs = Operand::rows(&scratch.inputs[xi * channels * stride..][..channels * stride], stride);
            let dst = &mut scratch.products[xi * maps * tiles..][..maps * tiles];
            matmul(dst, lhs, rhs, (maps, channels, tiles), Destination::Overwrite, gemm::Parallelism::None);
        }
        let out_plane = self.out_height * self.out_width;
        let (mut rows, mut pair) = (vec![0f32; 8 * block.tiles_across], vec![0f32; 4 * block.tiles_across]);
        for o in 0..maps {
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let start = o * tiles + strip * block.tiles_across;
                output_strip(&scratch.products, (maps * tiles, start), &mut rows, &mut pair);
                // Y = A^T M A: rows 2 row and 2 row + 1 of the output, where they lie inside it
                let plane = &mut out[(image * maps + o) * out_plane..][..out_plane];
                for (line, values) in pair.chunks_exact(2 * block.tiles_across).enumerate() {
                    let y = 2 * row + line;
                    if y < self.out_height {
                        plane[y * self.out_width..][..self.out_width].copy_from_slice(&values[..self.out_width]);
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
        super::recycle::recycle(total);
        gradient
    }

    /// Adds one block's dU_xi = Ŷ_xi · V_xi^T to `sum` (`[16, m, C]`), Ŷ = A dY A^T.
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

    /// V = B^T d B of every tile of the block, channel by channel, into `scratch.inputs` (`[16, C, stride]`).
    fn transform_input(&self, images: &[f32], block: Block, scratch: &mut Scratch) {
        let (tiles_across, stride, plane) = (block.tiles_across, block.stride(), self.height * self.width);
        let run = tiles_across + 1;
        scratch.inputs.resize(TRANSFORM * self.channels * stride, 0.0);
        scratch.window.clear();
        // zeros once: the window's columns in the padding are never written
        scratch.window.resize(16 * run, 0.0);
        for c in 0..self.channels {
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let channel = &images[(image * self.channels + c) * plane..][..plane];
                let (window, combined) = scratch.window.split_at_mut(8 * run);
                self.fill_window(channel, row, window, run);
                let place = (self.channels * stride, c * stride + strip * tiles_across);
                input_strip(window, combined, place, &mut scratch.inputs[..TRANSFORM * self.channels * stride]);
            }
        }
    }

    /// (image, tile row in it) of strip `strip` of `block`.
    fn strip_place(&self, block: Block, strip: usize) -> (usize, usize) {
        let global = block.first_strip + strip;
        (global / self.tiles_down(), global % self.tiles_down())
    }

    /// The 4 input rows under tile row `row` (rows 2 row - padding ..), each as its even and odd columns of the
    /// padded image (`run` = tiles across + 1 values each): `window[(2 i + parity) * run + k]` = padded row i, column
    /// 2 k + parity. Rows outside the image are zeroed; columns in the padding are left as they are (zero).
    fn fill_window(&self, channel: &[f32], row: usize, window: &mut [f32], run: usize) {
        let padding = self.padding;
        for (i, runs) in window.chunks_exact_mut(2 * run).enumerate() {
            let Some(y) = (2 * row + i).checked_sub(padding).filter(|&y| y < self.height) else {
                runs.fill(0.0);
                continue;
            };
            let line = &channel[y * self.width..][..self.width];
            let (even, odd) = runs.split_at_mut(run);
            // image column x is padded column x + padding: 2 run = 2 ceil(out_width / 2) + 2 >= width + 2 padding
            match padding % 2 {
                0 => deinterleave(line, &mut even[padding / 2..], &mut odd[padding / 2..]),
                _ => deinterleave(line, &mut odd[padding / 2..], &mut even[padding / 2 + 1..]),
            }
        }
    }

    /// Ŷ = A dY A^T of every tile of the block, map by map, into `scratch.products` (`[16, m, stride]`).
    fn transform_output_gradient(&self, maps: &[f32], block: Block, scratch: &mut Scratch) {
        let (tiles_across, stride, out_plane) = (block.tiles_across, block.stride(), self.out_height * self.out_width);
        scratch.products.resize(TRANSFORM * self.maps * stride, 0.0);
        scratch.window.resize(12 * tiles_across, 0.0);
        for o in 0..self.maps {
            for strip in 0..block.strips {
                let (image, row) = self.strip_place(block, strip);
                let plane = &maps[(image * self.maps + o) * out_plane..][..out_plane];
                // dY's two rows as even and odd columns, zeros past the output's edge
                let (rows, combined) = scratch.window[..12 * tiles_across].split_at_mut(4 * tiles_across);
                for (line, runs) in rows.chunks_exact_mut(2 * tiles_across).enumerate() {
                    let (even, odd) = runs.split_at_mut(tiles_across);
                    match Some(2 * row + line).filter(|&y| y < self.out_height) {
                        Some(y) => {
                            // an odd width leaves the last tile's right column outside
                            odd[tiles_across - 1] = 0.0;
                            deinterleave(&plane[y * self.out_width..][..self.out_width], even, odd);
                        }
                        None => runs.fill(0.0),
                    }
                }
                let place = (self.maps * stride, o * stride + strip * tiles_across);
                gradient_strip(rows, combined, place, &mut scratch.products[..TRANSFORM * self.maps * stride]);
            }
        }
    }

    /// U = G g G^T of every kernel of `weight` (`[m, C, 3, 3]`): `[16, m, C]`.
    fn transform_weight(&self, weight: &[f32]) -> Vec<f32> {
        let pairs = self.maps * self.channels;
        let mut transformed = vec![0f32; TRANSFORM * pairs];
        for (pair, g) in weight.chunks_exact(9).enumerate().take(pairs) {
            // G g: rows (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2) of each column, then the same on the rows
            let mut half = [0f32; 12];
            for column in 0..3 {
                let [a, b, c] = [g[column], g[3 + column], g[6 + column]];
                for (i, value) in [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c].into_iter().enumerate() {
                    half[3 * i + column] = value;
                }
            }
            for (i, row) in half.chunks_exact(3).enumerate() {
                let [a, b, c] = [row[0], row[1], row[2]];
                for (k, value) in [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c].into_iter().enumerate() {
                    transformed[(4 * i + k) * pairs + pair] = value;
                }
            }
        }
        transformed
    }

    /// dg = G^T dU G of every (m, C) pair of `sum` (`[16, m, C]`): `[m, C, 3, 3]`.
    fn gradient_of_weight(&self, sum: &[f32]) -> Vec<f32> {
        let pairs = self.maps * self.channels;
        let mut gradient = vec![0f32; 9 * pairs];
        for (pair, g) in gradient.chunks_exact_mut(9).enumerate() {
            let u = |xi: usize| sum[xi * pairs + pair];
            // G^T x for a 4-vector x: (x0 + (x1 + x2) / 2, (x1 - x2) / 2, (x1 + x2) / 2 + x3)
            let reduce = |x: [f32; 4]| [x[0] + 0.5 * (x[1] + x[2]), 0.5 * (x[1] - x[2]), 0.5 * (x[1] + x[2]) + x[3]];
            let columns: Vec<[f32; 3]> =
                (0..4).map(|i| reduce([u(4 * i), u(4 * i + 1), u(4 * i + 2), u(4 * i + 3)])).collect();
            for k in 0..3 {
                let reduced = reduce([columns[0][k], columns[1][k], columns[2][k], columns[3][k]]);
                for (ky, value) in reduced.into_iter().enumerate() {
                    g[3 * ky + k] = value;
                }
            }
        }
        gradient
    }
}

/// A block's buffers, kept per thread so that the next block and the next convolution reuse their memory.
#[derive(Default)]
struct Scratch {
    /// V (`[16, C, stride]`).
    inputs: Vec<f32>,
    /// M or Ŷ (`[16, m, stride]`).
    products: Vec<f32>,
    /// One strip's input window and its row combinations, or dY's rows and theirs.
    window: Vec<f32>,
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

/// out = a + b, a - b, ... value by value over runs: `combine(a, b)` for each pair of values.
#[inline(always)]
fn combine_runs(out: &mut [f32], a: &[f32], b: &[f32], combine: impl Fn(f32, f32) -> f32) {
    out.iter_mut().zip(a.iter().zip(b)).for_each(|(out, (&a, &b))| *out = combine(a, b));
}

wide_fn! {
    /// first[k] = line[2 k] and second[k] = line[2 k + 1] for every value of `line`.
    fn deinterleave(line: &[f32], first: &mut [f32], second: &mut [f32]) {
        let pairs = line.chunks_exact(2);
        if let [last] = pairs.remainder() {
            first[line.len() / 2] = *last;
        }
        for ((pair, first), second) in pairs.zip(first.iter_mut()).zip(second.iter_mut()) {
            *first = pair[0];
            *second = pair[1];
        }
    }
}

wide_fn! {
    /// V = B^T d B of a strip's tiles, from the window of [`Winograd::fill_window`] (8 runs of tiles + 1 values),
    /// into `out`'s 16 runs (xi = 4 row + column) at `place` (xi's stride, the first tile's offset); `combined`
    /// holds B^T d's 8 runs.
    fn input_strip(window: &[f32], combined: &mut [f32], place: (usize, usize), out: &mut [f32]) {
        let (run, (xi_stride, start)) = (window.len() / 8, place);
        let tiles = run - 1;
        // B^T d, on even and odd columns alike: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
        for parity in 0..2 {
            let row = |i: usize| &window[(2 * i + parity) * run..][..run];
            combine_runs(run_at(combined, parity * run, run), row(0), row(2), |a, b| a - b);
            combine_runs(run_at(combined, (2 + parity) * run, run), row(1), row(2), |a, b| a + b);
            combine_runs(run_at(combined, (4 + parity) * run, run), row(2), row(1), |a, b| a - b);
            combine_runs(run_at(combined, (6 + parity) * run, run), row(1), row(3), |a, b| a - b);
        }
        // (B^T d) B on each row: tile j's columns are (even j, odd j, even j + 1, odd j + 1) = (e0, o0, e1, o1):
        // (e0 - e1, o0 + e1, e1 - o0, o0 - o1)
        for (i, combination) in combined.chunks_exact(2 * run).enumerate() {
            let (even, odd) = combination.split_at(run);
            let (e0, e1, o0, o1) = (&even[..tiles], &even[1..], &odd[..tiles], &odd[1..]);
            let at = |k: usize| (4 * i + k) * xi_stride + start;
            combine_runs(run_at(out, at(0), tiles), e0, e1, |a, b| a - b);
            combine_runs(run_at(out, at(1), tiles), o0, e1, |a, b| a + b);
            combine_runs(run_at(out, at(2), tiles), e1, o0, |a, b| a - b);
            combine_runs(run_at(out, at(3), tiles), o0, o1, |a, b| a - b);
        }
    }
}

wide_fn! {
    /// Y = A^T M A of a strip's tiles: M's 16 runs start at `start` of `products`, `xi_stride` apart; `rows` holds
    /// A^T M's 8 runs; `pair` gets the strip's two output rows, 2 tiles values each.
    fn output_strip(products: &[f32], place: (usize, usize), rows: &mut [f32], pair: &mut [f32]) {
        let ((xi_stride, start), tiles) = (place, pair.len() / 4);
        let m = |xi: usize| &products[xi * xi_stride + start..][..tiles];
        // A^T M on each column k: (m0 + m1 + m2, m1 - m2 - m3)
        for (k, runs) in rows.chunks_exact_mut(2 * tiles).enumerate() {
            let (top, bottom) = runs.split_at_mut(tiles);
            let (m0, m1, m2, m3) = (m(k), m(4 + k), m(8 + k), m(12 + k));
            for j in 0..tiles {
                top[j] = m0[j] + m1[j] + m2[j];
                bottom[j] = m1[j] - m2[j] - m3[j];
            }
        }
        // (A^T M) A on each row: the same of its 4 columns, which go to output columns 2 j and 2 j + 1
        let run = |k: usize, line: usize| &rows[(2 * k + line) * tiles..][..tiles];
        for (line, out) in pair.chunks_exact_mut(2 * tiles).enumerate() {
            let (s0, s1, s2, s3) = (run(0, line), run(1, line), run(2, line), run(3, line));
            for (j, values) in out.chunks_exact_mut(2).enumerate() {
                values[0] = s0[j] + s1[j] + s2[j];
                values[1] = s1[j] - s2[j] - s3[j];
            }
        }
    }
}

wide_fn! {
    /// Ŷ = A dY A^T of a strip's tiles from dY's two rows as even and odd columns (`rows`: 4 runs of `tiles`
    /// values: row 0 even, row 0 odd, row 1 even, row 1 odd), into `out`'s 16 runs (xi = 4 row + column) at
    /// `place` (xi's stride, the first tile's offset); `combined` holds A dY's 8 runs.
    fn gradient_strip(rows: &[f32], combined: &mut [f32], place: (usize, usize), out: &mut [f32]) {
        let (tiles, (xi_stride, start)) = (rows.len() / 4, place);
        let run = |index: usize| &rows[index * tiles..][..tiles];
        // A x for a 2-vector x: (x0, x0 + x1, x0 - x1, -x1), first down the rows (even and odd columns alike)
        for parity in 0..2 {
            let (top, bottom) = (run(parity), run(2 + parity));
            run_at(combined, parity * tiles, tiles).copy_from_slice(top);
            combine_runs(run_at(combined, (2 + parity) * tiles, tiles), top, bottom, |a, b| a + b);
            combine_runs(run_at(combined, (4 + parity) * tiles, tiles), top, bottom, |a, b| a - b);
            run_at(combined, (6 + parity) * tiles, tiles).iter_mut().zip(bottom).for_each(|(out, &b)| *out = -b);
        }
        // then across each row: (e, e + o, e - o, -o)
        for (i, combination) in combined.chunks_exact(2 * tiles).enumerate() {
            let (even, odd) = combination.split_at(tiles);
            let at = |k: usize| (4 * i + k) * xi_stride + start;
            run_at(out, at(0), tiles).copy_from_slice(even);
            combine_runs(run_at(out, at(1), tiles), even, odd, |a, b| a + b);
            combine_runs(run_at(out, at(2), tiles), even, odd, |a, b| a - b);
            run_at(out, at(3), tiles).iter_mut().zip(odd).for_each(|(out, &o)| *out = -o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};

    /// (batch, channels, height, width, maps, padding): odd sides, every padding, an image with more tiles across
    /// than a block holds (and as many as make its rows a padded stride), images smaller than a block (several to a task) and one 2 x 2 tile of output.
    const CASES: [(usize, usize, usize, usize, usize, usize); 8] = [
        (2, 3, 7, 5, 4, 1),
        (3, 2, 9, 8, 3, 0),
        (2, 4, 5, 6, 5, 2),
        (1, 2, 3, 600, 2, 1),
        // 512 tiles across: the transformed input's rows padded to a longer stride than the products'
        (1, 1, 2, 1024, 2, 1),
        (5, 3, 6, 6, 2, 1),
        (2, 17, 34, 33, 19, 1),
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
