//! Image grids: many examples tiled into one PNG, each cell framed by a thin border.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::font::{draw_text, text_height, text_width};
use crate::atomic::write_atomic;
use crate::data::ExampleShape;
use crate::{Error, Result};

/// Border width between cells, in pixels.
const BORDER: u32 = 1;
/// Border colour: mid grey, visible against both black and white images.
const BORDER_COLOUR: Rgb<u8> = Rgb([128, 128, 128]);
/// Background of the label margin.
const LABEL_BACKGROUND: Rgb<u8> = Rgb([40, 40, 40]);

/// Tiles `values` (examples one after another, channels-first, in [0, 1]) into rows of `columns` cells.
/// Grey examples are shown grey, 3-channel examples in colour; other channel counts show their first channel.
pub fn image_grid(values: &[f32], shape: &ExampleShape, columns: usize) -> Result<RgbImage> {
    let dim = shape.dim();
    if dim == 0 || !values.len().is_multiple_of(dim) || values.is_empty() {
        return Err(Error::invalid_setting(
            "grid",
            format!("{} values do not split into examples of {dim}", values.len()),
        ));
    }
    let count = values.len() / dim;
    let columns = columns.clamp(1, count);
    let rows = count.div_ceil(columns);
    let (cell_width, cell_height) = (shape.width as u32, shape.height as u32);
    let width = columns as u32 * (cell_width + BORDER) + BORDER;
    let height = rows as u32 * (cell_height + BORDER) + BORDER;
    let mut grid = RgbImage::from_pixel(width, height, BORDER_COLOUR);
    for (index, example) in values.chunks(dim).enumerate() {
        let left = (index % columns) as u32 * (cell_width + BORDER) + BORDER;
        let top = (index / columns) as u32 * (cell_height + BORDER) + BORDER;
        draw_cell(&mut grid, example, shape, left, top);
    }
    Ok(grid)
}

/// One example (channels-first, in [0, 1]) as an image of its own size, without a border.
pub fn example_image(example: &[f32], shape: &ExampleShape) -> RgbImage {
    let mut image = RgbImage::new(shape.width as u32, shape.height as u32);
    draw_cell(&mut image, example, shape, 0, 0);
    image
}

fn draw_cell(grid: &mut RgbImage, example: &[f32], shape: &ExampleShape, left: u32, top: u32) {
    let plane = shape.height * shape.width;
    let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for y in 0..shape.height {
        for x in 0..shape.width {
            let at = |channel: usize| to_byte(example[channel * plane + y * shape.width + x]);
            let pixel = if shape.channels == 3 { Rgb([at(0), at(1), at(2)]) } else { Rgb([at(0); 3]) };
            grid.put_pixel(left + x as u32, top + y as u32, pixel);
        }
    }
}

/// Writes `image` as PNG to `path`, atomically.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let bytes = png_bytes(image).map_err(|e| Error::io(path, e))?;
    write_atomic(path, &bytes)
}

/// `image` encoded as PNG in memory.
pub fn png_bytes(image: &RgbImage) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// `grid` (rows of cells `cell_height` pixels high, as [`image_grid`] draws them) with a margin on the left holding
/// one label per row, in white on dark grey. Rows without a label are left blank.
pub fn with_row_labels(grid: &RgbImage, labels: &[String], cell_height: u32) -> RgbImage {
    let scale = (cell_height / 12).clamp(1, 4);
    let widest = labels.iter().map(|l| text_width(l, scale)).max().unwrap_or(0);
    let margin = widest + 4 * scale;
    let mut labelled = RgbImage::from_pixel(grid.width() + margin, grid.height(), LABEL_BACKGROUND);
    image::imageops::replace(&mut labelled, grid, i64::from(margin), 0);
    for (row, label) in labels.iter().enumerate() {
        let top = BORDER + row as u32 * (cell_height + BORDER) + cell_height.saturating_sub(text_height(scale)) / 2;
        draw_text(&mut labelled, label, (2 * scale, top), scale, Rgb([255, 255, 255]));
    }
    labelled
}

/// The shape to draw examples of `shape` in: images as they are, flat vectors as the most square rectangle
/// whose sides multiply to the length (784 -> 28 x 28).
pub fn display_shape(shape: &ExampleShape) -> ExampleShape {
    if shape.is_image() {
        return *shape;
    }
    let dim = shape.dim();
    let side = (1..=(dim as f64).sqrt() as usize).rev().find(|s| dim.is_multiple_of(*s)).unwrap_or(1);
    ExampleShape::image(1, side, dim / side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_placed_inside_borders() {
        let shape = ExampleShape::image(1, 2, 3);
        let values: Vec<f32> = vec![1.0; 6].into_iter().chain(vec![0.0; 6]).collect();
        let grid = image_grid(&values, &shape, 2).unwrap();
        assert_eq!((grid.width(), grid.height()), (2 * 4 + 1, 3 + 1));
        assert_eq!(grid.get_pixel(0, 0), &BORDER_COLOUR);
        assert_eq!(grid.get_pixel(1, 1), &Rgb([255, 255, 255]));
        assert_eq!(grid.get_pixel(5, 1), &Rgb([0, 0, 0]));
        assert_eq!(grid.get_pixel(4, 1), &BORDER_COLOUR);
    }

    #[test]
    fn row_labels_go_in_a_left_margin() {
        let shape = ExampleShape::image(1, 20, 20);
        let grid = image_grid(&vec![1.0; 4 * 400], &shape, 2).unwrap();
        let labelled = with_row_labels(&grid, &["Z1".into(), "Z22".into()], 20);
        let margin = labelled.width() - grid.width();
        assert_eq!(margin, text_width("Z22", 1) + 4);
        assert_eq!(labelled.height(), grid.height());
        assert_eq!(labelled.get_pixel(margin + 1, 1), &Rgb([255, 255, 255]), "the grid is kept whole");
        let white_in_margin = |rows: std::ops::Range<u32>| {
            rows.flat_map(|y| (0..margin).map(move |x| (x, y))).any(|(x, y)| labelled.get_pixel(x, y)[0] == 255)
        };
        assert!(white_in_margin(1..21) && white_in_margin(22..42), "each row has its label");
    }

    #[test]
    fn flat_vectors_are_drawn_as_near_squares() {
        assert_eq!(display_shape(&ExampleShape::flat(784)), ExampleShape::image(1, 28, 28));
        assert_eq!(display_shape(&ExampleShape::flat(10)), ExampleShape::image(1, 2, 5));
        assert_eq!(display_shape(&ExampleShape::flat(7)), ExampleShape::image(1, 1, 7));
    }
}
