//! CPU threading for candle, chosen for small dense models on few cores.
//!
//! candle runs matrix multiplies on a rayon pool (`RAYON_NUM_THREADS`) and elementwise ops on a separate spinning
//! barrier pool (`CANDLE_NUM_THREADS`). At the batch sizes of a VAE the elementwise ops are small, and the two
//! pools spinning against each other cost far more than they save: measured on 2 cores, one MNIST epoch ran 6-7x
//! faster with elementwise ops inline while another process shared the machine (see BENCHMARKS.md). So elbo keeps
//! its threads for the matrix multiplies and runs elementwise ops on the calling thread, unless the user set
//! `CANDLE_NUM_THREADS` themselves.

pub use crate::kernels::{simd_level, SimdLevel, MATMUL_BACKEND};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
///
/// While `work` runs there, the pool's other threads wait for its parallel work spinning instead of sleeping
/// (`help_until`), as OpenMP's threads do by default: a step's parallel regions (the shards, the whole-batch
/// product, Adam's parts) each woke the other thread from its sleep, which in a virtual machine takes a system call
/// and an interrupt between the cores (row 1 of the benchmark matrix on a 2-core Intel Xeon: 9.5 context switches
/// a step; the scheduler 5% of the samples). Measured there, alternating whole runs (BENCHMARKS.md, the
/// twenty-first session): row 1's second epoch 3-28% faster in two sets of runs, the same numbers to the bit.
pub fn on_compute_threads<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    let unlimited = || crate::kernels::without_kernel_thread_limit(work);
    match rayon::current_thread_index() {
        None if host_threads_may_share(device) => {
            let finished = AtomicBool::new(false);
            rayon::scope(|scope| {
                let finished = &finished;
                let owner = rayon::current_thread_index();
                scope.spawn_broadcast(move |_, context| {
                    // not on the thread that runs `work`, nor on one that runs another caller's (which a thread
                    // waiting in that work may pick this up on): it would stop that work until this one finished
                    if Some(context.index()) != owner && !RUNS_WORK.get() {
                        help_until(finished);
                    }
                });
                let _finish = Finish { finished, ran_work_before: RUNS_WORK.replace(true) };
                unlimited()
            })
        }
        _ => unlimited(),
    }
}

thread_local! {
    /// Whether this thread runs [`on_compute_threads`]' work (its stack may hold that work under a job it picked
    /// up while waiting).
    static RUNS_WORK: Cell<bool> = const { Cell::new(false) };
}

/// Tells the threads helping [`on_compute_threads`]' work that it is over, and this thread that it no longer runs
/// it, when dropped: also when the work panics, which would otherwise leave the helpers spinning and the scope
/// waiting for them.
struct Finish<'a> {
    finished: &'a AtomicBool,
    ran_work_before: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        RUNS_WORK.set(self.ran_work_before);
        self.finished.store(true, Ordering::Release);
    }
}

/// How long a helping thread spins without work before it naps.
const SPIN_FOR: Duration = Duration::from_millis(2);
/// A helping thread's first nap, doubled at each nap that found no work since, up to [`LONGEST_NAP`].
const SHORTEST_NAP: Duration = Duration::from_micros(50);
/// A helping thread's longest nap: how late at most it picks up work after a long serial stretch (an epoch's end).
const LONGEST_NAP: Duration = Duration::from_millis(1);

/// Pause instructions between two looks for work of a helping thread without any: each look takes locks and
/// reads the other threads' queues, whose cache lines those threads then have to fetch back.
const PAUSES_BETWEEN_LOOKS: usize = 8;

/// Runs the pool's jobs as they come (`rayon::yield_now`) until `finished`: spinning between them, and after
/// [`SPIN_FOR`] without one, napping ever longer up to [`LONGEST_NAP`]. Jobs meant for this thread alone (a
/// broadcast's part) are among those it runs, so nothing waits on it.
fn help_until(finished: &AtomicBool) {
    let (mut idle_from, mut nap) = (None, SHORTEST_NAP);
    while !finished.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            (idle_from, nap) = (None, SHORTEST_NAP);
            continue;
        }
        let idle_since = *idle_from.get_or_insert_with(Instant::now);
        if idle_since.elapsed() < SPIN_FOR {
            (0..PAUSES_BETWEEN_LOOKS).for_each(|_| std::hint::spin_loop());
        } else {
            std::thread::sleep(nap);
            nap = (nap * 2).min(LONGEST_NAP);
        }
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

    /// Work on the compute threads finishes while the pool's other threads help it: with parallel regions and
    /// broadcasts (whose parts only the helping threads can run), several callers at once (whose helpers may be
    /// picked up by each other's threads), and work that panics, whose panic reaches its caller.
    #[test]
    fn helped_work_finishes_with_other_callers_and_panics_reach_the_caller() {
        use rayon::prelude::*;
        let rounds = 200;
        let work = || {
            (0..rounds)
                .map(|round| {
                    let broadcast: usize = rayon::broadcast(|context| context.index() + round).into_iter().sum();
                    broadcast + (0..1000usize).into_par_iter().sum::<usize>()
                })
                .sum::<usize>()
        };
        let threads = rayon::current_num_threads();
        let per_round = |round: usize| threads * (threads - 1) / 2 + threads * round + 499_500;
        let expected: usize = (0..rounds).map(per_round).sum();
        let results: Vec<usize> = std::thread::scope(|callers| {
            let running: Vec<_> = (0..3).map(|_| callers.spawn(|| on_compute_threads(&Device::Cpu, work))).collect();
            running.into_iter().map(|caller| caller.join().expect("the work finishes")).collect()
        });
        assert_eq!(results, vec![expected; 3]);
        let failed =
            std::panic::catch_unwind(|| on_compute_threads(&Device::Cpu, || -> usize { panic!("work fails") }));
        assert!(failed.is_err());
        assert_eq!(on_compute_threads(&Device::Cpu, work), expected, "the pool works on after a panic");
    }
}
