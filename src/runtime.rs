//! CPU threading for candle, chosen for small dense models on few cores.
//!
//! candle runs matrix multiplies on a rayon pool (`RAYON_NUM_THREADS`) and elementwise ops on a separate spinning
//! barrier pool (`CANDLE_NUM_THREADS`). At the batch sizes of a VAE the elementwise ops are small, and the two
//! pools spinning against each other cost far more than they save: measured on 2 cores, one MNIST epoch ran 6-7x
//! faster with elementwise ops inline while another process shared the machine (see BENCHMARKS.md). So elbo keeps
//! its threads for the matrix multiplies and runs elementwise ops on the calling thread, unless the user set
//! `CANDLE_NUM_THREADS` themselves.

pub use crate::kernels::{simd_level, SimdLevel, MATMUL_BACKEND};

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
