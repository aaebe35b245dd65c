//! Helpers shared by the fused CPU kernels: raw f32 slices of candle storage, a matrix multiply on plain slices,
//! and how many threads a kernel uses.

use std::cell::Cell;

use parking_lot::RwLockReadGuard;

use candle_core::{CpuStorage, Layout, Storage, Tensor};

#[cfg(feature = "openblas")]
mod openblas;

/// Which library multiplies the dense and convolution layers' matrices in this build.
pub const MATMUL_BACKEND: &str = if cfg!(feature = "openblas") { "OpenBLAS (system)" } else { "gemm crate" };

/// The values of a contiguous f32 tensor; an error for other dtypes or layouts.
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, kernel: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{kernel}: needs contiguous f32 tensors"),
    }
}

/// The mutable values of a contiguous f32 tensor; an error for other dtypes or layouts.
pub fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    kernel: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{kernel}: needs contiguous f32 tensors"),
    }
}

/// Read access to a tensor's storage: hold it while slices from [`cpu_f32`] are in use.
pub type StorageGuard<'a> = (RwLockReadGuard<'a, Storage>, &'a Layout);

/// Locks the storage of each of `tensors` for reading.
pub fn read_all<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Vec<StorageGuard<'a>> {
    tensors.into_iter().map(Tensor::storage_and_layout).collect()
}

/// The values of a contiguous f32 CPU tensor behind a read guard; an error names `kernel` for anything else.
pub fn cpu_f32<'a>(guard: &'a StorageGuard<'_>, kernel: &str) -> candle_core::Result<&'a [f32]> {
    match &*guard.0 {
        Storage::Cpu(storage) => contiguous_f32(storage, guard.1, kernel),
        _ => candle_core::bail!("{kernel}: needs tensors on the CPU"),
    }
}

/// Work below this many scalar operations runs on one thread: sharing it costs more than it saves.
pub const PARALLEL_WORK: usize = 1 << 16;

thread_local! {
    /// The threads this thread's kernels may use while it runs one shard of a batch (0: no limit set).
    static SHARD_THREADS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `work` with the kernels it calls on this thread limited to `threads` threads: for a shard of a batch
/// whose other shards run on the other threads, where kernels that split themselves over every thread would
/// only wait on each other.
pub fn with_kernel_threads<R>(threads: usize, work: impl FnOnce() -> R) -> R {
    let before = SHARD_THREADS.with(|limit| limit.replace(threads.max(1)));
    let result = work();
    SHARD_THREADS.with(|limit| limit.set(before));
    result
}

/// The threads kernels may use from here: candle's thread setting, or the limit of [`with_kernel_threads`].
pub fn kernel_threads() -> usize {
    match SHARD_THREADS.with(Cell::get) {
        0 => candle_core::utils::get_num_threads(),
        limit => limit,
    }
}

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
#[cfg(feature = "openblas")]
fn threads_of(parallelism: gemm::Parallelism) -> usize {
    match parallelism {
        gemm::Parallelism::Rayon(0) => rayon::current_num_threads(),
        gemm::Parallelism::Rayon(threads) => threads,
        _ => 1,
    }
}

/// True when an elementwise kernel over `work` values is worth spreading over rayon's threads.
pub fn worth_parallel(work: usize) -> bool {
    kernel_threads() > 1 && work > 4 * PARALLEL_WORK
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
    #[cfg(feature = "openblas")]
    {
        // SAFETY: the caller's promises are the ones `openblas::multiply` asks for.
        if unsafe { openblas::multiply(dst, lhs, rhs, (m, k, n), destination, threads_of(parallelism)) } {
            return;
        }
    }
    assert!(lhs.values.len() >= lhs.extent(m, k) && rhs.values.len() >= rhs.extent(k, n));
    // SAFETY: the assertion keeps every operand index the strides reach inside its slice; the caller vouches for
    // dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            destination == Destination::Accumulate,
            lhs.values.as_ptr(),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// True when this CPU has AVX2 and FMA (checked once, then cached by the standard library).
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function whose body is compiled twice, for AVX2 + FMA (8 float lanes per instruction) and as
/// built (SSE's 4 on x86-64), the right one picked at run time. The numbers are the same either way: Rust never
/// contracts a * b + c into a fused multiply-add by itself, so only the vector width changes.
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled with AVX2 and FMA. Safety: only called where the CPU has them.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::cpu::has_avx2_fma() {
                    // SAFETY: the CPU has the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

wide_fn! {
    /// total += part, value by value.
    pub fn add_to(total: &mut [f32], part: &[f32]) {
        total.iter_mut().zip(part).for_each(|(total, &value)| *total += value);
    }
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
    /// accumulate: whichever multiply the build uses (the `gemm` crate, or OpenBLAS) gives the product.
    #[test]
    fn matmul_matches_the_definition() {
        let parallelisms = [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)];
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (33, 17, 65), (130, 257, 9), (1, 40, 1)] {
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
}
