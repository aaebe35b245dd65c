//! CPU threading for candle, chosen for small dense models on few cores.
//!
//! candle runs matrix multiplies on a rayon pool (`RAYON_NUM_THREADS`) and elementwise ops on a separate spinning
//! barrier pool (`CANDLE_NUM_THREADS`). At the batch sizes of a VAE the elementwise ops are small, and the two
//! pools spinning against each other cost far more than they save: measured on 2 cores, one MNIST epoch ran 6-7x
//! faster with elementwise ops inline while another process shared the machine (see BENCHMARKS.md). So elbo keeps
//! its threads for the matrix multiplies and runs elementwise ops on the calling thread, unless the user set
//! `CANDLE_NUM_THREADS` themselves.

pub use crate::kernels::{simd_level, SimdLevel, MATMUL_BACKEND};

use candle_core::Device;

/// Whether several host threads may work on tensors on `device` at once: on the CPU only. On CUDA candle gives each
/// host thread its own stream (CUDA's per-thread default stream), and work on two streams runs in no set order, so
/// one thread's kernels can read a tensor before another thread's kernels have written it. Seen on an H200, where
/// Adam's updates spread over worker threads read gradients still being computed: large batches trained
/// differently from run to run and diverged (BENCHMARKS.md, "CUDA").
pub fn host_threads_may_share(device: &Device) -> bool {
    device.is_cpu()
}

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` of the bundled `mimalloc.h` (v3), for which
/// libmimalloc-sys names no constant.
const MIMALLOC_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the program frees instead of handing it back to the kernel after mimalloc's 1 s delay, for
/// programs whose global allocator is mimalloc (the `elbo` binary's, which calls this first thing). Work that
/// allocates a fresh large output per operation or step then reuses pages instead of faulting in zeroed ones:
/// an AutoencoderKL's decoding ran 12-19% faster at 256 x 256 with a 15% higher peak, the IWAE bound 15-25% faster
/// (BENCHMARKS.md).
pub fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's options; any value is valid for this one, at any time (-1: never purge)
    unsafe { libmimalloc_sys::mi_option_set(MIMALLOC_PURGE_DELAY, -1) }
}

/// Runs `work` for tensors on `device` on one of rayon's compute threads, the caller waiting for it (in place where
/// it is one already, or where host threads may not share the device: [`host_threads_may_share`]). Parallel work
/// started there wakes at most the pool's other threads; started from outside the pool, every parallel region also
/// puts the caller to sleep on a latch and wakes it at the end. The reference MLP trained 1-7% faster from a
/// compute thread, the Burda et al. MLP 2-5% (BENCHMARKS.md, the twentieth session).
pub fn on_compute_threads<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    let unlimited = || crate::kernels::without_kernel_thread_limit(work);
    match rayon::current_thread_index() {
        None if host_threads_may_share(device) => rayon::scope(|_| unlimited()),
        _ => unlimited(),
    }
}

/// Sets the threads used by matrix multiplies (0 keeps candle's default: all cores) and runs elementwise ops
/// inline. Call before any tensor work: candle reads these settings once. Returns the matrix-multiply threads.
pub fn configure_cpu_threads(threads: usize) -> usize {
    if threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    candle_core::utils::get_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads and sets mimalloc's options only
        let (before, after) = unsafe {
            let before = libmimalloc_sys::mi_option_get(MIMALLOC_PURGE_DELAY);
            keep_freed_memory();
            (before, libmimalloc_sys::mi_option_get(MIMALLOC_PURGE_DELAY))
        };
        // 1000 ms is mimalloc v3's default purge delay; the options beside it default to 1 and 0
        assert_eq!((before, after), (1000, -1));
    }

    /// Work handed to the compute threads runs on one of them, and without the thread limit of a shard it may
    /// start inside (a training loop picked up by a thread waiting in a shard must plan for every thread).
    #[test]
    fn work_runs_on_a_compute_thread_without_a_shards_limit() {
        use crate::kernels::{kernel_threads, with_kernel_threads};
        let unlimited = kernel_threads();
        assert!(on_compute_threads(&Device::Cpu, rayon::current_thread_index).is_some());
        let inside_a_shard =
            rayon::scope(|_| with_kernel_threads(1, || on_compute_threads(&Device::Cpu, kernel_threads)));
        assert_eq!(inside_a_shard, unlimited);
        assert_eq!(with_kernel_threads(1, kernel_threads), 1);
    }
}
