//! `elbo report`: rebuild a run's self-contained HTML report.

use clap::Args;
use elbo::report::write_report;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
}

/// Runs `elbo report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    if elbo::autoencoder_run::is_autoencoder_run(&args.run.run) {
        let run = elbo::outputs::RunDir::open(&args.run.run)?;
        let path = elbo::report::autoencoder::write_autoencoder_report(&run)?;
        println!("wrote {} (one self-contained page: open it in a browser)", path.display());
        return Ok(());
    }
    let (trained, device) = args.run.open()?;
    let splits = args.input.splits(&trained)?;
    let path = write_report(&trained.run, &trained.vae, &splits, &device)?;
    println!("wrote {} (one self-contained page: open it in a browser)", path.display());
    Ok(())
}
