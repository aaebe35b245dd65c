//! The training loop of a KL autoencoder: steps on fresh random crops, an evaluation of the held-out crops every so
//! often, checkpoints, and a resume that continues exactly (the crops and the noise of step t depend only on the
//! seed and t).

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::config::AutoencoderTrainConfig;
use super::step::{StepFigures, Trainee};
use crate::data::crops::RandomCrops;
use crate::data::Dataset;
use crate::evaluation::{evaluate_compression, CompressionReport};
use crate::objective::NoiseSource;
use crate::training::CheckpointEvery;
use crate::{Error, Result};

/// Seed offset of the noise eps: step t draws from its own stream, seeded from (seed, this, t).
const NOISE_STREAM: u64 = 0x0_e9511;
/// Crops evaluated at once.
pub const EVAL_BATCH: usize = 16;

/// Where a run stands; stored as JSON in the checkpoint.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct AutoencoderProgress {
    /// Optimisation steps taken.
    pub step: usize,
    /// Seconds spent in optimisation steps, across resumes (evaluation excluded).
    pub train_seconds: f64,
    /// Seconds of training, across resumes.
    pub wall_seconds: f64,
    /// The last held-out evaluation.
    pub last_eval: Option<EvalRecord>,
}

/// One step's figures, where it stands and its learning rate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AutoencoderStepRecord {
    /// Step, from 1.
    pub step: usize,
    /// Pass over the crops, from 1.
    pub epoch: usize,
    /// The step's figures.
    pub figures: StepFigures,
    /// The autoencoder's learning rate.
    pub learning_rate: f64,
    /// Seconds since training started.
    pub wall_seconds: f64,
}

/// A held-out evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalRecord {
    /// After this many steps.
    pub step: usize,
    /// The held-out crops' distortion and rate.
    pub report: CompressionReport,
    /// Seconds since training started.
    pub wall_seconds: f64,
    /// Training crops per second of optimisation so far.
    pub images_per_second: f64,
}

/// Watches the training of an autoencoder: display, logs, checkpoints. Every method has a do-nothing default.
pub trait AutoencoderObserver {
    /// Called after every step.
    fn on_step(&mut self, _record: &AutoencoderStepRecord) -> Result<()> {
        Ok(())
    }
    /// Called after each held-out evaluation.
    fn on_eval(&mut self, _record: &EvalRecord) -> Result<()> {
        Ok(())
    }
    /// Called at every checkpoint (after each evaluation, every `checkpoint_every`, and when training stops
    /// early), with the progress and the trainee as they are then: together they continue the run exactly.
    fn on_checkpoint(&mut self, _progress: &AutoencoderProgress, _trainee: &Trainee) -> Result<()> {
        Ok(())
    }
    /// Polled after every step: true stops training (at a checkpoint).
    fn should_stop(&self) -> bool {
        false
    }
}

/// How training ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderOutcome {
    /// Where it stopped.
    pub progress: AutoencoderProgress,
    /// True when an observer stopped it before the last step.
    pub interrupted: bool,
}

/// What a run trains on: random crops of the training photos, and the held-out crops.
pub struct TrainingImages<'a> {
    /// The training photos and how they are cropped.
    pub crops: &'a RandomCrops,
    /// Fixed crops to evaluate on.
    pub held_out: &'a Dataset,
}

/// Trains `trainee` for the steps `config` asks for, from `progress` (`Default` for a fresh run).
pub fn train_autoencoder(
    trainee: &mut Trainee,
    images: &TrainingImages,
    config: &AutoencoderTrainConfig,
    progress: AutoencoderProgress,
    device: &Device,
    observers: &mut [&mut dyn AutoencoderObserver],
) -> Result<AutoencoderOutcome> {
    let mut state = LoopState::new(progress);
    let batches_per_epoch = images.crops.num_batches(config.batch_size);
    while state.progress.step < config.steps {
        let step = state.progress.step;
        let (epoch, first) = (step / batches_per_epoch, (step % batches_per_epoch) * config.batch_size);
        let pixels = crop_batch(images, epoch, first, config.batch_size, device)?;
        let eps = noise_for(trainee, &pixels, config.seed, step)?;
        let started = Instant::now();
        let figures = trainee.step(&pixels, &eps, step)?;
        if !figures.loss.is_finite() {
            let term = "loss".to_string();
            return Err(Error::NonFinite { step: step + 1, epoch: epoch + 1, term, value: figures.loss });
        }
        state.progress.train_seconds += started.elapsed().as_secs_f64();
        state.progress.step += 1;
        state.images_seen += pixels.dim(0)?;
        let record = AutoencoderStepRecord {
            step: step + 1,
            epoch: epoch + 1,
            figures,
            learning_rate: trainee.optimizer.learning_rate(),
            wall_seconds: state.wall_seconds(),
        };
        observers.iter_mut().try_for_each(|observer| observer.on_step(&record))?;
        let stop = observers.iter().any(|observer| observer.should_stop());
        let evaluate = state.progress.step.is_multiple_of(config.eval_every) || state.progress.step == config.steps;
        if evaluate {
            let (model, reconstruction) = (&trainee.model, &trainee.reconstruction);
            let network = reconstruction.perceptual_network();
            let report = evaluate_compression(model, reconstruction, images.held_out, EVAL_BATCH, network, device)?;
            let eval = EvalRecord {
                step: state.progress.step,
                report,
                wall_seconds: state.wall_seconds(),
                images_per_second: state.images_per_second(),
            };
            state.progress.last_eval = Some(eval);
            observers.iter_mut().try_for_each(|observer| observer.on_eval(&eval))?;
        }
        if evaluate || stop || state.checkpoint_due(config.checkpoint_every) {
            state.checkpoint(trainee, observers)?;
        }
        if stop && state.progress.step < config.steps {
            return Ok(AutoencoderOutcome { progress: state.progress, interrupted: true });
        }
    }
    Ok(AutoencoderOutcome { progress: state.progress, interrupted: false })
}

/// The loop's clocks and counters besides the progress.
struct LoopState {
    progress: AutoencoderProgress,
    started: Instant,
    wall_at_start: f64,
    train_seconds_at_start: f64,
    images_seen: usize,
    last_checkpoint: (usize, Instant),
}

impl LoopState {
    fn new(progress: AutoencoderProgress) -> Self {
        let now = Instant::now();
        LoopState {
            wall_at_start: progress.wall_seconds,
            train_seconds_at_start: progress.train_seconds,
            last_checkpoint: (progress.step, now),
            progress,
            started: now,
            images_seen: 0,
        }
    }

    fn wall_seconds(&self) -> f64 {
        self.wall_at_start + self.started.elapsed().as_secs_f64()
    }

    /// Crops per second of optimisation in this process (0 before the first step).
    fn images_per_second(&self) -> f64 {
        let seconds = self.progress.train_seconds - self.train_seconds_at_start;
        if seconds > 0.0 {
            self.images_seen as f64 / seconds
        } else {
            0.0
        }
    }

    fn checkpoint_due(&self, every: Option<CheckpointEvery>) -> bool {
        let (step, at) = self.last_checkpoint;
        match every {
            Some(CheckpointEvery::Steps(steps)) => self.progress.step - step >= steps,
            Some(CheckpointEvery::Minutes(minutes)) => at.elapsed().as_secs_f64() >= minutes * 60.0,
            None => false,
        }
    }

    fn checkpoint(&mut self, trainee: &Trainee, observers: &mut [&mut dyn AutoencoderObserver]) -> Result<()> {
        self.progress.wall_seconds = self.wall_seconds();
        observers.iter_mut().try_for_each(|observer| observer.on_checkpoint(&self.progress, trainee))?;
        self.last_checkpoint = (self.progress.step, Instant::now());
        Ok(())
    }
}

/// The crops `first..first + count` of pass `epoch` as a `[count, C, S, S]` tensor in [0, 1].
fn crop_batch(images: &TrainingImages, epoch: usize, first: usize, count: usize, device: &Device) -> Result<Tensor> {
    let shape = images.crops.shape();
    let values = images.crops.batch(epoch, first, count);
    let count = values.len() / shape.dim();
    Ok(Tensor::from_vec(values, (count, shape.channels, shape.height, shape.width), device)?)
}

/// eps ~ N(0, I) for step `step`, shaped like the latent of `pixels`: from its own stream, so a resumed run draws
/// what an uninterrupted one would.
fn noise_for(trainee: &Trainee, pixels: &Tensor, seed: u64, step: usize) -> Result<Tensor> {
    let (batch, _, height, width) = pixels.dims4()?;
    let config = trainee.model.config();
    let factor = config.downsampling();
    let latent_values = config.latent_channels * (height / factor) * (width / factor);
    let mut noise = NoiseSource::new(seed ^ NOISE_STREAM ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let eps = noise.standard_normal(batch, latent_values, pixels.dtype(), pixels.device())?;
    Ok(eps.reshape((batch, config.latent_channels, height / factor, width / factor))?)
}
