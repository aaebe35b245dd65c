//! The run directory: `config.json`, `model.safetensors`, `metrics.csv`, `summary.json` and the image grids.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;

use crate::atomic::{read_json, write_atomic_with, write_json};
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
    /// Held-out mean reconstruction term (one sample), nats.
    pub held_out_reconstruction: f64,
    /// Held-out mean KL, nats.
    pub held_out_kl: f64,
    /// Held-out mean negative ELBO: an upper bound on -log p(x), not the likelihood itself.
    pub held_out_negative_elbo: f64,
}

impl From<&EpochRecord> for EpochSummary {
    fn from(record: &EpochRecord) -> Self {
        EpochSummary {
            epoch: record.epoch,
            train_reconstruction: record.train.reconstruction,
            train_kl: record.train.kl,
            train_negative_elbo: record.train.negative_elbo(),
            held_out_reconstruction: record.held_out.reconstruction,
            held_out_kl: record.held_out.kl,
            held_out_negative_elbo: record.held_out.negative_elbo(),
        }
    }
}

/// The note stored with every summary: the ELBO is a bound.
pub const BOUND_NOTE: &str = "negative ELBO = reconstruction + KL, in nats per example: an upper bound on -log p(x) \
     (the ELBO is a lower bound on log p(x)), not the likelihood itself";

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates the directory (and parents) for a new run.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        Ok(RunDir { root: root.to_path_buf() })
    }

    /// Opens an existing run, checking that it has a config and weights.
    pub fn open(root: &Path) -> Result<Self> {
        let run = RunDir { root: root.to_path_buf() };
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

    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// `model.safetensors`.
    pub fn weights_path(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }

    /// `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// `summary.json`.
    pub fn summary_path(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// A file named `name` inside the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
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
        write_atomic_with(&self.weights_path(), |temporary| varmap.save(temporary).map_err(std::io::Error::other))
    }

    /// Rebuilds the trained model from `config.json` and `model.safetensors`.
    pub fn load_model(&self, device: &Device) -> Result<(Vae, VarMap, RunConfig)> {
        let config = self.load_config()?;
        let (vae, varmap) = Vae::load(&config.model, &self.weights_path(), device)?;
        Ok((vae, varmap, config))
    }
}
