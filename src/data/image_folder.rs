//! Folders of PNG and JPEG images as data.
//!
//! Layouts, tried in this order:
//! - `DIR/train` and `DIR/test` both exist: they are the training and test sets, each laid out as below.
//! - `DIR` holds one subfolder per class: the subfolder names, sorted, are the classes 0..n, and every image under a
//!   class subfolder (at any depth) has that label. Subfolders without images are not classes.
//! - `DIR` holds the images directly: examples without labels.
//!
//! Images are the files named `.png`, `.jpg` or `.jpeg` (any case); other files and hidden entries (names starting
//! with `.`) are ignored. The format is read from the content, so a misnamed file still decodes. Files are read in
//! path order, so loading is deterministic; decoding runs on rayon's threads.
//!
//! Every image becomes one example of `channels x height x width` bytes (channels first), scaled to [0, 1] when
//! batched:
//! - Channels: [`ImageChannels::Auto`] (the default) gives RGB when any image is stored in colour and grey
//!   otherwise; grey is the image crate's luma (0.2126 R + 0.7152 G + 0.0722 B); alpha is dropped; 16-bit images are
//!   reduced to 8 bits.
//! - Size: without a size, the images keep their own, which must then be the same for all of them (an error names
//!   the first that differs). With a size, each image is brought to it by [`ImageFit`]: `crop` (the default) cuts the
//!   largest centred region of the target's aspect ratio and resizes it, `stretch` resizes the whole image ignoring
//!   the aspect ratio. Resizing uses a triangle (bilinear) filter, widened when shrinking so it does not alias.
//! - A JPEG's EXIF orientation is applied, so photos come out upright.
//!
//! A file that cannot be decoded is an error naming it, unless `skip_unreadable` is set: then it is left out and
//! listed in [`ImageFolder::skipped`], and only a folder (or split) with no readable image left is an error.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use rayon::prelude::*;

use super::{Dataset, ExampleShape, Values};
use crate::{Error, Result};

/// The file name endings (compared in lower case) of the files read as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];
/// How deep folders are followed inside an image folder; deeper is an error (most likely a symbolic link loop).
const MAX_DEPTH: usize = 16;
/// The resampling filter for resizing.
const FILTER: FilterType = FilterType::Triangle;
/// Class names listed in a dataset's `source`; more are counted, not named.
const NAMES_IN_SOURCE: usize = 10;

/// How many channels each example gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ImageChannels {
    /// RGB when any image is stored in colour (RGB or RGBA), grey when all are stored grey.
    #[default]
    Auto,
    /// One channel: the luma of colour images.
    #[value(alias = "gray")]
    Grey,
    /// Three channels: grey images are repeated in each.
    Rgb,
}

impl ImageChannels {
    /// The number of channels this setting gives images of which any (`any_colour`) or none is stored in colour.
    pub(crate) fn count(self, any_colour: bool) -> usize {
        match self {
            ImageChannels::Grey => 1,
            ImageChannels::Rgb => 3,
            ImageChannels::Auto if any_colour => 3,
            ImageChannels::Auto => 1,
        }
    }
}

/// How an image of another size is brought to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ImageFit {
    /// Keep the aspect ratio: cut the largest centred region of the target's aspect ratio, then resize it.
    #[default]
    Crop,
    /// Resize the whole image to the target, ignoring its aspect ratio.
    Stretch,
}

/// How to read a folder of images (recorded in a run's `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageFolderConfig {
    /// The folder.
    pub path: PathBuf,
    /// Target height in pixels; `None` (with `width` `None`) keeps the images' own size, which must be the same for
    /// all of them.
    #[serde(default)]
    pub height: Option<usize>,
    /// Target width in pixels; given together with `height`.
    #[serde(default)]
    pub width: Option<usize>,
    /// Channels per example.
    #[serde(default)]
    pub channels: ImageChannels,
    /// How images are brought to the target size.
    #[serde(default)]
    pub fit: ImageFit,
    /// Leave out files that cannot be decoded (listed in [`ImageFolder::skipped`]) instead of failing.
    #[serde(default)]
    pub skip_unreadable: bool,
}

impl ImageFolderConfig {
    /// The folder at `path` with the default settings: the images' own size, [`ImageChannels::Auto`],
    /// [`ImageFit::Crop`], unreadable files fatal.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImageFolderConfig { path: path.into(), ..ImageFolderConfig::default() }
    }

    /// The target size as (height, width), `None` for the images' own size. Errors when only one side is given, a
    /// side is 0, or a side does not fit the image library's 32-bit sizes.
    fn target_size(&self) -> Result<Option<(u32, u32)>> {
        let (height, width) = match (self.height, self.width) {
            (None, None) => return Ok(None),
            (Some(h), Some(w)) => (h, w),
            _ => {
                let problem = "give both the height and the width, or neither (to keep the images' own size)";
                return Err(Error::invalid_setting("image size", problem));
            }
        };
        let side = |n: usize| {
            u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                let problem = format!("{height}x{width} (height x width): each side must be from 1 to {}", u32::MAX);
                Error::invalid_setting("image size", problem)
            })
        };
        Ok(Some((side(height)?, side(width)?)))
    }
}

/// A file left out because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be read (the full error message, naming the file).
    pub reason: String,
}

/// The examples of an image folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// The training examples (all of them when the folder has no `train` / `test` split).
    pub train: Dataset,
    /// The test examples, when the folder has `train` and `test` subfolders.
    pub test: Option<Dataset>,
    /// The class of each label: `class_names[label]` is its subfolder's name. Empty when there are no classes.
    pub class_names: Vec<String>,
    /// The files left out as unreadable (only with `skip_unreadable`), in path order.
    pub skipped: Vec<Skipped>,
}

impl ImageFolder {
    /// A warning listing the skipped files, when there are any.
    pub fn warning(&self) -> Option<String> {
        const LISTED: usize = 20;
        if self.skipped.is_empty() {
            return None;
        }
        let mut lines = vec![format!("skipped {} unreadable image file(s):", self.skipped.len())];
        lines.extend(self.skipped.iter().take(LISTED).map(|s| format!("  {}", s.reason)));
        if self.skipped.len() > LISTED {
            lines.push(format!("  ... and {} more", self.skipped.len() - LISTED));
        }
        Some(lines.join("\n"))
    }
}

/// True when `name` ends in `.png`, `.jpg` or `.jpeg` (any case).
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower.rsplit_once('.').is_some_and(|(stem, ext)| !stem.is_empty() && IMAGE_EXTENSIONS.contains(&ext))
}

/// True when `dir` is a directory holding image files, directly or in subfolders, or one whose subfolders cannot be
/// walked (a symbolic link loop, an unreadable folder): loading it as an image folder then says what is wrong.
pub fn holds_images(dir: &Path) -> bool {
    dir.is_dir() && images_under(dir, 0).map_or(true, |files| !files.is_empty())
}

/// The class names of the image folder at `dir` (its class subfolders, sorted; for a `train` / `test` folder, those
/// of both), without reading any image. Empty when the images have no classes.
pub fn class_names(dir: &Path) -> Result<Vec<String>> {
    Ok(scan(dir)?.class_names)
}

/// Loads the image folder `config` names (see the module documentation for the layouts and conversions).
pub fn load(config: &ImageFolderConfig) -> Result<ImageFolder> {
    let target = config.target_size()?;
    let layout = scan(&config.path)?;
    let mut skipped = Vec::new();
    let mut parts = Vec::with_capacity(layout.parts.len());
    for part in layout.parts {
        parts.push(probe_part(part, config.skip_unreadable, &mut skipped)?);
    }
    let channels = config.channels.count(parts.iter().flat_map(|p| &p.headers).any(|h| h.color));
    let (height, width) = match target {
        Some(size) => size,
        None => common_size(&parts)?,
    };
    let settings = Settings { height, width, channels, fit: config.fit };
    let mut datasets = Vec::with_capacity(parts.len());
    for part in parts {
        datasets.push(decode_part(part, settings, &layout.class_names, config.skip_unreadable, &mut skipped)?);
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let mut datasets = datasets.into_iter();
    let (Some(train), test) = (datasets.next(), datasets.next()) else {
        return Err(Error::bad_input(&config.path, "directory", "no images found"));
    };
    Ok(ImageFolder { train, test, class_names: layout.class_names, skipped })
}

/// The files of an image folder, by split.
struct Layout {
    /// One part (the whole folder) or two (`train` and `test`).
    parts: Vec<Part>,
    /// The class names, sorted: the union over the parts.
    class_names: Vec<String>,
}

/// The image files of one split.
struct Part {
    /// The folder they are in (for messages and the dataset's source).
    dir: PathBuf,
    /// The image files, in path order.
    files: Vec<PathBuf>,
    /// The class name of each file, when the split has class subfolders.
    classes: Option<Vec<String>>,
}

/// Finds the splits, classes and image files of the folder `root`, without reading any image.
fn scan(root: &Path) -> Result<Layout> {
    let metadata = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !metadata.is_dir() {
        let problem = "is not a directory; image settings apply to a folder of PNG or JPEG files (directly, in one \
                       subfolder per class, or in train/ and test/ subfolders)";
        return Err(Error::bad_input(root, "directory", problem));
    }
    let (train, test) = (root.join("train"), root.join("test"));
    let parts = match (train.is_dir(), test.is_dir()) {
        (true, true) => vec![scan_part(&train)?, scan_part(&test)?],
        (false, false) => vec![scan_part(root)?],
        (has_train, _) => {
            let (found, missing) = if has_train { ("train", "test") } else { ("test", "train") };
            let problem = format!(
                "has a `{found}` subfolder but no `{missing}` one; add {missing}/ for a train/test split, or give \
                 {} itself as the data to hold out a validation fraction of it",
                root.join(found).display()
            );
            return Err(Error::bad_input(root, "directory", problem));
        }
    };
    let mut class_names: Vec<String> = parts.iter().filter_map(|p| p.classes.as_ref()).flatten().cloned().collect();
    class_names.sort();
    class_names.dedup();
    Ok(Layout { parts, class_names })
}

/// The image files of one split's folder: loose images (no labels) or class subfolders, not both.
fn scan_part(dir: &Path) -> Result<Part> {
    let listing = list(dir)?;
    let mut files = Vec::new();
    let mut classes = Vec::new();
    let mut class_count = 0;
    for sub in &listing.dirs {
        let images = images_under(sub, 1)?;
        if images.is_empty() {
            continue;
        }
        let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        classes.extend(std::iter::repeat_n(name, images.len()));
        files.extend(images);
        class_count += 1;
    }
    if class_count > 0 {
        if let Some(loose) = listing.images.first() {
            let problem = format!(
                "lies beside {class_count} class subfolder(s) of {}; move it into one of them (or move the class \
                 subfolders out) so that every image has a class, or none has",
                dir.display()
            );
            return Err(Error::bad_input(loose, "layout", problem));
        }
        return Ok(Part { dir: dir.to_path_buf(), files, classes: Some(classes) });
    }
    if listing.images.is_empty() {
        let ignored =
            if listing.others > 0 { format!(" ({} other file(s) ignored)", listing.others) } else { "".into() };
        let problem = format!(
            "no images found{ignored}; expected PNG or JPEG files ({}), directly or in one subfolder per class",
            IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
        );
        return Err(Error::bad_input(dir, "directory", problem));
    }
    Ok(Part { dir: dir.to_path_buf(), files: listing.images, classes: None })
}

/// The entries of one folder, sorted by path; hidden entries (names starting with `.`) are left out.
struct Listing {
    /// Files named like images.
    images: Vec<PathBuf>,
    /// Subfolders (symbolic links followed).
    dirs: Vec<PathBuf>,
    /// How many other files there are.
    others: usize,
}

fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing { images: Vec::new(), dirs: Vec::new(), others: 0 };
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // A broken link named like an image is kept: reading it then fails with a message naming it.
        let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            listing.dirs.push(path);
        } else if is_image_name(&name) {
            listing.images.push(path);
        } else {
            listing.others += 1;
        }
    }
    listing.images.sort();
    listing.dirs.sort();
    Ok(listing)
}

/// Every image file under `dir` at any depth, sorted by path; `depth` is how deep `dir` already is.
fn images_under(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    if depth > MAX_DEPTH {
        let problem = format!("folders are nested more than {MAX_DEPTH} deep (a symbolic link loop?)");
        return Err(Error::bad_input(dir, "directory", problem));
    }
    let listing = list(dir)?;
    let mut files = listing.images;
    for sub in &listing.dirs {
        files.extend(images_under(sub, depth + 1)?);
    }
    files.sort();
    Ok(files)
}

/// The image files under `dir`, at any depth, in path order (hidden entries left out); none is not an error here.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    images_under(dir, 0)
}

/// What an image's header says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// Height after the EXIF orientation is applied.
    pub(crate) height: u32,
    /// Width after the EXIF orientation is applied.
    pub(crate) width: u32,
    /// Whether the image is stored in colour.
    pub(crate) color: bool,
}

/// A split whose headers have been read: unreadable files are gone (or the load failed).
struct ProbedPart {
    part: Part,
    headers: Vec<Header>,
}

/// Reads the header of every file of `part` (in parallel). An unreadable file is an error, or with `skip` is moved to
/// `skipped`; then a split with nothing readable left is an error.
fn probe_part(part: Part, skip: bool, skipped: &mut Vec<Skipped>) -> Result<ProbedPart> {
    let results: Vec<Result<Header>> = part.files.par_iter().map(|path| probe(path)).collect();
    let (headers, failures): (Vec<Option<Header>>, Vec<Option<Error>>) = results
        .into_iter()
        .map(|result| match result {
            Ok(header) => (Some(header), None),
            Err(error) => (None, Some(error)),
        })
        .unzip();
    let keep = settle(&part, failures, skip, skipped)?;
    Ok(ProbedPart { part: retain(part, &keep), headers: headers.into_iter().flatten().collect() })
}

/// Applies the failures of the files of `part` (one `Option` per file, in order): the first is the error without
/// `skip`; with it, the failed files go to `skipped`, and it is an error when none is left. Returns which files to
/// keep.
fn settle(part: &Part, failures: Vec<Option<Error>>, skip: bool, skipped: &mut Vec<Skipped>) -> Result<Vec<bool>> {
    let keep: Vec<bool> = failures.iter().map(Option::is_none).collect();
    let mut failed = part.files.iter().zip(failures).filter_map(|(path, failure)| Some((path, failure?)));
    if !skip {
        return match failed.next() {
            Some((_, error)) => Err(with_skip_hint(error)),
            None => Ok(keep),
        };
    }
    let failed: Vec<Skipped> =
        failed.map(|(path, error)| Skipped { path: path.clone(), reason: error.to_string() }).collect();
    if let (false, Some(first)) = (keep.contains(&true), failed.first()) {
        let problem = format!("none of its {} image file(s) could be read; the first: {}", failed.len(), first.reason);
        return Err(Error::bad_input(&part.dir, "images", problem));
    }
    skipped.extend(failed);
    Ok(keep)
}

/// `error` (about one unreadable file) with a word on how to leave such files out.
fn with_skip_hint(error: Error) -> Error {
    match error {
        Error::BadInput { path, field, problem } => {
            let problem = format!("{problem} (--skip-unreadable, or skip_unreadable in the config, leaves it out)");
            Error::BadInput { path, field, problem }
        }
        other => other,
    }
}

/// `part` without the files whose `keep` is false.
fn retain(part: Part, keep: &[bool]) -> Part {
    let kept = |i: &usize| keep.get(*i).copied().unwrap_or(false);
    let files = part.files.into_iter().enumerate().filter(|(i, _)| kept(i)).map(|(_, f)| f).collect();
    let classes =
        part.classes.map(|c| c.into_iter().enumerate().filter(|(i, _)| kept(i)).map(|(_, name)| name).collect());
    Part { dir: part.dir, files, classes }
}

/// The size all images share, as (height, width); an error names the first image of another size.
fn common_size(parts: &[ProbedPart]) -> Result<(u32, u32)> {
    let mut images = parts.iter().flat_map(|p| p.part.files.iter().zip(&p.headers));
    let Some((first_path, first)) = images.next() else {
        return Err(Error::invalid_setting("image size", "no readable images to take the size from"));
    };
    for (path, header) in images {
        if (header.height, header.width) != (first.height, first.width) {
            let problem = format!(
                "is {}x{} (height x width) but {} is {}x{}; the images must all have one size unless a size is \
                 given (--image-size N or HxW) to resize them to",
                header.height,
                header.width,
                first_path.display(),
                first.height,
                first.width
            );
            return Err(Error::bad_input(path, "size", problem));
        }
    }
    Ok((first.height, first.width))
}

/// What every image is converted to.
#[derive(Debug, Clone, Copy)]
struct Settings {
    height: u32,
    width: u32,
    channels: usize,
    fit: ImageFit,
}

/// Decodes every file of `part` (in parallel) into one dataset; unreadable files are handled as in [`probe_part`].
fn decode_part(
    probed: ProbedPart,
    settings: Settings,
    class_names: &[String],
    skip: bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Dataset> {
    let part = probed.part;
    let shape = ExampleShape::image(settings.channels, settings.height as usize, settings.width as usize);
    let dims = [part.files.len(), shape.channels, shape.height, shape.width];
    let total = super::element_count(&part.dir, "images", &dims)?;
    let mut values = Vec::new();
    values.try_reserve_exact(total).map_err(|_| {
        let problem = format!("{} bytes of pixels ({}) do not fit in memory", total, super::show_dims(&dims));
        Error::bad_input(&part.dir, "images", problem)
    })?;
    values.resize(total, 0u8);
    let failures: Vec<Option<Error>> = values
        .par_chunks_mut(shape.dim().max(1))
        .zip(part.files.par_iter())
        .map(|(slot, path)| decode_into(path, settings, slot).err())
        .collect();
    let keep = settle(&part, failures, skip, skipped)?;
    if keep.contains(&false) {
        values = compact(values, shape.dim(), &keep);
    }
    let part = retain(part, &keep);
    let labels = part.classes.as_ref().map(|names| {
        names.iter().map(|n| class_names.iter().position(|c| c == n).unwrap_or_default() as u32).collect()
    });
    let source = describe(&part.dir, class_names, part.classes.is_some());
    let class_names = part.classes.is_some().then(|| class_names.to_vec());
    Ok(Dataset { source, values: Values::U8(values), shape, labels, class_names, factors: None })
}

/// `values` without the examples (of `dim` values each) whose `keep` is false.
fn compact(mut values: Vec<u8>, dim: usize, keep: &[bool]) -> Vec<u8> {
    let mut to = 0;
    for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
        values.copy_within(i * dim..(i + 1) * dim, to * dim);
        to += 1;
    }
    values.truncate(to * dim);
    values
}

/// A dataset's source: the folder, with its classes when it has them.
fn describe(dir: &Path, class_names: &[String], labelled: bool) -> String {
    if !labelled || class_names.is_empty() {
        return format!("{} (image folder)", dir.display());
    }
    let mut names = class_names.iter().take(NAMES_IN_SOURCE).cloned().collect::<Vec<_>>().join(", ");
    if class_names.len() > NAMES_IN_SOURCE {
        names.push_str(", ...");
    }
    format!("{} (image folder, {} classes: {names})", dir.display(), class_names.len())
}

/// An image reader for `path`, its format guessed from the content (then from the name).
fn reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    reader.with_guessed_format().map_err(|e| Error::io(path, e))
}

/// An error naming `path` for a failure of the image library.
fn image_error(path: &Path, error: image::ImageError) -> Error {
    match error {
        image::ImageError::IoError(e) => Error::io(path, e),
        other => Error::bad_input(path, "image", other.to_string()),
    }
}

/// Reads the header of the image at `path`; an image larger than the image crate's default limits is an error.
pub(crate) fn probe(path: &Path) -> Result<Header> {
    let mut decoder = reader(path)?.into_decoder().map_err(|e| image_error(path, e))?;
    // the size in the header bounds the buffers made for the folder: refuse what the decoder would refuse later
    Limits::default().reserve(decoder.total_bytes()).map_err(|e| image_error(path, e))?;
    let (width, height) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    let (height, width) = if turned { (width, height) } else { (height, width) };
    Ok(Header { height, width, color: decoder.color_type().has_color() })
}

/// Decodes the image at `path` (refused before any buffer is made when it exceeds the image crate's default limits),
/// turns it upright by its EXIF orientation and converts it to 8-bit grey (`channels` 1) or RGB (otherwise).
pub(crate) fn decode(path: &Path, channels: usize) -> Result<DynamicImage> {
    let mut decoder = reader(path)?.into_decoder().map_err(|e| image_error(path, e))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Limits::default().reserve(decoder.total_bytes()).map_err(|e| image_error(path, e))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    image.apply_orientation(orientation);
    Ok(match channels {
        1 => DynamicImage::ImageLuma8(image.to_luma8()),
        _ => DynamicImage::ImageRgb8(image.to_rgb8()),
    })
}

/// Writes interleaved `pixels` of `channels` values each into `slot` channels first (one plane per channel);
/// `slot` has as many values as `pixels`.
pub(crate) fn write_channels_first(pixels: &[u8], channels: usize, slot: &mut [u8]) {
    let plane = slot.len() / channels.max(1);
    for (i, pixel) in pixels.chunks_exact(channels.max(1)).enumerate() {
        for (c, &value) in pixel.iter().enumerate() {
            slot[c * plane + i] = value;
        }
    }
}

/// Decodes the image at `path`, converts it to `settings` and writes it channels-first into `slot`.
fn decode_into(path: &Path, settings: Settings, slot: &mut [u8]) -> Result<()> {
    let image = fit(decode(path, settings.channels)?, settings.height, settings.width, settings.fit);
    let pixels = image.as_bytes();
    if (image.height(), image.width()) != (settings.height, settings.width) || pixels.len() != slot.len() {
        let problem = format!(
            "decoded to {}x{} (height x width), expected {}x{}",
            image.height(),
            image.width(),
            settings.height,
            settings.width
        );
        return Err(Error::bad_input(path, "image", problem));
    }
    write_channels_first(pixels, settings.channels, slot);
    Ok(())
}

/// `image` brought to `height` x `width` by `fit` (unchanged when it already has that size).
fn fit(image: DynamicImage, height: u32, width: u32, fit: ImageFit) -> DynamicImage {
    if (image.height(), image.width()) == (height, width) {
        return image;
    }
    match fit {
        ImageFit::Stretch => image.resize_exact(width, height, FILTER),
        ImageFit::Crop => {
            let (x, y, crop_width, crop_height) = centre_crop(image.width(), image.height(), width, height);
            let cropped = image.crop_imm(x, y, crop_width, crop_height);
            if (crop_height, crop_width) == (height, width) {
                cropped
            } else {
                cropped.resize_exact(width, height, FILTER)
            }
        }
    }
}

/// The largest centred region of an image of `width` x `height` with the aspect ratio of `target_width` x
/// `target_height`: (x, y, region width, region height), each side at least 1.
fn centre_crop(width: u32, height: u32, target_width: u32, target_height: u32) -> (u32, u32, u32, u32) {
    let (w, h, tw, th) = (u64::from(width), u64::from(height), u64::from(target_width), u64::from(target_height));
    let rounded_ratio = |a: u64, b: u64, c: u64| (a * b + c / 2) / c.max(1);
    if w * th > h * tw {
        // Wider than the target: keep the full height.
        let crop = rounded_ratio(h, tw, th).clamp(1, w) as u32;
        ((width - crop) / 2, 0, crop, height)
    } else {
        let crop = rounded_ratio(w, th, tw).clamp(1, h) as u32;
        (0, (height - crop) / 2, width, crop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbImage};

    fn write_grey(path: &Path, height: u32, width: u32, value: u8) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        GrayImage::from_pixel(width, height, image::Luma([value])).save(path).unwrap();
    }

    #[test]
    fn image_folder_names_are_recognised_in_any_case() {
        for name in ["a.png", "B.PNG", "c.Jpg", "d.jpeg", "e.JPEG"] {
            assert!(is_image_name(name), "{name}");
        }
        for name in ["a.gif", "png", ".png", "notes.txt", "a.png.txt", "jpeg"] {
            assert!(!is_image_name(name), "{name}");
        }
    }

    #[test]
    fn image_folder_centre_crop_keeps_the_target_aspect_ratio() {
        assert_eq!(centre_crop(12, 4, 4, 4), (4, 0, 4, 4));
        assert_eq!(centre_crop(4, 12, 4, 4), (0, 4, 4, 4));
        assert_eq!(centre_crop(100, 100, 64, 48), (0, 12, 100, 75));
        assert_eq!(centre_crop(10, 10, 10, 10), (0, 0, 10, 10));
        assert_eq!(centre_crop(1000, 1, 1, 3), (499, 0, 1, 1), "never an empty region");
    }

    #[test]
    fn image_folder_compact_drops_left_out_examples() {
        assert_eq!(compact(vec![1, 1, 2, 2, 3, 3], 2, &[true, false, true]), vec![1, 1, 3, 3]);
    }

    #[test]
    fn image_folder_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        write_grey(&dir.path().join("a.png"), 4, 4, 9);
        let config = |height, width| ImageFolderConfig { height, width, ..ImageFolderConfig::new(dir.path()) };
        let message = load(&config(Some(0), Some(4))).unwrap_err().to_string();
        assert!(message.contains("image size") && message.contains("0x4"), "{message}");
        let message = load(&config(Some(4), None)).unwrap_err().to_string();
        assert!(message.contains("both the height and the width"), "{message}");
        let message = load(&config(Some(1 << 33), Some(4))).unwrap_err().to_string();
        assert!(message.contains("image size"), "{message}");
        assert!(load(&config(Some(2), Some(3))).is_ok());
    }

    #[test]
    fn image_folder_rgb_is_stored_channels_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = RgbImage::from_pixel(2, 1, Rgb([10, 20, 30]));
        image.put_pixel(1, 0, Rgb([40, 50, 60]));
        image.save(dir.path().join("x.png")).unwrap();
        let folder = load(&ImageFolderConfig::new(dir.path())).unwrap();
        assert_eq!(folder.train.shape, ExampleShape::image(3, 1, 2));
        assert_eq!(folder.train.values, Values::U8(vec![10, 40, 20, 50, 30, 60]));
    }

    #[test]
    fn image_folder_config_reads_with_only_a_path() {
        let config: ImageFolderConfig = serde_json::from_str(r#"{"path": "pictures"}"#).unwrap();
        assert_eq!(config, ImageFolderConfig::new("pictures"));
        let written = serde_json::to_string(&ImageFolderConfig { height: Some(8), ..config.clone() }).unwrap();
        assert!(written.contains(r#""channels":"auto""#) && written.contains(r#""fit":"crop""#), "{written}");
    }
}
