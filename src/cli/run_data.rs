//! Loading a trained run and the data a command works on.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use elbo::data::{self, Dataset, DataSpec, Splits};
use elbo::model::Vae;
use elbo::outputs::{RunConfig, RunDir};

/// A trained model with its configuration.
pub struct LoadedRun {
    /// The run directory.
    pub run: RunDir,
    /// The model.
    pub vae: Vae,
    /// Its `config.json`.
    pub config: RunConfig,
}

/// Opens the run directory and rebuilds its model.
pub fn load_run(path: &Path, device: &Device) -> anyhow::Result<LoadedRun> {
    let run = RunDir::open(path)?;
    let (vae, _, config) = run.load_model(device).with_context(|| format!("loading the model of {}", path.display()))?;
    Ok(LoadedRun { run, vae, config })
}

/// The splits of `data` (a directory or file), or of the run's own data when `data` is `None`.
pub fn load_splits(loaded: &LoadedRun, data: Option<&PathBuf>, label_column: Option<usize>) -> anyhow::Result<Splits> {
    let spec = match data {
        Some(path) => DataSpec::Path { path: path.clone(), label_column },
        None => loaded.config.data.clone(),
    };
    data::load(&spec, loaded.config.validation_fraction, loaded.config.training.seed).context("loading the data")
}

/// One dataset: a single file used whole, a directory's (or the run's own) held-out split, or with `train`, the
/// training split.
pub fn load_dataset(loaded: &LoadedRun, data: Option<&PathBuf>, label_column: Option<usize>, train: bool) -> anyhow::Result<Dataset> {
    match data {
        Some(path) if path.is_file() && !train => Ok(data::load_file(path, label_column)?),
        _ => {
            let splits = load_splits(loaded, data, label_column)?;
            Ok(if train { splits.train } else { splits.test })
        }
    }
}
