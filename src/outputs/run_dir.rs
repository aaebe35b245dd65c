//! The run directory: `config.json`, `model.safetensors`, `metrics.csv`, `summary.json` and the image grids.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;

use crate::atomic::{read_json, write_json};
use crate::data::DataSpec;
use crate::model::{Vae, VaeConfig};
use crate::training::{EpochRecord, TrainConfig};
use crate::{Error, Result};

/// Everything needed to rebuild the model and repeat the run. Written as `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// The `elbo` version that wrote the run.
    pub elbo_version: String,
    /// Where the data came from.
    pub data: DataSpec,
    /// Fraction of the training data held out when the data has no test split.
    pub validation_fraction: f32,
    /// The architecture.
    pub model: VaeConfig,
    /// The training settings.
    pub training: TrainConfig,
    /// Compute threads used (results are bit-for-bit reproducible for the same seed and thread count).
    pub threads: usize,
    /// The device trained on ("cpu" or "cuda:N").
    pub device: String,
}

impl RunConfig {
    /// Checks the architecture and the training settings, before anything is written.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.training.validate()
    }
}

/// Final figures of a run. Written as `summary.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// "completed", "interrupted" or "failed: ...".
    pub status: String,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Optimisation steps taken.
    pub steps: usize,
    /// What the held-out figures were computed on: "test" or "validation".
    pub held_out_split: String,
    /// The last completed epoch's figures (train means and held-out single-sample negative ELBO, both bounds).
    pub last_epoch: Option<EpochSummary>,
    /// Training examples per second (optimisation time only).
    pub train_examples_per_second: f64,
    /// Seconds of optimisation.
    pub train_seconds: f64,
    /// The training step used and why (`None` in runs from before it was recorded, or where training failed to
    /// start).
    #[serde(default)]
    pub step: Option<crate::training::StepPlan>,
    /// The SIMD level the CPU kernels ran at (avx512, avx2 or scalar).
    #[serde(default)]
    pub simd: Option<String>,
    /// A reminder of what the numbers are.
    pub note: String,
}

/// The figures of one epoch, as stored in `summary.json`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochSummary {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean training reconstruction term over the epoch, nats.
    pub train_reconstruction: f64,
    /// Mean training KL over the epoch, nats.
    pub train_kl: f64,
    /// Mean training negative ELBO (reconstruction + KL), nats.
    pub train_negative_elbo: f64,
    /// Held-out mean reconstruction term (one sample), nats (`None` without held-out data).
    pub held_out_reconstruction: Option<f64>,
    /// Held-out mean KL, nats.
    pub held_out_kl: Option<f64>,
    /// Held-out mean negative ELBO: an upper bound on -log p(x), not the likelihood itself.
    pub held_out_negative_elbo: Option<f64>,
}

impl From<&EpochRecord> for EpochSummary {
    fn from(record: &EpochRecord) -> Self {
        EpochSummary {
            epoch: record.epoch,
            train_reconstruction: record.train.reconstruction,
            train_kl: record.train.kl,
            train_negative_elbo: record.train.negative_elbo(),
            held_out_reconstruction: record.held_out.map(|held_out| held_out.reconstruction),
            held_out_kl: record.held_out.map(|held_out| held_out.kl),
            held_out_negative_elbo: record.held_out.map(|held_out| held_out.negative_elbo()),
        }
    }
}

/// Takes the exclusive lock of the run directory `root` and writes this process's id into the lock file; an error
/// naming the process that holds it already.
fn lock(root: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = root.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    if let Err(error) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let problem = match error {
            std::fs::TryLockError::WouldBlock => {
                format!("is being written by process {} (one writer per run directory)", holder.trim())
            }
            std::fs::TryLockError::Error(error) => format!("could not be locked: {error}"),
        };
        return Err(Error::bad_input(root, "run directory", problem));
    }
    let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
    written.map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// The note stored with every summary: the ELBO is a bound.
pub const BOUND_NOTE: &str = "negative ELBO = reconstruction + KL, in nats per example: an upper bound on -log p(x) \
     (the ELBO is a lower bound on log p(x)), not the likelihood itself";

/// Every file elbo writes into a run directory (besides temporaries and the lock): the one list of their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFile {
    /// `config.json`: the run's settings ([`RunConfig`]).
    Config,
    /// `model.safetensors`: the weights, under the model's names.
    Weights,
    /// `checkpoint.safetensors`: weights, optimiser state and progress, to resume.
    Checkpoint,
    /// `metrics.csv`: a row per step and two per epoch.
    Metrics,
    /// `summary.json`: the final figures ([`RunSummary`]).
    Summary,
    /// `diagnosis.json`: is the latent used? ([`crate::evaluation::Diagnosis`]).
    Diagnosis,
    /// `samples.png`: decoded draws from the prior.
    Samples,
    /// `reconstructions.png`: held-out inputs above their reconstructions.
    Reconstructions,
    /// `report.html`: the run's report page.
    Report,
    /// `probe.json`: the linear probe's scores ([`crate::latent::probe::ProbeReport`]), written by `elbo probe`.
    Probe,
    /// `disentanglement.json`: the disentanglement metrics ([`crate::evaluation::disentanglement::MetricsReport`]), written by `elbo metrics`.
    Disentanglement,
    /// `traversal.png`, written by `elbo traverse`.
    Traversal,
    /// `interpolation.png`, written by `elbo interpolate`.
    Interpolation,
    /// `arithmetic.png`, written by `elbo arithmetic`.
    Arithmetic,
    /// `held_out_crops.npy`: a KL autoencoder run's held-out crops.
    HeldOutCrops,
    /// `diffusers/`: a KL autoencoder run's model in diffusers' layout (a folder).
    Diffusers,
}

impl RunFile {
    /// Every file, in the order a run writes them.
    pub const ALL: [RunFile; 16] = [
        RunFile::Config,
        RunFile::Weights,
        RunFile::Checkpoint,
        RunFile::Metrics,
        RunFile::Summary,
        RunFile::Diagnosis,
        RunFile::Samples,
        RunFile::Reconstructions,
        RunFile::Report,
        RunFile::Probe,
        RunFile::Disentanglement,
        RunFile::Traversal,
        RunFile::Interpolation,
        RunFile::Arithmetic,
        RunFile::HeldOutCrops,
        RunFile::Diffusers,
    ];

    /// The file's name inside the run directory.
    pub fn name(self) -> &'static str {
        match self {
            RunFile::Config => "config.json",
            RunFile::Weights => "model.safetensors",
            RunFile::Checkpoint => "checkpoint.safetensors",
            RunFile::Metrics => "metrics.csv",
            RunFile::Summary => "summary.json",
            RunFile::Diagnosis => "diagnosis.json",
            RunFile::Samples => "samples.png",
            RunFile::Reconstructions => "reconstructions.png",
            RunFile::Report => "report.html",
            RunFile::Probe => "probe.json",
            RunFile::Disentanglement => "disentanglement.json",
            RunFile::Traversal => "traversal.png",
            RunFile::Interpolation => "interpolation.png",
            RunFile::Arithmetic => "arithmetic.png",
            RunFile::HeldOutCrops => "held_out_crops.npy",
            RunFile::Diffusers => "diffusers",
        }
    }
}

/// True for the temporary name of an interrupted write: ours (`*.tmp-<pid>`) or safetensors' (`.tmp*`).
fn is_temporary(name: &str) -> bool {
    name.starts_with(".tmp") || name.contains(".tmp-")
}

/// The lock file of a run directory, held by the one process that writes the run.
const LOCK_FILE: &str = ".lock";

/// A run directory on disk. One created for writing holds its lock (an advisory `flock` on `.lock`, released when
/// the last clone is dropped or the process ends, even by `kill -9`); one opened for reading does not.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    /// The lock file, held open for as long as the run is written.
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

/// What to do with a run already in the directory a new run is created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse a directory that holds any file (the lock file aside).
    Refuse,
    /// Remove the files elbo derives (every [`RunFile`] and stray temporaries) first; other files stay.
    Overwrite,
}

impl RunDir {
    /// Creates the directory (and parents) for a new run, takes its lock, and refuses a directory that is not empty.
    pub fn create(root: &Path) -> Result<Self> {
        Self::create_with(root, Existing::Refuse)
    }

    /// Creates the directory for a new run and takes its lock; `existing` says what happens to files already there.
    /// A directory another process writes is an error naming that process.
    pub fn create_with(root: &Path, existing: Existing) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let lock = lock(root)?;
        let run = RunDir { root: root.to_path_buf(), _lock: Some(std::sync::Arc::new(lock)) };
        match existing {
            Existing::Refuse => run.refuse_files()?,
            Existing::Overwrite => run.remove_derived_files()?,
        }
        Ok(run)
    }

    /// The files in the directory, the lock file aside.
    fn entries(&self) -> Result<Vec<String>> {
        let listing = std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let mut names = Vec::new();
        for entry in listing {
            let name = entry.map_err(|e| Error::io(&self.root, e))?.file_name().to_string_lossy().into_owned();
            if name != LOCK_FILE {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// An error when the directory holds any file.
    fn refuse_files(&self) -> Result<()> {
        let names = self.entries()?;
        if names.is_empty() {
            return Ok(());
        }
        let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let problem = format!(
            "is not empty ({shown}{}); pass --overwrite to replace the run in it, or choose another --out",
            if names.len() > 5 { ", ..." } else { "" }
        );
        Err(Error::bad_input(&self.root, "run directory", problem))
    }

    /// Removes every [`RunFile`] and the temporaries of interrupted writes.
    fn remove_derived_files(&self) -> Result<()> {
        self.remove_files(|name| is_temporary(name) || RunFile::ALL.iter().any(|file| file.name() == name))
    }

    /// Removes the files whose names `doomed` picks.
    fn remove_files(&self, doomed: impl Fn(&str) -> bool) -> Result<()> {
        for name in self.entries()?.into_iter().filter(|name| doomed(name)) {
            let path = self.root.join(&name);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }

    /// Opens a run to continue it: takes its lock, checks that it has a config and a checkpoint, and removes the
    /// temporaries a killed process left.
    pub fn resume(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::bad_input(root, "run directory", "does not exist"));
        }
        let run = RunDir { root: root.to_path_buf(), _lock: Some(std::sync::Arc::new(lock(root)?)) };
        for required in [run.config_path(), run.checkpoint_path(), run.metrics_path()] {
            if !required.is_file() {
                let problem = format!("{} is missing: nothing to resume from", required.display());
                return Err(Error::bad_input(root, "run directory", problem));
            }
        }
        run.remove_files(is_temporary)?;
        Ok(run)
    }

    /// Opens an existing run for reading (no lock: readers keep working while a run is written), checking that it
    /// has a config and weights.
    pub fn open(root: &Path) -> Result<Self> {
        let run = RunDir { root: root.to_path_buf(), _lock: None };
        for required in [run.config_path(), run.weights_path()] {
            if !required.is_file() {
                return Err(Error::bad_input(root, "run directory", format!("{} is missing", required.display())));
            }
        }
        Ok(run)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `file` in this run.
    pub fn path(&self, file: RunFile) -> PathBuf {
        self.root.join(file.name())
    }

    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path(RunFile::Config)
    }

    /// `model.safetensors`.
    pub fn weights_path(&self) -> PathBuf {
        self.path(RunFile::Weights)
    }

    /// `checkpoint.safetensors`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.path(RunFile::Checkpoint)
    }

    /// `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.path(RunFile::Metrics)
    }

    /// `summary.json`.
    pub fn summary_path(&self) -> PathBuf {
        self.path(RunFile::Summary)
    }

    /// Reads `file` as JSON when the run has it: `None` when it does not, an error naming it when it cannot be read.
    pub fn read_optional<T: serde::de::DeserializeOwned>(&self, file: RunFile) -> Option<Result<T>> {
        let path = self.path(file);
        path.is_file().then(|| read_json(&path))
    }

    /// Writes `value` as the JSON `file` (e.g. [`RunFile::Diagnosis`]), atomically.
    pub fn write<T: serde::Serialize>(&self, file: RunFile, value: &T) -> Result<()> {
        write_json(&self.path(file), value)
    }

    /// Reads `summary.json`.
    pub fn load_summary(&self) -> Result<RunSummary> {
        read_json(&self.summary_path())
    }

    /// Writes `config.json`.
    pub fn save_config(&self, config: &RunConfig) -> Result<()> {
        write_json(&self.config_path(), config)
    }

    /// Reads `config.json`.
    pub fn load_config(&self) -> Result<RunConfig> {
        read_json(&self.config_path())
    }

    /// Writes `summary.json`.
    pub fn save_summary(&self, summary: &RunSummary) -> Result<()> {
        write_json(&self.summary_path(), summary)
    }

    /// Writes the weights to `model.safetensors`, atomically.
    pub fn save_weights(&self, varmap: &VarMap) -> Result<()> {
        super::checkpoint_file::save_weights(&self.weights_path(), varmap)
    }

    /// Rebuilds the trained model from `config.json` and `model.safetensors`.
    pub fn load_model(&self, device: &Device) -> Result<(Vae, VarMap, RunConfig)> {
        let config = self.load_config()?;
        let (vae, varmap) = Vae::load(&config.model, &self.weights_path(), device)?;
        Ok((vae, varmap, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_per_directory_and_readers_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let writer = RunDir::create(&root).unwrap();
        std::fs::write(writer.config_path(), "{}").unwrap();
        std::fs::write(writer.weights_path(), "").unwrap();
        let message = RunDir::create_with(&root, Existing::Overwrite).unwrap_err().to_string();
        assert!(message.contains("run") && message.contains(&format!("process {}", std::process::id())), "{message}");
        assert!(RunDir::open(&root).is_ok(), "readers need no lock");
        drop(writer);
        assert!(RunDir::create_with(&root, Existing::Overwrite).is_ok(), "the lock goes with the writer");
    }

    #[test]
    fn a_directory_with_files_is_refused_and_overwrite_removes_only_what_elbo_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        std::fs::create_dir_all(&root).unwrap();
        for name in ["config.json", "probe.json", "model.safetensors.tmp-123", ".tmpAbC123", "notes.txt"] {
            std::fs::write(root.join(name), "x").unwrap();
        }
        let message = RunDir::create(&root).unwrap_err().to_string();
        assert!(message.contains("not empty") && message.contains("--overwrite"), "{message}");
        RunDir::create_with(&root, Existing::Overwrite).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".lock", "notes.txt"]);
    }
}
