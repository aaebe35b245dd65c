//! A whole training run, start to finish: write the configuration, build and train the model, log every step,
//! checkpoint every epoch (and on request more often), continue from a checkpoint, and leave a summary and image grids in the run directory.

use candle_core::{DType, Device};
use candle_nn::VarMap;

use crate::data::{binarized, Dataset, Splits};
use crate::evaluation::disentanglement::{compute_metrics, MetricsConfig, MetricsReport, Representation};
use crate::evaluation::sprite_codes::sprite_factor_space;
use crate::evaluation::{diagnose, Diagnosis};
use crate::model::Vae;
use crate::outputs::metrics::{curves_of, read_metrics};
use crate::outputs::pictures::{save_reconstruction_grid, save_sample_grid};
use crate::outputs::{load_checkpoint, EpochSummary, RunConfig, RunDir, RunFile, RunLogger, RunSummary, BOUND_NOTE};
use crate::report::write_report;
use crate::training::{train_from, Checkpoint, CheckpointEvery, TrainOutcome, TrainingObserver, TrainingProgress};
use crate::{Error, Result};

/// Examples used by the diagnosis at the end of training.
pub const DIAGNOSIS_EXAMPLES: usize = 2000;

/// Number of images in the sample and reconstruction grids.
pub const GRID_IMAGES: usize = 64;

/// What a finished run leaves besides its files.
pub struct FinishedRun {
    /// The trained model.
    pub vae: Vae,
    /// Its variables.
    pub varmap: VarMap,
    /// The figures written to `summary.json`.
    pub summary: RunSummary,
    /// The latent diagnosis written to `diagnosis.json`.
    pub diagnosis: Diagnosis,
}

/// Trains the model described by `config` on `splits`, writing everything into `run`. `observer` (a progress
/// display, a Ctrl-C watcher) sees every step. On a non-finite loss, the summary records the failure, the last
/// checkpoint stays on disk, and the error is returned.
pub fn train_run(
    config: &RunConfig,
    splits: &Splits,
    run: &RunDir,
    device: &Device,
    observer: &mut dyn TrainingObserver,
) -> Result<FinishedRun> {
    check_run(config, splits)?;
    run.save_config(config)?;
    let (vae, varmap) = Vae::fresh(&config.model, config.training.seed, DType::F32, device)?;
    let logger = RunLogger::new(run, splits.test_is_validation)?;
    let session = Session { config, splits, run, device };
    complete_run(&session, (vae, varmap), (logger, None), observer)
}

/// What a resumed run may change: everything else must stay as `config.json` has it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResumeChanges {
    /// Train up to this many epochs in all.
    pub epochs: Option<usize>,
    /// A new step limit (in all, counted from the run's start); `Some(None)` removes the limit.
    pub max_steps: Option<Option<usize>>,
    /// A new checkpoint interval.
    pub checkpoint_every: Option<Option<CheckpointEvery>>,
}

impl ResumeChanges {
    /// The run's `config` with these changes.
    pub fn apply(&self, config: &RunConfig) -> RunConfig {
        let mut changed = config.clone();
        let training = &mut changed.training;
        training.epochs = self.epochs.unwrap_or(training.epochs);
        training.max_steps = self.max_steps.unwrap_or(training.max_steps);
        training.checkpoint_every = self.checkpoint_every.unwrap_or(training.checkpoint_every);
        changed
    }
}

/// Continues the run in `run` (opened with [`RunDir::resume`]) from its checkpoint, with `changes` to its
/// configuration; `splits` is the run's data, loaded again from its `config.json`. The weights, the optimiser, the
/// random streams and the counters continue where the checkpoint left them, `metrics.csv` is continued, and the
/// run ends as [`train_run`] does: the same files, bit for bit, as a run that was never stopped (same threads).
pub fn resume_run(
    run: &RunDir,
    changes: &ResumeChanges,
    splits: &Splits,
    device: &Device,
    observer: &mut dyn TrainingObserver,
) -> Result<FinishedRun> {
    let config = changes.apply(&run.load_config()?);
    check_run(&config, splits)?;
    let (vae, varmap) = Vae::fresh(&config.model, config.training.seed, DType::F32, device)?;
    let checkpoint = load_checkpoint(&run.checkpoint_path(), &varmap, device)?;
    check_work_left(&config, &checkpoint.progress)?;
    let logger = RunLogger::resume(run, splits.test_is_validation, &checkpoint.progress)?;
    run.save_config(&config)?;
    let session = Session { config: &config, splits, run, device };
    complete_run(&session, (vae, varmap), (logger, Some(&checkpoint)), observer)
}

/// The configuration's own checks and the data's fit to the likelihood, before anything is written.
fn check_run(config: &RunConfig, splits: &Splits) -> Result<()> {
    config.validate()?;
    config.model.likelihood.check_data(&splits.train)?;
    config.model.likelihood.check_data(&splits.test)
}

/// An error when the run has reached its epochs or its step limit already.
fn check_work_left(config: &RunConfig, progress: &TrainingProgress) -> Result<()> {
    let training = &config.training;
    if progress.epoch > training.epochs {
        let problem = format!(
            "the run has completed {} epochs; to train further, ask for more in all (--epochs above {})",
            progress.epoch - 1,
            progress.epoch - 1
        );
        return Err(Error::invalid_setting("epochs", problem));
    }
    match training.max_steps {
        Some(limit) if progress.step >= limit => {
            let problem = format!("the run has taken {} steps, its limit; raise it (--max-steps)", progress.step);
            Err(Error::invalid_setting("max-steps", problem))
        }
        _ => Ok(()),
    }
}

/// What a run trains on and where: its settings, data, directory and device.
#[derive(Clone, Copy)]
struct Session<'a> {
    config: &'a RunConfig,
    splits: &'a Splits,
    run: &'a RunDir,
    device: &'a Device,
}

/// Trains (from the start, or from `resume`), then writes the summary, image grids, diagnosis and report.
fn complete_run(
    session: &Session,
    (vae, varmap): (Vae, VarMap),
    (mut logger, resume): (RunLogger, Option<&Checkpoint>),
    observer: &mut dyn TrainingObserver,
) -> Result<FinishedRun> {
    let Session { config, splits, run, device } = *session;
    let held_out_split = if splits.test_is_validation { "validation" } else { "test" };
    let result = train_from(&vae, &varmap, splits, &config.training, device, resume, &mut [&mut logger, observer]);
    match result {
        Ok(outcome) => {
            drop(logger);
            if outcome.interrupted {
                run.save_weights(&varmap)?; // keep the partial epoch's progress too
            }
            let summary = summary_of(&outcome, held_out_split);
            run.save_summary(&summary)?;
            save_sample_grid(&vae, &run.path(RunFile::Samples), GRID_IMAGES, 1.0, config.training.seed, device)?;
            save_reconstruction_grid(&vae, &splits.test, &run.path(RunFile::Reconstructions), GRID_IMAGES / 2, device)?;
            let held_out = binarized(&splits.test, config.training.binarization, config.training.seed);
            let diagnosis = diagnose_run(&vae, run, &held_out, DIAGNOSIS_EXAMPLES, config.training.seed, device)?;
            write_report(run, &vae, splits, device)?;
            Ok(FinishedRun { vae, varmap, summary, diagnosis })
        }
        Err(error) => {
            let partial = TrainOutcome {
                epochs_completed: logger.last_epoch().map_or(0, |r| r.epoch),
                steps: logger.steps_logged(),
                last_epoch: logger.last_epoch().copied(),
                ..TrainOutcome::default()
            };
            let summary = RunSummary { status: format!("failed: {error}"), ..summary_of(&partial, held_out_split) };
            run.save_summary(&summary)?;
            Err(error)
        }
    }
}

fn summary_of(outcome: &TrainOutcome, held_out_split: &str) -> RunSummary {
    RunSummary {
        status: if outcome.interrupted { "interrupted" } else { "completed" }.to_string(),
        epochs_completed: outcome.epochs_completed,
        steps: outcome.steps,
        held_out_split: held_out_split.to_string(),
        last_epoch: outcome.last_epoch.as_ref().map(EpochSummary::from),
        train_examples_per_second: outcome.examples_per_second,
        train_seconds: outcome.train_seconds,
        step: outcome.plan.clone(),
        simd: Some(crate::kernels::simd_level().name().to_string()),
        note: BOUND_NOTE.to_string(),
    }
}

/// Diagnoses a trained model on `dataset`, reads the run's training curves, and writes `diagnosis.json`.
pub fn diagnose_run(
    vae: &Vae,
    run: &RunDir,
    dataset: &Dataset,
    max_examples: usize,
    seed: u64,
    device: &Device,
) -> Result<Diagnosis> {
    let curves = curves_of(&read_metrics(&run.metrics_path())?).read();
    let diagnosis = diagnose(vae, dataset, max_examples, seed, device)?.with_curves(curves);
    run.write(RunFile::Diagnosis, &diagnosis)?;
    Ok(diagnosis)
}

/// Computes the disentanglement metrics of the sprites' `representation` (e.g.
/// [`crate::evaluation::sprite_codes::SpriteCodes`] of a trained model)
/// and writes them to `disentanglement.json` in `run`.
pub fn disentanglement_run(
    run: &RunDir,
    representation: &mut dyn Representation,
    config: &MetricsConfig,
) -> Result<MetricsReport> {
    let report = compute_metrics(&sprite_factor_space(), representation, config)?;
    run.write(RunFile::Disentanglement, &report)?;
    Ok(report)
}
