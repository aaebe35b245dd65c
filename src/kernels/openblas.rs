//! The matrix multiply through the system's OpenBLAS (`--features openblas`), in place of the `gemm` crate.
//!
//! Only `cblas_sgemm` and `openblas_set_num_threads` are called. OpenBLAS is told once to use one thread per
//! call: elbo spreads work over its own threads (one shard of a batch each, or blocks of one product here),
//! and a second thread pool would fight them for the cores.

use std::ffi::c_int;
use std::sync::Once;

use rayon::prelude::*;

use super::{Destination, Operand};

/// CBLAS's `CblasRowMajor`.
const ROW_MAJOR: c_int = 101;
/// CBLAS's `CblasNoTrans`.
const NO_TRANSPOSE: c_int = 111;
/// CBLAS's `CblasTrans`.
const TRANSPOSE: c_int = 112;

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        layout: c_int,
        transpose_a: c_int,
        transpose_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
}

/// How CBLAS reads a `rows` x `columns` operand: transposed or not, and its leading dimension; `None` when its
/// strides fit neither (then the caller falls back to the `gemm` crate).
fn cblas_view(operand: &Operand, rows: usize, columns: usize) -> Option<(c_int, c_int)> {
    let leading = if operand.column_stride == 1 && operand.row_stride >= columns.max(1) {
        (NO_TRANSPOSE, operand.row_stride)
    } else if operand.row_stride == 1 && operand.column_stride >= rows.max(1) {
        (TRANSPOSE, operand.column_stride)
    } else {
        return None;
    };
    Some((leading.0, c_int::try_from(leading.1).ok()?))
}

/// dst (`m` x `n`, row-major) = lhs · rhs, or dst + that, on `threads` threads (blocks of dst's rows, or of its
/// columns when it is wider than tall); false, with nothing written, when CBLAS cannot take these operands.
///
/// # Safety
/// As for [`super::multiply_into`]: `dst` valid for m * n writes (and reads, when accumulating), overlapping
/// neither operand; m, k, n positive.
pub(super) unsafe fn multiply(
    dst: *mut f32,
    lhs: Operand,
    rhs: Operand,
    (m, k, n): (usize, usize, usize),
    destination: Destination,
    threads: usize,
) -> bool {
    let (Some(lhs_view), Some(rhs_view), Ok(_), Ok(_), Ok(_)) =
        (cblas_view(&lhs, m, k), cblas_view(&rhs, k, n), c_int::try_from(m), c_int::try_from(k), c_int::try_from(n))
    else {
        return false;
    };
    assert!(lhs.values.len() >= lhs.extent(m, k) && rhs.values.len() >= rhs.extent(k, n));
    static ONE_THREAD_EACH: Once = Once::new();
    // SAFETY: a plain setter of OpenBLAS, called once before any multiply.
    ONE_THREAD_EACH.call_once(|| unsafe { openblas_set_num_threads(1) });
    let beta = if destination == Destination::Accumulate { 1.0 } else { 0.0 };
    let split_columns = n > m;
    let extent = if split_columns { n } else { m };
    let block_size = extent.div_ceil(threads.max(1));
    let dst_address = dst as usize;
    let block = |index: usize| {
        let first = index * block_size;
        let size = block_size.min(extent - first);
        // Where the block starts in lhs, rhs and dst, and its rows and columns.
        let (lhs_offset, rhs_offset, dst_offset, rows, columns) = if split_columns {
            (0, first * rhs.column_stride, first, m, size)
        } else {
            (first * lhs.row_stride, 0, first * n, size, n)
        };
        // SAFETY: the blocks are disjoint and inside dst's m x n values; the assertion above keeps every operand
        // index the strides reach inside its slice (a block only starts further in and spans less); every size
        // fits a c_int (checked above).
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                lhs_view.0,
                rhs_view.0,
                rows as c_int,
                columns as c_int,
                k as c_int,
                1.0,
                lhs.values.as_ptr().add(lhs_offset),
                lhs_view.1,
                rhs.values.as_ptr().add(rhs_offset),
                rhs_view.1,
                beta,
                (dst_address as *mut f32).add(dst_offset),
                n as c_int,
            );
        }
    };
    let blocks = extent.div_ceil(block_size);
    if blocks > 1 {
        (0..blocks).into_par_iter().for_each(block);
    } else {
        block(0);
    }
    true
}
