//! A dense layer's products where its input is mostly zeros, as images of strokes on a blank page are (MNIST's
//! pixels are 81% zeros): the forward product x W^T and the weight gradient (dL/dpre)^T x touch only the input's
//! nonzero values, so their work falls with the input's density, where a matrix multiply does every product of
//! zeros too. Both read the input column by column ([`SparseColumns`]: one branch-free pass over its values, one over
//! its nonzeros), and are given up for the matrix multiplies where the input has more nonzeros than
//! [`MOST_DENSITY`] allows, or the layer fewer than [`FEWEST_OUTPUTS`] outputs. The choice
//! is made here alone, per layer and per batch; `elbo train` reports the fused step, of which this is a part.
//!
//! Each output value is a sum over the nonzero inputs in index order, a product and an add at a time (never fused
//! into one rounding), so every SIMD level gives the same bits; the tests hold both products to the plain sums.

use rayon::prelude::*;

use crate::kernels::simd::made_by_intel;
use crate::kernels::transpose::transpose_into;
use crate::kernels::{kernel_threads, simd_level, wide_fn, SimdLevel};

/// The largest share of nonzero inputs with which a layer takes the sparse products, at every SIMD level of the CPUs
/// where they pay ([`most_density`] says where).
/// Measured on one thread (AMD EPYC Zen 5, BENCHMARKS.md), for 64 rows of 784 inputs and 400 outputs, the forward
/// product and the weight gradient together (the nonzeros' count included) took 52-54% of the two matrix
/// multiplies' time at 19% nonzeros, 73-74% at 30% and 95-97% at 40% at AVX2, and 97% at 19% at AVX-512, whose
/// products run twice as fast (so AVX-512 took the sparse products only up to 10% until W^T was made on both
/// threads). Measured in whole training steps at AVX-512 once W^T was made on both threads (the steps alternating
/// between the two choices in one process): the sparse first layer 8-12% faster on MNIST (19% nonzeros) and 0-3% on
/// MNIST with 27% nonzeros; so 30% at every level.
pub const MOST_DENSITY: f64 = 0.3;

/// The largest share of nonzero inputs with which a layer takes the sparse products on this CPU at the SIMD level in
/// use: [`MOST_DENSITY`], or none (the matrix multiplies always) on an Intel CPU at AVX-512. There the matrix
/// multiplies, which read W in place where the sparse forward product needs W^T made every step, won at every
/// density measured: on a 2-core Intel Xeon (BENCHMARKS.md, the nineteenth session), whole steps of the reference
/// MLP, alternating between the two in blocks of one run, took 4-5% less time with the matrix multiplies at 9%
/// nonzeros, 5% at 12%, 5-8% at 13% (dynamically binarized MNIST) and 8-11% at 19% (MNIST), the Burda et al. MLP's
/// 7% less at 19%. At AVX2 on the same CPU the sparse products were 3% faster at 19%.
pub fn most_density() -> Option<f64> {
    (simd_level() < SimdLevel::Avx512 || !made_by_intel()).then_some(MOST_DENSITY)
}

/// Layers with fewer outputs keep the matrix multiplies: counting an input's nonzeros costs about as much as
/// `FEWEST_OUTPUTS` / 64 of the products it could save.
pub const FEWEST_OUTPUTS: usize = CHUNK;

/// Outputs summed side by side in registers: 64 floats are 8 AVX2 or 4 AVX-512 vectors.
const CHUNK: usize = 64;

/// Inputs whose weight-gradient sums are made side by side before they are written across into dL/dW's rows.
const BAND: usize = 16;

/// The nonzero values of a row-major matrix, column by column: for each column, the rows where it is nonzero and
/// the values there.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseColumns {
    /// Rows of the full matrix.
    rows: usize,
    /// Where each column's entries start in `row_indices` and `values`, and one past the last column's.
    starts: Vec<usize>,
    /// The row of each nonzero value.
    row_indices: Vec<u32>,
    /// The nonzero values, column by column in row order.
    values: Vec<f32>,
}

impl SparseColumns {
    /// The nonzero values of `matrix` (`columns` per row), or `None` where more than `most_density` of them are
    /// nonzero (the count stops there), the matrix is empty, or its rows do not fit the indices.
    pub fn of(matrix: &[f32], columns: usize, most_density: f64) -> Option<Self> {
        let rows = matrix.len().checked_div(columns)?;
        if rows == 0 || rows > u32::MAX as usize || rows * columns != matrix.len() {
            return None;
        }
        let most = (matrix.len() as f64 * most_density) as usize;
        // the column of each nonzero value, row by row, listed without a branch: every column is written, then kept
        // by counting it only where its value is nonzero (a row writes at most `columns` past the budget)
        let mut listed = vec![0u32; most + columns];
        let (mut row_ends, mut total) = (Vec::with_capacity(rows), 0);
        for line in matrix.chunks_exact(columns) {
            for (column, &value) in line.iter().enumerate() {
                listed[total] = column as u32;
                total += usize::from(value != 0.0);
            }
            if total > most {
                return None;
            }
            row_ends.push(total);
        }
        // starts[column + 1] counts the column's nonzeros, then becomes the running sum
        let mut starts = vec![0usize; columns + 1];
        listed[..total].iter().for_each(|&column| starts[column as usize + 1] += 1);
        for column in 0..columns {
            starts[column + 1] += starts[column];
        }
        let mut next = starts.clone();
        let (mut row_indices, mut values) = (vec![0u32; total], vec![0.0f32; total]);
        let mut row_start = 0;
        for (row, (&row_end, line)) in row_ends.iter().zip(matrix.chunks_exact(columns)).enumerate() {
            for &column in &listed[row_start..row_end] {
                let at = &mut next[column as usize];
                (row_indices[*at], values[*at]) = (row as u32, line[column as usize]);
                *at += 1;
            }
            row_start = row_end;
        }
        Some(SparseColumns { rows, starts, row_indices, values })
    }

    /// Rows of the full matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row of the full matrix.
    pub fn columns(&self) -> usize {
        self.starts.len() - 1
    }

    /// Column `column`'s (row, value) pairs.
    fn column(&self, column: usize) -> (&[u32], &[f32]) {
        let range = self.starts[column]..self.starts[column + 1];
        (&self.row_indices[range.clone()], &self.values[range])
    }

    /// out (`[rows, outputs]`, holding the bias or any start) += x W^T, from the weight's transpose `w_t`
    /// (`[columns, outputs]`, row-major): each input's row of W^T, [`CHUNK`] outputs of it held in registers, is
    /// added into the output rows of the examples where that input is nonzero. A chunk's outputs for every row stay
    /// in cache while all inputs add to them.
    pub fn multiply_transposed_into(&self, w_t: &[f32], out: &mut [f32]) {
        let (rows, columns) = (self.rows, self.columns());
        let outputs = out.len() / rows;
        assert_eq!(w_t.len(), columns * outputs, "W^T must be [columns, outputs]");
        assert_eq!(out.len(), rows * outputs, "out must be [rows, outputs]");
        if !parallel(self.values.len() * outputs) {
            for start in (0..outputs).step_by(CHUNK) {
                add_chunk(self, (w_t, outputs), (out, outputs, start), (start, CHUNK.min(outputs - start)));
            }
            return;
        }
        // each chunk in a buffer of its own, [rows, width], then copied back
        let chunks: Vec<Vec<f32>> = (0..outputs)
            .step_by(CHUNK)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let width = CHUNK.min(outputs - start);
                let mut chunk: Vec<f32> =
                    out.chunks_exact(outputs).flat_map(|row| &row[start..start + width]).copied().collect();
                add_chunk(self, (w_t, outputs), (&mut chunk, width, 0), (start, width));
                chunk
            })
            .collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let (start, width) = (index * CHUNK, chunk.len() / rows);
            for (row, values) in out.chunks_exact_mut(outputs).zip(chunk.chunks_exact(width)) {
                row[start..start + width].copy_from_slice(values);
            }
        }
    }

    /// dL/dW = (dL/dpre)^T x, `[outputs, columns]`, from `grad` (`[rows, outputs]`): each input's column of dL/dW
    /// sums the gradient's rows at the examples where that input is nonzero, [`CHUNK`] outputs by [`BAND`] inputs
    /// at a time, the band's sums then written across into the chunk's rows of dL/dW.
    pub fn weight_gradient(&self, grad: &[f32]) -> Vec<f32> {
        let (rows, columns) = (self.rows, self.columns());
        let outputs = grad.len() / rows;
        assert_eq!(grad.len(), rows * outputs, "grad must be [rows, outputs]");
        let mut gradient = vec![0.0f32; outputs * columns];
        let chunk_rows = |(chunk, lines): (usize, &mut [f32])| {
            let (start, width) = (chunk * CHUNK, lines.len() / columns);
            let mut sums = [0.0f32; BAND * CHUNK];
            for first in (0..columns).step_by(BAND) {
                let count = BAND.min(columns - first);
                band_sums(self, (grad, outputs), (&mut sums, first, count), (start, width));
                write_across(&sums, lines, (first, count), columns);
            }
        };
        if parallel(self.values.len() * outputs) {
            gradient.par_chunks_mut(CHUNK * columns).enumerate().for_each(chunk_rows);
        } else {
            gradient.chunks_mut(CHUNK * columns).enumerate().for_each(chunk_rows);
        }
        gradient
    }
}

/// Writes a band's sums (`sums[offset * CHUNK + line]`, for `count` inputs) across into columns `first..first +
/// count` of `lines` (each `columns` long): their transpose.
fn write_across(sums: &[f32; BAND * CHUNK], lines: &mut [f32], (first, count): (usize, usize), columns: usize) {
    let width = lines.len() / columns;
    transpose_into(sums, CHUNK, (count, width), &mut lines[first..], columns);
}

/// True when `work` multiply-adds are worth spreading over the kernel threads.
fn parallel(work: usize) -> bool {
    kernel_threads() > 1 && work > crate::kernels::PARALLEL_WORK
}

/// Where a kernel writes: a matrix's values, its row stride, and the column its rows start at.
type Target<'a> = (&'a mut [f32], usize, usize);

/// Adds a chunk of a sparse product into `target`: for every input (column of `sparse`), its weights (columns
/// `start..start + width` of row `column` of `weights`, a row-major matrix with `weights.1` columns) times its
/// value, into the target rows of the examples where it is nonzero.
#[inline(always)]
fn add_chunk(sparse: &SparseColumns, weights: (&[f32], usize), target: Target, (start, width): (usize, usize)) {
    add_chunk_wide(sparse, weights.0, weights.1, target.0, target.1, target.2, start, width)
}

wide_fn! {
    /// [`add_chunk`]'s body, compiled for each SIMD level: a full [`CHUNK`] at once in registers, else blocks of
    /// 16 values, then one of 8, then the rest one by one.
    #[allow(clippy::too_many_arguments)]
    fn add_chunk_wide(sparse: &SparseColumns, weights: &[f32], weights_width: usize, target: &mut [f32], stride: usize, offset: usize, start: usize, width: usize) {
        let mut done = 0;
        while width - done >= CHUNK {
            scale_into_rows::<CHUNK>(sparse, (weights, weights_width, start + done), (target, stride, offset + done));
            done += CHUNK;
        }
        while width - done >= 16 {
            scale_into_rows::<16>(sparse, (weights, weights_width, start + done), (target, stride, offset + done));
            done += 16;
        }
        if width - done >= 8 {
            scale_into_rows::<8>(sparse, (weights, weights_width, start + done), (target, stride, offset + done));
            done += 8;
        }
        for lane in done..width {
            scale_into_rows::<1>(sparse, (weights, weights_width, start + lane), (target, stride, offset + lane));
        }
    }
}

/// `N` columns of [`add_chunk`], the weights held in registers across each input's rows.
#[inline(always)]
fn scale_into_rows<const N: usize>(
    sparse: &SparseColumns,
    (weights, weights_width, start): (&[f32], usize, usize),
    (target, stride, offset): Target,
) {
    for column in 0..sparse.columns() {
        let (row_indices, values) = sparse.column(column);
        let weights_row = &weights[column * weights_width + start..][..N];
        let scaled: [f32; N] = std::array::from_fn(|lane| weights_row[lane]);
        for (&row, &value) in row_indices.iter().zip(values) {
            let line = &mut target[row as usize * stride + offset..][..N];
            line.iter_mut().zip(&scaled).for_each(|(sum, &weight)| *sum += value * weight);
        }
    }
}

/// The weight-gradient sums of a band of `count` inputs from `first` on, for outputs `start..start + width`:
/// `sums[offset * CHUNK + line]` = sum over the examples where input `first + offset` is nonzero of its value
/// times `matrix[example, start + line]` (`matrix` row-major with `matrix.1` columns).
#[inline(always)]
fn band_sums(
    sparse: &SparseColumns,
    matrix: (&[f32], usize),
    (sums, first, count): (&mut [f32; BAND * CHUNK], usize, usize),
    (start, width): (usize, usize),
) {
    band_sums_wide(sparse, matrix.0, matrix.1, sums, first, count, start, width)
}

wide_fn! {
    /// [`band_sums`]'s body, compiled for each SIMD level: a full [`CHUNK`] of sums in registers, else blocks of
    /// 16, then one of 8, then the rest one by one.
    #[allow(clippy::too_many_arguments)]
    fn band_sums_wide(sparse: &SparseColumns, matrix: &[f32], matrix_width: usize, sums: &mut [f32; BAND * CHUNK], first: usize, count: usize, start: usize, width: usize) {
        for (offset, column_sums) in sums.chunks_exact_mut(CHUNK).take(count).enumerate() {
            let (row_indices, values) = sparse.column(first + offset);
            let mut done = 0;
            while width - done >= CHUNK {
                weighted_rows::<CHUNK>(&mut column_sums[done..], (matrix, matrix_width, start + done), row_indices, values);
                done += CHUNK;
            }
            while width - done >= 16 {
                weighted_rows::<16>(&mut column_sums[done..], (matrix, matrix_width, start + done), row_indices, values);
                done += 16;
            }
            if width - done >= 8 {
                weighted_rows::<8>(&mut column_sums[done..], (matrix, matrix_width, start + done), row_indices, values);
                done += 8;
            }
            for lane in done..width {
                weighted_rows::<1>(&mut column_sums[lane..], (matrix, matrix_width, start + lane), row_indices, values);
            }
        }
    }
}

/// sums[..N] = sum_k values[k] * (row row_indices[k] of `matrix`, `N` values from column `start`), the sums held
/// in registers.
#[inline(always)]
fn weighted_rows<const N: usize>(
    sums: &mut [f32],
    (matrix, width, start): (&[f32], usize, usize),
    row_indices: &[u32],
    values: &[f32],
) {
    let mut lanes = [0.0f32; N];
    for (&row, &value) in row_indices.iter().zip(values) {
        let line = &matrix[row as usize * width + start..][..N];
        lanes.iter_mut().zip(line).for_each(|(sum, &weight)| *sum += value * weight);
    }
    sums[..N].copy_from_slice(&lanes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{with_kernel_threads, SimdLevel};
    use rand::{Rng, SeedableRng};

    /// A `[rows, columns]` matrix with about `density` of its values nonzero.
    fn sparse_matrix(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, columns: usize, density: f64) -> Vec<f32> {
        (0..rows * columns).map(|_| if rng.random_bool(density) { rng.random_range(-1.0..1.0) } else { 0.0 }).collect()
    }

    fn dense(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// out[r][o] = start[r][o] + sum_i x[r][i] w_t[i][o] in f64.
    fn plain_forward(
        x: &[f32],
        w_t: &[f32],
        start: &[f32],
        (rows, columns, outputs): (usize, usize, usize),
    ) -> Vec<f64> {
        let mut out: Vec<f64> = start.iter().map(|&v| f64::from(v)).collect();
        for r in 0..rows {
            for i in 0..columns {
                for o in 0..outputs {
                    out[r * outputs + o] += f64::from(x[r * columns + i]) * f64::from(w_t[i * outputs + o]);
                }
            }
        }
        out
    }

    /// dW[o][i] = sum_r grad[r][o] x[r][i] in f64.
    fn plain_weight_gradient(x: &[f32], grad: &[f32], (rows, columns, outputs): (usize, usize, usize)) -> Vec<f64> {
        let mut gradient = vec![0.0f64; outputs * columns];
        for r in 0..rows {
            for o in 0..outputs {
                for i in 0..columns {
                    gradient[o * columns + i] += f64::from(grad[r * outputs + o]) * f64::from(x[r * columns + i]);
                }
            }
        }
        gradient
    }

    fn assert_close(got: &[f32], expected: &[f64], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}: length");
        for (index, (&g, &e)) in got.iter().zip(expected).enumerate() {
            assert!((f64::from(g) - e).abs() <= 1e-5 * (1.0 + e.abs()), "{what}[{index}]: {g} against {e}");
        }
    }

    #[test]
    fn the_sparse_products_match_the_plain_sums_on_odd_shapes_at_every_level_and_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // outputs below, at and across the chunk of 64 (and its blocks of 16 and 8); columns across a band of 16; an
        // all-zero row and column
        for (rows, columns, outputs) in
            [(5, 37, 3), (7, 33, 64), (6, 40, 77), (9, 50, 131), (8, 30, 200), (64, 784, 400)]
        {
            let mut x = sparse_matrix(&mut rng, rows, columns, 0.15);
            x[..columns].fill(0.0);
            (0..rows).for_each(|r| x[r * columns + 1] = 0.0);
            let (w_t, start) = (dense(&mut rng, columns * outputs), dense(&mut rng, rows * outputs));
            let grad = dense(&mut rng, rows * outputs);
            let shape = (rows, columns, outputs);
            let sparse = SparseColumns::of(&x, columns, 0.5).expect("15% nonzero is under half");
            assert_eq!((sparse.rows(), sparse.columns()), (rows, columns));
            let mut results = Vec::new();
            for level in SimdLevel::ALL {
                for threads in [1, 2] {
                    let (forward, gradient) = crate::kernels::simd::with_simd_level(level, || {
                        with_kernel_threads(threads, || {
                            let mut out = start.clone();
                            sparse.multiply_transposed_into(&w_t, &mut out);
                            (out, sparse.weight_gradient(&grad))
                        })
                    });
                    assert_close(&forward, &plain_forward(&x, &w_t, &start, shape), "forward");
                    assert_close(&gradient, &plain_weight_gradient(&x, &grad, shape), "weight gradient");
                    results.push((forward, gradient));
                }
            }
            assert!(results.windows(2).all(|pair| pair[0] == pair[1]), "every level and thread count: same bits");
        }
    }

    #[test]
    fn a_matrix_denser_than_asked_is_refused_and_the_count_is_exact() {
        let matrix = [0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0];
        let sparse = SparseColumns::of(&matrix, 4, 0.5).expect("3 of 8 nonzero");
        assert_eq!((sparse.values.len(), sparse.rows(), sparse.columns()), (3, 2, 4));
        assert_eq!(sparse.column(0), (&[1u32][..], &[2.0f32][..]));
        assert_eq!(sparse.column(3), (&[1u32][..], &[3.0f32][..]));
        assert_eq!(sparse.column(1), (&[0u32][..], &[1.0f32][..]));
        assert!(SparseColumns::of(&matrix, 4, 0.25).is_none(), "3 nonzeros over a budget of 2");
        assert!(SparseColumns::of(&matrix, 3, 0.5).is_none(), "8 values are not rows of 3");
        assert!(SparseColumns::of(&matrix, 0, 0.5).is_none());
    }
}
