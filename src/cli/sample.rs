//! `elbo sample`: decode draws from the prior into an image grid.

use std::path::PathBuf;

use clap::Args;
use elbo::outputs::pictures::save_sample_grid;
use elbo::outputs::RunDir;

/// Flags of `elbo sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
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
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `elbo sample`.
pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let device = super::device(&args.device)?;
    let run = RunDir::open(&args.run)?;
    let (vae, _, _) = run.load_model(&device)?;
    let out = args.out.unwrap_or_else(|| run.file("samples.png"));
    save_sample_grid(&vae, &out, args.n, args.temperature, args.seed, &device)?;
    println!("wrote {} ({} prior samples, temperature {})", out.display(), args.n, args.temperature);
    Ok(())
}
