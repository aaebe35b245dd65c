//! A diffusers KL autoencoder applied to image files: encode an image folder (or one image) to an N x C x h x w
//! latent array, decode such an array back to images, and reconstruct images with their PSNR and SSIM.
//!
//! Images are read one at a time, in sorted file-name order, and go through the model one at a time (diffusers'
//! slicing), tiled when larger than the model's tile (diffusers' `enable_tiling`), so memory is bounded by one image
//! and one tile's activations, not by the folder. Pixels in [0, 1] are mapped to the model's [-1, 1] by x = 2p - 1
//! and back by p = (x + 1) / 2, clamped.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader};

use crate::data::image_folder::is_image_name;
use crate::data::npy::{read_npy, write_npy_f32, Dtype};
use crate::data::ExampleShape;
use crate::evaluation::image_quality::{psnr, ssim, ImageSize};
use crate::model::AutoencoderKl;
use crate::objective::NoiseSource;
use crate::outputs::grid::{example_image, save_png};
use crate::{Error, Result};

/// How images are read and run through the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KlImageOptions {
    /// Bring every image to (height, width) by cropping the largest centred region of that aspect ratio and
    /// resizing it; `None` keeps each image's own size.
    pub size: Option<(usize, usize)>,
    /// Run images (and latents) larger than a tile in overlapping tiles.
    pub tiling: bool,
}

/// The image files of `path`: the path itself when it is a file, else the image files directly inside the folder
/// (named `.png`, `.jpg` or `.jpeg`, not hidden), sorted by file name.
pub fn image_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && is_image_name(&name) && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_input(path, "images", "no .png, .jpg or .jpeg files in this folder"));
    }
    Ok(files)
}

/// The file name of `path`, for the names written beside a latent array.
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// One image as `channels` x height x width values in [0, 1] (channels 1: luma, 3: RGB), brought to `size` if
/// given. The image library's default limits bound what a file can make it allocate.
pub fn read_image(path: &Path, channels: usize, size: Option<(usize, usize)>) -> Result<(Vec<f32>, ExampleShape)> {
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mut image = reader.decode().map_err(|e| Error::bad_input(path, "image", e.to_string()))?;
    if let Some((height, width)) = size {
        let side = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0);
        let (Some(h), Some(w)) = (side(height), side(width)) else {
            return Err(Error::invalid_setting(
                "image-size",
                format!("{height}x{width}: sides from 1 to {}", u32::MAX),
            ));
        };
        image = image.resize_to_fill(w, h, FilterType::Triangle);
    }
    let shape = ExampleShape::image(channels, image.height() as usize, image.width() as usize);
    let values = match channels {
        1 => image.to_luma8().into_raw(),
        3 => channels_first(&image),
        other => {
            let problem = format!("the model takes {other} channels; images give 1 (grey) or 3 (RGB)");
            return Err(Error::bad_input(path, "in_channels", problem));
        }
    };
    Ok((values.into_iter().map(|v| f32::from(v) / 255.0).collect(), shape))
}

/// The RGB bytes of `image`, channels first.
fn channels_first(image: &DynamicImage) -> Vec<u8> {
    let rgb = image.to_rgb8();
    let plane = rgb.width() as usize * rgb.height() as usize;
    let mut out = vec![0u8; 3 * plane];
    for (pixel, value) in rgb.pixels().enumerate() {
        (0..3).for_each(|c| out[c * plane + pixel] = value.0[c]);
    }
    out
}

/// One image of `shape` with pixel values `pixels` in [0, 1] as a `[1, C, H, W]` model input in [-1, 1]: x = 2p - 1.
fn model_input(pixels: &[f32], shape: &ExampleShape, device: &Device) -> Result<Tensor> {
    let x = Tensor::from_slice(pixels, (1, shape.channels, shape.height, shape.width), device)?;
    Ok(x.affine(2.0, -1.0)?)
}

/// Model output in about [-1, 1] as pixel values in [0, 1]: p = clamp((x + 1) / 2, 0, 1).
fn pixels(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.affine(0.5, 0.5)?.clamp(0f32, 1f32)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

/// Which latent to keep of each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentChoice {
    /// `None`: the posterior mean; `Some(seed)`: one sample z = mu + sigma * eps, eps from `seed`.
    pub sample_seed: Option<u64>,
    /// Multiply by `scaling_factor` after taking off `shift_factor`, as a diffusion model takes latents.
    pub scaled: bool,
}

/// Latents of a set of images, `N x C x h x w`.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentArray {
    /// N, C, h, w.
    pub shape: [usize; 4],
    /// The latents (mean or sample, scaled or not, as asked).
    pub values: Vec<f32>,
    /// The posterior log-variances log sigma^2, unscaled.
    pub log_var: Vec<f32>,
    /// The image file names, in order.
    pub names: Vec<String>,
}

/// Encodes `files` (all of one size after `options.size`) to latents.
pub fn encode_images(
    model: &AutoencoderKl,
    files: &[PathBuf],
    options: KlImageOptions,
    choice: LatentChoice,
    device: &Device,
) -> Result<LatentArray> {
    let mut noise = choice.sample_seed.map(NoiseSource::new);
    let mut array = LatentArray { shape: [0; 4], values: Vec::new(), log_var: Vec::new(), names: Vec::new() };
    let mut first: Option<ExampleShape> = None;
    for file in files {
        let (values, shape) = read_image(file, model.config().in_channels, options.size)?;
        same_size(file, &shape, first.get_or_insert(shape))?;
        model.check_image_size((shape.height, shape.width), &file.display().to_string())?;
        let x = model_input(&values, &shape, device)?;
        let posterior = if options.tiling { model.encode_tiled(&x)? } else { model.encode(&x)? };
        let z = match noise.as_mut() {
            Some(noise) => {
                let eps = noise.standard_normal(1, posterior.mu.elem_count(), DType::F32, device)?;
                posterior.reparameterize(&eps.reshape(posterior.mu.shape())?)?
            }
            None => posterior.mu.clone(),
        };
        let z = if choice.scaled { model.scale_latents(&z)? } else { z };
        let (_, c, h, w) = z.dims4()?;
        array.shape = [array.shape[0] + 1, c, h, w];
        array.values.extend(z.flatten_all()?.to_vec1::<f32>()?);
        array.log_var.extend(posterior.log_var.flatten_all()?.to_vec1::<f32>()?);
        array.names.push(file_name(file));
    }
    Ok(array)
}

/// An error unless `shape` is the `first` image's shape: one array holds images of one size.
fn same_size(file: &Path, shape: &ExampleShape, first: &ExampleShape) -> Result<()> {
    if shape != first {
        let problem = format!(
            "{} x {}, but the first image is {} x {}: give --image-size to bring them to one size",
            shape.height, shape.width, first.height, first.width
        );
        return Err(Error::bad_input(file, "image size", problem));
    }
    Ok(())
}

/// Writes `array` to `out` (`.npy`, N x C x h x w f32), the image names one per line to `out` with `.names.txt`
/// for `.npy`, and with `log_var` the log-variances to `.log_var.npy`. Returns the files written.
pub fn write_latents(out: &Path, array: &LatentArray, log_var: bool) -> Result<Vec<PathBuf>> {
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        return Err(Error::invalid_setting("out", format!("{}: latents are written as .npy", out.display())));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_npy_f32(out, &array.shape, &array.values)?;
    let names = out.with_extension("names.txt");
    let mut text = array.names.join("\n");
    text.push('\n');
    write_text(&names, &text)?;
    let mut written = vec![out.to_path_buf(), names];
    if log_var {
        let path = out.with_extension("log_var.npy");
        write_npy_f32(&path, &array.shape, &array.log_var)?;
        written.push(path);
    }
    Ok(written)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Reads an `N x latent_channels x h x w` float array (`<f4` or `<f8`) as f32 values and its shape.
pub fn read_latent_array(path: &Path, latent_channels: usize) -> Result<(Vec<f32>, [usize; 4])> {
    let array = read_npy(path)?;
    let shape: [usize; 4] = match array.shape.as_slice() {
        &[n, c, h, w] if c == latent_channels && n * h * w > 0 => [n, c, h, w],
        other => {
            let problem = format!("{other:?}: expected N x {latent_channels} x h x w (the model's latent channels)");
            return Err(Error::bad_input(path, "shape", problem));
        }
    };
    let values = match array.dtype {
        Dtype::Float { bytes: 4 } => {
            array.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Dtype::Float { bytes: 8 } => array
            .data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => return Err(Error::bad_input(path, "descr", "latents must be floats ('<f4' or '<f8')")),
    };
    Ok((values, shape))
}

/// Decodes latents (`values` of `shape` N x C x h x w; `scaled` when they were scaled for a diffusion model) to
/// images in [0, 1], one after another, channels first; returns them with the shape of one image.
pub fn decode_latent_array(
    model: &AutoencoderKl,
    values: &[f32],
    shape: [usize; 4],
    (scaled, tiling): (bool, bool),
    device: &Device,
) -> Result<(Vec<f32>, ExampleShape)> {
    let [n, c, h, w] = shape;
    let mut images = Vec::new();
    let mut image_shape = ExampleShape::image(model.config().out_channels, 0, 0);
    for latent in values.chunks_exact(c * h * w).take(n) {
        let z = Tensor::from_slice(latent, (1, c, h, w), device)?;
        let z = if scaled { model.unscale_latents(&z)? } else { z };
        let x = if tiling { model.decode_tiled(&z)? } else { model.decode(&z)? };
        let (_, channels, height, width) = x.dims4()?;
        image_shape = ExampleShape::image(channels, height, width);
        images.extend(pixels(&x)?);
    }
    Ok((images, image_shape))
}

/// One reconstructed image's distortion.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconstruction {
    /// The image file name.
    pub name: String,
    /// PSNR in dB of the reconstruction (from the posterior mean) against the input, on [0, 1] pixels.
    pub psnr: f64,
    /// SSIM of the reconstruction against the input.
    pub ssim: f64,
}

/// Reconstructs each of `files` from its posterior mean, writes `out/NAME.png` (input left, reconstruction right)
/// and `out/metrics.csv` (PSNR and SSIM per image, then their mean); returns the figures per image.
pub fn reconstruct_images(
    model: &AutoencoderKl,
    files: &[PathBuf],
    options: KlImageOptions,
    out: &Path,
    device: &Device,
) -> Result<Vec<Reconstruction>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut rows = Vec::with_capacity(files.len());
    for file in files {
        let (input, shape) = read_image(file, model.config().in_channels, options.size)?;
        model.check_image_size((shape.height, shape.width), &file.display().to_string())?;
        let x = model_input(&input, &shape, device)?;
        let mu = if options.tiling { model.encode_tiled(&x)?.mu } else { model.encode(&x)?.mu };
        let decoded = if options.tiling { model.decode_tiled(&mu)? } else { model.decode(&mu)? };
        let output = pixels(&decoded)?;
        let size = ImageSize { channels: shape.channels, height: shape.height, width: shape.width };
        let name = file_name(file);
        rows.push(Reconstruction { psnr: psnr(&input, &output, size)?, ssim: ssim(&input, &output, size)?, name });
        let pair = side_by_side(&input, &output, &shape);
        let stem = file.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        save_png(
            &example_image(&pair, &ExampleShape::image(shape.channels, shape.height, 2 * shape.width)),
            &out.join(format!("{stem}.png")),
        )?;
    }
    write_text(&out.join("metrics.csv"), &metrics_csv(&rows))?;
    Ok(rows)
}

/// Two channels-first images of `shape` joined left to right.
fn side_by_side(left: &[f32], right: &[f32], shape: &ExampleShape) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * shape.dim());
    for (a, b) in left.chunks_exact(shape.width).zip(right.chunks_exact(shape.width)) {
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }
    out
}

/// `name,psnr_db,ssim` per image, then a `mean` row.
pub fn metrics_csv(rows: &[Reconstruction]) -> String {
    let mut text = String::from("name,psnr_db,ssim\n");
    rows.iter().for_each(|r| text.push_str(&format!("{},{:.4},{:.6}\n", r.name, r.psnr, r.ssim)));
    let (psnr, ssim) = mean_figures(rows);
    text.push_str(&format!("mean,{psnr:.4},{ssim:.6}\n"));
    text
}

/// The mean PSNR and mean SSIM over `rows` (NaN for none).
pub fn mean_figures(rows: &[Reconstruction]) -> (f64, f64) {
    let n = rows.len() as f64;
    (rows.iter().map(|r| r.psnr).sum::<f64>() / n, rows.iter().map(|r| r.ssim).sum::<f64>() / n)
}
