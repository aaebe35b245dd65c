//! Matrix multiplies on plain row-major slices, for the dense and convolution layers and their gradients: the
//! `gemm` crate (its AVX-512, AVX2 or scalar kernels, as [`super::simd`] picks), or the system's OpenBLAS with the
//! `openblas` feature.

#[cfg(target_arch = "x86_64")]
use gemm_common::simd::MixedSimd;
use rayon::prelude::*;

use super::kernel_threads;
use super::simd::{simd_level, SimdLevel};

#[cfg(feature = "openblas")]
#[path = "openblas.rs"]
mod openblas;

/// Which library multiplies the dense and convolution layers' matrices in this build.
pub const MATMUL_BACKEND: &str = if cfg!(feature = "openblas") { "OpenBLAS (system)" } else { "gemm crate" };

/// Work below this many scalar operations runs on one thread: sharing it costs more than it saves.
pub const PARALLEL_WORK: usize = 1 << 16;

/// The matrix-multiply threads for `work` multiply-adds: the kernel threads, or one for small products.
pub fn gemm_parallelism(work: usize) -> gemm::Parallelism {
    let threads = kernel_threads();
    if threads > 1 && work > PARALLEL_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The threads a `parallelism` stands for (`Rayon(0)`: all of rayon's).
fn threads_of(parallelism: gemm::Parallelism) -> usize {
    match parallelism {
        gemm::Parallelism::Rayon(0) => rayon::current_num_threads(),
        gemm::Parallelism::Rayon(threads) => threads,
        _ => 1,
    }
}

/// Rows of a row-major matrix whose length is a multiple of this many values make it slow to read down its
/// columns, as the `gemm` crate does to pack an operand given transposed: rows 2 KiB apart (or a multiple of that)
/// fall on the same cache sets. Measured on one thread (AMD EPYC, AVX-512, BENCHMARKS.md), a dense layer's x W^T
/// with 32 rows: inner 1,024 or 4,096 with 256 outputs ran at 31 GFLOP/s against 200-210 with a contiguous W^T,
/// inner 512 at 59, while inner 784 or 1,000 ran at 122-137. A conv model's flattened features (channels x height
/// x width, 64 x 4 x 4 = 1,024) are such widths.
const SLOW_ROW: usize = 512;

/// True where reading a row-major matrix of `columns` columns down its columns is slow ([`SLOW_ROW`]).
pub fn slow_to_read_down(columns: usize) -> bool {
    columns > 0 && columns.is_multiple_of(SLOW_ROW)
}

/// Values added to a row of [`SLOW_ROW`]'s multiples by [`padded_stride`]: one 64-byte cache line.
const ROW_PADDING: usize = 16;

/// The row stride to give a matrix of `columns` columns that a product will read (an operand the caller lays out
/// itself, such as a convolution's im2col): `columns`, or a cache line more where `columns` is a multiple of
/// [`SLOW_ROW`], whose rows would fall on the same cache sets. Measured on one thread (AMD EPYC Zen 5, AVX-512;
/// BENCHMARKS.md), the weight gradient of a 3 x 3 convolution with 64 channels at 64 x 64 ran at 145 GFLOP/s with
/// rows of 4,096 values and at 216 with rows of 4,112.
pub fn padded_stride(columns: usize) -> usize {
    match slow_to_read_down(columns) {
        true => columns + ROW_PADDING,
        false => columns,
    }
}

/// A matrix operand: its values and the strides of a step down a row and across a column.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    values: &'a [f32],
    row_stride: usize,
    column_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `columns` columns.
    pub fn rows(values: &'a [f32], columns: usize) -> Self {
        Operand { values, row_stride: columns, column_stride: 1 }
    }

    /// The transpose of a row-major matrix with `columns` columns.
    pub fn transposed(values: &'a [f32], columns: usize) -> Self {
        Operand { values, row_stride: 1, column_stride: columns }
    }

    /// The index one past the last element of an `rows` x `columns` view.
    fn extent(&self, rows: usize, columns: usize) -> usize {
        (rows - 1) * self.row_stride + (columns - 1) * self.column_stride + 1
    }
}

/// What a matrix product does with the destination's old values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// dst = lhs · rhs.
    Overwrite,
    /// dst = dst + lhs · rhs.
    Accumulate,
}

/// dst (`m` x `n`, row-major) = lhs (`m` x `k`) · rhs (`k` x `n`), or dst + that, with `parallelism`.
pub fn matmul(
    dst: &mut [f32],
    lhs: Operand,
    rhs: Operand,
    (m, k, n): (usize, usize, usize),
    destination: Destination,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if destination == Destination::Overwrite {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n);
    // SAFETY: dst holds m * n values (asserted) and does not alias lhs or rhs (it is borrowed mutably).
    unsafe { multiply_into(dst.as_mut_ptr(), lhs, rhs, (m, k, n), destination, parallelism) }
}

/// lhs (`m` x `k`) · rhs (`k` x `n`) into a new row-major `m` x `n` buffer, threads chosen by the work's size.
pub fn product(lhs: Operand, rhs: Operand, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the buffer has room for m * n values; with k > 0 and the old values not read, the multiply writes
    // every one of them before the length is set.
    unsafe {
        multiply_into(dst.as_mut_ptr(), lhs, rhs, (m, k, n), Destination::Overwrite, gemm_parallelism(m * n * k));
        dst.set_len(m * n);
    }
    dst
}

/// One block of a product, a band of dst's rows (or columns), and where it starts in lhs, rhs and dst.
#[derive(Clone, Copy)]
pub(super) struct Block {
    /// Offsets of the block's first value in lhs, rhs and dst.
    pub lhs_offset: usize,
    pub rhs_offset: usize,
    pub dst_offset: usize,
    /// The block's rows and columns.
    pub rows: usize,
    pub columns: usize,
}

/// Runs `multiply` on `threads` blocks of an `m` x `n` product, one per thread: bands of dst's rows, or of its
/// columns when the product is wider than tall. Each block is one single-threaded multiply; on the 2-core machines
/// measured (BENCHMARKS.md) this scales where the `gemm` crate's own threads did not.
fn for_each_block(
    lhs: &Operand,
    rhs: &Operand,
    (m, n): (usize, usize),
    threads: usize,
    multiply: impl Fn(Block) + Sync,
) {
    let split_columns = n > m;
    let extent = if split_columns { n } else { m };
    let block_size = extent.div_ceil(threads.max(1));
    let block = |index: usize| {
        let first = index * block_size;
        let size = block_size.min(extent - first);
        multiply(if split_columns {
            Block { lhs_offset: 0, rhs_offset: first * rhs.column_stride, dst_offset: first, rows: m, columns: size }
        } else {
            Block { lhs_offset: first * lhs.row_stride, rhs_offset: 0, dst_offset: first * n, rows: size, columns: n }
        })
    };
    match extent.div_ceil(block_size) {
        1 => block(0),
        blocks => (0..blocks).into_par_iter().for_each(block),
    }
}

/// The matrix multiply itself, on a raw row-major `m` x `n` destination (m, n, k all positive).
///
/// # Safety
/// `dst` must be valid for m * n writes (and reads, when accumulating) and must not overlap lhs or rhs.
unsafe fn multiply_into(
    dst: *mut f32,
    lhs: Operand,
    rhs: Operand,
    (m, k, n): (usize, usize, usize),
    destination: Destination,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.values.len() >= lhs.extent(m, k) && rhs.values.len() >= rhs.extent(k, n));
    let dst_address = dst as usize;
    let accumulate = destination == Destination::Accumulate;
    #[cfg(feature = "openblas")]
    if let Some(views) = openblas::views(&lhs, &rhs, (m, k, n)) {
        for_each_block(&lhs, &rhs, (m, n), threads_of(parallelism), |block| {
            // SAFETY: the blocks are disjoint and inside dst's m x n values; the assertion above keeps every
            // operand index the strides reach inside its slice (a block only starts further in and spans less).
            unsafe { openblas::multiply(dst_address as *mut f32, &lhs, &rhs, views, (k, n), block, accumulate) }
        });
        return;
    }
    let level = simd_level();
    let in_place = level == SimdLevel::Avx512;
    let threshold = match in_place {
        true => IN_PLACE_PACKING_THRESHOLD,
        false => gemm::DEFAULT_LHS_PACKING_THRESHOLD_SINGLE_THREAD,
    };
    // written only when it changes: both threads' products read it, and a store on every product would move its
    // cache line between the cores
    if gemm::get_lhs_packing_threshold_single_thread() != threshold {
        gemm::set_lhs_packing_threshold_single_thread(threshold);
    }
    let repadded;
    let rhs = match in_place.then(|| unaligned_rows(&rhs, (m, k, n))).flatten() {
        Some(copy) => {
            repadded = copy;
            Operand::rows(&repadded, padded_stride(n))
        }
        None => rhs,
    };
    let gemm_at_level = if level == SimdLevel::detected() { gemm::gemm::<f32> } else { narrower_gemm(level) };
    for_each_block(&lhs, &rhs, (m, n), threads_of(parallelism), |block| {
        // SAFETY: as for OpenBLAS above; the caller vouches for dst.
        unsafe {
            gemm_at_level(
                block.rows,
                block.columns,
                k,
                (dst_address as *mut f32).add(block.dst_offset),
                1,
                n as isize,
                accumulate,
                lhs.values.as_ptr().add(block.lhs_offset),
                lhs.column_stride as isize,
                lhs.row_stride as isize,
                rhs.values.as_ptr().add(block.rhs_offset),
                rhs.column_stride as isize,
                rhs.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// The `gemm` crate's single-thread threshold for packing a column-major operand that products at AVX-512 set:
/// the highest it takes (256, so above 1,536 dst rows), so that they read elbo's operands where they are. By
/// default `gemm` copies that operand (for a row-major dst: the rhs given row-major) into its packed layout again in
/// every product whose dst has more than 48 rows, though elbo lays out its im2col columns and activations with
/// strides that read well in place ([`padded_stride`]): the 19 MB of columns of a 128-channel 64 x 64 convolution
/// once more per example, or the 5 M-value output weight of a 12,544-logit decoder once per 64-example shard.
/// Measured back to back on an AMD EPYC Zen 5 (BENCHMARKS.md, tenth session): 1-10% faster at AVX-512; at AVX2
/// (whose microkernel reads 16 rows, one cache line, per step of the inner dimension) from 12% slower to 5% faster
/// by run, no gain that held, so products at AVX2 and below set gemm's default back. Packing only copies: the
/// results are the same to the bit. The threshold is the `gemm` crate's, so candle's own single-threaded products
/// in the process follow the last level set. Where a rhs's rows would fall on the same cache sets,
/// [`unaligned_rows`] gives a product at AVX-512 a copy that reads well instead.
const IN_PLACE_PACKING_THRESHOLD: usize = 256;

/// The dst rows above which the `gemm` crate, left at its default threshold, packed a row-major rhs: its default
/// threshold (8) times its microkernels' 6 columns, at every SIMD level.
const PACKED_ABOVE_ROWS: usize = gemm::DEFAULT_LHS_PACKING_THRESHOLD_SINGLE_THREAD * 6;

/// A copy of a row-major `rhs` at [`padded_stride`], for a product of more than [`PACKED_ABOVE_ROWS`] rows that
/// would read its rows on the same cache sets ([`slow_to_read_down`]); `None` for every other product, which
/// reads its rhs in place at AVX-512 ([`IN_PLACE_PACKING_THRESHOLD`]) or lets `gemm` pack it.
fn unaligned_rows(rhs: &Operand, (m, k, n): (usize, usize, usize)) -> Option<Vec<f32>> {
    if rhs.column_stride != 1 || !slow_to_read_down(rhs.row_stride) || m <= PACKED_ABOVE_ROWS {
        return None;
    }
    let stride = padded_stride(n);
    let mut copy = vec![0f32; k * stride];
    for (row, copied) in rhs.values.chunks(rhs.row_stride).zip(copy.chunks_exact_mut(stride)) {
        copied[..n].copy_from_slice(&row[..n]);
    }
    Some(copy)
}

/// The signature of `gemm::gemm` for f32.
type Gemm = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    isize,
    isize,
    bool,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    f32,
    bool,
    bool,
    bool,
    gemm::Parallelism,
);

/// The `gemm` crate's driver with the microkernels of a level narrower than the CPU's widest, which `gemm::gemm`
/// would pick by itself: its AVX2 + FMA kernels, or its scalar ones.
fn narrower_gemm(level: SimdLevel) -> Gemm {
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx2 && <gemm_common::simd::V3 as MixedSimd<f32, f32, f32, f32>>::try_new().is_some() {
        return narrower::avx2;
    }
    let _ = level;
    narrower::scalar
}

/// The `gemm` crate's own driver, `gemm_basic_generic`, called with one level's microkernels (as `gemm::gemm`
/// does for the level it detects).
mod narrower {
    use gemm_common::gemm::gemm_basic_generic;
    use gemm_common::simd::MixedSimd;

    /// Defines `$name` as the driver with the microkernels of `$kernels`, vectors of `$lanes` floats and the
    /// instruction set `$simd`.
    macro_rules! gemm_with {
        ($name:ident, $kernels:path, $simd:ty, $lanes:expr) => {
            /// `gemm::gemm` for f32 at one SIMD level. Safety: as `gemm::gemm`'s, on a CPU with the level.
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                m: usize,
                n: usize,
                k: usize,
                dst: *mut f32,
                dst_cs: isize,
                dst_rs: isize,
                read_dst: bool,
                lhs: *const f32,
                lhs_cs: isize,
                lhs_rs: isize,
                rhs: *const f32,
                rhs_cs: isize,
                rhs_rs: isize,
                alpha: f32,
                beta: f32,
                conj_dst: bool,
                conj_lhs: bool,
                conj_rhs: bool,
                parallelism: gemm::Parallelism,
            ) {
                use $kernels::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
                const N: usize = $lanes;
                // `narrower_gemm` picks this level only where the CPU has it (the scalar one it always has)
                let Some(simd) = <$simd as MixedSimd<f32, f32, f32, f32>>::try_new() else { return };
                // as `gemm::gemm` does before its driver: the microkernels write down dst's columns, so a row-major
                // dst is computed as dst^T = rhs^T · lhs^T (without this, elbo's row-major products at a forced
                // level stored every value a row apart and ran at a half to a fifteenth of `gemm::gemm`'s speed;
                // elbo's strides are never negative, the other case `gemm::gemm` handles)
                let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = match dst_cs.abs() < dst_rs.abs()
                {
                    true => (n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs),
                    false => (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs),
                };
                // SAFETY: the caller's promises are gemm::gemm's; the CPU has the level (try_new checked it).
                unsafe {
                    gemm_basic_generic::<_, f32, N, { MR_DIV_N * N }, NR, MR_DIV_N, H_M, H_N>(
                        simd,
                        m,
                        n,
                        k,
                        dst,
                        dst_cs,
                        dst_rs,
                        read_dst,
                        lhs,
                        lhs_cs,
                        lhs_rs,
                        rhs,
                        rhs_cs,
                        rhs_rs,
                        alpha,
                        beta,
                        conj_dst,
                        conj_lhs,
                        conj_rhs,
                        |a, b, c| a * b + c,
                        &UKR,
                        &H_UKR,
                        false,
                        parallelism,
                    )
                }
            }
        };
    }

    #[cfg(target_arch = "x86_64")]
    gemm_with!(avx2, gemm_f32::microkernel::fma::f32, gemm_common::simd::V3, 8);
    gemm_with!(scalar, gemm_f32::microkernel::scalar::f32, gemm_common::simd::Scalar, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lhs · rhs by the definition, both given as (values, row stride, column stride).
    fn naive(lhs: Operand, rhs: Operand, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let at = |operand: &Operand, row: usize, column: usize| {
            operand.values[row * operand.row_stride + column * operand.column_stride]
        };
        let mut out = vec![0.0; m * n];
        for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
            out[i * n + j] = (0..k).map(|p| at(&lhs, i, p) * at(&rhs, p, j)).sum();
        }
        out
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| ((i * 7919 + seed * 131) % 23) as f32 / 11.0 - 1.0).collect()
    }

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{a} vs {e}");
        }
    }

    /// Every layout the kernels use (plain and transposed operands), odd sizes, one and two threads, overwrite and
    /// accumulate, at every SIMD level the CPU has: whichever multiply the build uses (the `gemm` crate's kernels,
    /// or OpenBLAS) gives the product.
    #[test]
    fn matmul_matches_the_definition() {
        for level in SimdLevel::ALL {
            super::super::simd::with_simd_level(level, matmul_matches_the_definition_at_this_level);
        }
    }

    fn matmul_matches_the_definition_at_this_level() {
        let parallelisms = [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)];
        // (50, 9, 512): a rhs with rows on the same cache sets, which the product reads through a repadded copy
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (33, 17, 65), (130, 257, 9), (1, 40, 1), (50, 9, 512)] {
            let (lhs_values, rhs_values) = (values(m * k, 1), values(k * n, 2));
            for transposed in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs =
                    if transposed.0 { Operand::transposed(&lhs_values, m) } else { Operand::rows(&lhs_values, k) };
                let rhs =
                    if transposed.1 { Operand::transposed(&rhs_values, k) } else { Operand::rows(&rhs_values, n) };
                let expected = naive(lhs, rhs, (m, k, n));
                assert_close(&product(lhs, rhs, (m, k, n)), &expected);
                for parallelism in parallelisms {
                    let start = values(m * n, 3);
                    let mut total = start.clone();
                    matmul(&mut total, lhs, rhs, (m, k, n), Destination::Accumulate, parallelism);
                    let sum: Vec<f32> = start.iter().zip(&expected).map(|(s, e)| s + e).collect();
                    assert_close(&total, &sum);
                    matmul(&mut total, lhs, rhs, (m, k, n), Destination::Overwrite, parallelism);
                    assert_close(&total, &expected);
                }
            }
        }
    }

    /// The copy is made for a row-major rhs of 512-value rows in a product of more than 48 rows, and for no other.
    #[test]
    fn a_rhs_is_repadded_only_where_its_rows_share_cache_sets_and_gemm_packed_it() {
        let rhs_values = values(3 * 1024, 4);
        for (rows, columns) in [(3, 1024), (3, 511)] {
            let rhs = Operand::rows(&rhs_values, columns);
            let copy = unaligned_rows(&rhs, (PACKED_ABOVE_ROWS + 1, rows, columns));
            assert_eq!(copy.is_some(), columns == 1024, "{columns} columns");
            if let Some(copy) = copy {
                let stride = padded_stride(columns);
                assert!(stride > columns);
                for row in 0..rows {
                    assert_eq!(copy[row * stride..][..columns], rhs_values[row * columns..][..columns]);
                }
            }
            assert!(unaligned_rows(&rhs, (PACKED_ABOVE_ROWS, rows, columns)).is_none());
            assert!(unaligned_rows(&Operand::transposed(&rhs_values, rows), (64, columns, rows)).is_none());
        }
    }
}
