//! The built-in dataset: white shapes on black, generated in code from a seed, in the spirit of dSprites.
//!
//! Five independent factors, on the dSprites grid: shape (square, ellipse, heart), scale (6 values, 0.5 to 1.0),
//! rotation (40 values over [0, 2 pi), counter-clockwise), x and y position (32 values each, 0 to 1, x rightward and
//! y downward as in the image rows). Shapes are anti-aliased by 4 x 4
//! supersampling, so edges are grey. At every allowed position and scale the shape stays clear of the outermost
//! rows and columns of the image.

use std::f32::consts::{PI, SQRT_2};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Dataset, ExampleShape, Factors, Values};
use crate::{Error, Result};

/// Names of the five factors, in the order of factor indices.
pub const FACTOR_NAMES: [&str; 5] = ["shape", "scale", "rotation", "x", "y"];
/// Number of values each factor takes.
pub const FACTOR_SIZES: [u32; 5] = [3, 6, 40, 32, 32];
/// Names of the shapes, in the order of the shape factor (which is also the class label).
pub const SHAPE_NAMES: [&str; 3] = ["square", "ellipse", "heart"];
/// The smallest image side that leaves the smallest shapes recognisable.
pub const MIN_SIZE: usize = 16;

/// Pixels per shape unit at scale 1, as a fraction of the image side. A shape fits in a circle of radius
/// `sqrt(2)` units (the square's corners), so the largest shape spans at most 42% of the image.
const UNIT: f32 = 0.15;
/// Supersamples per pixel along each axis.
const SUPERSAMPLING: usize = 4;
/// The ellipse's half-height relative to its half-width (a circle would hide rotation).
const ELLIPSE_ASPECT: f32 = 0.6;
/// The heart curve reaches a radius of 1.42; shrinking it by this factor gives it an extent like the others'.
const HEART_SHRINK: f32 = 1.1;

/// Settings of the sprites dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SpriteConfig {
    /// Image side in pixels (e.g. 28, 32 or 64); at least 16.
    pub size: usize,
    /// Number of examples to generate.
    pub count: usize,
    /// Seed of the random factor draws: the same seed gives the same bytes.
    pub seed: u64,
    /// Train on the whole factor grid ([`GRID_SIZE`] images, each combination once, as dSprites), rendered on
    /// demand instead of stored; `count` is then ignored for training, and the held-out set is drawn from the grid.
    pub full_grid: bool,
}

impl Default for SpriteConfig {
    fn default() -> Self {
        SpriteConfig { size: 32, count: 20_000, seed: 1, full_grid: false }
    }
}

/// Number of cells of the factor grid: 3 x 6 x 40 x 32 x 32 = 737,280.
pub const GRID_SIZE: usize = 737_280;

/// Sprites kept as factor indices and drawn when an example is read, so the full grid at 64 x 64 costs 15 MB of
/// indices (30 MB with the dataset's [`Factors`], which hold the same indices) instead of 3 GB of pixels. Rendering
/// is deterministic: the same indices give the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedSprites {
    /// Image side in pixels.
    pub size: usize,
    /// Five factor indices per example, in the order of [`FACTOR_NAMES`].
    pub factor_indices: Vec<u32>,
}

impl RenderedSprites {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.factor_indices.len() / FACTOR_SIZES.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.factor_indices.is_empty()
    }

    /// The factor indices of example `index`.
    pub fn factors_of(&self, index: usize) -> [u32; 5] {
        let mut factors = [0; 5];
        factors.copy_from_slice(&self.factor_indices[index * 5..][..5]);
        factors
    }

    /// Renders example `index` and appends its pixels, scaled to [0, 1], to `out`.
    pub fn push_example(&self, index: usize, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.size * self.size, 0.0);
        render_scaled(&self.factors_of(index), self.size, &mut out[start..]);
    }

    /// The examples at `indices`.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let factor_indices = indices.iter().flat_map(|&i| self.factors_of(i)).collect();
        RenderedSprites { size: self.size, factor_indices }
    }
}

/// The factor indices of grid cell `cell` (0 .. [`GRID_SIZE`]), in dSprites' order: shape varies slowest, y fastest.
pub fn grid_cell(cell: usize) -> [u32; 5] {
    let mut rest = cell;
    let mut factors = [0; 5];
    for (factor, &size) in FACTOR_SIZES.iter().enumerate().rev() {
        factors[factor] = (rest % size as usize) as u32;
        rest /= size as usize;
    }
    factors
}

/// A dataset of sprites with the given factor rows (five per example), rendered on demand.
fn rendered(size: usize, factor_indices: Vec<u32>, source: String) -> Dataset {
    let labels = factor_indices.iter().step_by(FACTOR_SIZES.len()).copied().collect();
    let factors = Factors {
        names: FACTOR_NAMES.iter().map(|name| name.to_string()).collect(),
        sizes: FACTOR_SIZES.iter().map(|&n| n as usize).collect(),
        indices: factor_indices.clone(),
    };
    Dataset {
        source,
        values: Values::Rendered(RenderedSprites { size, factor_indices }),
        shape: ExampleShape::image(1, size, size),
        labels: Some(labels),
        class_names: Some(SHAPE_NAMES.iter().map(|name| name.to_string()).collect()),
        factors: Some(factors),
    }
}

/// Every cell of the factor grid once, in [`grid_cell`] order, rendered on demand at `size` pixels.
pub fn full_grid(size: usize) -> Result<Dataset> {
    check(&SpriteConfig { size, count: 1, seed: 0, full_grid: true })?;
    let factor_indices = (0..GRID_SIZE).flat_map(grid_cell).collect();
    Ok(rendered(size, factor_indices, format!("sprites(size={size}, full grid of {GRID_SIZE})")))
}

/// `count` cells of the factor grid drawn uniformly at random (with replacement) from `seed`, rendered on demand.
pub fn grid_sample(size: usize, count: usize, seed: u64) -> Result<Dataset> {
    check(&SpriteConfig { size, count, seed, full_grid: true })?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    let factor_indices = (0..count).flat_map(|_| FACTOR_SIZES.map(|n| rng.random_range(0..n))).collect();
    Ok(rendered(size, factor_indices, format!("sprites(size={size}, {count} grid cells, seed={seed})")))
}

/// Generates `config.count` sprites with factors drawn uniformly at random, seeded by `config.seed`, or the full
/// grid rendered on demand when `config.full_grid`. Labels are the shape indices. Errors when the size is below 16
/// or the count is zero.
pub fn generate(config: &SpriteConfig) -> Result<Dataset> {
    if config.full_grid {
        return full_grid(config.size);
    }
    generate_on_stream(config, 0, "")
}

/// Generates `count` sprites like [`generate`] with the same seed but from an independent random stream, for held-out
/// data. Being drawn independently, a few may share all factors with training examples (a grid cell holds 1 in
/// 737,280 of the combinations).
pub fn generate_held_out(config: &SpriteConfig, count: usize) -> Result<Dataset> {
    if config.full_grid {
        return grid_sample(config.size, count, config.seed);
    }
    generate_on_stream(&SpriteConfig { count, ..*config }, 1, ", held out")
}

/// Renders one sprite of `size` x `size` pixels, row-major, 0 (black) to 255 (white). Factor indices beyond a
/// factor's size are clamped to its last value.
pub fn render(factor_indices: &[u32; 5], size: usize) -> Vec<u8> {
    let mut image = vec![0; size * size];
    render_into(factor_indices, size, &mut image);
    image
}

/// Renders one sprite into `out` (`size` x `size` values) scaled to [0, 1]: pixel bytes divided by 255.
pub fn render_scaled(factor_indices: &[u32; 5], size: usize, out: &mut [f32]) {
    for (value, byte) in out.iter_mut().zip(render(factor_indices, size)) {
        *value = f32::from(byte) / 255.0;
    }
}

/// The continuous values of the factors: shape index, scale in [0.5, 1], rotation in radians in [0, 2 pi), x and y
/// in [0, 1]. Indices beyond a factor's size are clamped to its last value.
pub fn factor_values(indices: &[u32; 5]) -> [f32; 5] {
    let fraction =
        |factor: usize| indices[factor].min(FACTOR_SIZES[factor] - 1) as f32 / (FACTOR_SIZES[factor] - 1) as f32;
    let rotation = indices[2].min(FACTOR_SIZES[2] - 1) as f32 * 2.0 * PI / FACTOR_SIZES[2] as f32;
    [fraction(0) * 2.0, 0.5 + 0.5 * fraction(1), rotation, fraction(3), fraction(4)]
}

/// Generates the examples of `config` from random stream `stream`; `note` is added to the source description.
fn generate_on_stream(config: &SpriteConfig, stream: u64, note: &str) -> Result<Dataset> {
    let pixels = check(config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(stream);
    let mut values = vec![0; config.count * pixels];
    let mut indices = Vec::with_capacity(config.count * FACTOR_SIZES.len());
    for image in values.chunks_exact_mut(pixels) {
        let factors = FACTOR_SIZES.map(|n| rng.random_range(0..n));
        render_into(&factors, config.size, image);
        indices.extend_from_slice(&factors);
    }
    let labels = indices.iter().step_by(FACTOR_SIZES.len()).copied().collect();
    let factors = Factors {
        names: FACTOR_NAMES.iter().map(|name| name.to_string()).collect(),
        sizes: FACTOR_SIZES.iter().map(|&n| n as usize).collect(),
        indices,
    };
    Ok(Dataset {
        source: format!("sprites(size={}, count={}, seed={}{note})", config.size, config.count, config.seed),
        values: Values::U8(values),
        shape: ExampleShape::image(1, config.size, config.size),
        labels: Some(labels),
        class_names: Some(SHAPE_NAMES.iter().map(|name| name.to_string()).collect()),
        factors: Some(factors),
    })
}

/// Checks the settings and returns the number of pixels per image.
fn check(config: &SpriteConfig) -> Result<usize> {
    if config.size < MIN_SIZE {
        let problem = format!("{} is too small; sprites need images of at least {MIN_SIZE} pixels", config.size);
        return Err(Error::invalid_setting("sprites size", problem));
    }
    if config.count == 0 {
        return Err(Error::invalid_setting("sprites count", "must be at least 1"));
    }
    let pixels = config.size.checked_mul(config.size);
    pixels.filter(|p| p.checked_mul(config.count).is_some()).ok_or_else(|| {
        let problem =
            format!("{} images of {} x {} pixels do not fit in memory", config.count, config.size, config.size);
        Error::invalid_setting("sprites count", problem)
    })
}

/// Where a sprite is drawn, in pixels, and how pixel offsets map to the shape's own coordinates.
struct Placement {
    /// Centre, in pixels (x right, y down).
    centre: (f32, f32),
    /// Radius of a circle around the centre that holds the whole shape, in pixels.
    radius: f32,
    /// cos(rotation) / pixels per unit.
    cos: f32,
    /// sin(rotation) / pixels per unit.
    sin: f32,
}

impl Placement {
    fn new(factor_indices: &[u32; 5], size: usize) -> Self {
        let [_, scale, rotation, x, y] = factor_values(factor_indices);
        let unit = UNIT * size as f32;
        // Centres range over [margin, size - margin]: the largest shape then ends a pixel inside the frame.
        let margin = SQRT_2 * unit + 1.0;
        let span = size as f32 - 2.0 * margin;
        let pixels_per_unit = scale * unit;
        Placement {
            centre: (margin + x * span, margin + y * span),
            radius: SQRT_2 * pixels_per_unit,
            cos: rotation.cos() / pixels_per_unit,
            sin: rotation.sin() / pixels_per_unit,
        }
    }

    /// The shape coordinates (u right, v up, unrotated) of the image point (x, y).
    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.centre.0, self.centre.1 - y);
        (self.cos * dx + self.sin * dy, self.cos * dy - self.sin * dx)
    }

    /// The first and one-past-last pixel index covering [centre - radius, centre + radius] within an image side.
    fn pixel_range(&self, centre: f32, size: usize) -> std::ops::Range<usize> {
        let first = (centre - self.radius).floor().max(0.0) as usize;
        let end = ((centre + self.radius).ceil().max(0.0) as usize + 1).min(size);
        first.min(end)..end
    }
}

/// Renders a sprite into `image` (`size` x `size`, zeroed), visiting only the pixels near the shape.
fn render_into(factor_indices: &[u32; 5], size: usize, image: &mut [u8]) {
    let inside = SHAPES[factor_indices[0].min(FACTOR_SIZES[0] - 1) as usize];
    let placement = Placement::new(factor_indices, size);
    let step = 1.0 / SUPERSAMPLING as f32;
    let offsets: [f32; SUPERSAMPLING] = std::array::from_fn(|i| (i as f32 + 0.5) * step);
    for row in placement.pixel_range(placement.centre.1, size) {
        for column in placement.pixel_range(placement.centre.0, size) {
            let hits = offsets
                .iter()
                .flat_map(|dy| offsets.iter().map(move |dx| (column as f32 + dx, row as f32 + dy)))
                .filter(|&(x, y)| {
                    let (u, v) = placement.local(x, y);
                    inside(u, v)
                })
                .count();
            if let Some(pixel) = image.get_mut(row * size + column) {
                *pixel = ((hits * 255 + SUPERSAMPLING * SUPERSAMPLING / 2) / (SUPERSAMPLING * SUPERSAMPLING)) as u8;
            }
        }
    }
}

/// Whether a point in shape coordinates lies inside each shape, in the order of [`SHAPE_NAMES`].
const SHAPES: [fn(f32, f32) -> bool; 3] = [in_square, in_ellipse, in_heart];

fn in_square(u: f32, v: f32) -> bool {
    u.abs() <= 1.0 && v.abs() <= 1.0
}

fn in_ellipse(u: f32, v: f32) -> bool {
    let v = v / ELLIPSE_ASPECT;
    u * u + v * v <= 1.0
}

fn in_heart(u: f32, v: f32) -> bool {
    let (u, v) = (u * HEART_SHRINK, v * HEART_SHRINK);
    let r = u * u + v * v - 1.0;
    r * r * r - u * u * v * v * v <= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SpriteConfig {
        SpriteConfig { size: 32, count: 500, seed, full_grid: false }
    }

    fn bytes(data: &Dataset) -> &[u8] {
        match &data.values {
            Values::U8(v) => v,
            _ => panic!("sprites are bytes"),
        }
    }

    fn lit(image: &[u8]) -> u32 {
        image.iter().map(|&p| u32::from(p)).sum()
    }

    #[test]
    fn the_full_grid_holds_every_cell_once_and_renders_like_the_stored_sprites() {
        let grid = full_grid(32).unwrap();
        assert_eq!(grid.len(), GRID_SIZE);
        let factors = grid.factors.as_ref().unwrap();
        assert_eq!(&factors.indices[..10], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(grid_cell(GRID_SIZE - 1), [2, 5, 39, 31, 31]);
        let cells: std::collections::HashSet<[u32; 5]> = (0..GRID_SIZE).step_by(997).map(grid_cell).collect();
        assert_eq!(cells.len(), GRID_SIZE.div_ceil(997));
        let stored = generate(&config(4)).unwrap();
        let row =
            |i: usize| -> [u32; 5] { std::array::from_fn(|f| stored.factors.as_ref().unwrap().indices[i * 5 + f]) };
        let cell = (0..5).rev().fold((0usize, 1usize), |(cell, scale), f| {
            (cell + row(7)[f] as usize * scale, scale * FACTOR_SIZES[f] as usize)
        });
        let (mut from_grid, mut from_store) = (Vec::new(), Vec::new());
        grid.push_example(cell.0, &mut from_grid);
        stored.push_example(7, &mut from_store);
        assert_eq!(from_grid, from_store);
        let sample = grid_sample(32, 50, 3).unwrap();
        assert_eq!((sample.len(), sample.labels.as_ref().unwrap().len()), (50, 50));
        assert_eq!(sample.subset(&[4, 2]).factors.unwrap().indices[..5], sample.factors.unwrap().indices[20..25]);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = generate(&config(7)).unwrap();
        assert_eq!(a, generate(&config(7)).unwrap());
        assert_ne!(bytes(&a), bytes(&generate(&config(8)).unwrap()));
        assert_ne!(bytes(&a), bytes(&generate_held_out(&config(7), 500).unwrap()));
    }

    #[test]
    fn shapes_labels_and_factors_are_consistent() {
        let data = generate(&config(3)).unwrap();
        assert_eq!(data.shape, ExampleShape::image(1, 32, 32));
        assert_eq!(data.len(), 500);
        let factors = data.factors.as_ref().unwrap();
        assert_eq!(factors.names, FACTOR_NAMES);
        assert_eq!(factors.indices.len(), 500 * 5);
        for (row, &label) in factors.indices.chunks(5).zip(data.labels.as_ref().unwrap()) {
            assert_eq!(row[0], label);
            assert!(row.iter().zip(&factors.sizes).all(|(&i, &n)| (i as usize) < n), "{row:?}");
        }
        let held_out = generate_held_out(&config(3), 50).unwrap();
        assert_eq!(held_out.len(), 50);
    }

    #[test]
    fn edges_are_grey() {
        let image = render(&[1, 3, 7, 10, 20], 32);
        assert!(image.iter().any(|&p| p > 0 && p < 255));
        assert!(image.contains(&255));
    }

    #[test]
    fn lit_area_grows_with_scale() {
        for shape in 0..3 {
            let areas: Vec<u32> = (0..6).map(|scale| lit(&render(&[shape, scale, 3, 16, 16], 32))).collect();
            assert!(areas.windows(2).all(|w| w[0] < w[1]), "shape {shape}: {areas:?}");
        }
    }

    #[test]
    fn rotation_changes_the_square() {
        assert_ne!(render(&[0, 5, 0, 16, 16], 32), render(&[0, 5, 5, 16, 16], 32));
    }

    #[test]
    fn largest_shapes_stay_inside_the_frame() {
        let corners = [(0, 0), (0, 31), (31, 0), (31, 31)];
        for (size, shape, rotation) in
            [16, 28, 32, 64].into_iter().flat_map(|n| (0..120).map(move |i| (n, i / 40, i % 40)))
        {
            for (x, y) in corners {
                let image = render(&[shape, 5, rotation, x, y], size);
                let border = (0..size).flat_map(|i| [i, i * size, i * size + size - 1, (size - 1) * size + i]);
                assert!(border.map(|i| image[i]).all(|p| p == 0), "{size} px, shape {shape} rot {rotation} at {x},{y}");
                assert!(lit(&image) > 0);
            }
        }
    }

    #[test]
    fn factor_values_span_the_grid() {
        assert_eq!(factor_values(&[0, 0, 0, 0, 0]), [0.0, 0.5, 0.0, 0.0, 0.0]);
        let last = factor_values(&[2, 5, 39, 31, 31]);
        assert_eq!(last[..2], [2.0, 1.0]);
        assert!((last[2] - 2.0 * PI * 39.0 / 40.0).abs() < 1e-5);
        assert_eq!(last[3..], [1.0, 1.0]);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let message = generate(&SpriteConfig { size: 8, ..config(1) }).unwrap_err().to_string();
        assert!(message.contains("size") && message.contains("at least 16"), "{message}");
        let message = generate(&SpriteConfig { count: 0, ..config(1) }).unwrap_err().to_string();
        assert!(message.contains("count"), "{message}");
    }
}
