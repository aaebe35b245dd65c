//! Loading a trained run and the data a command works on, for the commands that take plain `--run` / `--data`
//! flags: a thin layer over [`elbo::latent::TrainedRun`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use elbo::data::{DataSpec, Dataset};
use elbo::latent::{Split, TrainedRun};

/// A trained model with its configuration.
pub type LoadedRun = TrainedRun;

/// Opens the run directory and rebuilds its model.
pub fn load_run(path: &Path, device: &Device) -> anyhow::Result<LoadedRun> {
    TrainedRun::open(path, device).with_context(|| format!("loading the model of {}", path.display()))
}

/// One dataset: a single file used whole, a directory's (or the run's own) held-out split, or with `train`, the
/// training split.
pub fn load_dataset(loaded: &LoadedRun, data: Option<&PathBuf>, label_column: Option<usize>, train: bool) -> anyhow::Result<Dataset> {
    let spec = data.map(|path| DataSpec::Path { path: path.clone(), label_column });
    let split = if train { Split::Train } else { Split::Test };
    loaded.dataset(spec.as_ref(), split).context("loading the data")
}
