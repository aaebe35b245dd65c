//! `elbo decode`: latent codes back to examples, the decoder as a decompressor.

use std::path::PathBuf;

use clap::Args;
use elbo::latent::codes::read_latents;
use elbo::latent::decode::{decode_latents, write_decoded, Compression};

use super::run_args::RunArgs;

/// Flags of `elbo decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Codes to decode: an N x latent_dim .npy file of floats (such as `elbo encode` writes); for a diffusers
    /// AutoencoderKL, N x C x h x w latents.
    #[arg(long)]
    latents: PathBuf,
    /// A .png name for one image grid, or a directory for decoded.npy and one PNG per image.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    kl: super::autoencoder_kl::KlArgs,
}

/// Runs `elbo decode`.
pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    if let Some(model) = super::autoencoder_kl::open(&args.run)? {
        return super::autoencoder_kl::decode(model, &args.latents, &args.out, &args.kl);
    }
    let (trained, device) = args.run.open()?;
    let model = trained.vae.config();
    let latents = read_latents(&args.latents, model.latent_dim)?;
    let decoded = decode_latents(&trained.vae, &latents, trained.eval_batch_size(), &device)?;
    let written = write_decoded(&args.out, &decoded, &model.input_shape, None)?;
    let byte =
        Compression { input_values: model.input_shape.dim(), input_value_bytes: 1, latent_values: model.latent_dim };
    let float = Compression { input_value_bytes: 4, ..byte };
    println!(
        "decoded {} codes of {} values; compression {:.1}x against 8-bit inputs ({} bytes -> {} bytes per example), \
         {:.1}x against f32 inputs",
        latents.len() / model.latent_dim,
        model.latent_dim,
        byte.ratio(),
        byte.input_bytes(),
        byte.latent_bytes(),
        float.ratio()
    );
    match written.as_slice() {
        [single] => println!("wrote {}", single.display()),
        [array, ..] => {
            println!("wrote {} and {} PNG images in {}", array.display(), written.len() - 1, args.out.display())
        }
        [] => {}
    }
    Ok(())
}
