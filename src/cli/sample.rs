//! `elbo sample`: decode draws from the prior into an image grid.

use std::path::PathBuf;

use clap::Args;
use elbo::outputs::pictures::save_sample_grid;

use super::run_args::RunArgs;

/// Flags of `elbo sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Scale of the prior draws: z ~ N(0, T^2 I).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output PNG (default: RUN/samples.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `elbo sample`.
pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let (trained, device) = args.run.open()?;
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Samples));
    save_sample_grid(&trained.vae, &out, args.n, args.temperature, args.seed, &device)?;
    println!("wrote {} ({} prior samples, temperature {})", out.display(), args.n, args.temperature);
    Ok(())
}
