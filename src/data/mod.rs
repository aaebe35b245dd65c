//! Data: loading examples from files (IDX, NPY, CSV, image folders) or the built-in sprites generator, keeping them
//! compactly in memory, and turning them into training batches (random crops of photos for autoencoders).

pub mod batch;
pub mod crops;
pub mod csv;
pub mod idx;
pub mod image_folder;
pub mod mapped;
pub mod npy;
pub mod source;
pub mod sprites;
pub mod synthetic;

pub use batch::{batch_tensor, binarized, Batcher, Binarization};
pub use crops::{fixed_crops, load_photos, Crop, CropConfig, Photo, Photos, RandomCrops};
pub use mapped::MappedValues;
pub use source::{load, load_file, DataSpec, Splits};

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// The raw values of all examples, row-major, one example after the other.
///
/// 8-bit data stays 8-bit in memory and is scaled per batch, so full MNIST costs 47 MB, not 188 MB.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Unsigned bytes (pixels 0..=255), scaled to [0, 1] by dividing by 255 when batched.
    U8(Vec<u8>),
    /// Floating-point values, used as they are.
    F32(Vec<f32>),
    /// Sprites drawn from their factor indices when read, never stored (bytes scaled to [0, 1]).
    Rendered(sprites::RenderedSprites),
    /// Bytes or f32 read from a memory-mapped file when an example is read (large raw IDX and NPY files).
    Mapped(MappedValues),
}

impl Values {
    /// Total number of scalar values.
    pub fn len(&self) -> usize {
        match self {
            Values::U8(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::Rendered(sprites) => sprites.len() * sprites.size * sprites.size,
            Values::Mapped(mapped) => mapped.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shape of one example: channels x height x width. Flat vectors are 1 x 1 x D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExampleShape {
    /// Number of channels (1 for grey images and flat vectors, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels (1 for flat vectors).
    pub height: usize,
    /// Image width in pixels (the vector length for flat vectors).
    pub width: usize,
}

impl ExampleShape {
    /// A flat vector of `dim` values.
    pub fn flat(dim: usize) -> Self {
        ExampleShape { channels: 1, height: 1, width: dim }
    }

    /// An image of `channels` x `height` x `width`.
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        ExampleShape { channels, height, width }
    }

    /// Number of scalar values in one example.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when the example can be shown as an image (height > 1).
    pub fn is_image(&self) -> bool {
        self.height > 1
    }
}

/// Ground-truth generating factors of each example (for synthetic data such as the sprites).
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// Factor names, e.g. `["shape", "scale", "rotation", "x", "y"]`.
    pub names: Vec<String>,
    /// Number of distinct values each factor takes.
    pub sizes: Vec<usize>,
    /// Factor indices, `len * names.len()` values, one row per example.
    pub indices: Vec<u32>,
}

/// A set of examples, with optional labels and generating factors.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where the data came from (a file path or "sprites(...)"), used in messages.
    pub source: String,
    /// The example values.
    pub values: Values,
    /// The shape of one example.
    pub shape: ExampleShape,
    /// One class label per example, when the data has them.
    pub labels: Option<Vec<u32>>,
    /// The name of each class label (label `i` is `class_names[i]`), when the data has names: an image folder's
    /// class folders, the sprites' shapes.
    pub class_names: Option<Vec<String>>,
    /// Ground-truth factors per example, when known.
    pub factors: Option<Factors>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.values.len() / self.shape.dim().max(1)
    }

    /// True when the dataset holds no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of example `index`, scaled to f32 (u8 divided by 255), appended to `out`.
    pub fn push_example(&self, index: usize, out: &mut Vec<f32>) {
        let range = self.example_range(index);
        match &self.values {
            Values::U8(v) => crate::kernels::extend_with_unit_values(out, &v[range]),
            Values::F32(v) => out.extend_from_slice(&v[range]),
            Values::Rendered(sprites) => sprites.push_example(index, out),
            Values::Mapped(mapped) => mapped.push_example(index, out),
        }
    }

    /// Starts loading the stored values of example `index` into the CPU's caches, for a [`Self::push_example`] soon
    /// after (rendered sprites are drawn, not read, and get nothing).
    pub fn prefetch_example(&self, index: usize) {
        let range = self.example_range(index);
        match &self.values {
            Values::U8(v) => crate::kernels::prefetch(&v[range]),
            Values::F32(v) => crate::kernels::prefetch(&v[range]),
            Values::Rendered(_) => {}
            Values::Mapped(mapped) => crate::kernels::prefetch(mapped.example_bytes(index)),
        }
    }

    /// Where example `index`'s values lie in stored values (`Values::U8` or `Values::F32`).
    fn example_range(&self, index: usize) -> std::ops::Range<usize> {
        let dim = self.shape.dim();
        index * dim..(index + 1) * dim
    }

    /// The examples at `indices` as a new dataset (labels and factors follow).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let dim = self.shape.dim();
        let values = match &self.values {
            Values::U8(v) => Values::U8(gather_rows(v, indices, dim)),
            Values::F32(v) => Values::F32(gather_rows(v, indices, dim)),
            Values::Rendered(sprites) => Values::Rendered(sprites.subset(indices)),
            Values::Mapped(mapped) => Values::Mapped(mapped.subset(indices)),
        };
        let labels = self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect());
        let factors = self.factors.as_ref().map(|f| Factors {
            names: f.names.clone(),
            sizes: f.sizes.clone(),
            indices: gather_rows(&f.indices, indices, f.names.len()),
        });
        let class_names = self.class_names.clone();
        Dataset { source: self.source.clone(), values, shape: self.shape, labels, class_names, factors }
    }

    /// Smallest and largest value after scaling (u8 data is divided by 255).
    pub fn value_range(&self) -> (f32, f32) {
        match &self.values {
            Values::U8(v) => {
                let min = v.iter().copied().min().unwrap_or(0) as f32 / 255.0;
                let max = v.iter().copied().max().unwrap_or(0) as f32 / 255.0;
                (min, max)
            }
            Values::F32(v) => v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x))),
            // rendered sprites are black backgrounds with white shapes
            Values::Rendered(_) => (0.0, 1.0),
            Values::Mapped(mapped) => mapped.value_range(),
        }
    }
}

impl Dataset {
    /// A dataset of in-memory f32 `values`, `shape.dim()` per example (e.g. `ExampleShape::flat(784)` or
    /// `ExampleShape::image(3, 32, 32)`, channels first), used as they are; no labels. An error when the values are
    /// not a whole number of examples, there are none, or one is not finite.
    pub fn from_f32(values: Vec<f32>, shape: ExampleShape) -> Result<Dataset> {
        if let Some(index) = values.iter().position(|value| !value.is_finite()) {
            let problem = format!("value {index} is {}; values must be finite", values[index]);
            return Err(Error::bad_input(IN_MEMORY, "values", problem));
        }
        Self::in_memory(Values::F32(values), shape)
    }

    /// A dataset of in-memory bytes (pixels), `shape.dim()` per example, scaled to [0, 1] when batched; no labels.
    pub fn from_u8(values: Vec<u8>, shape: ExampleShape) -> Result<Dataset> {
        Self::in_memory(Values::U8(values), shape)
    }

    fn in_memory(values: Values, shape: ExampleShape) -> Result<Dataset> {
        let dim = shape.dim();
        if dim == 0 || values.is_empty() || !values.len().is_multiple_of(dim) {
            let problem = format!("{} values are not a positive whole number of examples of {dim}", values.len());
            return Err(Error::bad_input(IN_MEMORY, "values", problem));
        }
        Ok(Dataset { source: IN_MEMORY.into(), values, shape, labels: None, class_names: None, factors: None })
    }
}

/// The `source` of datasets made from arrays in memory.
const IN_MEMORY: &str = "in-memory array";

impl Dataset {
    /// Builds a dataset from an array read from `source`: `N x D` gives flat examples, `N x H x W` grey images and
    /// `N x H x W x C` images with channels last, which are reordered to the channels-first layout kept in memory
    /// (so mapped values cannot be channels-last). Errors when there are no examples, an example dimension is zero,
    /// or `values` does not match `dims`.
    pub fn from_array(source: &Path, dims: &[usize], values: Values) -> Result<Dataset> {
        let shape = match *dims {
            [_, d] => ExampleShape::flat(d),
            [_, h, w] => ExampleShape::image(1, h, w),
            [_, h, w, c] => ExampleShape::image(c, h, w),
            _ => {
                let problem =
                    format!("expected 2 (N x D), 3 (N x H x W) or 4 (N x H x W x C) dimensions, found {}", dims.len());
                return Err(Error::bad_input(source, "shape", problem));
            }
        };
        check_array_size(source, dims, values.len())?;
        if dims.len() == 4 && matches!(values, Values::Mapped(_)) {
            let problem = "channels-last (N x H x W x C) data must be reordered in memory and cannot be memory-mapped";
            return Err(Error::bad_input(source, "shape", problem));
        }
        let values = if dims.len() == 4 { values.hwc_to_chw(shape) } else { values };
        Ok(Dataset {
            source: source.display().to_string(),
            values,
            shape,
            labels: None,
            class_names: None,
            factors: None,
        })
    }
}

impl Values {
    /// The same examples with each example's values reordered from height x width x channels to channels x height
    /// x width. `shape` must have no zero dimension.
    fn hwc_to_chw(self, shape: ExampleShape) -> Values {
        match self {
            Values::U8(v) => Values::U8(hwc_to_chw(&v, shape)),
            Values::F32(v) => Values::F32(hwc_to_chw(&v, shape)),
            // never reached: `from_array` refuses mapped channels-last data
            other @ (Values::Rendered(_) | Values::Mapped(_)) => other,
        }
    }
}

fn hwc_to_chw<T: Copy>(values: &[T], shape: ExampleShape) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    for example in values.chunks_exact(shape.dim()) {
        for channel in 0..shape.channels {
            out.extend(example.iter().skip(channel).step_by(shape.channels));
        }
    }
    out
}

/// Checks that an array of dimensions `dims` holds at least one example, that no example dimension is zero, and that
/// it has `len` values.
fn check_array_size(source: &Path, dims: &[usize], len: usize) -> Result<()> {
    if dims.first() == Some(&0) {
        return Err(Error::bad_input(source, "shape", format!("{} holds no examples", show_dims(dims))));
    }
    if dims.iter().skip(1).any(|&d| d == 0) {
        let problem = format!("{}: every dimension after the first must be at least 1", show_dims(dims));
        return Err(Error::bad_input(source, "shape", problem));
    }
    let expected = element_count(source, "shape", dims)?;
    if expected != len {
        let problem = format!("{} needs {expected} values, found {len}", show_dims(dims));
        return Err(Error::bad_input(source, "data", problem));
    }
    Ok(())
}

/// Dimensions written as `2 x 28 x 28`.
pub(crate) fn show_dims(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ")
}

/// The number of elements of an array with dimensions `dims`; an error naming `path` and `field` if it overflows.
pub(crate) fn element_count(path: &Path, field: &str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| {
        Error::bad_input(path, field, format!("{} elements is more than this machine can address", show_dims(dims)))
    })
}

/// Reads exactly `len` bytes of the part `field` of `path`; fewer bytes is a "truncated" error saying how many were
/// expected and found. Memory grows with what is really read, never with `len` itself.
pub(crate) fn read_exactly(reader: &mut impl Read, len: usize, path: &Path, field: &str) -> Result<Vec<u8>> {
    let bytes = read_at_most(reader, len, path)?;
    if bytes.len() < len {
        let problem = format!("file is truncated: expected {len} bytes, found {}", bytes.len());
        return Err(Error::bad_input(path, field, problem));
    }
    Ok(bytes)
}

/// Reads `N` bytes of the part `field` of `path` into an array, like [`read_exactly`].
pub(crate) fn read_array<const N: usize>(reader: &mut impl Read, path: &Path, field: &str) -> Result<[u8; N]> {
    Ok(word(&read_exactly(reader, N, path, field)?))
}

/// The bytes of `chunk`, which must hold exactly `N` (as the chunks of `chunks_exact(N)` do), as an array.
pub(crate) fn word<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut word = [0; N];
    word.copy_from_slice(chunk);
    word
}

/// Reads the rest of `path`, which must be exactly `len` bytes (the size its header claims): fewer or more is an
/// error naming both sizes. At most `len + 1` bytes are read, so a huge claim cannot cause a huge allocation.
pub(crate) fn read_payload(reader: &mut impl Read, len: usize, path: &Path) -> Result<Vec<u8>> {
    let bytes = read_exactly(reader, len, path, "data")?;
    if !read_at_most(reader, 1, path)?.is_empty() {
        let problem = format!("file is longer than its header says: expected {len} bytes of data, found more");
        return Err(Error::bad_input(path, "data", problem));
    }
    Ok(bytes)
}

fn read_at_most(reader: &mut impl Read, len: usize, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(len).unwrap_or(u64::MAX);
    reader.take(limit).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

fn gather_rows<T: Copy>(values: &[T], indices: &[usize], row: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(indices.len() * row);
    for &i in indices {
        out.extend_from_slice(&values[i * row..(i + 1) * row]);
    }
    out
}
