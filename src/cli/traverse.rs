//! `elbo traverse`: sweep each latent dimension around one example, one row per dimension ordered by KL.

use std::path::PathBuf;

use clap::Args;
use elbo::latent::pictures::traversal_grid;
use elbo::latent::traverse::{traverse, TraversalSettings};
use elbo::outputs::grid::save_png;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo traverse`.
#[derive(Args, Debug)]
pub struct TraverseArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Index (from 0) of the seed example whose code is swept.
    #[arg(long, default_value_t = 0)]
    example: usize,
    /// Dimensions to sweep: `all` or a list such as 0,3,7.
    #[arg(long, default_value = "all")]
    dims: String,
    /// Each dimension runs from -RANGE to +RANGE.
    #[arg(long, default_value_t = 3.0)]
    range: f64,
    /// Points per sweep.
    #[arg(long, default_value_t = 9)]
    steps: usize,
    /// Output PNG (default: RUN/traversal.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `elbo traverse`.
pub fn run(args: TraverseArgs) -> anyhow::Result<()> {
    let (trained, device) = args.run.open()?;
    let dataset = args.input.dataset(&trained)?;
    let settings = TraversalSettings {
        seed_index: args.example,
        dimensions: args.dims.parse()?,
        range: args.range,
        steps: args.steps,
    };
    let traversal = traverse(&trained.vae, &dataset, &settings, trained.eval_batch_size(), &device)?;
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Traversal));
    save_png(&traversal_grid(&traversal, &dataset.shape)?, &out)?;
    println!("rows, highest KL first (mean KL per dimension over {}):", dataset.source);
    for row in &traversal.rows {
        println!("  z{:<3} KL {:.3}", row.dimension, row.kl);
    }
    println!(
        "wrote {} (example {}, each dimension from -{r} to {r} in {} steps)",
        out.display(),
        args.example,
        args.steps,
        r = args.range
    );
    Ok(())
}
