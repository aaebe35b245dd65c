//! `metrics.csv` of a KL autoencoder's run: one row per step and one per held-out evaluation, every term in its own
//! column (reconstruction, L1, KL, weighted KL, generator and discriminator losses, adaptive weight, log-scale,
//! LPIPS),
//! and the held-out PSNR, SSIM and rate. Rows are flushed at every checkpoint; the checkpoint holds the
//! autoencoder, the discriminator and both optimisers in one file; at each evaluation the weights are also written
//! as `model.safetensors` and in diffusers' layout under `diffusers/`.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::checkpoint_file::{save_checkpoint_parts, CheckpointPart};
use super::diffusers::save_pretrained;
use super::metrics::{csv_error, row_writer};
use super::run_dir::{RunDir, RunFile};
use crate::atomic::write_atomic_with;
use crate::training::autoencoder::{
    AutoencoderObserver, AutoencoderProgress, AutoencoderStepRecord, EvalRecord, Trainee,
};
use crate::{Error, Result};

/// The prefix of the discriminator's tensors in a checkpoint (LDM's name for them).
pub const DISCRIMINATOR_PREFIX: &str = "loss.discriminator.";

/// One row of an autoencoder run's `metrics.csv`. Columns with nothing to say are empty.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct AutoencoderRow {
    /// `step` or `eval`.
    pub kind: String,
    /// Steps taken.
    pub step: usize,
    /// `train` (a step's batch) or `held_out` (the held-out crops).
    pub split: String,
    /// -log p(x|z): the step's (one sample), or the held-out crops' at the posterior mean; nats per image.
    pub reconstruction: f64,
    /// Mean |x - x_hat| per value on [-1, 1] (steps).
    pub l1: Option<f64>,
    /// KL( q(z|x) || N(0, I) ), nats per image.
    pub kl: f64,
    /// The KL as it entered the loss (steps).
    pub weighted_kl: Option<f64>,
    /// The minimised loss (steps).
    pub loss: Option<f64>,
    /// -mean D(x_hat), once the discriminator is on.
    pub generator_loss: Option<f64>,
    /// The discriminator's loss, once it is on.
    pub discriminator_loss: Option<f64>,
    /// The generator loss's adaptive weight (with the discriminator weight).
    pub adaptive_weight: Option<f64>,
    /// The reconstruction term's learned log-scale (LDM's `logvar`).
    pub log_scale: Option<f64>,
    /// LPIPS(x, x_hat): the batch's mean, unweighted (steps of a run with the perceptual term), or the held-out
    /// crops' (evaluations of such a run).
    #[serde(default)]
    pub perceptual: Option<f64>,
    /// Held-out PSNR, dB.
    pub psnr: Option<f64>,
    /// Held-out SSIM.
    pub ssim: Option<f64>,
    /// Held-out rate, bits per image pixel.
    pub bits_per_pixel: Option<f64>,
    /// Held-out rate, bits per latent value.
    pub bits_per_latent_value: Option<f64>,
    /// The autoencoder's learning rate (steps).
    pub learning_rate: Option<f64>,
    /// Seconds since training started.
    pub wall_seconds: f64,
    /// Training crops per second (evaluations).
    pub images_per_second: Option<f64>,
}

impl AutoencoderRow {
    fn of_step(record: &AutoencoderStepRecord) -> Self {
        let figures = &record.figures;
        AutoencoderRow {
            kind: "step".into(),
            step: record.step,
            split: "train".into(),
            reconstruction: figures.reconstruction,
            l1: Some(figures.l1),
            kl: figures.kl,
            weighted_kl: Some(figures.weighted_kl),
            loss: Some(figures.loss),
            generator_loss: figures.generator_loss,
            discriminator_loss: figures.discriminator_loss,
            adaptive_weight: figures.adaptive_weight,
            log_scale: figures.log_scale,
            perceptual: figures.perceptual,
            learning_rate: Some(record.learning_rate),
            wall_seconds: record.wall_seconds,
            ..AutoencoderRow::default()
        }
    }

    fn of_eval(record: &EvalRecord) -> Self {
        let report = &record.report;
        AutoencoderRow {
            kind: "eval".into(),
            step: record.step,
            split: "held_out".into(),
            reconstruction: report.reconstruction,
            kl: report.kl,
            psnr: Some(report.psnr),
            ssim: Some(report.ssim),
            bits_per_pixel: Some(report.bits_per_pixel),
            bits_per_latent_value: Some(report.bits_per_latent_value),
            perceptual: report.lpips,
            wall_seconds: record.wall_seconds,
            images_per_second: Some(record.images_per_second),
            ..AutoencoderRow::default()
        }
    }
}

/// Reads an autoencoder run's `metrics.csv`; an error names the line and the field.
pub fn read_autoencoder_metrics(path: &Path) -> Result<Vec<AutoencoderRow>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| csv_error(path, e))?;
    reader.deserialize().map(|row| row.map_err(|e| csv_error(path, e))).collect()
}

/// Writes `metrics.csv`, the checkpoints, the weights and the diffusers folder of an autoencoder run.
pub struct AutoencoderLogger {
    run: RunDir,
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    /// The diffusers folder's `scaling_factor` is 1 / the latest held-out latent standard deviation (a model trained
    /// from scratch); otherwise the model's own stays (fine-tuning keeps the latent scale a diffusion model knows).
    fit_scaling_factor: bool,
}

impl AutoencoderLogger {
    /// Starts `metrics.csv` in `run` (replacing an old one); `fit_scaling_factor` as the field says.
    pub fn new(run: &RunDir, fit_scaling_factor: bool) -> Result<Self> {
        let path = run.metrics_path();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(AutoencoderLogger { run: run.clone(), writer: row_writer(file, true), path, fit_scaling_factor })
    }

    /// Continues `metrics.csv` of a run resumed at `progress`: rows logged after that checkpoint are dropped.
    pub fn resume(run: &RunDir, progress: &AutoencoderProgress, fit_scaling_factor: bool) -> Result<Self> {
        let path = run.metrics_path();
        let kept: Vec<AutoencoderRow> =
            read_autoencoder_metrics(&path)?.into_iter().filter(|row| row.step <= progress.step).collect();
        write_atomic_with(&path, |temporary| {
            let mut rows = row_writer(File::create(temporary)?, true);
            kept.iter().try_for_each(|row| rows.serialize(row)).map_err(std::io::Error::other)?;
            rows.flush()
        })?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(AutoencoderLogger { run: run.clone(), writer: row_writer(file, false), path, fit_scaling_factor })
    }

    fn write(&mut self, row: &AutoencoderRow) -> Result<()> {
        self.writer.serialize(row).map_err(|e| Error::io(&self.path, std::io::Error::other(e)))
    }
}

/// The parts of `trainee`'s checkpoint: the autoencoder (with its reconstruction term's scale) under its own names,
/// then the discriminator, if any, under [`DISCRIMINATOR_PREFIX`].
pub fn checkpoint_parts(trainee: &Trainee) -> Vec<CheckpointPart<'_>> {
    let model = CheckpointPart { prefix: "", varmap: &trainee.varmap };
    let discriminator = trainee
        .adversary
        .as_ref()
        .map(|adversary| CheckpointPart { prefix: DISCRIMINATOR_PREFIX, varmap: &adversary.varmap });
    std::iter::once(model).chain(discriminator).collect()
}

/// Writes the checkpoint of `trainee` at `progress` to `path`: [`checkpoint_parts`], each with its optimiser.
pub fn save_autoencoder_checkpoint(path: &Path, progress: &AutoencoderProgress, trainee: &Trainee) -> Result<()> {
    let mut states = vec![trainee.optimizer.state()?];
    if let Some(adversary) = &trainee.adversary {
        states.push(adversary.optimizer.state()?);
    }
    let parts: Vec<_> = checkpoint_parts(trainee).into_iter().zip(&states).collect();
    save_checkpoint_parts(path, progress, &parts)
}

impl AutoencoderObserver for AutoencoderLogger {
    fn on_step(&mut self, record: &AutoencoderStepRecord) -> Result<()> {
        self.write(&AutoencoderRow::of_step(record))
    }

    fn on_eval(&mut self, record: &EvalRecord) -> Result<()> {
        self.write(&AutoencoderRow::of_eval(record))
    }

    fn on_checkpoint(&mut self, progress: &AutoencoderProgress, trainee: &Trainee) -> Result<()> {
        // the rows first: a resumed run drops the rows past its checkpoint, but cannot make up missing ones
        self.writer.flush().map_err(|e| Error::io(&self.path, e))?;
        save_autoencoder_checkpoint(&self.run.checkpoint_path(), progress, trainee)?;
        self.run.save_weights(&trainee.varmap)?;
        let mut config = trainee.model.config().clone();
        let latent_std = progress.last_eval.map(|eval| eval.report.latent_std).filter(|std| *std > 0.0);
        if let (true, Some(std)) = (self.fit_scaling_factor, latent_std) {
            config.scaling_factor = 1.0 / std;
        }
        save_pretrained(&self.run.path(RunFile::Diffusers), &config, &trainee.varmap)
    }
}
