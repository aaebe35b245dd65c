//! `metrics.csv`: one row per training step and two per epoch (train and held-out), with the reconstruction and
//! KL terms in separate columns. Rows are flushed at every checkpoint and when training stops; the weights are saved
//! (atomically) at the end of every epoch, and the checkpoint (weights, optimiser, progress) at every checkpoint.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_nn::VarMap;

use super::checkpoint_file::save_checkpoint;
use super::run_dir::RunDir;
use crate::atomic::write_atomic_with;
use crate::evaluation::{Curves, ElboEstimate};
use crate::training::{Checkpoint, EpochRecord, StepRecord, TrainingObserver, TrainingProgress};
use crate::{Error, Result};

/// The CSV header, as [`MetricsRow`] writes it.
pub const METRICS_HEADER: &str =
    "kind,epoch,step,split,reconstruction,kl,weighted_kl,loss,negative_elbo,learning_rate,wall_seconds,examples_per_second";

/// Whether a row is one training step's or one epoch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// One optimisation step (batch means).
    Step,
    /// One epoch: the means of its training steps, or the held-out figures after it.
    Epoch,
}

/// One row of `metrics.csv`: written by [`RunLogger`], read back by [`read_metrics`] for the diagnosis and the
/// report. Columns are matched by name, so files with more columns, or without the optional ones, still read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsRow {
    /// Step or epoch row.
    pub kind: RowKind,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global step (at the end of the epoch, for epoch rows).
    pub step: usize,
    /// `train`, `test` or `validation`.
    pub split: String,
    /// Mean reconstruction term -log p(x|z~), nats.
    pub reconstruction: f64,
    /// Mean raw KL, nats.
    pub kl: f64,
    /// The KL term as it entered the loss (beta, warm-up, free bits or capacity applied); empty for the IWAE
    /// objective and for held-out rows.
    #[serde(default)]
    pub weighted_kl: Option<f64>,
    /// The minimised loss; empty for held-out rows.
    #[serde(default)]
    pub loss: Option<f64>,
    /// reconstruction + kl: the negative ELBO, an upper bound on -log p(x).
    #[serde(default)]
    pub negative_elbo: f64,
    /// The learning rate.
    #[serde(default)]
    pub learning_rate: f64,
    /// Seconds since training started (across resumes).
    #[serde(default)]
    pub wall_seconds: f64,
    /// Training examples per second of the epoch (epoch training rows only).
    #[serde(default)]
    pub examples_per_second: Option<f64>,
}

impl MetricsRow {
    /// The row of one step.
    fn of_step(r: &StepRecord) -> Self {
        MetricsRow {
            kind: RowKind::Step,
            epoch: r.epoch,
            step: r.step,
            split: "train".into(),
            reconstruction: r.reconstruction,
            kl: r.kl,
            weighted_kl: r.weighted_kl,
            loss: Some(r.loss),
            negative_elbo: r.reconstruction + r.kl,
            learning_rate: r.learning_rate,
            wall_seconds: r.wall_seconds,
            examples_per_second: None,
        }
    }

    /// The rows of one epoch: its training means and the held-out figures after it (when there are).
    fn of_epoch(r: &EpochRecord, held_out_split: &str) -> Vec<Self> {
        let row = |split: &str, estimate: &ElboEstimate| MetricsRow {
            kind: RowKind::Epoch,
            epoch: r.epoch,
            step: r.step,
            split: split.into(),
            reconstruction: estimate.reconstruction,
            kl: estimate.kl,
            weighted_kl: None,
            loss: None,
            negative_elbo: estimate.negative_elbo(),
            learning_rate: r.learning_rate,
            wall_seconds: r.wall_seconds,
            examples_per_second: None,
        };
        let train = MetricsRow {
            weighted_kl: r.train_weighted_kl,
            loss: Some(r.train_loss),
            examples_per_second: Some(r.examples_per_second),
            ..row("train", &r.train)
        };
        std::iter::once(train).chain(r.held_out.as_ref().map(|held_out| row(held_out_split, held_out))).collect()
    }

    /// True when the row was logged before the checkpoint `progress`: a step row up to its step, the epoch rows of
    /// the epochs it completed (the epoch in progress is evaluated again when it ends, also one a step limit cut
    /// short).
    fn logged_before(&self, progress: &TrainingProgress) -> bool {
        match self.kind {
            RowKind::Step => self.step <= progress.step,
            RowKind::Epoch => self.epoch < progress.epoch,
        }
    }
}

/// The columns every `metrics.csv` has.
const REQUIRED_COLUMNS: [&str; 6] = ["kind", "epoch", "step", "split", "reconstruction", "kl"];

/// Reads every row of a `metrics.csv`; an error names the line and the column that could not be read, or the
/// column the header lacks.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| csv_error(path, e))?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?;
    if let Some(missing) = REQUIRED_COLUMNS.iter().find(|column| !header.iter().any(|name| name == **column)) {
        let problem = format!("no `{missing}` column; expected {}", REQUIRED_COLUMNS.join(", "));
        return Err(Error::bad_input(path, "header", problem));
    }
    reader.deserialize().map(|row| row.map_err(|e| csv_error(path, e))).collect()
}

/// The training curves (reconstruction and raw KL of the steps and of the epochs' means) of `rows`.
pub fn curves_of(rows: &[MetricsRow]) -> Curves {
    let train = |kind: RowKind| {
        rows.iter().filter(move |row| row.kind == kind && row.split == "train").map(|row| (row.reconstruction, row.kl))
    };
    Curves { steps: train(RowKind::Step).collect(), epochs: train(RowKind::Epoch).collect() }
}

/// The csv crate's error as ours, naming the line and the column where there is one.
pub(crate) fn csv_error(path: &Path, error: csv::Error) -> Error {
    let line = error.position().map_or_else(|| "rows".to_string(), |position| format!("line {}", position.line()));
    match error.into_kind() {
        csv::ErrorKind::Io(error) => Error::io(path, error),
        csv::ErrorKind::Deserialize { err, .. } => {
            let column = err.field().map_or(String::new(), |field| format!(" field {}", field + 1));
            Error::bad_input(path, format!("{line}{column}"), err.kind().to_string())
        }
        other => Error::bad_input(path, line, format!("{other:?}")),
    }
}

/// A CSV writer of metrics rows into `file`, with the header first when `header`.
pub(crate) fn row_writer(file: File, header: bool) -> csv::Writer<BufWriter<File>> {
    csv::WriterBuilder::new().has_headers(header).from_writer(BufWriter::new(file))
}

/// Writes `metrics.csv` and the checkpoints of a run.
pub struct RunLogger {
    run: RunDir,
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    held_out_split: &'static str,
    last_epoch: Option<EpochRecord>,
    steps_logged: usize,
}

impl RunLogger {
    /// Starts `metrics.csv` in `run` (replacing an old one).
    pub fn new(run: &RunDir, held_out_is_validation: bool) -> Result<Self> {
        let path = run.metrics_path();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self::with_writer(run, held_out_is_validation, row_writer(file, true), None, 0))
    }

    /// Continues `metrics.csv` of a run resumed from `progress`: the rows the stopped process logged after its last
    /// checkpoint are dropped (they will be logged again), so the file reads as if the run had never stopped.
    pub fn resume(run: &RunDir, held_out_is_validation: bool, progress: &TrainingProgress) -> Result<Self> {
        let path = run.metrics_path();
        let kept: Vec<MetricsRow> =
            read_metrics(&path)?.into_iter().filter(|row| row.logged_before(progress)).collect();
        write_atomic_with(&path, |temporary| {
            let mut writer = row_writer(File::create(temporary)?, true);
            kept.iter().try_for_each(|row| writer.serialize(row)).map_err(std::io::Error::other)?;
            writer.flush()
        })?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let steps_logged = kept.iter().filter(|row| row.kind == RowKind::Step).count();
        let writer = row_writer(file, false);
        Ok(Self::with_writer(run, held_out_is_validation, writer, progress.last_epoch, steps_logged))
    }

    fn with_writer(
        run: &RunDir,
        held_out_is_validation: bool,
        writer: csv::Writer<BufWriter<File>>,
        last_epoch: Option<EpochRecord>,
        steps_logged: usize,
    ) -> Self {
        RunLogger {
            run: run.clone(),
            path: run.metrics_path(),
            writer,
            held_out_split: if held_out_is_validation { "validation" } else { "test" },
            last_epoch,
            steps_logged,
        }
    }

    /// The last epoch logged (and checkpointed).
    pub fn last_epoch(&self) -> Option<&EpochRecord> {
        self.last_epoch.as_ref()
    }

    /// Number of step rows written.
    pub fn steps_logged(&self) -> usize {
        self.steps_logged
    }

    fn write(&mut self, row: &MetricsRow) -> Result<()> {
        self.writer.serialize(row).map_err(|e| Error::io(&self.path, std::io::Error::other(e)))
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl TrainingObserver for RunLogger {
    fn on_step(&mut self, record: &StepRecord) -> Result<()> {
        self.steps_logged += 1;
        self.write(&MetricsRow::of_step(record))
    }

    fn on_epoch_end(&mut self, record: &EpochRecord, varmap: &VarMap) -> Result<()> {
        for row in MetricsRow::of_epoch(record, self.held_out_split) {
            self.write(&row)?;
        }
        self.flush()?;
        self.run.save_weights(varmap)?;
        self.last_epoch = Some(*record);
        Ok(())
    }

    fn on_checkpoint(&mut self, checkpoint: &Checkpoint, varmap: &VarMap) -> Result<()> {
        // the rows first: a resumed run drops the rows past its checkpoint, but cannot make up missing ones
        self.flush()?;
        save_checkpoint(&self.run.checkpoint_path(), checkpoint, varmap)
    }
}
