//! `metrics.csv`: one row per training step and two per epoch (train and held-out), with the reconstruction and
//! KL terms in separate columns. Rows are flushed at the end of every epoch and when training stops; the weights
//! are checkpointed (atomically) at the end of every epoch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use candle_nn::VarMap;

use super::run_dir::RunDir;
use crate::training::{EpochRecord, StepRecord, TrainingObserver};
use crate::{Error, Result};

/// The CSV header.
pub const METRICS_HEADER: &str =
    "kind,epoch,step,split,reconstruction,kl,beta,loss,negative_elbo,learning_rate,wall_seconds,examples_per_second";

/// Writes `metrics.csv` and the per-epoch checkpoint of a run.
pub struct RunLogger {
    run: RunDir,
    path: PathBuf,
    writer: BufWriter<File>,
    beta: f64,
    held_out_split: &'static str,
    last_epoch: Option<EpochRecord>,
    steps_logged: usize,
}

impl RunLogger {
    /// Starts `metrics.csv` in `run` (replacing an old one). `beta` weights the KL in the logged loss.
    pub fn new(run: &RunDir, beta: f64, held_out_is_validation: bool) -> Result<Self> {
        let path = run.metrics_path();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut logger = RunLogger {
            run: run.clone(),
            path,
            writer: BufWriter::new(file),
            beta,
            held_out_split: if held_out_is_validation { "validation" } else { "test" },
            last_epoch: None,
            steps_logged: 0,
        };
        logger.write_line(METRICS_HEADER)?;
        Ok(logger)
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
        let line = format!(
            "step,{},{},train,{:.6},{:.6},{},{:.6},{:.6},{},{:.4},",
            r.epoch,
            r.step,
            r.reconstruction,
            r.kl,
            self.beta,
            r.loss,
            r.reconstruction + r.kl,
            r.learning_rate,
            r.wall_seconds
        );
        self.steps_logged += 1;
        self.write_line(&line)
    }

    fn on_epoch_end(&mut self, r: &EpochRecord, varmap: &VarMap) -> Result<()> {
        for (split, estimate, speed) in [
            ("train", &r.train, format!("{:.1}", r.examples_per_second)),
            (self.held_out_split, &r.held_out, String::new()),
        ] {
            let loss = estimate.reconstruction + self.beta * estimate.kl;
            let line = format!(
                "epoch,{},{},{split},{:.6},{:.6},{},{loss:.6},{:.6},{},{:.4},{speed}",
                r.epoch,
                r.step,
                estimate.reconstruction,
                estimate.kl,
                self.beta,
                estimate.negative_elbo(),
                r.learning_rate,
                r.wall_seconds
            );
            self.write_line(&line)?;
        }
        self.flush()?;
        self.run.save_weights(varmap)?;
        self.last_epoch = Some(*r);
        Ok(())
    }
}

impl Drop for RunLogger {
    fn drop(&mut self) {
        let _ = self.writer.flush();
    }
}
