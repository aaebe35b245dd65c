//! `elbo encode`: data to latent codes (mu, and on request log sigma^2 or a sample), as NPY or CSV.

use std::path::PathBuf;

use clap::Args;
use elbo::data::Values;
use elbo::latent::codes::{write_encodings, CodeColumns};
use elbo::latent::decode::Compression;
use elbo::latent::encode_dataset;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Output file: .npy (mu; other columns in files beside it) or .csv (all columns).
    #[arg(long)]
    out: PathBuf,
    /// Also write log sigma^2.
    #[arg(long)]
    log_var: bool,
    /// Also write one sample z = mu + sigma * eps per example.
    #[arg(long)]
    sample: bool,
    /// Seed of the samples' eps.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    kl: super::autoencoder_kl::KlArgs,
}

/// Runs `elbo encode`.
pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    if let Some(model) = super::autoencoder_kl::open(&args.run)? {
        let sample = (args.sample.then_some(args.seed), args.log_var);
        return super::autoencoder_kl::encode(model, args.input.data.as_deref(), &args.out, &args.kl, sample);
    }
    let (trained, device) = args.run.open()?;
    let dataset = args.input.dataset(&trained)?;
    let encodings = encode_dataset(&trained.vae, &dataset, trained.eval_batch_size(), &device)?;
    let columns = CodeColumns { log_var: args.log_var, sample_seed: args.sample.then_some(args.seed) };
    let written = write_encodings(&args.out, &encodings, columns)?;
    let compression = Compression {
        input_values: dataset.shape.dim(),
        input_value_bytes: match &dataset.values {
            Values::U8(_) => 1,
            Values::Mapped(mapped) if mapped.element() == elbo::data::mapped::Element::U8 => 1,
            _ => 4,
        },
        latent_values: encodings.latent_dim,
    };
    println!(
        "encoded {} examples of {} into {} latent dimensions; compression {:.1}x ({} input bytes -> {} bytes of f32 \
         code per example)",
        encodings.len(),
        dataset.source,
        encodings.latent_dim,
        compression.ratio(),
        compression.input_bytes(),
        compression.latent_bytes()
    );
    written.iter().for_each(|path| println!("wrote {}", path.display()));
    Ok(())
}
