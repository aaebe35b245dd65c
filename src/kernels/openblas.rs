//! The matrix multiply through the system's OpenBLAS (`--features openblas`), in place of the `gemm` crate.
//!
//! Only `cblas_sgemm` and `openblas_set_num_threads` are called. OpenBLAS is told once to use one thread per
//! call: elbo spreads a product over its own threads in blocks ([`super::multiply_into`]), and a second thread
//! pool would fight them for the cores.

use std::ffi::c_int;
use std::sync::Once;

use super::{Block, Operand};

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

/// How CBLAS reads the two operands of an `m` x `k` by `k` x `n` product; `None` when it cannot take them (then the
/// caller uses the `gemm` crate).
pub(super) fn views(lhs: &Operand, rhs: &Operand, (m, k, n): (usize, usize, usize)) -> Option<Views> {
    let fits = |size: usize| c_int::try_from(size).is_ok();
    (fits(m) && fits(k) && fits(n)).then_some(())?;
    Some((cblas_view(lhs, m, k)?, cblas_view(rhs, k, n)?))
}

/// CBLAS's views of lhs and rhs.
pub(super) type Views = ((c_int, c_int), (c_int, c_int));

/// One block of dst (`[m, n]`, row-major) = lhs · rhs, or dst + that (`accumulate`), on this thread.
///
/// # Safety
/// As for [`super::multiply_into`]: `dst` valid for the block's writes (and reads, when accumulating),
/// overlapping neither operand; the block inside every operand.
pub(super) unsafe fn multiply(
    dst: *mut f32,
    lhs: &Operand,
    rhs: &Operand,
    (lhs_view, rhs_view): Views,
    (k, n): (usize, usize),
    block: Block,
    accumulate: bool,
) {
    static ONE_THREAD_EACH: Once = Once::new();
    // SAFETY: a plain setter of OpenBLAS, called once before any multiply.
    ONE_THREAD_EACH.call_once(|| unsafe { openblas_set_num_threads(1) });
    // SAFETY: the caller's promises; every size fits a c_int (checked by `views`).
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            lhs_view.0,
            rhs_view.0,
            block.rows as c_int,
            block.columns as c_int,
            k as c_int,
            1.0,
            lhs.values.as_ptr().add(block.lhs_offset),
            lhs_view.1,
            rhs.values.as_ptr().add(block.rhs_offset),
            rhs_view.1,
            if accumulate { 1.0 } else { 0.0 },
            dst.add(block.dst_offset),
            n as c_int,
        );
    }
}
