//! `elbo reconstruct`: inputs above their reconstructions.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use elbo::outputs::pictures::save_reconstruction_grid;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo reconstruct`.
#[derive(Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Number of examples shown.
    #[arg(long, default_value_t = 32)]
    n: usize,
    /// Output PNG (default: RUN/reconstructions.png); for a diffusers AutoencoderKL, a folder (required).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    kl: super::autoencoder_kl::KlArgs,
}

/// Runs `elbo reconstruct`.
pub fn run(args: ReconstructArgs) -> anyhow::Result<()> {
    if let Some(model) = super::autoencoder_kl::open(&args.run)? {
        let data = args.input.data.as_deref();
        return super::autoencoder_kl::reconstruct(model, data, args.out.as_deref(), args.n, &args.kl);
    }
    let (trained, device) = args.run.open()?;
    let dataset = args.input.dataset(&trained)?;
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Reconstructions));
    save_reconstruction_grid(&trained.vae, &dataset, &out, args.n, &device)
        .with_context(|| format!("reconstructing {}", dataset.source))?;
    println!("wrote {} ({} inputs above their reconstructions from z = mu)", out.display(), args.n.min(dataset.len()));
    Ok(())
}
