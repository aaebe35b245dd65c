//! Random square crops of a few large photos, for training convolutional autoencoders (the KL autoencoders of latent
//! diffusion) on folders of photos of different sizes.
//!
//! - [`load_photos`] reads every image of a folder at its own size (channels first, bytes), with the file discovery
//!   and decoding of [`super::image_folder`]: PNG and JPEG files in path order, EXIF orientation applied, channels
//!   converted as [`ImageChannels`] says, oversized images refused by the image crate's limits before any buffer is
//!   made for them.
//! - [`Photos::split_held_out`] sets whole photos aside, so held-out crops come from photos never trained on.
//! - [`RandomCrops`] gives each training example a fresh random window (and optionally a horizontal flip). The crop
//!   of example `i` of an epoch depends only on (seed, epoch, `i`), so an epoch can be resumed mid-way and gives the
//!   same batches as an uninterrupted one.
//! - [`fixed_crops`] cuts the same crops every time, as a [`Dataset`] for evaluation.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::image_folder::{self, ImageChannels, IMAGE_EXTENSIONS};
use super::{Dataset, ExampleShape, Values};
use crate::{Error, Result};

/// The side of a crop, in pixels, unless configured otherwise (the crop size of latent diffusion's autoencoders).
pub const DEFAULT_CROP_SIZE: usize = 64;
/// How many crops an epoch takes from each photo, unless `crops_per_epoch` is set.
pub const CROPS_PER_PHOTO: usize = 64;

/// Key of the random stream choosing the held-out photos.
const HOLD_OUT_STREAM: u64 = 0x401d_00a7;
/// Key of the random streams ordering the photos of each round of an epoch.
const ORDER_STREAM: u64 = 0x0_4de4;
/// Key of the random streams placing (and flipping) each training crop.
const CROP_STREAM: u64 = 0xc4_0b5;
/// Key of the random streams placing the fixed crops.
const FIXED_STREAM: u64 = 0xf1_fed;

/// One image at its own size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    /// Its name: the path relative to the folder it was loaded from (the file name for images directly in it).
    pub name: String,
    /// The file it was read from (used in messages).
    pub path: PathBuf,
    /// Number of channels (1 grey, 3 RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels x height x width` bytes, channels first, row-major.
    pub pixels: Vec<u8>,
}

impl Photo {
    /// The `len` bytes of channel `channel`, row `y`, from column `x` on.
    fn row(&self, channel: usize, y: usize, x: usize, len: usize) -> &[u8] {
        let start = (channel * self.height + y) * self.width + x;
        &self.pixels[start..start + len]
    }

    /// An error naming the photo's file when it is smaller than a `size x size` crop.
    fn check_fits(&self, size: usize) -> Result<()> {
        if self.height >= size && self.width >= size {
            return Ok(());
        }
        let problem = format!(
            "is {}x{} (height x width), smaller than the {size}x{size} crop; use a smaller crop size or leave the \
             image out",
            self.height, self.width
        );
        Err(Error::bad_input(&self.path, "size", problem))
    }
}

/// The photos of a folder (or one side of a split): at least one, all with the same number of channels, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photos {
    /// Where they came from (the folder), used in messages and dataset sources.
    source: PathBuf,
    photos: Vec<Photo>,
}

impl Photos {
    /// Photos from `source` (a folder, or any description of where they came from). Errors when there are none,
    /// their channels differ, or a photo's pixels are not `channels x height x width` bytes with every side at least 1.
    pub fn new(source: impl Into<PathBuf>, photos: Vec<Photo>) -> Result<Photos> {
        let source = source.into();
        let Some(first) = photos.first() else {
            return Err(Error::bad_input(&source, "images", "no photos"));
        };
        let channels = first.channels;
        for photo in &photos {
            check_photo(photo, channels)?;
        }
        Ok(Photos { source, photos })
    }

    /// The photos, in order.
    pub fn photos(&self) -> &[Photo] {
        &self.photos
    }

    /// The name of each photo, in order (to record which photos a run trained or held out on).
    pub fn names(&self) -> Vec<&str> {
        self.photos.iter().map(|p| p.name.as_str()).collect()
    }

    /// Number of photos (at least 1).
    pub fn len(&self) -> usize {
        self.photos.len()
    }

    /// Always false: there is at least one photo.
    pub fn is_empty(&self) -> bool {
        self.photos.is_empty()
    }

    /// Number of channels of every photo.
    pub fn channels(&self) -> usize {
        self.photos.first().map_or(0, |p| p.channels)
    }

    /// Where the photos came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Splits off `held_out` whole photos, chosen at random from `seed`, as (training photos, held-out photos); each
    /// side keeps the original order. Errors unless `held_out` is at least 1 and leaves at least one photo to train
    /// on.
    pub fn split_held_out(self, held_out: usize, seed: u64) -> Result<(Photos, Photos)> {
        if held_out == 0 || held_out >= self.photos.len() {
            let problem = format!(
                "{held_out} of {} photos: hold out at least 1 and leave at least 1 to train on (to hold none out, do \
                 not split)",
                self.photos.len()
            );
            return Err(Error::invalid_setting("held-out photos", problem));
        }
        let mut order: Vec<usize> = (0..self.photos.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ HOLD_OUT_STREAM));
        let mut is_held_out = vec![false; self.photos.len()];
        order.iter().take(held_out).for_each(|&i| is_held_out[i] = true);
        let (mut kept, mut held) = (Vec::new(), Vec::new());
        for (photo, held_out) in self.photos.into_iter().zip(is_held_out) {
            if held_out { &mut held } else { &mut kept }.push(photo);
        }
        let side = |photos| Photos { source: self.source.clone(), photos };
        Ok((side(kept), side(held)))
    }

    /// An error naming the first photo smaller than a `size x size` crop, or a crop size of 0.
    fn check_crop_size(&self, size: usize) -> Result<()> {
        if size == 0 {
            return Err(Error::invalid_setting("crop size", "0: a crop must be at least 1 pixel"));
        }
        self.photos.iter().try_for_each(|photo| photo.check_fits(size))
    }
}

/// Checks that `photo` has `channels` channels and `channels x height x width` bytes, each at least 1.
fn check_photo(photo: &Photo, channels: usize) -> Result<()> {
    let dims = [photo.channels, photo.height, photo.width];
    let expected = super::element_count(&photo.path, "pixels", &dims)?;
    if dims.contains(&0) || expected != photo.pixels.len() {
        let problem = format!(
            "{} bytes for {} (channels x height x width), each at least 1",
            photo.pixels.len(),
            super::show_dims(&dims)
        );
        return Err(Error::bad_input(&photo.path, "pixels", problem));
    }
    if photo.channels != channels {
        let problem = format!("has {} channels, the first photo {channels}", photo.channels);
        return Err(Error::bad_input(&photo.path, "channels", problem));
    }
    Ok(())
}

/// Reads every image under the folder `path` (images directly in it, and in subfolders at any depth, in path order)
/// at its own size. `channels` as for image folders: [`ImageChannels::Auto`] gives RGB when any image is stored in
/// colour. Errors name the folder when it holds no image, or the file that cannot be decoded.
pub fn load_photos(path: &Path, channels: ImageChannels) -> Result<Photos> {
    let files = image_folder::image_files(path)?;
    if files.is_empty() {
        let problem = format!(
            "no images found; expected PNG or JPEG files ({})",
            IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
        );
        return Err(Error::bad_input(path, "directory", problem));
    }
    let headers: Vec<Result<image_folder::Header>> = files.par_iter().map(|file| image_folder::probe(file)).collect();
    let headers = headers.into_iter().collect::<Result<Vec<_>>>()?;
    let channels = channels.count(headers.iter().any(|h| h.color));
    let photos: Vec<Result<Photo>> = files.par_iter().map(|file| read_photo(path, file, channels)).collect();
    Photos::new(path, photos.into_iter().collect::<Result<Vec<_>>>()?)
}

/// Decodes the image `file` of the folder `folder` into a photo of `channels` channels.
fn read_photo(folder: &Path, file: &Path, channels: usize) -> Result<Photo> {
    let image = image_folder::decode(file, channels)?;
    let (height, width) = (image.height() as usize, image.width() as usize);
    let mut pixels = vec![0u8; image.as_bytes().len()];
    image_folder::write_channels_first(image.as_bytes(), channels, &mut pixels);
    let name = file.strip_prefix(folder).unwrap_or(file).to_string_lossy().into_owned();
    Ok(Photo { name, path: file.to_path_buf(), channels, height, width, pixels })
}

/// How training crops are cut (recorded in a run's `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CropConfig {
    /// The side of the square crops, in pixels; every photo must be at least this high and wide.
    pub size: usize,
    /// Flip each crop horizontally with probability 1/2.
    pub flip: bool,
    /// Crops per epoch; `None` takes [`CROPS_PER_PHOTO`] from each training photo.
    pub crops_per_epoch: Option<usize>,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig { size: DEFAULT_CROP_SIZE, flip: true, crops_per_epoch: None }
    }
}

/// Where one crop is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// The index of its photo.
    pub photo: usize,
    /// The column of its left edge in the photo.
    pub x: usize,
    /// The row of its top edge in the photo.
    pub y: usize,
    /// Whether it is mirrored left to right.
    pub flipped: bool,
}

/// Training examples as random crops of photos.
///
/// An epoch is `crops_per_epoch` examples. The photos take turns in rounds: each round of `n` examples (`n` photos)
/// uses every photo once, in an order shuffled afresh for each round, so over an epoch every photo appears equally
/// often (to within one). Each example is a window placed uniformly at random over all positions where it fits, and,
/// with `flip`, mirrored with probability 1/2. Everything about example `i` of epoch `e` is drawn from random streams
/// keyed by (seed, `e`, `i`) (and the round of `i`), never from a stream carried along, so any batch of any epoch can
/// be made on its own.
#[derive(Debug, Clone)]
pub struct RandomCrops {
    photos: Photos,
    size: usize,
    flip: bool,
    crops_per_epoch: usize,
    seed: u64,
}

impl RandomCrops {
    /// Random crops of `photos` as `config` says, drawn from `seed`. Errors when the crop size or `crops_per_epoch`
    /// is 0, or a photo is smaller than the crop (naming its file and both sizes).
    pub fn new(photos: Photos, config: &CropConfig, seed: u64) -> Result<RandomCrops> {
        photos.check_crop_size(config.size)?;
        let crops_per_epoch = config.crops_per_epoch.unwrap_or(CROPS_PER_PHOTO.saturating_mul(photos.len()));
        if crops_per_epoch == 0 {
            return Err(Error::invalid_setting("crops per epoch", "0: an epoch needs at least one crop"));
        }
        Ok(RandomCrops { photos, size: config.size, flip: config.flip, crops_per_epoch, seed })
    }

    /// The photos the crops are cut from.
    pub fn photos(&self) -> &Photos {
        &self.photos
    }

    /// The shape of one example: channels x size x size.
    pub fn shape(&self) -> ExampleShape {
        ExampleShape::image(self.photos.channels(), self.size, self.size)
    }

    /// Number of examples in an epoch.
    pub fn crops_per_epoch(&self) -> usize {
        self.crops_per_epoch
    }

    /// Number of batches of `batch_size` in an epoch; the last one is smaller when `batch_size` does not divide the
    /// epoch (it is kept, as [`super::Batcher`] keeps it, so every crop of the epoch is used).
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.crops_per_epoch.div_ceil(batch_size.max(1))
    }

    /// Where example `index` of epoch `epoch` is cut.
    pub fn crop(&self, epoch: usize, index: usize) -> Crop {
        let order = self.round_order(epoch, index / self.photos.len());
        self.place(epoch, index, order[index % self.photos.len()])
    }

    /// Examples `first_index..first_index + count` of epoch `epoch` (those past the end of the epoch are left out),
    /// as f32 values in [0, 1], row-major `[examples, channels, size, size]`.
    pub fn batch(&self, epoch: usize, first_index: usize, count: usize) -> Vec<f32> {
        let end = first_index.saturating_add(count).min(self.crops_per_epoch);
        let crops = self.crops(epoch, first_index.min(end), end);
        let dim = self.shape().dim();
        let mut values = vec![0f32; crops.len() * dim];
        values.par_chunks_mut(dim.max(1)).zip(crops.par_iter()).for_each(|(slot, crop)| {
            copy_crop(&self.photos.photos[crop.photo], crop, self.size, slot, |b| f32::from(b) / 255.0);
        });
        values
    }

    /// The batches of `batch_size` of epoch `epoch` from batch `skip` on (0 for a whole epoch; to resume an epoch,
    /// the number of batches already done), each as (values as [`RandomCrops::batch`] gives them, examples).
    pub fn batches(
        &self,
        epoch: usize,
        batch_size: usize,
        skip: usize,
    ) -> impl Iterator<Item = (Vec<f32>, usize)> + '_ {
        let batch_size = batch_size.max(1);
        let dim = self.shape().dim().max(1);
        (skip..self.num_batches(batch_size)).map(move |b| {
            let values = self.batch(epoch, b * batch_size, batch_size);
            let rows = values.len() / dim;
            (values, rows)
        })
    }

    /// The crops of examples `start..end` of epoch `epoch`.
    fn crops(&self, epoch: usize, start: usize, end: usize) -> Vec<Crop> {
        let n = self.photos.len();
        let mut order = Vec::new();
        (start..end)
            .map(|index| {
                if order.is_empty() || index % n == 0 {
                    order = self.round_order(epoch, index / n);
                }
                self.place(epoch, index, order[index % n])
            })
            .collect()
    }

    /// The order in which the photos take their turns in round `round` of epoch `epoch`.
    fn round_order(&self, epoch: usize, round: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.photos.len()).collect();
        order.shuffle(&mut stream(self.seed ^ ORDER_STREAM, &[epoch as u64, round as u64]));
        order
    }

    /// Where example `index` of epoch `epoch` is cut from photo `photo`.
    fn place(&self, epoch: usize, index: usize, photo: usize) -> Crop {
        let mut rng = stream(self.seed ^ CROP_STREAM, &[epoch as u64, index as u64]);
        let crop = random_window(&self.photos.photos[photo], photo, self.size, &mut rng);
        // the flip is drawn even without `flip`, so that the windows do not depend on it
        let flipped = rng.random_bool(0.5) && self.flip;
        Crop { flipped, ..crop }
    }
}

/// A window of `size x size` placed uniformly at random in `photo` (number `index`), not flipped.
fn random_window(photo: &Photo, index: usize, size: usize, rng: &mut ChaCha8Rng) -> Crop {
    let x = rng.random_range(0..=photo.width - size);
    let y = rng.random_range(0..=photo.height - size);
    Crop { photo: index, x, y, flipped: false }
}

/// Copies the window `crop` of `size x size` of `photo` into `slot` (channels first), converting each byte.
fn copy_crop<T>(photo: &Photo, crop: &Crop, size: usize, slot: &mut [T], convert: impl Fn(u8) -> T) {
    for (row_index, out) in slot.chunks_exact_mut(size).enumerate() {
        let (channel, y) = (row_index / size, crop.y + row_index % size);
        let row = photo.row(channel, y, crop.x, size);
        if crop.flipped {
            out.iter_mut().zip(row.iter().rev()).for_each(|(o, &b)| *o = convert(b));
        } else {
            out.iter_mut().zip(row).for_each(|(o, &b)| *o = convert(b));
        }
    }
}

/// The same `per_photo` crops of `size x size` of each photo every time for one `seed` (never flipped), as a dataset
/// of bytes, photo after photo. The label of each crop is the index of its photo, and the dataset's class names are
/// the photos' names, so `class_names[label]` names the photo a crop came from. A photo's crops depend on its name,
/// not on which other photos there are. Errors when `size` or `per_photo` is 0 or a photo is smaller than the crop.
pub fn fixed_crops(photos: &Photos, size: usize, per_photo: usize, seed: u64) -> Result<Dataset> {
    photos.check_crop_size(size)?;
    if per_photo == 0 {
        return Err(Error::invalid_setting("crops per photo", "0: take at least one crop of each photo"));
    }
    let crops: Vec<Crop> = photos
        .photos
        .iter()
        .enumerate()
        .flat_map(|(index, photo)| {
            let key = name_key(&photo.name);
            (0..per_photo)
                .map(move |k| random_window(photo, index, size, &mut stream(seed ^ FIXED_STREAM, &[key, k as u64])))
        })
        .collect();
    let shape = ExampleShape::image(photos.channels(), size, size);
    let dims = [crops.len(), shape.channels, size, size];
    let total = super::element_count(&photos.source, "crops", &dims)?;
    let mut values = Vec::new();
    values.try_reserve_exact(total).map_err(|_| {
        let problem = format!("{total} bytes of crops ({}) do not fit in memory", super::show_dims(&dims));
        Error::bad_input(&photos.source, "crops", problem)
    })?;
    values.resize(total, 0u8);
    values.par_chunks_mut(shape.dim()).zip(crops.par_iter()).for_each(|(slot, crop)| {
        copy_crop(&photos.photos[crop.photo], crop, size, slot, |b| b);
    });
    let source =
        format!("{} ({per_photo} fixed {size}x{size} crops of {} photos)", photos.source.display(), photos.len());
    Ok(Dataset {
        source,
        values: Values::U8(values),
        shape,
        labels: Some(crops.iter().map(|c| c.photo as u32).collect()),
        class_names: Some(photos.names().into_iter().map(String::from).collect()),
        factors: None,
    })
}

/// A random stream keyed by `key` and `words` (each a different stream).
fn stream(key: u64, words: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(words.iter().fold(splitmix(key), |hash, &word| splitmix(hash ^ word)))
}

/// The SplitMix64 finaliser: a bijection of u64 that scatters nearby inputs far apart.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit key of `name` (FNV-1a), stable across runs and platforms.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};

    /// Writes a `width x height` RGB image whose pixel at (x, y) is (x, y, `tag`).
    fn write_coordinates(path: &Path, width: u32, height: u32, tag: u8) {
        RgbImage::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, tag])).save(path).unwrap();
    }

    /// A folder with coordinate-coded photos named `name` of `width x height`.
    fn folder(photos: &[(&str, u32, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (tag, (name, width, height)) in photos.iter().enumerate() {
            write_coordinates(&dir.path().join(name), *width, *height, tag as u8);
        }
        dir
    }

    fn load(dir: &tempfile::TempDir) -> Photos {
        load_photos(dir.path(), ImageChannels::Auto).unwrap()
    }

    fn crops(photos: Photos, size: usize, flip: bool, crops_per_epoch: Option<usize>, seed: u64) -> RandomCrops {
        RandomCrops::new(photos, &CropConfig { size, flip, crops_per_epoch }, seed).unwrap()
    }

    /// The value of channel `channel` at (`row`, `column`) of example `example` of channels-first values.
    fn at(values: &[f32], shape: ExampleShape, example: usize, channel: usize, row: usize, column: usize) -> u8 {
        let index = ((example * shape.channels + channel) * shape.height + row) * shape.width + column;
        (values[index] * 255.0).round() as u8
    }

    /// Asserts that example `example` of `values` is the window `crop` (size x size) of coordinate-coded photos.
    fn assert_is_window(values: &[f32], shape: ExampleShape, example: usize, crop: Crop) {
        let size = shape.width;
        for row in 0..size {
            for column in 0..size {
                let x = if crop.flipped { crop.x + size - 1 - column } else { crop.x + column };
                let pixel = [0, 1, 2].map(|c| at(values, shape, example, c, row, column) as usize);
                assert_eq!(pixel, [x, crop.y + row, crop.photo], "{crop:?} at row {row}, column {column}");
            }
        }
    }

    #[test]
    fn crops_photos_keep_their_own_sizes_in_name_order() {
        let dir = folder(&[("b.png", 7, 5), ("a.png", 4, 9)]);
        GrayImage::from_pixel(3, 2, Luma([7])).save(dir.path().join("c.jpg")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let photos = load(&dir);
        assert_eq!(photos.names(), ["a.png", "b.png", "c.jpg"]);
        assert_eq!(photos.channels(), 3, "auto is RGB when any image is in colour");
        let sizes: Vec<(usize, usize)> = photos.photos().iter().map(|p| (p.height, p.width)).collect();
        assert_eq!(sizes, [(9, 4), (5, 7), (2, 3)]);
        let b = &photos.photos()[1];
        // channels first: the red plane holds x, the green plane y
        assert_eq!(b.pixels[2 * 7 + 3], 3, "red at (x 3, y 2)");
        assert_eq!(b.pixels[5 * 7 + 2 * 7 + 3], 2, "green at (x 3, y 2)");
        let grey = load_photos(dir.path(), ImageChannels::Grey).unwrap();
        assert_eq!(grey.channels(), 1);
        assert_eq!(grey.photos()[2].pixels.len(), 6);
    }

    #[test]
    fn crops_pixels_are_the_source_window_and_flips_its_mirror() {
        let dir = folder(&[("a.png", 20, 12), ("b.png", 9, 15)]);
        let random = crops(load(&dir), 5, true, Some(40), 1);
        let shape = random.shape();
        assert_eq!(shape, ExampleShape::image(3, 5, 5));
        let values = random.batch(2, 0, 40);
        assert_eq!(values.len(), 40 * shape.dim());
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut flipped = 0;
        for index in 0..40 {
            let crop = random.crop(2, index);
            flipped += usize::from(crop.flipped);
            assert_is_window(&values, shape, index, crop);
        }
        assert!(flipped > 0 && flipped < 40, "{flipped} of 40 flipped");
    }

    #[test]
    fn crops_cover_every_position_and_flip_about_half_the_time() {
        let dir = folder(&[("a.png", 8, 7)]);
        let random = crops(load(&dir), 6, true, Some(500), 3);
        let mut seen = std::collections::BTreeSet::new();
        let mut flipped = 0;
        for epoch in 0..4 {
            for index in 0..500 {
                let crop = random.crop(epoch, index);
                seen.insert((crop.x, crop.y));
                flipped += usize::from(crop.flipped);
            }
        }
        let all: std::collections::BTreeSet<_> = (0..=2).flat_map(|x| (0..=1).map(move |y| (x, y))).collect();
        assert_eq!(seen, all, "every valid position, both extreme corners included");
        assert!((900..1100).contains(&flipped), "{flipped} of 2000 flipped");
        let epoch = |e| (0..50).map(|i| random.crop(e, i)).collect::<Vec<_>>();
        assert_ne!(epoch(0), epoch(1), "crops differ across epochs");
        let unflipped = crops(load(&dir), 6, false, Some(500), 3);
        for index in 0..100 {
            let (a, b) = (random.crop(0, index), unflipped.crop(0, index));
            assert!(!b.flipped);
            assert_eq!((a.x, a.y), (b.x, b.y), "the flip setting does not move the windows");
        }
    }

    #[test]
    fn crops_take_every_photo_equally_often() {
        let dir = folder(&[("a.png", 6, 6), ("b.png", 6, 6), ("c.png", 6, 6)]);
        let random = crops(load(&dir), 4, false, Some(10), 5);
        for epoch in 0..5 {
            let mut counts = [0; 3];
            (0..10).for_each(|i| counts[random.crop(epoch, i).photo] += 1);
            assert!(counts.iter().all(|&n| n == 3 || n == 4), "{counts:?}");
        }
        let order = |e| (0..9).map(|i| random.crop(e, i).photo).collect::<Vec<_>>();
        assert!((1..6).any(|e| order(e) != order(0)), "the photos' turns are shuffled");
        let default = crops(load(&dir), 4, false, None, 5);
        assert_eq!(default.crops_per_epoch(), 3 * CROPS_PER_PHOTO);
    }

    #[test]
    fn crops_are_reproducible_and_an_epoch_resumes_mid_way() {
        let dir = folder(&[("a.png", 11, 9), ("b.png", 8, 13)]);
        let random = crops(load(&dir), 4, true, Some(23), 7);
        let again = crops(load(&dir), 4, true, Some(23), 7);
        assert_eq!(random.num_batches(5), 5);
        let whole: Vec<(Vec<f32>, usize)> = random.batches(3, 5, 0).collect();
        assert_eq!(whole.iter().map(|(_, rows)| *rows).collect::<Vec<_>>(), [5, 5, 5, 5, 3], "the last batch is kept");
        let resumed: Vec<(Vec<f32>, usize)> = again.batches(3, 5, 2).collect();
        assert_eq!(resumed, whole[2..]);
        let dim = random.shape().dim();
        assert_eq!(
            again.batch(3, 7, 4),
            whole[1].0[2 * dim..].iter().chain(&whole[2].0[..dim]).copied().collect::<Vec<_>>()
        );
        assert_eq!(random.batch(3, 21, 5).len(), 2 * dim, "nothing past the end of the epoch");
        assert!(random.batch(3, 30, 5).is_empty());
        assert_eq!(random.crop(3, 11), again.crop(3, 11));
        let other_seed = crops(load(&dir), 4, true, Some(23), 8);
        assert_ne!(other_seed.batch(3, 0, 23), random.batch(3, 0, 23));
    }

    #[test]
    fn crops_held_out_photos_are_a_seeded_disjoint_choice() {
        let names = ["a.png", "b.png", "c.png", "d.png", "e.png"];
        let dir = folder(&names.map(|n| (n, 3, 3)));
        let (train, held) = load(&dir).split_held_out(2, 11).unwrap();
        assert_eq!((train.len(), held.len()), (3, 2));
        let mut all: Vec<&str> = train.names().into_iter().chain(held.names()).collect();
        assert!(train.names().is_sorted() && held.names().is_sorted());
        all.sort();
        assert_eq!(all, names, "disjoint, and together all of them");
        let (_, same) = load(&dir).split_held_out(2, 11).unwrap();
        assert_eq!(same.names(), held.names());
        let choices: std::collections::BTreeSet<Vec<String>> = (0..20)
            .map(|seed| load(&dir).split_held_out(2, seed).unwrap().1.names().into_iter().map(String::from).collect())
            .collect();
        assert!(choices.len() > 1, "the seed chooses");
        for held_out in [0, 5, 6] {
            let message = load(&dir).split_held_out(held_out, 1).unwrap_err().to_string();
            assert!(message.contains(&format!("{held_out} of 5 photos")), "{message}");
        }
    }

    #[test]
    fn crops_fixed_are_the_same_every_time_and_name_their_photos() {
        let dir = folder(&[("a.png", 12, 10), ("b.png", 9, 14)]);
        let photos = load(&dir);
        let fixed = fixed_crops(&photos, 4, 3, 1).unwrap();
        assert_eq!(fixed.shape, ExampleShape::image(3, 4, 4));
        assert_eq!(fixed.len(), 6);
        assert_eq!(fixed, fixed_crops(&photos, 4, 3, 1).unwrap());
        assert_ne!(fixed.values, fixed_crops(&photos, 4, 3, 2).unwrap().values);
        assert_eq!(fixed.labels, Some(vec![0, 0, 0, 1, 1, 1]));
        assert_eq!(fixed.class_names, Some(vec!["a.png".to_string(), "b.png".to_string()]));
        let mut values = Vec::new();
        (0..fixed.len()).for_each(|i| fixed.push_example(i, &mut values));
        for example in 0..fixed.len() {
            let (x, y) = (at(&values, fixed.shape, example, 0, 0, 0), at(&values, fixed.shape, example, 1, 0, 0));
            let photo = example / 3;
            assert_is_window(&values, fixed.shape, example, Crop { photo, x: x.into(), y: y.into(), flipped: false });
        }
        let (_, held) = load(&dir).split_held_out(1, 0).unwrap();
        let alone = fixed_crops(&held, 4, 3, 1).unwrap();
        let index = photos.names().iter().position(|n| *n == held.names()[0]).unwrap();
        assert_eq!(alone.subset(&[0, 1, 2]).values, fixed.subset(&[3 * index, 3 * index + 1, 3 * index + 2]).values);
    }

    #[test]
    fn crops_errors_name_the_file_and_the_sizes() {
        let dir = folder(&[("big.png", 30, 30), ("small.png", 12, 8)]);
        let message =
            RandomCrops::new(load(&dir), &CropConfig { size: 10, ..CropConfig::default() }, 0).unwrap_err().to_string();
        assert!(message.contains("small.png") && message.contains("8x12") && message.contains("10x10"), "{message}");
        let message = fixed_crops(&load(&dir), 9, 1, 0).unwrap_err().to_string();
        assert!(message.contains("small.png") && message.contains("9x9"), "{message}");
        assert!(fixed_crops(&load(&dir), 0, 1, 0).is_err());
        assert!(fixed_crops(&load(&dir), 4, 0, 0).is_err());
        let zero_epoch = CropConfig { size: 4, flip: false, crops_per_epoch: Some(0) };
        assert!(RandomCrops::new(load(&dir), &zero_epoch, 0).is_err());

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("readme.txt"), "no pictures here").unwrap();
        let message = load_photos(empty.path(), ImageChannels::Auto).unwrap_err().to_string();
        assert!(message.contains("no images found"), "{message}");

        std::fs::write(dir.path().join("broken.jpg"), "not a jpeg").unwrap();
        let message = load_photos(dir.path(), ImageChannels::Rgb).unwrap_err().to_string();
        assert!(message.contains("broken.jpg"), "{message}");
    }

    #[test]
    fn crops_config_reads_with_defaults() {
        let config: CropConfig = serde_json::from_str(r#"{"size": 128}"#).unwrap();
        assert_eq!(config, CropConfig { size: 128, ..CropConfig::default() });
        assert_eq!(CropConfig::default(), CropConfig { size: DEFAULT_CROP_SIZE, flip: true, crops_per_epoch: None });
        let jpeg = tempfile::tempdir().unwrap();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(6, 5, Rgb([200, 10, 10])))
            .save(jpeg.path().join("x.jpeg"))
            .unwrap();
        let photos = load_photos(jpeg.path(), ImageChannels::Auto).unwrap();
        assert_eq!((photos.channels(), photos.photos()[0].height, photos.photos()[0].width), (3, 5, 6));
    }
}
