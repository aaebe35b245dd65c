//! The front door: what data to load (the sprites, a file or a directory) and how it is split into training and
//! held-out data.
//!
//! - A directory holds its own test set: MNIST-style IDX files (`train-images-idx3-ubyte` and
//!   `t10k-images-idx3-ubyte`, each possibly `.gz`, with optional `train-labels-idx1-ubyte` and
//!   `t10k-labels-idx1-ubyte`) or NPY files (`train.npy` and `test.npy`, with optional `train_labels.npy` and
//!   `test_labels.npy`). Then `test_is_validation` is false and the validation fraction is not used.
//! - A directory with none of those but with PNG or JPEG files (directly, in one subfolder per class, or in `train/`
//!   and `test/` subfolders) is an image folder, read by [`super::image_folder`] with the settings of
//!   [`DataSpec::Images`] (the defaults for a plain [`DataSpec::Path`]). Without `train/` and `test/`, a validation
//!   fraction is held out as for a single file.
//! - A single file is split: a seeded random `validation_fraction` of its examples is held out.
//! - The sprites' held-out set is generated, not split: `validation_fraction x count` more sprites with the same
//!   settings and seed, drawn from an independent random stream.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::image_folder::{self, ImageFolderConfig};
use super::sprites::{self, SpriteConfig};
use super::{csv, idx, npy, Dataset};
use crate::{Error, Result};

/// What data to load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DataSpec {
    /// The built-in sprites, generated in code.
    Sprites(SpriteConfig),
    /// A file (`.npy`, `.csv` or IDX) or a directory of MNIST-style IDX files or `train.npy` / `test.npy`.
    Path {
        /// The file or directory.
        path: PathBuf,
        /// For CSV files: the 0-based column that holds class labels.
        label_column: Option<usize>,
    },
    /// A folder of PNG or JPEG images, and how to turn them into examples.
    Images(ImageFolderConfig),
}

/// Training data plus held-out data.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// The examples to train on.
    pub train: Dataset,
    /// The held-out examples.
    pub test: Dataset,
    /// True when `test` was split off (or generated) as validation data rather than being a real test set.
    pub test_is_validation: bool,
}

impl Splits {
    /// Training data with no held-out split: training then evaluates nothing after each epoch (the epochs'
    /// held-out figures are `None`).
    pub fn train_only(train: Dataset) -> Splits {
        let test = Dataset { values: super::Values::F32(Vec::new()), labels: None, factors: None, ..train.clone() };
        Splits { train, test, test_is_validation: true }
    }
}

/// Loads the data `spec` names. Files and sprites hold out `validation_fraction` (in (0, 1)) of their examples,
/// chosen by a shuffle seeded with `seed` for files; directories come with their own test set. Large raw IDX and
/// NPY files are memory-mapped (see [`mapped::map_threshold`](super::mapped::map_threshold)).
pub fn load(spec: &DataSpec, validation_fraction: f32, seed: u64) -> Result<Splits> {
    let map_threshold = match spec {
        DataSpec::Path { .. } => super::mapped::map_threshold()?,
        DataSpec::Sprites(_) | DataSpec::Images(_) => super::mapped::MAP_THRESHOLD_BYTES,
    };
    load_with_threshold(spec, validation_fraction, seed, map_threshold)
}

/// [`load`], memory-mapping IDX and NPY files whose data is at least `map_threshold` bytes.
pub fn load_with_threshold(spec: &DataSpec, validation_fraction: f32, seed: u64, map_threshold: u64) -> Result<Splits> {
    match spec {
        DataSpec::Sprites(config) => load_sprites(config, validation_fraction),
        DataSpec::Path { path, label_column } => {
            let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if metadata.is_dir() {
                reject_label_column(path, *label_column)?;
                if is_image_folder(path) {
                    load_images(&ImageFolderConfig::new(path), validation_fraction, seed)
                } else {
                    load_directory(path, map_threshold)
                }
            } else {
                split(&load_file_with_threshold(path, *label_column, map_threshold)?, validation_fraction, seed)
            }
        }
        DataSpec::Images(config) => load_images(config, validation_fraction, seed),
    }
}

/// True when `path` is a directory of images: it holds none of the IDX or NPY files a data directory is recognised
/// by, and PNG or JPEG files directly or in subfolders.
pub fn is_image_folder(path: &Path) -> bool {
    path.is_dir() && !LAYOUTS.iter().any(|l| (l.find)(path, l.names[0]).is_some()) && image_folder::holds_images(path)
}

/// An image folder: its own `train` / `test` split, or a held-out fraction. Skipped files are reported on stderr.
fn load_images(config: &ImageFolderConfig, validation_fraction: f32, seed: u64) -> Result<Splits> {
    let folder = image_folder::load(config)?;
    if let Some(warning) = folder.warning() {
        eprintln!("warning: {warning}");
    }
    match folder.test {
        Some(test) => Ok(Splits { train: folder.train, test, test_is_validation: false }),
        None => split(&folder.train, validation_fraction, seed),
    }
}

/// Loads one file, its format told by its name: `.npy`, `.csv`, or IDX (a name containing `idx`, or ending in
/// `-ubyte` or `.gz`). `label_column` is only allowed for CSV files. Large raw IDX and NPY files are memory-mapped.
pub fn load_file(path: &Path, label_column: Option<usize>) -> Result<Dataset> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let map_threshold =
        if name.ends_with(".csv") { super::mapped::MAP_THRESHOLD_BYTES } else { super::mapped::map_threshold()? };
    load_file_with_threshold(path, label_column, map_threshold)
}

/// [`load_file`], memory-mapping IDX and NPY files whose data is at least `map_threshold` bytes.
pub fn load_file_with_threshold(path: &Path, label_column: Option<usize>, map_threshold: u64) -> Result<Dataset> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".csv") {
        return csv::load_csv(path, label_column);
    }
    let load: fn(&Path, u64) -> Result<Dataset> = if name.ends_with(".npy") {
        npy::load_examples_with_threshold
    } else if name.contains("idx") || name.ends_with("-ubyte") || name.ends_with(".gz") {
        idx::load_images_with_threshold
    } else if image_folder::is_image_name(&name) {
        let problem = "one image is not a data set; give the folder that holds the images (directly, in one \
                       subfolder per class, or in train/ and test/ subfolders)";
        return Err(Error::bad_input(path, "file name", problem));
    } else {
        let problem = "unknown format; expected a .npy or .csv file, or an IDX file (a name containing 'idx', or \
                       ending in -ubyte or .gz)";
        return Err(Error::bad_input(path, "file name", problem));
    };
    reject_label_column(path, label_column)?;
    load(path, map_threshold)
}

/// An error when a label column is given for data that is not a CSV file.
fn reject_label_column(path: &Path, label_column: Option<usize>) -> Result<()> {
    match label_column {
        None => Ok(()),
        Some(_) => Err(Error::invalid_setting(
            "label column",
            format!("only CSV files have a label column, and {} is not one", path.display()),
        )),
    }
}

/// The sprites, with a held-out set generated from an independent random stream.
fn load_sprites(config: &SpriteConfig, validation_fraction: f32) -> Result<Splits> {
    let held_out = validation_size(config.count, validation_fraction)?;
    let train = sprites::generate(config)?;
    let test = sprites::generate_held_out(config, held_out)?;
    Ok(Splits { train, test, test_is_validation: true })
}

/// Number of examples to hold out of `count`: `fraction` of them, at least 1.
fn validation_size(count: usize, fraction: f32) -> Result<usize> {
    if !(fraction > 0.0 && fraction < 1.0) {
        let problem = format!("{fraction} is not between 0 and 1 (exclusive), e.g. 0.1");
        return Err(Error::invalid_setting("validation fraction", problem));
    }
    Ok(((count as f64 * f64::from(fraction)).round() as usize).max(1))
}

/// Splits a dataset into training and held-out examples by a shuffle seeded with `seed`; each part keeps the
/// file's order.
fn split(dataset: &Dataset, validation_fraction: f32, seed: u64) -> Result<Splits> {
    let held_out = validation_size(dataset.len(), validation_fraction)?;
    if held_out >= dataset.len() {
        let problem = format!("{} examples are too few to hold {held_out} out for validation", dataset.len());
        return Err(Error::bad_input(&dataset.source, "data", problem));
    }
    let mut order: Vec<usize> = (0..dataset.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (test, train) = order.split_at_mut(held_out);
    test.sort_unstable();
    train.sort_unstable();
    Ok(Splits { train: dataset.subset(train), test: dataset.subset(test), test_is_validation: true })
}

/// The file names one kind of data directory holds, and how to read them.
struct Layout {
    /// What the files are, for messages.
    kind: &'static str,
    /// Training examples, test examples, training labels, test labels.
    names: [&'static str; 4],
    /// How names are written in messages (e.g. `[.gz]`).
    suffix: &'static str,
    /// Finds a file of a given name in a directory.
    find: fn(&Path, &str) -> Option<PathBuf>,
    /// Reads examples, mapping files whose data is at least the given number of bytes.
    examples: fn(&Path, u64) -> Result<Dataset>,
    /// Reads labels.
    labels: fn(&Path) -> Result<Vec<u32>>,
}

/// The directory layouts recognised, tried in this order.
const LAYOUTS: [Layout; 2] = [
    Layout {
        kind: "MNIST-style IDX files",
        names: [
            "train-images-idx3-ubyte",
            "t10k-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
        suffix: "[.gz]",
        find: idx::find_file,
        examples: idx::load_images_with_threshold,
        labels: idx::load_labels,
    },
    Layout {
        kind: "NPY files",
        names: ["train.npy", "test.npy", "train_labels.npy", "test_labels.npy"],
        suffix: "",
        find: find_exact,
        examples: npy::load_examples_with_threshold,
        labels: npy::load_labels,
    },
];

/// The file `name` in `dir`, if it exists.
fn find_exact(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name)).filter(|p| p.is_file())
}

/// Loads the training and test sets of a directory in one of the [`LAYOUTS`].
fn load_directory(dir: &Path, map_threshold: u64) -> Result<Splits> {
    let layout = LAYOUTS.iter().find(|l| (l.find)(dir, l.names[0]).is_some()).ok_or_else(|| {
        let looked_for: Vec<String> = LAYOUTS.iter().map(Layout::describe).collect();
        let problem = format!(
            "no data found; looked for {}, and for PNG or JPEG images (directly or in subfolders)",
            looked_for.join(" and for ")
        );
        Error::bad_input(dir, "directory", problem)
    })?;
    let [train, test, train_labels, test_labels] = layout.names;
    let train = layout.load_part(dir, train, train_labels, map_threshold)?;
    let test = layout.load_part(dir, test, test_labels, map_threshold)?;
    if test.shape != train.shape {
        let problem = format!("test examples are {:?} but training examples are {:?}", test.shape, train.shape);
        return Err(Error::bad_input(&test.source, "shape", problem));
    }
    Ok(Splits { train, test, test_is_validation: false })
}

impl Layout {
    /// The files of this layout, for messages.
    fn describe(&self) -> String {
        let [train, test, ..] = self.names;
        format!("{} ({train}{suffix} and {test}{suffix})", self.kind, suffix = self.suffix)
    }

    /// Loads the examples `name` in `dir`, with the labels `labels_name` attached when that file exists.
    fn load_part(&self, dir: &Path, name: &str, labels_name: &str, map_threshold: u64) -> Result<Dataset> {
        let path = (self.find)(dir, name).ok_or_else(|| {
            Error::bad_input(
                dir,
                "directory",
                format!("{name}{} is missing; expected {}", self.suffix, self.describe()),
            )
        })?;
        let mut dataset = (self.examples)(&path, map_threshold)?;
        if let Some(labels_path) = (self.find)(dir, labels_name) {
            let labels = (self.labels)(&labels_path)?;
            if labels.len() != dataset.len() {
                let problem =
                    format!("{} labels, but {} holds {} examples", labels.len(), path.display(), dataset.len());
                return Err(Error::bad_input(labels_path, "labels", problem));
            }
            dataset.labels = Some(labels);
        }
        Ok(dataset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::tests::{gzip, idx_bytes};
    use crate::data::{ExampleShape, Values};
    use tempfile::TempDir;

    fn path_spec(path: &Path) -> DataSpec {
        DataSpec::Path { path: path.to_path_buf(), label_column: None }
    }

    fn error_of(spec: &DataSpec) -> String {
        load(spec, 0.1, 1).unwrap_err().to_string()
    }

    /// A CSV file of `rows` rows `i, 2i`.
    fn csv_file(dir: &TempDir, rows: usize) -> PathBuf {
        let path = dir.path().join("rows.csv");
        let text: String = (0..rows).map(|i| format!("{i},{}\n", 2 * i)).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An MNIST-style directory: 3 training and 2 test images of 2 x 2, gzip-compressed, with `train_labels`.
    fn mnist_dir(train_labels: &[u8]) -> TempDir {
        let dir = TempDir::new().unwrap();
        let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("train-images-idx3-ubyte.gz", gzip(&idx_bytes(0x08, &[3, 2, 2], &[9; 12])));
        write("t10k-images-idx3-ubyte", idx_bytes(0x08, &[2, 2, 2], &[5; 8]));
        write("train-labels-idx1-ubyte.gz", gzip(&idx_bytes(0x08, &[train_labels.len() as u32], train_labels)));
        dir
    }

    #[test]
    fn sprites_get_a_generated_validation_set() {
        let config = SpriteConfig { size: 16, count: 200, seed: 4, full_grid: false };
        let splits = load(&DataSpec::Sprites(config), 0.1, 9).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (200, 20));
        assert!(splits.test_is_validation);
    }

    #[test]
    fn a_single_file_is_split_by_a_seeded_shuffle() {
        let dir = TempDir::new().unwrap();
        let spec = path_spec(&csv_file(&dir, 20));
        let splits = load(&spec, 0.25, 3).unwrap();
        assert!(splits.test_is_validation);
        assert_eq!((splits.train.len(), splits.test.len()), (15, 5));
        let firsts = |d: &Dataset| match &d.values {
            Values::U8(v) => v.iter().step_by(2).map(|&b| b as usize).collect::<Vec<_>>(),
            Values::F32(v) => v.iter().step_by(2).map(|&x| x as usize).collect(),
            Values::Rendered(_) | Values::Mapped(_) => unreachable!("CSV data is in memory"),
        };
        let mut all = [firsts(&splits.train), firsts(&splits.test)].concat();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert_eq!(load(&spec, 0.25, 3).unwrap(), splits);
        assert_ne!(load(&spec, 0.25, 4).unwrap().test, splits.test);
    }

    #[test]
    fn mnist_directory_loads_with_labels() {
        let dir = mnist_dir(&[1, 2, 3]);
        let splits = load(&path_spec(dir.path()), 0.1, 1).unwrap();
        assert!(!splits.test_is_validation);
        assert_eq!(splits.train.shape, ExampleShape::image(1, 2, 2));
        assert_eq!((splits.train.len(), splits.test.len()), (3, 2));
        assert_eq!(splits.train.labels, Some(vec![1, 2, 3]));
        assert_eq!(splits.test.labels, None);
    }

    #[test]
    fn npy_directory_loads_with_labels() {
        let dir = TempDir::new().unwrap();
        npy::write_npy_f32(&dir.path().join("train.npy"), &[3, 2], &[0.5; 6]).unwrap();
        npy::write_npy_f32(&dir.path().join("test.npy"), &[1, 2], &[0.25; 2]).unwrap();
        npy::write_npy_u32(&dir.path().join("test_labels.npy"), &[1], &[4]).unwrap();
        let splits = load(&path_spec(dir.path()), 0.1, 1).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (3, 1));
        assert_eq!(splits.test.labels, Some(vec![4]));
    }

    #[test]
    fn label_count_mismatch_names_both_files() {
        let dir = mnist_dir(&[1, 2]);
        let message = error_of(&path_spec(dir.path()));
        assert!(message.contains("train-labels-idx1-ubyte.gz") && message.contains("train-images-idx3-ubyte.gz"));
        assert!(message.contains("2 labels") && message.contains("3 examples"), "{message}");
    }

    #[test]
    fn directory_errors_say_what_was_looked_for() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&path_spec(dir.path()));
        assert!(message.contains("train-images-idx3-ubyte[.gz]") && message.contains("train.npy"), "{message}");
        npy::write_npy_f32(&dir.path().join("train.npy"), &[1, 2], &[0.5; 2]).unwrap();
        let message = error_of(&path_spec(dir.path()));
        assert!(message.contains("test.npy is missing"), "{message}");
        npy::write_npy_f32(&dir.path().join("test.npy"), &[1, 3], &[0.5; 3]).unwrap();
        let message = error_of(&path_spec(dir.path()));
        assert!(message.contains("test.npy: shape") && message.contains("width: 3"), "{message}");
    }

    #[test]
    fn bad_paths_and_settings_are_errors() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&path_spec(&dir.path().join("missing.csv")));
        assert!(message.contains("missing.csv"), "{message}");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "1,2\n").unwrap();
        let message = error_of(&path_spec(&text));
        assert!(message.contains("notes.txt") && message.contains("unknown format"), "{message}");
        let npy_path = dir.path().join("x.npy");
        npy::write_npy_f32(&npy_path, &[2, 1], &[0.0, 1.0]).unwrap();
        let message = error_of(&DataSpec::Path { path: npy_path, label_column: Some(0) });
        assert!(message.contains("label column") && message.contains("x.npy"), "{message}");
        let message = load(&path_spec(&csv_file(&dir, 5)), 1.5, 1).unwrap_err().to_string();
        assert!(message.contains("validation fraction"), "{message}");
        let message = error_of(&path_spec(&csv_file(&dir, 1)));
        assert!(message.contains("rows.csv") && message.contains("too few"), "{message}");
    }
}
