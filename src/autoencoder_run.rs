//! A KL autoencoder's training run, start to finish: photos split into training and held-out ones, the model
//! (fresh, or a diffusers model to fine-tune), the loop with its logs and checkpoints, and at the end the summary,
//! the reconstruction grid, the model in diffusers' layout and the report. A stopped run resumes exactly.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::data::crops::{fixed_crops, load_photos, RandomCrops};
use crate::data::image_folder::ImageChannels;
use crate::data::npy::write_npy_f32;
use crate::data::Dataset;
use crate::evaluation::CompressionReport;
use crate::model::autoencoder_kl::load_trainable;
use crate::model::discriminator::PatchDiscriminator;
use crate::model::{AutoencoderKl, AutoencoderKlConfig, Lpips};
use crate::objective::autoencoder::{Perceptual, Reconstruction};
use crate::optimizer::Optimizer;
use crate::outputs::autoencoder_log::{checkpoint_parts, AutoencoderLogger};
use crate::outputs::checkpoint_file::load_checkpoint_parts;
use crate::outputs::grid::{image_grid, save_png};
use crate::outputs::{read_json, RunDir, RunFile};
use crate::training::autoencoder::config::{model_for, PerceptualConfig};
use crate::training::autoencoder::step::LAST_LAYER;
use crate::training::autoencoder::trainer::EVAL_BATCH;
use crate::training::autoencoder::{
    train_autoencoder, Adversary, AutoencoderObserver, AutoencoderProgress, AutoencoderTrainConfig, Trainee,
    TrainingImages,
};
use crate::{Error, Result};

/// The `architecture` a KL autoencoder run's `config.json` names.
pub const ARCHITECTURE: &str = "autoencoder_kl";
/// Held-out crops shown in the reconstruction grid.
const GRID_CROPS: usize = 8;

/// Everything that decides a KL autoencoder run. Saved as the run's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderRunConfig {
    /// The `elbo` version that wrote the run.
    pub elbo_version: String,
    /// Always [`ARCHITECTURE`]: tells this run from a VAE's.
    pub architecture: String,
    /// The folder of photos.
    pub photos: PathBuf,
    /// Channels of the images.
    pub channels: ImageChannels,
    /// The autoencoder (with `--init-from`, the configuration of that model).
    pub model: AutoencoderKlConfig,
    /// The training settings.
    pub training: AutoencoderTrainConfig,
    /// Compute threads used.
    pub threads: usize,
    /// The device trained on.
    pub device: String,
}

impl AutoencoderRunConfig {
    /// A run of `model` trained as `training` says on the photos in `photos`.
    pub fn new(photos: PathBuf, model: AutoencoderKlConfig, training: AutoencoderTrainConfig) -> Self {
        AutoencoderRunConfig {
            elbo_version: env!("CARGO_PKG_VERSION").to_string(),
            architecture: ARCHITECTURE.to_string(),
            photos,
            channels: ImageChannels::Rgb,
            model,
            training,
            threads: 0,
            device: "cpu".to_string(),
        }
    }

    /// Checks the settings and that the crops fit the model's downsampling.
    pub fn validate(&self) -> Result<()> {
        self.training.validate()?;
        self.model.validate(Path::new("model configuration"))?;
        let factor = self.model.downsampling();
        if !self.training.crops.size.is_multiple_of(factor) {
            let problem =
                format!("{} is not a multiple of the model's downsampling factor {factor}", self.training.crops.size);
            return Err(Error::invalid_setting("random-crop", problem));
        }
        if let Some(adversarial) = &self.training.adversarial {
            let needed = adversarial.discriminator.min_side();
            if self.training.crops.size < needed {
                let problem =
                    format!("{}: the discriminator needs crops of at least {needed}", self.training.crops.size);
                return Err(Error::invalid_setting("random-crop", problem));
            }
        }
        Ok(())
    }
}

/// True when `dir` holds a KL autoencoder run (its `config.json` names [`ARCHITECTURE`]).
pub fn is_autoencoder_run(dir: &Path) -> bool {
    read_json::<serde_json::Value>(&dir.join(RunFile::Config.name()))
        .is_ok_and(|value| value.get("architecture").and_then(|a| a.as_str()) == Some(ARCHITECTURE))
}

/// A finished (or stopped) run's figures, written as `summary.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoencoderRunSummary {
    /// "completed" or "interrupted".
    pub status: String,
    /// Steps taken.
    pub steps: usize,
    /// The photos trained on.
    pub training_photos: Vec<String>,
    /// The photos the held-out crops come from (none: the crops come from the training photos).
    pub held_out_photos: Vec<String>,
    /// The last held-out evaluation.
    pub held_out: Option<CompressionReport>,
    /// Training crops per second of optimisation.
    pub images_per_second: f64,
    /// Seconds of optimisation.
    pub train_seconds: f64,
    /// The SIMD level of elbo's kernels.
    pub simd: String,
}

/// The photos of a run, split, and its crops.
struct RunImages {
    held_out_names: Vec<String>,
    crops: RandomCrops,
    held_out: Dataset,
}

/// Reads the photos of `config`, holds some out (none: the held-out crops come from the training photos) and cuts
/// their fixed crops.
fn run_images(config: &AutoencoderRunConfig) -> Result<RunImages> {
    let training = &config.training;
    let photos = load_photos(&config.photos, config.channels)?;
    let (size, per_photo, seed) = (training.crops.size, training.held_out_crops_per_photo, training.seed);
    let (training_photos, held_out, held_out_names) = if training.held_out_photos == 0 {
        let crops = fixed_crops(&photos, size, per_photo, seed)?;
        (photos, crops, Vec::new())
    } else {
        let (training_photos, held_out) = photos.split_held_out(training.held_out_photos, seed)?;
        let names = held_out.names().into_iter().map(String::from).collect();
        (training_photos, fixed_crops(&held_out, size, per_photo, seed)?, names)
    };
    let crops = RandomCrops::new(training_photos, &training.crops, seed)?;
    Ok(RunImages { held_out_names, crops, held_out })
}

/// The model, its reconstruction term and their variables: fresh from the seed, or the `init_from` model's.
fn build_model(config: &AutoencoderRunConfig, device: &Device) -> Result<(AutoencoderKl, Reconstruction, VarMap)> {
    let training = &config.training;
    let (model, varmap) = match &training.init_from {
        Some(dir) => load_trainable(dir, device)?,
        None => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
            let model = AutoencoderKl::new(model_for(&config.model, training), vb)?;
            crate::model::init::initialize(&varmap, training.seed)?;
            (model, varmap)
        }
    };
    let image_values = config.model.in_channels * training.crops.size * training.crops.size;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let reconstruction = Reconstruction::new(&training.reconstruction, image_values, vb.pp("loss"))?;
    let reconstruction = match &training.perceptual {
        Some(PerceptualConfig { lpips, weight }) => {
            reconstruction.with_perceptual(Perceptual { network: Lpips::load(lpips, device)?, weight: *weight })?
        }
        None => reconstruction,
    };
    Ok((model, reconstruction, varmap))
}

/// A copy of `model` over the constant values of its variables: its encoder gives posteriors without a graph.
fn frozen_copy(model: &AutoencoderKl, varmap: &VarMap, device: &Device) -> Result<AutoencoderKl> {
    let data = varmap.data().lock().map_err(|_| Error::invalid_setting("weights", "variable map lock poisoned"))?;
    let tensors = data.iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect();
    AutoencoderKl::new(model.config().clone(), VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// Everything one step needs, from `config`, fresh; an epoch is `steps_per_epoch` steps (for KL schedules given in
/// epochs).
fn build_trainee(config: &AutoencoderRunConfig, steps_per_epoch: usize, device: &Device) -> Result<Trainee> {
    let training = &config.training;
    let (model, reconstruction, varmap) = build_model(config, device)?;
    let last_layer = variable(&varmap, LAST_LAYER)?;
    let optimizer = Optimizer::new(training.optimizer, training.learning_rate, &varmap)?;
    let frozen_encoder = training.train_decoder_only.then(|| frozen_copy(&model, &varmap, device)).transpose()?;
    let adversary = match &training.adversarial {
        Some(adversarial) => {
            let (discriminator, discriminator_vars) =
                PatchDiscriminator::fresh(&adversarial.discriminator, training.seed, DType::F32, device)?;
            let optimizer = Optimizer::new(training.optimizer, adversarial.learning_rate, &discriminator_vars)?;
            Some(Adversary { discriminator, varmap: discriminator_vars, optimizer, config: adversarial.clone() })
        }
        None => None,
    };
    Ok(Trainee {
        model,
        reconstruction,
        varmap,
        optimizer,
        last_layer,
        adversary,
        kl: training.kl.resolved(steps_per_epoch, training.steps.div_ceil(steps_per_epoch.max(1))),
        frozen_encoder,
    })
}

/// The variable `name` of `varmap`.
fn variable(varmap: &VarMap, name: &str) -> Result<candle_core::Var> {
    let data = varmap.data().lock().map_err(|_| Error::invalid_setting("weights", "variable map lock poisoned"))?;
    data.get(name).cloned().ok_or_else(|| Error::invalid_setting("model", format!("has no variable `{name}`")))
}

/// Trains the run `config` describes into `run`, from the start; `observer` (a display, a signal watcher) sees
/// every step.
pub fn train_autoencoder_run(
    config: &AutoencoderRunConfig,
    run: &RunDir,
    device: &Device,
    observer: &mut dyn AutoencoderObserver,
) -> Result<AutoencoderRunSummary> {
    config.validate()?;
    let mut config = config.clone();
    if let Some(dir) = &config.training.init_from {
        let path = dir.join(crate::model::autoencoder_kl::load::CONFIG_FILE);
        config.model = AutoencoderKlConfig::read(&path)?;
        let needed = config.training.output_channels(config.model.in_channels);
        if config.model.out_channels != needed {
            let problem = format!(
                "{}: the {} reconstruction term needs {needed} decoder outputs",
                config.model.out_channels,
                config.training.reconstruction.name()
            );
            return Err(Error::bad_input(path, "out_channels", problem));
        }
    }
    let images = run_images(&config)?;
    let mut trainee = build_trainee(&config, images.crops.num_batches(config.training.batch_size), device)?;
    run.write(RunFile::Config, &config)?;
    write_held_out(run, &images.held_out)?;
    let logger = AutoencoderLogger::new(run, config.training.init_from.is_none())?;
    complete(&config, run, (&images, &mut trainee), (logger, AutoencoderProgress::default()), observer, device)
}

/// Continues the stopped run in `run` from its checkpoint, up to `steps` in all when given.
pub fn resume_autoencoder_run(
    run: &RunDir,
    steps: Option<usize>,
    device: &Device,
    observer: &mut dyn AutoencoderObserver,
) -> Result<AutoencoderRunSummary> {
    let mut config: AutoencoderRunConfig = read_json(&run.config_path())?;
    config.training.steps = steps.unwrap_or(config.training.steps);
    config.validate()?;
    // the checkpoint holds the weights, and config.json the model's configuration (that of --init-from's model)
    let fit_scaling_factor = config.training.init_from.is_none();
    let mut from_checkpoint = config.clone();
    from_checkpoint.training.init_from = None;
    let images = run_images(&from_checkpoint)?;
    let steps_per_epoch = images.crops.num_batches(config.training.batch_size);
    let mut trainee = build_trainee(&from_checkpoint, steps_per_epoch, device)?;
    let parts = checkpoint_parts(&trainee);
    let (progress, states): (AutoencoderProgress, _) = load_checkpoint_parts(&run.checkpoint_path(), &parts, device)?;
    if progress.step >= config.training.steps {
        let problem = format!("the run has taken {} steps, its total; ask for more (--max-steps)", progress.step);
        return Err(Error::invalid_setting("max-steps", problem));
    }
    restore_optimizers(&mut trainee, &states)?;
    let logger = AutoencoderLogger::resume(run, &progress, fit_scaling_factor)?;
    run.write(RunFile::Config, &config)?;
    complete(&from_checkpoint, run, (&images, &mut trainee), (logger, progress), observer, device)
}

/// Sets both optimisers' states from a checkpoint's.
fn restore_optimizers(trainee: &mut Trainee, states: &[crate::optimizer::OptimizerState]) -> Result<()> {
    let (first, rest) =
        states.split_first().ok_or_else(|| Error::invalid_setting("checkpoint", "holds no optimiser"))?;
    trainee.optimizer.restore(first)?;
    if let (Some(adversary), Some(state)) = (trainee.adversary.as_mut(), rest.first()) {
        adversary.optimizer.restore(state)?;
    }
    Ok(())
}

/// Writes the held-out crops as NPY.
fn write_held_out(run: &RunDir, held_out: &Dataset) -> Result<()> {
    let shape = held_out.shape;
    let mut values = Vec::with_capacity(held_out.len() * shape.dim());
    (0..held_out.len()).for_each(|index| held_out.push_example(index, &mut values));
    let dims = [held_out.len(), shape.channels, shape.height, shape.width];
    write_npy_f32(&run.path(RunFile::HeldOutCrops), &dims, &values)
}

/// Trains from `progress`, then writes the summary, the reconstruction grid and the report.
fn complete(
    config: &AutoencoderRunConfig,
    run: &RunDir,
    (images, trainee): (&RunImages, &mut Trainee),
    (mut logger, progress): (AutoencoderLogger, AutoencoderProgress),
    observer: &mut dyn AutoencoderObserver,
    device: &Device,
) -> Result<AutoencoderRunSummary> {
    let training_images = TrainingImages { crops: &images.crops, held_out: &images.held_out };
    let outcome =
        train_autoencoder(trainee, &training_images, &config.training, progress, device, &mut [&mut logger, observer])?;
    drop(logger);
    let progress = &outcome.progress;
    let summary = AutoencoderRunSummary {
        status: if outcome.interrupted { "interrupted" } else { "completed" }.to_string(),
        steps: progress.step,
        training_photos: images.crops.photos().names().into_iter().map(String::from).collect(),
        held_out_photos: images.held_out_names.clone(),
        held_out: progress.last_eval.map(|eval| eval.report),
        images_per_second: if progress.train_seconds > 0.0 {
            (progress.step * config.training.batch_size) as f64 / progress.train_seconds
        } else {
            0.0
        },
        train_seconds: progress.train_seconds,
        simd: crate::kernels::simd_level().name().to_string(),
    };
    run.write(RunFile::Summary, &summary)?;
    save_reconstruction_grid(trainee, &images.held_out, &run.path(RunFile::Reconstructions), device)?;
    crate::report::autoencoder::write_autoencoder_report(run)?;
    Ok(summary)
}

/// The held-out figures of the trained autoencoder run in `run` (its `model.safetensors` on its own held-out crops,
/// cut again from its photos), with the names of the photos they come from (empty: crops of the training photos).
/// LPIPS with the network in the file `lpips` when given, else with the run's own perceptual network if it has one.
pub fn evaluate_autoencoder_run(
    run: &RunDir,
    lpips: Option<&Path>,
    device: &Device,
) -> Result<(CompressionReport, Vec<String>)> {
    let mut config: AutoencoderRunConfig = read_json(&run.config_path())?;
    config.training.init_from = None; // the run's own weights, below
    let images = run_images(&config)?;
    let (model, reconstruction, mut varmap) = build_model(&config, device)?;
    varmap.load(run.weights_path()).map_err(|e| Error::bad_input(run.weights_path(), "weights", e.to_string()))?;
    let given = lpips.map(|path| Lpips::load(path, device)).transpose()?;
    let network = given.as_ref().or(reconstruction.perceptual_network());
    let held_out = &images.held_out;
    let report =
        crate::evaluation::evaluate_compression(&model, &reconstruction, held_out, EVAL_BATCH, network, device)?;
    Ok((report, images.held_out_names))
}

/// Held-out crops (first row) above their reconstructions from the posterior mean (second row).
fn save_reconstruction_grid(trainee: &Trainee, held_out: &Dataset, path: &Path, device: &Device) -> Result<()> {
    let shape = held_out.shape;
    let count = held_out.len().min(GRID_CROPS);
    let mut inputs = Vec::with_capacity(count * shape.dim());
    (0..count).for_each(|index| held_out.push_example(index, &mut inputs));
    let pixels = Tensor::from_slice(&inputs, (count, shape.channels, shape.height, shape.width), device)?;
    let mu = trainee.model.encode(&pixels.affine(2.0, -1.0)?)?.mu;
    let image = trainee.reconstruction.image(&trainee.model.decode(&mu)?)?;
    let decoded = image.affine(0.5, 0.5)?.clamp(0f32, 1f32)?.flatten_all()?.to_vec1::<f32>()?;
    inputs.extend(decoded);
    save_png(&image_grid(&inputs, &shape, count)?, path)
}
