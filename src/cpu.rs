//! Helpers shared by the fused CPU kernels: raw f32 slices of candle storage, and how many threads a kernel uses.

use candle_core::{CpuStorage, Layout};

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

/// Work below this many scalar operations runs on one thread: sharing it costs more than it saves.
pub const PARALLEL_WORK: usize = 1 << 16;

/// The matrix-multiply threads for `work` multiply-adds: candle's thread setting, or one for small products.
pub fn gemm_parallelism(work: usize) -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 && work > PARALLEL_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// True when an elementwise kernel over `work` values is worth spreading over rayon's threads.
pub fn worth_parallel(work: usize) -> bool {
    candle_core::utils::get_num_threads() > 1 && work > 4 * PARALLEL_WORK
}
