//! `elbo interpolate`: the decoded path between the codes of two examples.

use std::path::PathBuf;

use clap::Args;
use elbo::latent::interpolate::interpolate;
use elbo::latent::pictures::interpolation_grid;
use elbo::outputs::grid::save_png;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo interpolate`.
#[derive(Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Index (from 0) of the example the path starts at.
    #[arg(long)]
    from: usize,
    /// Index of the example the path ends at.
    #[arg(long)]
    to: usize,
    /// Points on the path, both ends included.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Spherical interpolation (slerp) instead of a straight line.
    #[arg(long)]
    spherical: bool,
    /// Output PNG (default: RUN/interpolation.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `elbo interpolate`.
pub fn run(args: InterpolateArgs) -> anyhow::Result<()> {
    let (trained, device) = args.run.open()?;
    let dataset = args.input.dataset(&trained)?;
    let path = interpolate(&trained.vae, &dataset, (args.from, args.to), args.steps, args.spherical, &device)?;
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Interpolation));
    save_png(&interpolation_grid(&path, &dataset.shape, args.spherical)?, &out)?;
    println!(
        "wrote {} (example {} on the left, example {} on the right, {} {} points decoded between their codes)",
        out.display(),
        args.from,
        args.to,
        args.steps,
        if args.spherical { "spherical" } else { "linear" }
    );
    Ok(())
}
