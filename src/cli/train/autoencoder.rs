//! `elbo train --architecture autoencoder-kl`: train latent diffusion's KL autoencoder on random crops of a folder
//! of photos, or fine-tune a diffusers one (`--init-from`); `--resume` continues such a run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use elbo::autoencoder_run::{
    resume_autoencoder_run, train_autoencoder_run, AutoencoderRunConfig, AutoencoderRunSummary,
};
use elbo::data::crops::CropConfig;
use elbo::model::{GaussianVariance, LikelihoodConfig, Lpips};
use elbo::objective::autoencoder::ReconstructionTerm;
use elbo::objective::ldm::DiscriminatorLoss;
use elbo::outputs::{Existing, RunDir};
use elbo::training::autoencoder::config::{small_model, LDM_KL_WEIGHT, LDM_PERCEPTUAL_WEIGHT};
use elbo::training::autoencoder::{AdversarialConfig, AutoencoderTrainConfig, PerceptualConfig};

use super::TrainArgs;
use crate::cli::compute_args::parse_device;
use crate::cli::model_args::{LikelihoodKind, VarianceKind};
use crate::cli::progress::Progress;

/// The flags only a KL autoencoder takes.
#[derive(Args, Debug, Clone)]
pub struct AutoencoderArgs {
    /// autoencoder-kl: channels of each block, comma-separated; every block but the last halves the side.
    #[arg(long, value_delimiter = ',', default_values_t = small_model().block_out_channels)]
    block_out_channels: Vec<usize>,
    /// autoencoder-kl: ResNet blocks per encoder block (the decoder has one more).
    #[arg(long, default_value_t = small_model().layers_per_block)]
    layers_per_block: usize,
    /// autoencoder-kl: channels of the spatial latent.
    #[arg(long, default_value_t = small_model().latent_channels)]
    latent_channels: usize,
    /// autoencoder-kl: groups of every GroupNorm (must divide every block's channels).
    #[arg(long, default_value_t = small_model().norm_num_groups)]
    norm_groups: usize,
    /// autoencoder-kl: no self-attention in the middle blocks.
    #[arg(long)]
    no_attention: bool,
    /// autoencoder-kl: train on a fresh random N x N window of a photo each time one is used.
    #[arg(long, value_name = "N", default_value_t = CropConfig::default().size)]
    random_crop: usize,
    /// autoencoder-kl: no random horizontal flips of the crops.
    #[arg(long)]
    no_flip: bool,
    /// autoencoder-kl: photos held out of training (chosen with the seed); the held-out crops come from them.
    #[arg(long, default_value_t = AutoencoderTrainConfig::default().held_out_photos)]
    held_out_photos: usize,
    /// autoencoder-kl: fixed crops per held-out photo.
    #[arg(long, default_value_t = AutoencoderTrainConfig::default().held_out_crops_per_photo)]
    held_out_crops: usize,
    /// autoencoder-kl: evaluate the held-out crops (PSNR, SSIM, rate) every N steps, and write the model.
    #[arg(long, default_value_t = AutoencoderTrainConfig::default().eval_every)]
    eval_every: usize,
    /// autoencoder-kl: from this step on, a PatchGAN discriminator (latent diffusion's adversarial term).
    #[arg(long, value_name = "STEP")]
    discriminator_start: Option<usize>,
    /// autoencoder-kl: the adversarial term's weight (times the adaptive weight).
    #[arg(long, default_value_t = 0.5)]
    discriminator_weight: f64,
    /// autoencoder-kl: the discriminator's loss.
    #[arg(long, value_enum, default_value_t = DiscriminatorLoss::default())]
    discriminator_loss: DiscriminatorLoss,
    /// autoencoder-kl: the discriminator's learning rate (default: --lr).
    #[arg(long)]
    discriminator_lr: Option<f64>,
    /// autoencoder-kl: latent diffusion's perceptual term, LPIPS(x, x_hat) inside the learned-scale L1, with the
    /// LPIPS VGG16 network in this safetensors file (scripts/export_lpips.py writes it; elbo downloads nothing).
    #[arg(long, value_name = "FILE")]
    lpips: Option<PathBuf>,
    /// autoencoder-kl: the perceptual term's weight (latent diffusion's perceptual_weight).
    #[arg(long, default_value_t = LDM_PERCEPTUAL_WEIGHT)]
    perceptual_weight: f64,
    /// autoencoder-kl: start from this diffusers AutoencoderKL directory (config.json and
    /// diffusion_pytorch_model.safetensors, e.g. a Stable Diffusion checkpoint's vae/ folder); its configuration
    /// replaces the architecture flags.
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// autoencoder-kl: train the decoder only; the encoder stays bit for bit as it is, so a diffusion model
    /// trained on its latents still fits.
    #[arg(long)]
    train_decoder_only: bool,
}

/// Defaults that differ from a VAE's when the flag is not given.
const STEPS: usize = 2000;

/// Runs `elbo train --architecture autoencoder-kl`.
pub fn run(args: &TrainArgs, given: &[String]) -> anyhow::Result<ExitCode> {
    let config = config_from_flags(args, given)?;
    let device = parse_device(&config.device).map_err(anyhow::Error::msg)?.open()?;
    // settings and the LPIPS file checked before a run directory is made for them
    config.validate()?;
    if let Some(perceptual) = &config.training.perceptual {
        Lpips::load(&perceptual.lpips, &device)?;
    }
    let out = args.out.clone().unwrap_or_else(|| next_free_run_dir(&config.photos));
    let existing = if args.overwrite { Existing::Overwrite } else { Existing::Refuse };
    let run = RunDir::create_with(&out, existing)?;
    print_plan(&config, &out);
    let mut progress = Progress::new(args.quiet, false)?;
    progress.start_steps(config.training.steps, 0);
    let summary = train_autoencoder_run(&config, &run, &device, &mut progress).with_context(|| super::failed(&out))?;
    Ok(finish(&summary, &progress, &out))
}

/// `elbo train --resume RUN` of a KL autoencoder run: `--max-steps` is the new total.
pub fn resume(args: &TrainArgs, given: &[String], dir: &Path) -> anyhow::Result<ExitCode> {
    super::repeat::check_resume_flags(given)?;
    let run = RunDir::resume(dir)?;
    let stored: AutoencoderRunConfig = elbo::outputs::read_json(&run.config_path())?;
    super::super::set_threads(stored.threads)?;
    let device = parse_device(&stored.device).map_err(anyhow::Error::msg)?.open()?;
    let steps = given.iter().any(|flag| flag == "max_steps").then_some(args.max_steps).flatten();
    println!("resuming {} from {}", dir.display(), run.checkpoint_path().display());
    let mut progress = Progress::new(args.quiet, false)?;
    progress.start_steps(steps.unwrap_or(stored.training.steps), 0);
    let summary = resume_autoencoder_run(&run, steps, &device, &mut progress).with_context(|| super::failed(dir))?;
    Ok(finish(&summary, &progress, dir))
}

fn config_from_flags(args: &TrainArgs, given: &[String]) -> anyhow::Result<AutoencoderRunConfig> {
    let was_given = |id: &str| given.iter().any(|flag| flag == id);
    let photos = args
        .data
        .data
        .clone()
        .context("--architecture autoencoder-kl trains on a folder of photos: give --data DIR")?;
    let threads = super::super::set_threads(args.compute.threads)?;
    let flags = &args.autoencoder;
    let mut model = small_model();
    model.block_out_channels = flags.block_out_channels.clone();
    model.down_block_types = vec![model.down_block_types[0].clone(); flags.block_out_channels.len()];
    model.up_block_types = vec![model.up_block_types[0].clone(); flags.block_out_channels.len()];
    model.layers_per_block = flags.layers_per_block;
    model.latent_channels = flags.latent_channels;
    model.norm_num_groups = flags.norm_groups;
    model.mid_block_add_attention = !flags.no_attention;
    let learning_rate = if was_given("lr") { args.lr } else { AutoencoderTrainConfig::default().learning_rate };
    let mut kl = args.objective.kl_weighting();
    if !was_given("beta") {
        kl.beta = LDM_KL_WEIGHT;
    }
    let training = AutoencoderTrainConfig {
        steps: args.max_steps.unwrap_or(STEPS),
        batch_size: if was_given("batch_size") {
            args.batch_size
        } else {
            AutoencoderTrainConfig::default().batch_size
        },
        learning_rate,
        reconstruction: reconstruction_term(args, was_given("likelihood")),
        kl,
        adversarial: flags.discriminator_start.map(|start| AdversarialConfig {
            weight: flags.discriminator_weight,
            loss: flags.discriminator_loss,
            ..AdversarialConfig::from_step(start, flags.discriminator_lr.unwrap_or(learning_rate))
        }),
        perceptual: flags.lpips.clone().map(|lpips| PerceptualConfig { lpips, weight: flags.perceptual_weight }),
        crops: CropConfig { size: flags.random_crop, flip: !flags.no_flip, ..CropConfig::default() },
        held_out_photos: flags.held_out_photos,
        held_out_crops_per_photo: flags.held_out_crops,
        eval_every: flags.eval_every,
        seed: args.seed,
        init_from: flags.init_from.clone(),
        train_decoder_only: flags.train_decoder_only,
        checkpoint_every: args.checkpoint_every,
        ..AutoencoderTrainConfig::default()
    };
    let mut config = AutoencoderRunConfig::new(photos, model, training);
    config.threads = threads;
    config.device = args.compute.device.to_string();
    Ok(config)
}

/// The reconstruction term: latent diffusion's learned-scale L1 unless `--likelihood` was given.
fn reconstruction_term(args: &TrainArgs, likelihood_given: bool) -> ReconstructionTerm {
    let model = &args.model;
    if !likelihood_given || matches!(model.likelihood, LikelihoodKind::Laplace) {
        return ReconstructionTerm::Laplace;
    }
    let likelihood = match model.likelihood {
        LikelihoodKind::Bernoulli | LikelihoodKind::Laplace => LikelihoodConfig::Bernoulli,
        LikelihoodKind::Categorical => LikelihoodConfig::Categorical { levels: model.levels },
        LikelihoodKind::Gaussian => LikelihoodConfig::Gaussian {
            variance: match model.gaussian_variance {
                VarianceKind::Fixed => GaussianVariance::Fixed { sigma: model.gaussian_sigma },
                VarianceKind::Shared => GaussianVariance::LearnedShared,
                VarianceKind::PerDimension => GaussianVariance::LearnedPerDimension,
            },
        },
    };
    ReconstructionTerm::Likelihood { likelihood }
}

fn print_plan(config: &AutoencoderRunConfig, out: &Path) {
    let (model, training) = (&config.model, &config.training);
    println!(
        "data: random {}x{} crops of the photos in {} ({} held out)",
        training.crops.size,
        training.crops.size,
        config.photos.display(),
        training.held_out_photos
    );
    println!(
        "model: KL autoencoder, blocks {:?}, {} ResNet(s) per block, {} latent channels at H/{}, attention {}; \
         reconstruction {}{}, KL weight {}, {}",
        model.block_out_channels,
        model.layers_per_block,
        model.latent_channels,
        model.downsampling(),
        if model.mid_block_add_attention { "on" } else { "off" },
        training.reconstruction.name(),
        training.perceptual.as_ref().map_or(String::new(), |p| format!(" + {} x LPIPS", p.weight)),
        training.kl.beta,
        training
            .adversarial
            .as_ref()
            .map_or("no discriminator".to_string(), |a| format!("discriminator from step {}", a.start)),
    );
    println!(
        "training: {} steps, batch {}, lr {}, seed {}, {} threads",
        training.steps, training.batch_size, training.learning_rate, training.seed, config.threads
    );
    println!("run directory: {}", out.display());
}

fn finish(summary: &AutoencoderRunSummary, progress: &Progress, out: &Path) -> ExitCode {
    let exit = super::exit_code(progress, out);
    if let Some(report) = &summary.held_out {
        let lpips = report.lpips.map_or(String::new(), |distance| format!(", LPIPS {distance:.4}"));
        println!(
            "held-out crops: PSNR {:.2} dB, SSIM {:.4}{lpips}, rate {:.4} bits per pixel ({:.4} per latent value)",
            report.psnr, report.ssim, report.bits_per_pixel, report.bits_per_latent_value
        );
    }
    println!("done: {} steps, {:.2} training crops/s", summary.steps, summary.images_per_second);
    println!(
        "wrote {}/{{config.json, model.safetensors, checkpoint.safetensors, metrics.csv, summary.json, reconstructions.png, held_out_crops.npy, report.html}} and {}/diffusers/ (AutoencoderKL.from_pretrained reads it)",
        out.display(),
        out.display()
    );
    exit
}

/// `runs/<folder name>-kl-<n>` for the first n not taken.
fn next_free_run_dir(photos: &Path) -> PathBuf {
    let name = photos.file_name().map_or("photos".into(), |s| s.to_string_lossy().into_owned());
    (1..).map(|n| PathBuf::from(format!("runs/{name}-kl-{n}"))).find(|p| !p.exists()).unwrap_or_default()
}
