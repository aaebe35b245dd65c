//! The hot CPU kernels, each beside its plain twin (the tests' oracle): matrix multiplies (and a dense layer's
//! products on mostly-zero inputs), transposes (a dense layer's W^T made once by a batch's shards together), the
//! SIMD level they run at, branch-free math functions, fused activations,
//! likelihood terms with their gradients, convolutions as im2col + GEMM (3 x 3 stride-1 ones, and their weight
//! gradients, by Winograd's F(4 x 4, 3 x 3)), GroupNorm and nearest upsampling with their
//! gradients, beta-TCVAE's KL decomposition with its gradient, and the in-place optimiser updates. Everything here
//! works on f32 slices of candle's CPU storage; other devices and dtypes take candle's own ops.

pub mod activation;
pub mod batch_norm;
pub mod block_conv;
pub mod conv;
pub mod fast_math;
pub mod group_norm;
pub mod likelihood;
pub mod matmul;
pub mod optimizer;
pub mod recycle;
pub mod simd;
pub mod sparse;
pub mod tcvae;
pub mod transpose;
pub mod upsample;
pub mod winograd;

use std::cell::Cell;

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use parking_lot::RwLockReadGuard;

pub use matmul::{
    gemm_parallelism, matmul, padded_stride, product, slow_to_read_down, Destination, Operand, MATMUL_BACKEND,
    PARALLEL_WORK,
};
pub(crate) use simd::wide_fn;
pub use simd::{add_to, extend_with_unit_values, prefetch, simd_level, SimdLevel};
pub use transpose::transpose;

/// The values of a contiguous f32 tensor; an error for other dtypes or layouts.
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, kernel: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{kernel}: needs contiguous f32 tensors"),
    }
}

/// `read` applied to the values of a contiguous f32 CPU tensor; `None` for other devices, dtypes or layouts (the
/// caller then takes candle's own ops).
pub(crate) fn with_f32<R>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return None };
    contiguous_f32(cpu, layout, "f32 kernel").ok().map(read)
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

thread_local! {
    /// The threads this thread's kernels may use while it runs one shard of a batch (0: no limit set).
    static SHARD_THREADS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `work` with the kernels it calls on this thread limited to `threads` threads: for a shard of a batch
/// whose other shards run on the other threads, where kernels that split themselves over every thread would
/// only wait on each other.
pub fn with_kernel_threads<R>(threads: usize, work: impl FnOnce() -> R) -> R {
    with_shard_threads(threads.max(1), work)
}

/// Runs `work` with no limit of [`with_kernel_threads`] on this thread: for work that may start on a rayon thread in
/// the middle of a shard (a thread waiting for its shard's other half runs queued work meanwhile, such as another
/// caller's whole training loop), whose choices must not depend on where it started.
pub fn without_kernel_thread_limit<R>(work: impl FnOnce() -> R) -> R {
    with_shard_threads(0, work)
}

/// Runs `work` with [`SHARD_THREADS`] at `limit` on this thread, restored afterwards.
fn with_shard_threads<R>(limit: usize, work: impl FnOnce() -> R) -> R {
    let before = SHARD_THREADS.with(|threads| threads.replace(limit));
    let result = work();
    SHARD_THREADS.with(|threads| threads.set(before));
    result
}

/// The threads kernels may use from here: candle's thread setting, or the limit of [`with_kernel_threads`].
pub fn kernel_threads() -> usize {
    match SHARD_THREADS.with(Cell::get) {
        0 => candle_core::utils::get_num_threads(),
        limit => limit,
    }
}

/// True when an elementwise kernel over `work` values is worth spreading over rayon's threads.
pub fn worth_parallel(work: usize) -> bool {
    kernel_threads() > 1 && work > 4 * PARALLEL_WORK
}
