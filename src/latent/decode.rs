//! The decoder as a decompressor: latent codes back to examples (images, or raw arrays for other data).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::data::npy::write_npy_f32;
use crate::data::ExampleShape;
use crate::model::Vae;
use crate::outputs::grid::{display_shape, example_image, image_grid, save_png};
use crate::outputs::pictures::flat_values;
use crate::{Error, Result};

/// Images per row of a decoded grid.
const GRID_COLUMNS: usize = 8;

/// Decodes codes (`rows x latent_dim` values, row by row) to the means of p(x|z), in batches of `batch_size`;
/// examples one after another, channels-first.
pub fn decode_latents(vae: &Vae, latents: &[f32], batch_size: usize, device: &Device) -> Result<Vec<f32>> {
    let latent_dim = vae.config().latent_dim;
    if latents.is_empty() || !latents.len().is_multiple_of(latent_dim) {
        let problem = format!("{} values do not make whole codes of {latent_dim} values", latents.len());
        return Err(Error::invalid_setting("latents", problem));
    }
    let mut decoded = Vec::with_capacity(latents.len() / latent_dim * vae.config().input_shape.dim());
    for chunk in latents.chunks(batch_size.max(1) * latent_dim) {
        let z = Tensor::from_slice(chunk, (chunk.len() / latent_dim, latent_dim), device)?;
        decoded.extend(flat_values(&vae.decode_mean(&z)?)?);
    }
    Ok(decoded)
}

/// Writes decoded examples of `shape` to `out`: a name ending in `.png` gets one image grid; anything else is a
/// directory that gets `decoded.npy` (`N x D` for flat data, `N x H x W` or `N x H x W x C` for images, the layout
/// `elbo` reads back as data) and, for images, one PNG per example: `NAME.png` after `names` (one per example, e.g.
/// the image names `elbo encode` wrote beside the latents), else by index. Returns the files written.
pub fn write_decoded(
    out: &Path,
    values: &[f32],
    shape: &ExampleShape,
    names: Option<&[String]>,
) -> Result<Vec<PathBuf>> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        save_png(&image_grid(values, &display_shape(shape), GRID_COLUMNS)?, out)?;
        return Ok(vec![out.to_path_buf()]);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let count = values.len() / shape.dim();
    let array = out.join("decoded.npy");
    write_npy_f32(&array, &array_dims(count, shape), &channels_last(values, shape))?;
    let mut written = vec![array];
    if shape.is_image() {
        let stems = png_stems(names, count);
        for (stem, example) in stems.iter().zip(values.chunks(shape.dim())) {
            let path = out.join(format!("{stem}.png"));
            save_png(&example_image(example, shape), &path)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The file stems of `count` decoded images: the stems of `names` when there is one per image and they are plain
/// file names, distinct (anything with a directory in it, or repeated, could overwrite another file); else the
/// indices, zero-padded to one width.
fn png_stems(names: Option<&[String]>, count: usize) -> Vec<String> {
    let stem = |name: &String| {
        let path = Path::new(name.as_str());
        let plain = path.file_name().is_some_and(|file| file == name.as_str());
        plain.then(|| path.file_stem()).flatten().map(|stem| stem.to_string_lossy().into_owned())
    };
    let stems: Option<Vec<String>> =
        names.filter(|names| names.len() == count).and_then(|n| n.iter().map(stem).collect());
    let distinct = |stems: &Vec<String>| stems.iter().collect::<std::collections::HashSet<_>>().len() == stems.len();
    match stems.filter(distinct) {
        Some(stems) => stems,
        None => {
            let width = count.saturating_sub(1).to_string().len();
            (0..count).map(|index| format!("{index:0width$}")).collect()
        }
    }
}

/// The NPY dimensions of `count` examples of `shape`.
fn array_dims(count: usize, shape: &ExampleShape) -> Vec<usize> {
    match (shape.is_image(), shape.channels) {
        (false, _) => vec![count, shape.dim()],
        (true, 1) => vec![count, shape.height, shape.width],
        (true, channels) => vec![count, shape.height, shape.width, channels],
    }
}

/// Each example's values reordered from channels-first to channels-last (height x width x channels).
fn channels_last(values: &[f32], shape: &ExampleShape) -> Vec<f32> {
    if shape.channels == 1 {
        return values.to_vec();
    }
    let plane = shape.height * shape.width;
    let mut out = Vec::with_capacity(values.len());
    for example in values.chunks_exact(shape.dim()) {
        for pixel in 0..plane {
            out.extend((0..shape.channels).map(|c| example[c * plane + pixel]));
        }
    }
    out
}

/// How many bytes examples of `shape` take next to their codes of `latent_dim` f32 values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compression {
    /// Values per example.
    pub input_values: usize,
    /// Bytes per input value as stored: 1 for 8-bit data, 4 for f32.
    pub input_value_bytes: usize,
    /// Latent values per example (stored as f32).
    pub latent_values: usize,
}

impl Compression {
    /// Bytes of one input example.
    pub fn input_bytes(&self) -> usize {
        self.input_values * self.input_value_bytes
    }

    /// Bytes of one code.
    pub fn latent_bytes(&self) -> usize {
        self.latent_values * 4
    }

    /// Input bytes per latent byte.
    pub fn ratio(&self) -> f64 {
        self.input_bytes() as f64 / self.latent_bytes().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_images_take_plain_distinct_names_or_else_indices() {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(png_stems(Some(&names(&["cat.jpg", "dog.png"])), 2), ["cat", "dog"]);
        for unsafe_or_wrong in [names(&["../cat.jpg", "dog.png"]), names(&["a.png", "a.jpg"]), names(&["one.png"])] {
            assert_eq!(png_stems(Some(&unsafe_or_wrong), 2), ["0", "1"], "{unsafe_or_wrong:?}");
        }
        assert_eq!(png_stems(None, 11)[3], "03");
    }
    use crate::data::npy::{load_examples, read_npy};

    #[test]
    fn a_directory_gets_an_array_elbo_reads_back_and_one_png_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ExampleShape::image(3, 2, 2);
        let values: Vec<f32> = (0..24).map(|v| v as f32 / 24.0).collect();
        let written = write_decoded(&dir.path().join("out"), &values, &shape, None).unwrap();
        assert_eq!(written.len(), 3);
        assert_eq!(read_npy(&written[0]).unwrap().shape, vec![2, 2, 2, 3]);
        let back = load_examples(&written[0]).unwrap();
        assert_eq!((back.shape, back.values), (shape, crate::data::Values::F32(values)));
        assert_eq!(image::open(&written[2]).unwrap().width(), 2, "no border around a single decoded image");
    }

    #[test]
    fn compression_counts_bytes_per_example() {
        let mnist = Compression { input_values: 784, input_value_bytes: 1, latent_values: 20 };
        assert_eq!((mnist.input_bytes(), mnist.latent_bytes()), (784, 80));
        assert!((mnist.ratio() - 9.8).abs() < 1e-12);
    }
}
