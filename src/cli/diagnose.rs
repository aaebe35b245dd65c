//! `elbo diagnose`: is the latent used? Per-dimension KL and activity, active units, I(x; z), and a verdict.

use clap::Args;
use elbo::data::binarized;
use elbo::run::diagnose_run;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Use at most this many examples (I(x; z) compares every pair, and is at most log N).
    #[arg(long, default_value_t = 2000)]
    max_examples: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `elbo diagnose`; also writes `diagnosis.json` into the run directory.
pub fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let (loaded, device) = args.run.open()?;
    let dataset = args.input.dataset(&loaded)?;
    let dataset = binarized(&dataset, loaded.config.training.binarization, args.seed);
    let diagnosis = diagnose_run(&loaded.vae, &loaded.run, &dataset, args.max_examples, args.seed, &device)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print!("{diagnosis}");
        println!("wrote {}", loaded.run.path(elbo::outputs::RunFile::Diagnosis).display());
    }
    Ok(())
}
