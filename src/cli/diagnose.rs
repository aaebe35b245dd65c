//! `elbo diagnose`: is the latent used? Per-dimension KL and activity, active units, I(x; z), and a verdict.

use std::path::PathBuf;

use clap::Args;
use elbo::data::binarized;
use elbo::run::diagnose_run;

use super::run_data::{load_dataset, load_run};

/// Flags of `elbo diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// The run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
    /// Data to diagnose on (default: the run's own held-out data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CSV only: the column holding labels.
    #[arg(long)]
    label_column: Option<usize>,
    /// Use at most this many examples (I(x; z) compares every pair, and is at most log N).
    #[arg(long, default_value_t = 2000)]
    max_examples: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    json: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `elbo diagnose`; also writes `diagnosis.json` into the run directory.
pub fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let device = super::device(&args.device)?;
    let loaded = load_run(&args.run, &device)?;
    let dataset = load_dataset(&loaded, args.data.as_ref(), args.label_column, false)?;
    let dataset = binarized(&dataset, loaded.config.training.binarization, args.seed);
    let diagnosis = diagnose_run(&loaded.vae, &loaded.run, &dataset, args.max_examples, args.seed, &device)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print!("{diagnosis}");
        println!("wrote {}", loaded.run.file("diagnosis.json").display());
    }
    Ok(())
}
