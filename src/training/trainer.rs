//! The training loop, the seed's six steps per batch:
//! 1. encoder forward on x -> (mu_x, log sigma^2_x); 2. sample eps ~ N(0, I), z~ = mu_x + sigma_x * eps;
//! 3. decoder forward, -log p(x|z~); 4. closed-form KL; 5. per-example loss = reconstruction + KL;
//! 6. backprop through everything (including to the encoder), optimiser step.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::{Objective, TrainConfig};
use super::optimizer::Optimizer;
use crate::data::{batch_tensor, Batcher, Dataset, Splits};
use crate::evaluation::{evaluate_negative_elbo, ElboEstimate};
use crate::model::Vae;
use crate::objective::{
    decompose_kl, log_importance_weights, log_mean_exp, negative_elbo_terms, ElboTerms, NoiseSource,
};
use crate::{Error, Result};

/// Figures of one optimisation step (batch means, in nats).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepRecord {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global step, from 1.
    pub step: usize,
    /// Mean reconstruction term -log p(x|z~).
    pub reconstruction: f64,
    /// Mean KL term (unweighted).
    pub kl: f64,
    /// The KL term as it entered the loss (beta, warm-up, free bits or capacity applied); `None` for the IWAE
    /// objective, where the KL is not a separate term.
    pub weighted_kl: Option<f64>,
    /// The minimised loss: reconstruction + weighted KL, or the negative IWAE bound.
    pub loss: f64,
    /// Learning rate used for this step.
    pub learning_rate: f64,
    /// Seconds since training started.
    pub wall_seconds: f64,
}

/// Figures at the end of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global step at the end of the epoch.
    pub step: usize,
    /// Means of the training steps' terms over the epoch.
    pub train: ElboEstimate,
    /// Mean of the steps' weighted KL over the epoch (`None` for the IWAE objective).
    pub train_weighted_kl: Option<f64>,
    /// Mean of the steps' losses over the epoch.
    pub train_loss: f64,
    /// The held-out set's single-sample negative ELBO and terms after the epoch.
    pub held_out: ElboEstimate,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f64,
    /// Seconds since training started.
    pub wall_seconds: f64,
    /// Training examples per second in this epoch (optimisation only, evaluation excluded).
    pub examples_per_second: f64,
}

/// Watches training: progress display, logs, checkpoints. Every method has a do-nothing default.
pub trait TrainingObserver {
    /// Called before the first step of an epoch.
    fn on_epoch_start(&mut self, _epoch: usize, _num_batches: usize) -> Result<()> {
        Ok(())
    }
    /// Called after every optimisation step.
    fn on_step(&mut self, _record: &StepRecord) -> Result<()> {
        Ok(())
    }
    /// Called after each epoch's evaluation; the model's weights are those at the end of the epoch.
    fn on_epoch_end(&mut self, _record: &EpochRecord, _varmap: &VarMap) -> Result<()> {
        Ok(())
    }
    /// Polled after every step: returning true stops training early (e.g. on Ctrl-C).
    fn should_stop(&self) -> bool {
        false
    }
}

/// How training ended.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct TrainOutcome {
    /// Epochs run to the end.
    pub epochs_completed: usize,
    /// Optimisation steps taken.
    pub steps: usize,
    /// True when an observer asked to stop before the last epoch ended.
    pub interrupted: bool,
    /// The last completed epoch's figures.
    pub last_epoch: Option<EpochRecord>,
    /// Seconds spent in optimisation steps (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples processed per second of `train_seconds`.
    pub examples_per_second: f64,
}

/// Seed offsets: independent random streams for shuffling, noise and binarization.
const SHUFFLE_STREAM: u64 = 0x5_4aff1e;
const NOISE_STREAM: u64 = 0x0_e9511;
const BINARIZE_STREAM: u64 = 0xb1_0a71;

/// Trains `vae` (whose variables are `varmap`) on `splits.train`, evaluating on `splits.test` after each epoch.
/// Same seed and same thread count give the same numbers bit for bit.
pub fn train(
    vae: &Vae,
    varmap: &VarMap,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    observers: &mut [&mut dyn TrainingObserver],
) -> Result<TrainOutcome> {
    config.validate()?;
    vae.check_input(&splits.train.shape, &splits.train.source)?;
    vae.check_input(&splits.test.shape, &splits.test.source)?;
    let mut loop_state = LoopState::new(config, varmap, splits.train.len())?;
    let started = Instant::now();
    let mut examples_seen = 0usize;
    let mut outcome = TrainOutcome::default();
    for epoch in 1..=config.epochs {
        let epoch_started = Instant::now();
        let (totals, end) = loop_state.run_epoch(vae, &splits.train, epoch, device, started, observers)?;
        let train_estimate = totals.estimate;
        let epoch_seconds = epoch_started.elapsed().as_secs_f64();
        outcome.train_seconds += epoch_seconds;
        outcome.steps = loop_state.step;
        examples_seen += train_estimate.examples;
        if end == EpochEnd::Interrupted {
            outcome.interrupted = true;
            break;
        }
        let held_out = evaluate_negative_elbo(
            vae,
            &splits.test,
            config.eval_batch_size,
            config.binarization,
            config.seed,
            device,
        )?;
        let record = EpochRecord {
            epoch,
            step: loop_state.step,
            train: train_estimate,
            train_weighted_kl: totals.weighted_kl(),
            train_loss: totals.loss_sum / totals.steps.max(1) as f64,
            held_out,
            learning_rate: loop_state.optimizer.learning_rate(),
            wall_seconds: started.elapsed().as_secs_f64(),
            examples_per_second: train_estimate.examples as f64 / epoch_seconds,
        };
        for observer in observers.iter_mut() {
            observer.on_epoch_end(&record, varmap)?;
        }
        outcome.epochs_completed = epoch;
        outcome.last_epoch = Some(record);
        if end == EpochEnd::StepLimit {
            break;
        }
    }
    outcome.examples_per_second = examples_seen as f64 / outcome.train_seconds.max(f64::MIN_POSITIVE);
    Ok(outcome)
}

/// The state that lives across epochs: optimiser, random streams, step counter.
struct LoopState<'a> {
    config: &'a TrainConfig,
    optimizer: Optimizer,
    shuffle_rng: ChaCha8Rng,
    binarize_rng: ChaCha8Rng,
    noise: NoiseSource,
    step: usize,
    dataset_size: usize,
}

impl<'a> LoopState<'a> {
    fn new(config: &'a TrainConfig, varmap: &VarMap, dataset_size: usize) -> Result<Self> {
        Ok(LoopState {
            config,
            optimizer: Optimizer::new(config.optimizer, config.learning_rate, varmap)?,
            shuffle_rng: ChaCha8Rng::seed_from_u64(config.seed ^ SHUFFLE_STREAM),
            binarize_rng: ChaCha8Rng::seed_from_u64(config.seed ^ BINARIZE_STREAM),
            noise: NoiseSource::new(config.seed ^ NOISE_STREAM),
            step: 0,
            dataset_size,
        })
    }

    /// One pass over the training set (or up to the step limit); returns the epoch's totals and how it ended.
    fn run_epoch(
        &mut self,
        vae: &Vae,
        train: &Dataset,
        epoch: usize,
        device: &Device,
        started: Instant,
        observers: &mut [&mut dyn TrainingObserver],
    ) -> Result<(EpochTotals, EpochEnd)> {
        let mut batcher = Batcher::shuffled(train, self.config.batch_size, &mut self.shuffle_rng);
        for observer in observers.iter_mut() {
            observer.on_epoch_start(epoch, batcher.num_batches())?;
        }
        let mut totals = EpochTotals::default();
        while let Some((mut values, rows)) = batcher.next_batch() {
            self.config.binarization.apply(&mut values, &mut self.binarize_rng);
            let x = batch_tensor(values, rows, train.shape.dim(), device)?;
            let record = self.step(vae, &x, epoch, started)?;
            totals.add(&record, rows);
            for observer in observers.iter_mut() {
                observer.on_step(&record)?;
            }
            if observers.iter().any(|observer| observer.should_stop()) {
                return Ok((totals, EpochEnd::Interrupted));
            }
            if self.config.max_steps.is_some_and(|limit| self.step >= limit) {
                return Ok((totals, EpochEnd::StepLimit));
            }
        }
        Ok((totals, EpochEnd::Completed))
    }

    /// One optimisation step on the batch `x`.
    fn step(&mut self, vae: &Vae, x: &Tensor, epoch: usize, started: Instant) -> Result<StepRecord> {
        self.step += 1;
        let terms = match self.config.objective {
            Objective::Elbo => self.elbo_loss(vae, x)?,
            Objective::Iwae { samples } => self.iwae_loss(vae, x, samples)?,
            Objective::Tcvae { tc_beta } => self.tcvae_loss(vae, x, tc_beta)?,
        };
        let to_f64 = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)) };
        let (reconstruction, kl, loss_value) =
            (to_f64(&terms.reconstruction)?, to_f64(&terms.kl)?, to_f64(&terms.loss)?);
        let weighted_kl = terms.weighted_kl.as_ref().map(to_f64).transpose()?;
        let checked = [("reconstruction", reconstruction), ("KL", kl), ("loss", loss_value)];
        self.check_finite(epoch, &checked)?;
        let grads = terms.loss.backward()?; // step 6: backprop through everything, including the encoder
        self.optimizer.step(&grads)?;
        Ok(StepRecord {
            epoch,
            step: self.step,
            reconstruction,
            kl,
            weighted_kl,
            loss: loss_value,
            learning_rate: self.optimizer.learning_rate(),
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Steps 1-5 of the seed: the loss reconstruction + weighted KL, batch means as scalars.
    fn elbo_loss(&mut self, vae: &Vae, x: &Tensor) -> Result<StepTerms> {
        let terms = self.elbo_terms(vae, x)?; // steps 1-4
        let weighted_kl = self.config.kl.weighted_kl(&terms.kl_per_dimension, self.step)?;
        StepTerms::with_weighted_kl(&terms, weighted_kl) // step 5: reconstruction + (weighted) KL
    }

    /// Steps 1-4 of the seed on `x`, with fresh noise.
    fn elbo_terms(&mut self, vae: &Vae, x: &Tensor) -> Result<ElboTerms> {
        let eps = self.noise.standard_normal(x.dim(0)?, vae.config().latent_dim, x.dtype(), x.device())?;
        negative_elbo_terms(vae, x, &eps)
    }

    /// The beta-TCVAE loss: reconstruction + MI + tc_beta * TC + dimension-wise KL, batch means; the KL parts are
    /// estimated with the training set's size.
    fn tcvae_loss(&mut self, vae: &Vae, x: &Tensor, tc_beta: f64) -> Result<StepTerms> {
        let terms = self.elbo_terms(vae, x)?;
        let parts = decompose_kl(&terms.posterior, &terms.z, self.dataset_size)?;
        StepTerms::with_weighted_kl(&terms, parts.weighted(tc_beta)?)
    }

    /// The negative IWAE bound with `samples` draws per example, batch mean.
    fn iwae_loss(&mut self, vae: &Vae, x: &Tensor, samples: usize) -> Result<StepTerms> {
        let posterior = vae.encode(x)?;
        let eps = self.noise.standard_normal(x.dim(0)? * samples, vae.config().latent_dim, x.dtype(), x.device())?;
        let (log_weights, reconstruction) = log_importance_weights(vae, x, &posterior, &eps, samples)?;
        let loss = log_mean_exp(&log_weights)?.mean_all()?.neg()?;
        let kl = posterior.kl_to_standard_normal()?.mean_all()?;
        Ok(StepTerms { reconstruction: reconstruction.mean_all()?, kl, weighted_kl: None, loss })
    }

    fn check_finite(&self, epoch: usize, terms: &[(&str, f64)]) -> Result<()> {
        match terms.iter().find(|(_, value)| !value.is_finite()) {
            Some(&(term, value)) => Err(Error::NonFinite { step: self.step, epoch, term: term.to_string(), value }),
            None => Ok(()),
        }
    }
}

/// The scalar terms of one step, still on the device (the loss keeps its graph for backprop).
struct StepTerms {
    reconstruction: Tensor,
    kl: Tensor,
    weighted_kl: Option<Tensor>,
    loss: Tensor,
}

impl StepTerms {
    /// Batch means of the terms, with `weighted_kl` (a scalar) in place of the KL in the loss.
    fn with_weighted_kl(terms: &ElboTerms, weighted_kl: Tensor) -> Result<Self> {
        let reconstruction = terms.reconstruction.mean_all()?;
        let loss = (&reconstruction + &weighted_kl)?;
        Ok(StepTerms { reconstruction, kl: terms.kl.mean_all()?, weighted_kl: Some(weighted_kl), loss })
    }
}

/// How a pass over the training set ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochEnd {
    /// Every batch was used.
    Completed,
    /// The step limit was reached first.
    StepLimit,
    /// An observer asked to stop.
    Interrupted,
}

/// Sums over an epoch's steps.
#[derive(Default)]
struct EpochTotals {
    estimate: ElboEstimate,
    weighted_kl_sum: Option<f64>,
    loss_sum: f64,
    steps: usize,
}

impl EpochTotals {
    fn add(&mut self, record: &StepRecord, rows: usize) {
        self.estimate.accumulate(rows, record.reconstruction * rows as f64, record.kl * rows as f64);
        self.weighted_kl_sum = record.weighted_kl.map(|w| self.weighted_kl_sum.unwrap_or(0.0) + w);
        self.loss_sum += record.loss;
        self.steps += 1;
    }

    fn weighted_kl(&self) -> Option<f64> {
        self.weighted_kl_sum.map(|sum| sum / self.steps.max(1) as f64)
    }
}
