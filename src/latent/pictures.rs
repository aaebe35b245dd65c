//! Labelled PNG grids of the latent-space tools: a traversal, an interpolation and latent arithmetic.

use image::RgbImage;

use super::arithmetic::Arithmetic;
use super::interpolate::Interpolation;
use super::traverse::Traversal;
use crate::data::ExampleShape;
use crate::outputs::grid::{display_shape, image_grid, with_row_labels};
use crate::Result;

/// One row per swept dimension, labelled with the dimension and its KL (`DIM 3 KL 1.25`).
pub fn traversal_grid(traversal: &Traversal, shape: &ExampleShape) -> Result<RgbImage> {
    let labels: Vec<String> = traversal.rows.iter().map(|r| format!("dim {} KL {:.2}", r.dimension, r.kl)).collect();
    labelled_grid(&traversal.decoded, shape, traversal.steps, &labels)
}

/// One row: the first input, the decoded path, the second input; labelled `LERP` or `SLERP`.
pub fn interpolation_grid(interpolation: &Interpolation, shape: &ExampleShape, spherical: bool) -> Result<RgbImage> {
    let row = interpolation.row();
    let columns = row.len() / shape.dim();
    labelled_grid(&row, shape, columns, &[if spherical { "slerp" } else { "lerp" }.to_string()])
}

/// Three rows: the class-A inputs (labelled with `from`), their reconstructions, and the codes moved by the attribute
/// vector, decoded (labelled `> to`).
pub fn arithmetic_grid(arithmetic: &Arithmetic, shape: &ExampleShape, (from, to): (&str, &str)) -> Result<RgbImage> {
    let labels = [from.to_string(), "decoded".into(), format!("> {to}")];
    labelled_grid(&arithmetic.rows(), shape, arithmetic.indices.len(), &labels)
}

/// A grid of `columns` cells per row with one label per row.
fn labelled_grid(values: &[f32], shape: &ExampleShape, columns: usize, labels: &[String]) -> Result<RgbImage> {
    let shape = display_shape(shape);
    Ok(with_row_labels(&image_grid(values, &shape, columns)?, labels, shape.height as u32))
}
