//! Command-line flags that choose the data.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use elbo::data::image_folder::{ImageChannels, ImageFit, ImageFolderConfig};
use elbo::data::source::is_image_folder;
use elbo::data::sprites::SpriteConfig;
use elbo::data::{Binarization, DataSpec};

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: a directory of MNIST-style IDX files (or train.npy/test.npy), a folder of PNG/JPEG images (directly,
    /// one subfolder per class, or train/ and test/ subfolders), or one .npy, .csv or IDX file.
    /// Without it, the built-in sprites are generated.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CSV only: the column (from 0) holding integer class labels.
    #[arg(long)]
    pub label_column: Option<usize>,
    /// Built-in sprites: image side in pixels.
    #[arg(long, default_value_t = 32)]
    pub sprite_size: usize,
    /// Built-in sprites: train on the full factor grid (3 shapes x 6 scales x 40 rotations x 32 x 32 positions =
    /// 737,280 images, as dSprites), rendered on the fly; --sprite-count is then ignored and the held-out set is
    /// --validation-fraction of the grid, drawn at random.
    #[arg(long)]
    pub sprite_grid: bool,
    /// Built-in sprites: number of training images.
    #[arg(long, default_value_t = 20_000)]
    pub sprite_count: usize,
    /// Fraction of the data held out for validation when it has no test split.
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f32,
    /// Image folders: resize every image to N x N, or to HxW (height x width, e.g. 64x48).
    /// Default: keep the images' own size, which must then be the same for all.
    #[arg(long, value_name = "N|HxW", value_parser = parse_image_size)]
    pub image_size: Option<ImageSize>,
    /// Image folders: channels per example; auto is rgb when any image is stored in colour, grey otherwise.
    #[arg(long, value_enum, default_value_t = ImageChannels::default())]
    pub image_channels: ImageChannels,
    /// Image folders, with --image-size: crop keeps the aspect ratio (resize, then cut the centre);
    /// stretch resizes the whole image to the size.
    #[arg(long, value_enum, default_value_t = ImageFit::default())]
    pub image_fit: ImageFit,
    /// Image folders: leave out files that cannot be decoded (listed in a warning) instead of failing.
    #[arg(long)]
    pub skip_unreadable: bool,
}

impl DataArgs {
    /// The data specification; the sprites are seeded with `seed`.
    /// An image folder (detected, or named by an image flag) becomes [`DataSpec::Images`] with the image flags, so
    /// that `config.json` records them.
    pub fn spec(&self, seed: u64) -> DataSpec {
        match &self.data {
            Some(path) if self.label_column.is_none() && (self.image_flags_given() || is_image_folder(path)) => {
                DataSpec::Images(self.image_config(path))
            }
            Some(path) => DataSpec::Path { path: path.clone(), label_column: self.label_column },
            None => DataSpec::Sprites(self.sprites(seed)),
        }
    }

    /// The built-in sprites' settings, seeded with `seed`.
    fn sprites(&self, seed: u64) -> SpriteConfig {
        let count = if self.sprite_grid { elbo::data::sprites::GRID_SIZE } else { self.sprite_count };
        SpriteConfig { size: self.sprite_size, count, seed, full_grid: self.sprite_grid }
    }

    /// True when an image flag differs from its default.
    fn image_flags_given(&self) -> bool {
        self.image_size.is_some()
            || self.image_channels != ImageChannels::default()
            || self.image_fit != ImageFit::default()
            || self.skip_unreadable
    }

    /// The image folder settings for `path`.
    fn image_config(&self, path: &Path) -> ImageFolderConfig {
        ImageFolderConfig {
            path: path.to_path_buf(),
            height: self.image_size.map(|s| s.height),
            width: self.image_size.map(|s| s.width),
            channels: self.image_channels,
            fit: self.image_fit,
            skip_unreadable: self.skip_unreadable,
        }
    }
}

/// The size images are resized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// Parses `--image-size`: `N` for N x N, or `HxW` (height x width).
fn parse_image_size(text: &str) -> Result<ImageSize, String> {
    let side = |part: &str| match part.trim().parse::<usize>() {
        Ok(0) => Err(format!("`{text}`: a side of 0 pixels; each side must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not N or HxW (height x width), e.g. 64 or 64x48")),
    };
    match text.split_once(['x', 'X']) {
        Some((height, width)) => Ok(ImageSize { height: side(height)?, width: side(width)? }),
        None => side(text).map(|n| ImageSize { height: n, width: n }),
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
