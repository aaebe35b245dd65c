//! `elbo encode`, `decode` and `reconstruct` with a diffusers `AutoencoderKL` directory as `--run` (for example the
//! `vae/` folder of a Stable Diffusion checkpoint): images to N x C x h x w latents and back.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use elbo::latent::autoencoder_kl::{
    decode_latent_array, encode_images, image_files, mean_figures, read_latent_array, reconstruct_images,
    write_latents, KlImageOptions, LatentChoice,
};
use elbo::latent::decode::write_decoded;
use elbo::model::autoencoder_kl::{is_diffusers_dir, load};
use elbo::model::AutoencoderKl;

use super::run_args::RunArgs;

/// Flags that apply when `--run` is a diffusers `AutoencoderKL` directory.
#[derive(Args, Debug, Clone)]
pub struct KlArgs {
    /// Diffusers AutoencoderKL only: bring every image to this size, `N` or `HxW` (centre crop to the aspect ratio,
    /// then resize); default: the images' own size.
    #[arg(long)]
    image_size: Option<String>,
    /// Diffusers AutoencoderKL only: latents without the diffusion scaling, z rather than (z - shift_factor) *
    /// scaling_factor (written by encode, expected by decode).
    #[arg(long)]
    unscaled: bool,
    /// Diffusers AutoencoderKL only: run large images whole instead of in overlapping tiles of sample_size.
    #[arg(long)]
    no_tiling: bool,
}

impl KlArgs {
    fn options(&self) -> anyhow::Result<KlImageOptions> {
        let size = self.image_size.as_deref().map(parse_size).transpose()?;
        Ok(KlImageOptions { size, tiling: !self.no_tiling })
    }
}

/// `N` or `HxW` as (height, width).
fn parse_size(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |s: &str| s.trim().parse::<usize>().with_context(|| format!("--image-size: `{text}` is not N or HxW"));
    match text.split_once(['x', 'X']) {
        Some((height, width)) => Ok((parse(height)?, parse(width)?)),
        None => parse(text).map(|side| (side, side)),
    }
}

/// The diffusers model named by `run`, when `--run` is a diffusers directory (an error unless it is an
/// `AutoencoderKL`) or a KL autoencoder run of `elbo train` (its `diffusers/` folder).
pub fn open(run: &RunArgs) -> anyhow::Result<Option<(AutoencoderKl, candle_core::Device)>> {
    let dir = if elbo::autoencoder_run::is_autoencoder_run(&run.run) {
        run.run.join(elbo::outputs::RunFile::Diffusers.name())
    } else {
        run.run.clone()
    };
    if !is_diffusers_dir(&dir) {
        return Ok(None);
    }
    let (_, device) = run.compute.apply()?;
    let model = load(&dir, DType::F32, &device).with_context(|| format!("loading {}", dir.display()))?;
    Ok(Some((model, device)))
}

fn images(data: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let data = data.context("--data: give an image or a folder of images to apply a diffusers AutoencoderKL to")?;
    Ok(image_files(data)?)
}

/// `elbo encode` with a diffusers model: images to latents.
pub fn encode(
    (model, device): (AutoencoderKl, candle_core::Device),
    data: Option<&Path>,
    out: &Path,
    kl: &KlArgs,
    (sample_seed, log_var): (Option<u64>, bool),
) -> anyhow::Result<()> {
    let files = images(data)?;
    let choice = LatentChoice { sample_seed, scaled: !kl.unscaled };
    let array = encode_images(&model, &files, kl.options()?, choice, &device)?;
    let written = write_latents(out, &array, log_var)?;
    let [n, c, h, w] = array.shape;
    let what = if sample_seed.is_some() { "samples" } else { "means" };
    let scaling = if kl.unscaled { "unscaled".to_string() } else { scaling_note(&model) };
    println!("encoded {n} images into {c} x {h} x {w} latents (posterior {what}, {scaling})");
    written.iter().for_each(|path| println!("wrote {}", path.display()));
    Ok(())
}

fn scaling_note(model: &AutoencoderKl) -> String {
    let config = model.config();
    format!("(z - {}) * {}", config.shift_factor.unwrap_or(0.0), config.scaling_factor)
}

/// `elbo decode` with a diffusers model: latents to images.
pub fn decode(
    (model, device): (AutoencoderKl, candle_core::Device),
    latents: &Path,
    out: &Path,
    kl: &KlArgs,
) -> anyhow::Result<()> {
    let (values, shape) = read_latent_array(latents, model.config().latent_channels)?;
    let options = kl.options()?;
    let (images, image_shape) = decode_latent_array(&model, &values, shape, (!kl.unscaled, options.tiling), &device)?;
    // the image names `elbo encode` wrote beside the latents, when they are there
    let names = std::fs::read_to_string(latents.with_extension("names.txt")).ok();
    let names: Option<Vec<String>> = names.map(|text| text.lines().map(str::to_string).collect());
    let written = write_decoded(out, &images, &image_shape, names.as_deref())?;
    println!(
        "decoded {} latents of {} x {} x {} into {} x {} images",
        shape[0], shape[1], shape[2], shape[3], image_shape.height, image_shape.width
    );
    written.iter().take(3).for_each(|path| println!("wrote {}", path.display()));
    if written.len() > 3 {
        println!("... and {} more files in {}", written.len() - 3, out.display());
    }
    Ok(())
}

/// `elbo reconstruct` with a diffusers model: inputs beside reconstructions, PSNR and SSIM.
pub fn reconstruct(
    (model, device): (AutoencoderKl, candle_core::Device),
    data: Option<&Path>,
    out: Option<&Path>,
    n: usize,
    kl: &KlArgs,
) -> anyhow::Result<()> {
    let out = out.context("--out: give a folder for the reconstructions of a diffusers AutoencoderKL")?;
    let files = images(data)?;
    let files = &files[..n.min(files.len())];
    let rows = reconstruct_images(&model, files, kl.options()?, out, &device)?;
    println!("{:<32} {:>9} {:>8}", "image", "PSNR dB", "SSIM");
    rows.iter().for_each(|r| println!("{:<32} {:>9.2} {:>8.4}", r.name, r.psnr, r.ssim));
    let (psnr, ssim) = mean_figures(&rows);
    println!("{:<32} {psnr:>9.2} {ssim:>8.4}", "mean");
    println!(
        "wrote {} (input left, reconstruction from z = mu right) and metrics.csv in {}",
        rows.len(),
        out.display()
    );
    Ok(())
}
