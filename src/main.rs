//! The `elbo` command line: a thin layer over the library.

mod cli;

/// Every tensor op allocates a fresh output buffer; glibc's malloc hands large ones back to the kernel on free,
/// so each step paid page faults for them. mimalloc keeps and reuses freed memory (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Never hand freed pages back to the kernel: every command frees and reallocates the same large buffers step
    // after step (training, the IWAE bound's chunks, an autoencoder's activations), and each fresh page is a
    // fault and a zeroing (BENCHMARKS.md: the IWAE bound 15-25% and the conv model 9% faster, peak memory 0-10%
    // higher).
    elbo::runtime::keep_freed_memory();
    cli::run()
}
