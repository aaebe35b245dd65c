//! Pictures of a model: decoded prior samples and reconstructions, as PNG grids.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::grid::{display_shape, image_grid, save_png};
use crate::data::{batch_tensor, Dataset};
use crate::model::Vae;
use crate::objective::NoiseSource;
use crate::{Error, Result};

/// Decodes `count` prior samples z ~ N(0, temperature^2 I) to the means of p(x|z); examples one after another.
pub fn prior_samples(vae: &Vae, count: usize, temperature: f64, seed: u64, device: &Device) -> Result<Vec<f32>> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::invalid_setting("temperature", format!("must be a positive number, got {temperature}")));
    }
    let z =
        (NoiseSource::new(seed).standard_normal(count, vae.config().latent_dim, DType::F32, device)? * temperature)?;
    flat_values(&vae.decode_mean(&z)?)
}

/// The examples at `indices` and their reconstructions, decoded from the posterior mean z = mu_x.
pub fn reconstructions(
    vae: &Vae,
    dataset: &Dataset,
    indices: &[usize],
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    if let Some(&bad) = indices.iter().find(|&&i| i >= dataset.len()) {
        return Err(Error::invalid_setting(
            "index",
            format!("{bad} is past the {} examples of {}", dataset.len(), dataset.source),
        ));
    }
    let mut inputs = Vec::with_capacity(indices.len() * dataset.shape.dim());
    indices.iter().for_each(|&i| dataset.push_example(i, &mut inputs));
    let x = batch_tensor(inputs.clone(), indices.len(), dataset.shape.dim(), device)?;
    let mu = vae.encode(&x)?.mu;
    Ok((inputs, flat_values(&vae.decode_mean(&mu)?)?))
}

/// Writes a grid of `count` prior samples, 8 per row, to `path`.
pub fn save_sample_grid(
    vae: &Vae,
    path: &Path,
    count: usize,
    temperature: f64,
    seed: u64,
    device: &Device,
) -> Result<()> {
    if count > MAX_GRID_IMAGES {
        let problem = format!("a grid holds at most {MAX_GRID_IMAGES} images, got {count}");
        return Err(crate::Error::invalid_setting("n", problem));
    }
    let samples = prior_samples(vae, count, temperature, seed, device)?;
    save_png(&image_grid(&samples, &display_shape(&vae.config().input_shape), 8)?, path)
}

/// The most images one grid holds (a 64-wide grid of 64 x 64 images is already 4096 x 4096 pixels per 64 rows).
pub const MAX_GRID_IMAGES: usize = 4096;

/// Writes inputs above their reconstructions (rows alternate: up to 8 inputs, then their reconstructions) to
/// `path`, for the first `count` examples of `dataset` (rounded down to whole rows).
pub fn save_reconstruction_grid(
    vae: &Vae,
    dataset: &Dataset,
    path: &Path,
    count: usize,
    device: &Device,
) -> Result<()> {
    let columns = count.min(dataset.len()).clamp(1, 8);
    let indices: Vec<usize> = (0..count.min(dataset.len()) / columns * columns).collect();
    let (inputs, outputs) = reconstructions(vae, dataset, &indices, device)?;
    let row = columns * dataset.shape.dim();
    let mut interleaved = Vec::with_capacity(inputs.len() * 2);
    for (input_row, output_row) in inputs.chunks(row).zip(outputs.chunks(row)) {
        interleaved.extend_from_slice(input_row);
        interleaved.extend_from_slice(output_row);
    }
    save_png(&image_grid(&interleaved, &display_shape(&dataset.shape), columns)?, path)
}

/// A tensor's values, flattened to one row-major list of f32.
pub fn flat_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
