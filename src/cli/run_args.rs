//! Command-line flags shared by the commands that use a trained run: which run, on which device, and on which data.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use elbo::data::{DataSpec, Dataset, Splits};
use elbo::latent::{Split, TrainedRun};

use super::compute_args::ComputeArgs;

/// The run to load.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The run directory of a trained model, or a diffusers AutoencoderKL directory (config.json and
    /// diffusion_pytorch_model.safetensors, such as a Stable Diffusion checkpoint's `vae/` folder).
    #[arg(long)]
    pub run: PathBuf,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

impl RunArgs {
    /// The run with its model loaded, and the device (the thread count set).
    pub fn open(&self) -> anyhow::Result<(TrainedRun, Device)> {
        let (_, device) = self.compute.apply()?;
        let trained = TrainedRun::open(&self.run, &device)?;
        Ok((trained, device))
    }
}

/// The data to apply a trained model to.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Data (default: the run's own data). A directory of MNIST-style IDX files or train.npy/test.npy brings its
    /// splits; a single .npy, .csv or IDX file is used whole (with --split train: the part the run's validation
    /// fraction leaves for training).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CSV only: the column (from 0) holding integer class labels.
    #[arg(long)]
    pub label_column: Option<usize>,
    /// Which split of the run's data or of a directory to use.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
}

impl InputArgs {
    /// The data given on the command line, if any.
    pub fn spec(&self) -> Option<DataSpec> {
        self.data.as_ref().map(|path| DataSpec::Path { path: path.clone(), label_column: self.label_column })
    }

    /// The examples to use.
    pub fn dataset(&self, trained: &TrainedRun) -> anyhow::Result<Dataset> {
        let split = self.split;
        trained.dataset(self.spec().as_ref(), split).with_context(|| self.describe(trained.run.root()))
    }

    /// Training and held-out examples.
    pub fn splits(&self, trained: &TrainedRun) -> anyhow::Result<Splits> {
        trained.splits(self.spec().as_ref()).with_context(|| self.describe(trained.run.root()))
    }

    fn describe(&self, run: &Path) -> String {
        match &self.data {
            Some(path) => format!("loading {}", path.display()),
            None => format!("loading the data of {}", run.display()),
        }
    }
}
