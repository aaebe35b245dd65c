//! `elbo reconstruct`: inputs above their reconstructions.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use elbo::data::{self, DataSpec};
use elbo::outputs::pictures::save_reconstruction_grid;
use elbo::outputs::RunDir;

/// Flags of `elbo reconstruct`.
#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// The run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
    /// Data to reconstruct (default: the run's own held-out data). A directory's test split is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// CSV only: the column holding labels.
    #[arg(long)]
    label_column: Option<usize>,
    /// Number of examples shown.
    #[arg(long, default_value_t = 32)]
    n: usize,
    /// Output PNG (default: RUN/reconstructions.png).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `elbo reconstruct`.
pub fn run(args: ReconstructArgs) -> anyhow::Result<()> {
    let device = super::device(&args.device)?;
    let run = RunDir::open(&args.run)?;
    let (vae, _, config) = run.load_model(&device)?;
    let dataset = match &args.data {
        Some(path) if path.is_dir() => {
            let spec = DataSpec::Path { path: path.clone(), label_column: args.label_column };
            data::load(&spec, config.validation_fraction, config.training.seed)?.test
        }
        Some(path) => data::source::load_file(path, args.label_column)?,
        None => data::load(&config.data, config.validation_fraction, config.training.seed)?.test,
    };
    let out = args.out.unwrap_or_else(|| run.file("reconstructions.png"));
    save_reconstruction_grid(&vae, &dataset, &out, args.n, &device)
        .with_context(|| format!("reconstructing {}", dataset.source))?;
    println!("wrote {} ({} inputs above their reconstructions from z = mu)", out.display(), args.n.min(dataset.len()));
    Ok(())
}
