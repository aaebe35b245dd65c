//! The `elbo` command line: a thin layer over the library.

mod cli;

/// Every tensor op allocates a fresh output buffer; glibc's malloc hands large ones back to the kernel on free,
/// so each step paid page faults for them. mimalloc keeps and reuses freed memory (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
