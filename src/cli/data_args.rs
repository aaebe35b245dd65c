//! Command-line flags that choose the data.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use elbo::data::sprites::SpriteConfig;
use elbo::data::{Binarization, DataSpec};

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: a directory of MNIST-style IDX files (or train.npy/test.npy), or one .npy, .csv or IDX file.
    /// Without it, the built-in sprites are generated.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CSV only: the column (from 0) holding integer class labels.
    #[arg(long)]
    pub label_column: Option<usize>,
    /// Built-in sprites: image side in pixels.
    #[arg(long, default_value_t = 32)]
    pub sprite_size: usize,
    /// Built-in sprites: number of training images.
    #[arg(long, default_value_t = 20_000)]
    pub sprite_count: usize,
    /// Fraction of the data held out for validation when it has no test split.
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f32,
}

impl DataArgs {
    /// The data specification; the sprites are seeded with `seed`.
    pub fn spec(&self, seed: u64) -> DataSpec {
        match &self.data {
            Some(path) => DataSpec::Path { path: path.clone(), label_column: self.label_column },
            None => DataSpec::Sprites(SpriteConfig { size: self.sprite_size, count: self.sprite_count, seed }),
        }
    }
}

/// Binarization choices on the command line.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum BinarizeMode {
    /// Keep grey values.
    None,
    /// Threshold once.
    Static,
    /// A fresh Bernoulli draw every time an example is used.
    Dynamic,
}

impl BinarizeMode {
    /// The library's binarization for this mode.
    pub fn to_binarization(self, threshold: f32) -> Binarization {
        match self {
            BinarizeMode::None => Binarization::None,
            BinarizeMode::Static => Binarization::Static { threshold },
            BinarizeMode::Dynamic => Binarization::Dynamic,
        }
    }
}
