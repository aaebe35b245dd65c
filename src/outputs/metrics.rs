//! `metrics.csv`: one row per training step and two per epoch (train and held-out), with the reconstruction and
//! KL terms in separate columns. Rows are flushed at every checkpoint and when training stops; the weights are saved
//! (atomically) at the end of every epoch, and the checkpoint (weights, optimiser, progress) at every checkpoint.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use candle_nn::VarMap;

use super::checkpoint_file::save_checkpoint;
use super::run_dir::RunDir;
use crate::atomic::write_atomic;
use crate::evaluation::ElboEstimate;
use crate::training::{Checkpoint, EpochRecord, StepRecord, TrainingObserver, TrainingProgress};
use crate::{Error, Result};

/// The CSV header.
/// `kl` is the raw KL; `weighted_kl` the KL term as it entered the loss (beta, warm-up, free bits or capacity
/// applied; empty for the IWAE objective and for held-out rows); `negative_elbo` = reconstruction + kl, the bound.
pub const METRICS_HEADER: &str =
    "kind,epoch,step,split,reconstruction,kl,weighted_kl,loss,negative_elbo,learning_rate,wall_seconds,examples_per_second";

/// Writes `metrics.csv` and the per-epoch checkpoint of a run.
pub struct RunLogger {
    run: RunDir,
    path: PathBuf,
    writer: BufWriter<File>,
    held_out_split: &'static str,
    last_epoch: Option<EpochRecord>,
    steps_logged: usize,
}

impl RunLogger {
    /// Starts `metrics.csv` in `run` (replacing an old one).
    pub fn new(run: &RunDir, held_out_is_validation: bool) -> Result<Self> {
        let path = run.metrics_path();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut logger = RunLogger {
            run: run.clone(),
            path,
            writer: BufWriter::new(file),
            held_out_split: if held_out_is_validation { "validation" } else { "test" },
            last_epoch: None,
            steps_logged: 0,
        };
        logger.write_line(METRICS_HEADER)?;
        Ok(logger)
    }

    /// Continues `metrics.csv` of a run resumed from `progress`: the rows the stopped process logged after its last
    /// checkpoint are dropped (they will be logged again), so the file reads as if the run had never stopped.
    pub fn resume(run: &RunDir, held_out_is_validation: bool, progress: &TrainingProgress) -> Result<Self> {
        let path = run.metrics_path();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut lines = text.lines();
        if lines.next() != Some(METRICS_HEADER) {
            return Err(Error::bad_input(&path, "header", format!("expected `{METRICS_HEADER}`")));
        }
        let mut kept = vec![METRICS_HEADER];
        for (number, line) in lines.enumerate() {
            if logged_before(line, progress)
                .map_err(|problem| Error::bad_input(&path, format!("line {}", number + 2), problem))?
            {
                kept.push(line);
            }
        }
        let steps_logged = kept.iter().filter(|line| line.starts_with("step,")).count();
        write_atomic(&path, (kept.join("\n") + "\n").as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunLogger {
            run: run.clone(),
            path,
            writer: BufWriter::new(file),
            held_out_split: if held_out_is_validation { "validation" } else { "test" },
            last_epoch: progress.last_epoch,
            steps_logged,
        })
    }

    /// The last epoch logged (and checkpointed).
    pub fn last_epoch(&self) -> Option<&EpochRecord> {
        self.last_epoch.as_ref()
    }

    /// Number of step rows written.
    pub fn steps_logged(&self) -> usize {
        self.steps_logged
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.writer, "{line}").map_err(|e| Error::io(&self.path, e))
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl TrainingObserver for RunLogger {
    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        let estimate = ElboEstimate { examples: 0, reconstruction: r.reconstruction, kl: r.kl };
        let row = Row { kind: "step", epoch: r.epoch, step: r.step, split: "train", estimate: &estimate };
        let line = row.format(r.weighted_kl, Some(r.loss), r.learning_rate, r.wall_seconds, None);
        self.steps_logged += 1;
        self.write_line(&line)
    }

    fn on_epoch_end(&mut self, r: &EpochRecord, varmap: &VarMap) -> Result<()> {
        let train = Row { kind: "epoch", epoch: r.epoch, step: r.step, split: "train", estimate: &r.train };
        let speed = Some(r.examples_per_second);
        let line = train.format(r.train_weighted_kl, Some(r.train_loss), r.learning_rate, r.wall_seconds, speed);
        self.write_line(&line)?;
        let held_out = Row { split: self.held_out_split, estimate: &r.held_out, ..train };
        self.write_line(&held_out.format(None, None, r.learning_rate, r.wall_seconds, None))?;
        self.flush()?;
        self.run.save_weights(varmap)?;
        self.last_epoch = Some(*r);
        Ok(())
    }

    fn on_checkpoint(&mut self, checkpoint: &Checkpoint, varmap: &VarMap) -> Result<()> {
        // the rows first: a resumed run drops the rows past its checkpoint, but cannot make up missing ones
        self.flush()?;
        save_checkpoint(&self.run.checkpoint_path(), checkpoint, varmap)
    }
}

/// True when the `metrics.csv` row `line` was logged before the checkpoint `progress`: a step row up to its step,
/// the epoch rows of the epochs it completed. An error for a row that is not one elbo writes.
fn logged_before(line: &str, progress: &TrainingProgress) -> std::result::Result<bool, String> {
    let mut cells = line.split(',');
    let (kind, epoch, step) = (cells.next(), cells.next(), cells.next());
    let number = |cell: Option<&str>| cell.and_then(|c| c.parse::<usize>().ok()).ok_or("expected a number");
    let (epoch, step) = (number(epoch)?, number(step)?);
    match kind {
        Some("step") => Ok(step <= progress.step),
        // the epoch in progress is evaluated again when it ends (also one a step limit cut short)
        Some("epoch") => Ok(epoch < progress.epoch),
        _ => Err(format!("expected a row of kind `step` or `epoch`, got `{line}`")),
    }
}

/// The identifying columns of a row.
#[derive(Clone, Copy)]
struct Row<'a> {
    kind: &'static str,
    epoch: usize,
    step: usize,
    split: &'a str,
    estimate: &'a ElboEstimate,
}

impl Row<'_> {
    /// The CSV line; `None` values are left empty.
    fn format(&self, weighted_kl: Option<f64>, loss: Option<f64>, lr: f64, wall: f64, speed: Option<f64>) -> String {
        let cell = |value: Option<f64>, digits: usize| value.map_or(String::new(), |v| format!("{v:.digits$}"));
        format!(
            "{},{},{},{},{:.6},{:.6},{},{},{:.6},{lr},{wall:.4},{}",
            self.kind,
            self.epoch,
            self.step,
            self.split,
            self.estimate.reconstruction,
            self.estimate.kl,
            cell(weighted_kl, 6),
            cell(loss, 6),
            self.estimate.negative_elbo(),
            cell(speed, 1)
        )
    }
}

impl Drop for RunLogger {
    fn drop(&mut self) {
        let _ = self.writer.flush();
    }
}
