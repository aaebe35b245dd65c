//! A trained run opened for use: its model, its configuration, and the data to apply it to (the run's own data by
//! default, or other data given by the caller).

use std::path::Path;

use candle_core::Device;

use crate::data::image_folder::ImageFolderConfig;
use crate::data::{self, DataSpec, Dataset, Splits};
use crate::model::Vae;
use crate::outputs::{RunConfig, RunDir};
use crate::{Error, Result};

/// Which part of split data to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The training examples.
    Train,
    /// The held-out examples (a real test set, or the validation part).
    Test,
}

impl Split {
    /// The split's examples.
    pub fn of(self, splits: Splits) -> Dataset {
        match self {
            Split::Train => splits.train,
            Split::Test => splits.test,
        }
    }
}

/// A run directory with its model loaded.
#[derive(Debug, Clone)]
pub struct TrainedRun {
    /// The run directory.
    pub run: RunDir,
    /// The trained model.
    pub vae: Vae,
    /// The run's `config.json`.
    pub config: RunConfig,
}

impl TrainedRun {
    /// Opens the run at `dir` and loads its model onto `device`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let run = RunDir::open(dir)?;
        let (vae, _, config) = run.load_model(device)?;
        Ok(TrainedRun { run, vae, config })
    }

    /// Training and held-out data: the run's own data when `data` is `None`; otherwise `data`, where a directory
    /// brings its own test set and a single file is split like the run's (same validation fraction and seed).
    /// Errors when the examples do not fit the model.
    pub fn splits(&self, data: Option<&DataSpec>) -> Result<Splits> {
        let spec = data.map_or_else(|| self.config.data.clone(), |spec| self.like_run(spec));
        let splits = data::load(&spec, self.config.validation_fraction, self.config.training.seed)?;
        self.vae.check_input(&splits.train.shape, &splits.train.source)?;
        self.vae.check_input(&splits.test.shape, &splits.test.source)?;
        Ok(splits)
    }

    /// One set of examples: the `split` of [`TrainedRun::splits`], except that a single file given in `data` is used
    /// whole for [`Split::Test`]. Errors when the examples do not fit the model.
    pub fn dataset(&self, data: Option<&DataSpec>, split: Split) -> Result<Dataset> {
        let dataset = match data {
            Some(DataSpec::Path { path, label_column }) if !path.is_dir() && split == Split::Test => {
                data::load_file(path, *label_column)?
            }
            _ => split.of(self.splits(data)?),
        };
        self.vae.check_input(&dataset.shape, &dataset.source)?;
        Ok(dataset)
    }

    /// `spec`, except that an image folder given as a plain path is read with the run's image settings (size,
    /// channels, fit), so it matches the model.
    fn like_run(&self, spec: &DataSpec) -> DataSpec {
        match (spec, &self.config.data) {
            (DataSpec::Path { path, label_column: None }, DataSpec::Images(settings))
                if data::source::is_image_folder(path) =>
            {
                DataSpec::Images(ImageFolderConfig { path: path.clone(), ..settings.clone() })
            }
            _ => spec.clone(),
        }
    }

    /// The batch size for passes without gradients: the run's evaluation batch size.
    pub fn eval_batch_size(&self) -> usize {
        self.config.training.eval_batch_size
    }
}

/// An error unless `index` picks one of the examples of `dataset`; `setting` names the flag for the message.
pub fn check_index(dataset: &Dataset, index: usize, setting: &str) -> Result<()> {
    if index >= dataset.len() {
        let problem =
            format!("{index} is past the {} examples of {} (indices start at 0)", dataset.len(), dataset.source);
        return Err(Error::invalid_setting(setting, problem));
    }
    Ok(())
}
