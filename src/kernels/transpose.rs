//! Matrix transposes: a dense layer's W^T for the sparse products, a sparse weight gradient's bands written across
//! into dL/dW, and copies of operands that a product would read down their columns. Blocks of 8 x 8 values turn in
//! AVX registers at the AVX2 and AVX-512 levels, blocks of 4 x 4 in SSE registers (x86-64's baseline) otherwise and
//! beside the 8 x 8 blocks, the last values one by one. A transpose only moves values, so every level gives the
//! same bits; the tests hold each to the definition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::simd::{simd_level, SimdLevel};
use super::{kernel_threads, recycle, with_kernel_threads, PARALLEL_WORK};

/// A matrix's transpose, made once for every thread that asks for it: the first to ask makes it on all the kernel
/// threads, and the others, instead of waiting idle as on a `OnceLock`, run pieces of that work until it is done.
/// A dense layer's W^T is asked for by each shard of a batch at about the same time; made by one thread while the
/// other waited, it took ~2% of the samples of an MLP's step at AVX2 and as much again of idle time. (Made in bands
/// on both threads where the pool has two; on one thread in larger pools, see [`Self::get`].)
#[derive(Debug, Default)]
pub struct SharedTranspose {
    value: OnceLock<Vec<f32>>,
    claimed: AtomicBool,
}

impl SharedTranspose {
    /// The transpose of `matrix` (`rows` rows, row-major): the same matrix at every call.
    pub fn get(&self, matrix: &[f32], rows: usize) -> &[f32] {
        if let Some(value) = self.value.get() {
            return value;
        }
        if !self.claimed.swap(true, Ordering::AcqRel) {
            // in bands on both threads of a pool of two, where the only other thread that can take a band is the
            // other shard's, waiting for it; in a larger pool, this thread, waiting for its bands, could take up a
            // shard that has not started yet, which would then wait for the transpose this thread is making
            let threads = if rayon::current_num_threads() == 2 { 2 } else { 1 };
            return self.value.get_or_init(|| with_kernel_threads(threads, || made(matrix, rows)));
        }
        // another thread is making it: run its pending pieces (rayon's work) meanwhile
        loop {
            if let Some(value) = self.value.get() {
                return value;
            }
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => {}
                Some(rayon::Yield::Idle) => std::thread::yield_now(),
                // not on a rayon thread: wait for the maker (the closure runs only if it never started)
                None => return self.value.get_or_init(|| made(matrix, rows)),
            }
        }
    }
}

impl Drop for SharedTranspose {
    /// Hands the transpose's buffer back to [`recycle`], for the next step's.
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            recycle::recycle(value);
        }
    }
}

/// The transpose of `matrix` in a buffer from [`recycle`].
fn made(matrix: &[f32], rows: usize) -> Vec<f32> {
    transpose_in(matrix, rows, recycle::stale(matrix.len()))
}

/// The transpose of a row-major `matrix` with `rows` rows, `[columns, rows]`; bands of its rows on the kernel threads
/// where it is large.
pub fn transpose(matrix: &[f32], rows: usize) -> Vec<f32> {
    transpose_in(matrix, rows, vec![0.0; matrix.len()])
}

/// [`transpose`] written into `transposed` (as long as `matrix`, its values overwritten).
fn transpose_in(matrix: &[f32], rows: usize, mut transposed: Vec<f32>) -> Vec<f32> {
    let columns = matrix.len() / rows.max(1);
    let threads = kernel_threads();
    if threads < 2 || matrix.len() < 4 * PARALLEL_WORK || columns < 2 * BAND_ALIGN {
        transpose_into(matrix, columns, (rows, columns), &mut transposed, rows);
        return transposed;
    }
    // each thread's band of the transpose's rows: the matrix's columns band_start..band_start + band
    let band = columns.div_ceil(threads).next_multiple_of(BAND_ALIGN);
    transposed.par_chunks_mut(band * rows).enumerate().for_each(|(index, lines)| {
        let band_start = index * band;
        let width = lines.len() / rows;
        transpose_into(&matrix[band_start..], columns, (rows, width), lines, rows);
    });
    transposed
}

/// The columns of a thread's band of [`transpose`] are a multiple of this, so that its blocks stay whole.
const BAND_ALIGN: usize = 8;

/// dest[c * dest_stride + r] = source[r * source_stride + c] for r < `rows`, c < `columns`.
#[inline]
pub(crate) fn transpose_into(
    source: &[f32],
    source_stride: usize,
    (rows, columns): (usize, usize),
    dest: &mut [f32],
    dest_stride: usize,
) {
    let strides = (source_stride, dest_stride);
    let (covered_rows, covered_columns) = whole_eights(source, dest, strides, (rows, columns));
    // what the 8 x 8 blocks left: the covered rows' last columns, then the other rows' every column
    fours(source, dest, strides, (0..covered_rows, covered_columns..columns));
    fours(source, dest, strides, (covered_rows..rows, 0..columns));
}

/// Transposes the whole 8 x 8 blocks of the first `rows` x `columns` at the AVX2 and AVX-512 levels; the rows and
/// columns they covered (none at the scalar level).
fn whole_eights(source: &[f32], dest: &mut [f32], strides: Strides, (rows, columns): (usize, usize)) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        let covered = (rows / 8 * 8, columns / 8 * 8);
        // SAFETY: the level is at most what the CPU has, and AVX2 comes with AVX.
        unsafe { eights(source, dest, strides, covered) };
        return covered;
    }
    (0, 0)
}

/// The strides of a transpose's source and destination rows.
type Strides = (usize, usize);

/// Transposes the rows `rows` by the columns `columns` of the source: blocks of 4 x 4 values in registers, the
/// edges value by value.
fn fours(
    source: &[f32],
    dest: &mut [f32],
    (source_stride, dest_stride): Strides,
    (rows, columns): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    let whole_rows = rows.start + rows.len() / 4 * 4;
    let whole_columns = columns.start + columns.len() / 4 * 4;
    for row in (rows.start..whole_rows).step_by(4) {
        for column in (columns.start..whole_columns).step_by(4) {
            let block: [[f32; 4]; 4] = std::array::from_fn(|offset| {
                let values = &source[(row + offset) * source_stride + column..][..4];
                [values[0], values[1], values[2], values[3]]
            });
            for (offset, values) in transpose4(block).iter().enumerate() {
                dest[(column + offset) * dest_stride + row..][..4].copy_from_slice(values);
            }
        }
    }
    for row in rows {
        let from = if row < whole_rows { whole_columns } else { columns.start };
        for column in from..columns.end {
            dest[column * dest_stride + row] = source[row * source_stride + column];
        }
    }
}

/// The transpose of a 4 x 4 block, in SSE registers (part of x86-64's baseline) where there are some.
#[inline(always)]
fn transpose4(block: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
        };
        let mut transposed = [[0.0f32; 4]; 4];
        // SAFETY: each load and store covers one [f32; 4] of the arrays; SSE is part of x86-64's baseline.
        unsafe {
            let [a, b, c, d] = block.map(|row| _mm_loadu_ps(row.as_ptr()));
            let (ab_low, cd_low) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
            let (ab_high, cd_high) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
            let rows = [
                _mm_movelh_ps(ab_low, cd_low),
                _mm_movehl_ps(cd_low, ab_low),
                _mm_movelh_ps(ab_high, cd_high),
                _mm_movehl_ps(cd_high, ab_high),
            ];
            for (out, row) in transposed.iter_mut().zip(rows) {
                _mm_storeu_ps(out.as_mut_ptr(), row);
            }
        }
        transposed
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::array::from_fn(|row| std::array::from_fn(|column| block[column][row]))
}

/// Transposes the first `rows` x `columns` of the source (both multiples of 8) in blocks of 8 x 8 values, each
/// turned in AVX registers: pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
///
/// # Safety
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn eights(
    source: &[f32],
    dest: &mut [f32],
    (source_stride, dest_stride): Strides,
    (rows, columns): (usize, usize),
) {
    use std::arch::x86_64::{
        _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps,
    };
    for row in (0..rows).step_by(8) {
        for column in (0..columns).step_by(8) {
            // SAFETY: each load reads 8 values of a slice checked to hold them; AVX is enabled.
            let r: [_; 8] = std::array::from_fn(|offset| unsafe {
                _mm256_loadu_ps(source[(row + offset) * source_stride + column..][..8].as_ptr())
            });
            let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
            let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
            let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
            let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
            let (s0, s1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
            let (s2, s3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
            let (s4, s5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
            let (s6, s7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
            let out = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (offset, values) in out.into_iter().enumerate() {
                let line = &mut dest[(column + offset) * dest_stride + row..][..8];
                // SAFETY: the store writes 8 values of a slice checked to hold them; AVX is enabled.
                unsafe { _mm256_storeu_ps(line.as_mut_ptr(), values) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::with_simd_level;
    use crate::kernels::with_kernel_threads;

    /// The transpose's definition: out[c][r] = matrix[r][c].
    fn assert_transposed(matrix: &[f32], transposed: &[f32], (rows, columns): (usize, usize), case: &str) {
        assert_eq!(transposed.len(), matrix.len(), "{case}");
        for (column, line) in transposed.chunks_exact(rows).enumerate() {
            for (row, &value) in line.iter().enumerate() {
                assert_eq!(value, matrix[row * columns + column], "{case}: [{column}][{row}]");
            }
        }
    }

    #[test]
    fn the_blocked_transpose_moves_every_value_on_odd_shapes_at_every_level_and_thread_count() {
        let shapes = [(1, 1), (3, 5), (4, 4), (8, 8), (9, 6), (13, 37), (17, 23), (64, 784), (400, 784), (403, 517)];
        for (rows, columns) in shapes {
            let matrix: Vec<f32> = (0..rows * columns).map(|i| i as f32).collect();
            for level in SimdLevel::ALL.into_iter().filter(|&level| level <= SimdLevel::detected()) {
                for threads in [1, 2] {
                    let transposed =
                        with_simd_level(level, || with_kernel_threads(threads, || transpose(&matrix, rows)));
                    assert_transposed(
                        &matrix,
                        &transposed,
                        (rows, columns),
                        &format!("{rows}x{columns} {level:?} {threads}"),
                    );
                }
            }
        }
    }

    #[test]
    fn a_shared_transpose_is_made_once_and_read_by_every_thread_that_asks() {
        // large enough to be made in bands on both threads, while the other shard's thread waits for it
        let (rows, columns) = (400, 784);
        let matrix: Vec<f32> = (0..rows * columns).map(|i| i as f32).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool of 2 threads");
        let shared = SharedTranspose::default();
        let ask = || with_kernel_threads(1, || shared.get(&matrix, rows).as_ptr() as usize);
        let (first, second) = pool.install(|| rayon::join(ask, ask));
        assert_eq!(first, second, "both threads read the one transpose");
        assert_transposed(&matrix, shared.get(&matrix, rows), (rows, columns), "on a pool");
        // a larger pool, every thread a shard asking at once: made on one thread, the others running what they find
        let wide = rayon::ThreadPoolBuilder::new().num_threads(4).build().expect("a pool of 4 threads");
        for _ in 0..20 {
            let shared = SharedTranspose::default();
            let ask = |_| with_kernel_threads(1, || shared.get(&matrix, rows).as_ptr() as usize);
            let pointers: Vec<usize> = wide.install(|| (0..4).into_par_iter().map(ask).collect());
            assert!(pointers.windows(2).all(|pair| pair[0] == pair[1]), "one transpose for 4 shards");
        }
        let alone = SharedTranspose::default();
        assert_transposed(&matrix, alone.get(&matrix, rows), (rows, columns), "off rayon's threads");
    }

    #[test]
    fn a_transpose_into_strided_rows_leaves_the_rest_of_the_destination() {
        // an 11 x 19 window of a 16 x 24 matrix, into a destination with rows of 13 values, 2 of them spare
        let (rows, columns, source_stride, dest_stride) = (11, 19, 24, 13);
        let source: Vec<f32> = (0..16 * source_stride).map(|i| i as f32).collect();
        for level in SimdLevel::ALL.into_iter().filter(|&level| level <= SimdLevel::detected()) {
            let mut dest = vec![-1.0f32; columns * dest_stride];
            with_simd_level(level, || transpose_into(&source, source_stride, (rows, columns), &mut dest, dest_stride));
            for (column, line) in dest.chunks_exact(dest_stride).enumerate() {
                for (row, &value) in line.iter().enumerate() {
                    let expected = if row < rows { source[row * source_stride + column] } else { -1.0 };
                    assert_eq!(value, expected, "{level:?} [{column}][{row}]");
                }
            }
        }
    }
}
