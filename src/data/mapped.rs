//! Examples read straight from a memory-mapped file, for data larger than RAM.
//!
//! Raw (uncompressed) IDX files of bytes and NPY files of `|u1` or `<f4` in C order whose payload is at least
//! [`map_threshold`] bytes are mapped instead of read: the operating system pages in what a batch needs and can
//! drop it again, so RAM no longer limits the size of a dataset. A subset (e.g. the validation split) only narrows
//! a list of row indices; the data is never copied.
//!
//! The mapping assumes that the file is not truncated or modified while elbo runs: the file is validated once
//! (header, and a length that matches the header exactly), and a file shrunk afterwards would make reads fail with
//! a bus error, a file changed afterwards would change the data under a running training.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{Error, Result};

/// Payloads of at least this many bytes are memory-mapped rather than read into memory: 1 GiB.
pub const MAP_THRESHOLD_BYTES: u64 = 1 << 30;

/// The environment variable that overrides [`MAP_THRESHOLD_BYTES`] (a number of bytes; 0 maps every file that can
/// be mapped).
pub const MAP_THRESHOLD_VAR: &str = "ELBO_MAP_THRESHOLD_BYTES";

/// The payload size from which files are mapped: `ELBO_MAP_THRESHOLD_BYTES` when set, else [`MAP_THRESHOLD_BYTES`].
/// An error when the variable is set to something other than a whole number of bytes.
pub fn map_threshold() -> Result<u64> {
    match std::env::var(MAP_THRESHOLD_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(MAP_THRESHOLD_BYTES),
        Ok(text) => text.trim().parse().map_err(|_| {
            Error::invalid_setting(MAP_THRESHOLD_VAR, format!("'{text}' is not a number of bytes, e.g. 1073741824"))
        }),
        Err(std::env::VarError::NotUnicode(text)) => {
            let problem = format!("{text:?} is not a number of bytes, e.g. 1073741824");
            Err(Error::invalid_setting(MAP_THRESHOLD_VAR, problem))
        }
    }
}

/// The type of the mapped elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// Unsigned bytes (pixels 0..=255), scaled to [0, 1] by dividing by 255 when read.
    U8,
    /// Little-endian f32, used as they are.
    F32,
}

impl Element {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Element::U8 => 1,
            Element::F32 => 4,
        }
    }
}

/// Examples stored in a memory-mapped file: `rows` examples of `dim` values each, starting `offset` bytes into the
/// file, optionally narrowed to (and reordered by) a list of row indices.
#[derive(Debug, Clone)]
pub struct MappedValues {
    path: PathBuf,
    map: Arc<Mmap>,
    offset: usize,
    element: Element,
    rows: usize,
    dim: usize,
    indices: Option<Arc<Vec<usize>>>,
}

impl PartialEq for MappedValues {
    /// Same file, same layout, same rows (the mapped bytes are not compared).
    fn eq(&self, other: &Self) -> bool {
        (&self.path, self.offset, self.element, self.rows, self.dim, &self.indices)
            == (&other.path, other.offset, other.element, other.rows, other.dim, &other.indices)
    }
}

impl MappedValues {
    /// Maps `path`, whose payload of `rows` x `dim` elements of type `element` starts at byte `offset`. The caller has
    /// validated the header; this checks, from the file's length and without reading it, that the file holds exactly
    /// that payload, with the same messages as the in-memory loaders.
    pub fn open(path: &Path, offset: usize, element: Element, rows: usize, dim: usize) -> Result<MappedValues> {
        let payload = rows
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(element.size()))
            .ok_or_else(|| Error::bad_input(path, "shape", "more elements than this machine can address"))?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let found = file_len.saturating_sub(offset as u64);
        if found < payload as u64 {
            let problem = format!("file is truncated: expected {payload} bytes, found {found}");
            return Err(Error::bad_input(path, "data", problem));
        }
        if found > payload as u64 {
            let problem = format!("file is longer than its header says: expected {payload} bytes of data, found more");
            return Err(Error::bad_input(path, "data", problem));
        }
        let map = map_file(&file, path)?;
        if map.len() as u64 != file_len {
            return Err(Error::bad_input(path, "data", "the file changed size while it was being mapped"));
        }
        Ok(MappedValues { path: path.to_path_buf(), map: Arc::new(map), offset, element, rows, dim, indices: None })
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The element type.
    pub fn element(&self) -> Element {
        self.element
    }

    /// Number of examples (rows of the file, or selected rows).
    pub fn examples(&self) -> usize {
        self.indices.as_ref().map_or(self.rows, |i| i.len())
    }

    /// Total number of scalar values.
    pub fn len(&self) -> usize {
        self.examples() * self.dim
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the selected examples: the whole payload at once when no rows are selected, else one example
    /// at a time.
    fn chunks(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
        match &self.indices {
            None => Box::new(std::iter::once(&self.map[self.offset..])),
            Some(_) => Box::new((0..self.examples()).map(|i| self.example_bytes(i))),
        }
    }

    /// The bytes of example `index`. Panics when `index` is out of range, as slicing a vector would.
    pub(super) fn example_bytes(&self, index: usize) -> &[u8] {
        let row = self.indices.as_ref().map_or(index, |i| i[index]);
        let width = self.dim * self.element.size();
        let start = self.offset + row * width;
        &self.map[start..start + width]
    }

    /// The values of example `index`, scaled to f32 (bytes divided by 255), appended to `out`.
    pub fn push_example(&self, index: usize, out: &mut Vec<f32>) {
        let bytes = self.example_bytes(index);
        match self.element {
            Element::U8 => crate::kernels::extend_with_unit_values(out, bytes),
            Element::F32 => out.extend(bytes.chunks_exact(4).map(f32_le)),
        }
    }

    /// The examples at `indices` (positions in this selection), sharing the same mapping.
    pub fn subset(&self, indices: &[usize]) -> MappedValues {
        let rows = match &self.indices {
            None => indices.to_vec(),
            Some(current) => indices.iter().map(|&i| current[i]).collect(),
        };
        MappedValues { indices: Some(Arc::new(rows)), ..self.clone() }
    }

    /// Smallest and largest value after scaling (bytes are divided by 255), read through the mapping; `(0, 0)` when
    /// there are no values.
    pub fn value_range(&self) -> (f32, f32) {
        if self.is_empty() {
            return (0.0, 0.0);
        }
        match self.element {
            Element::U8 => {
                let (lo, hi) = self.chunks().fold((u8::MAX, u8::MIN), |(lo, hi), bytes| {
                    let lo = bytes.iter().copied().min().map_or(lo, |b| lo.min(b));
                    (lo, bytes.iter().copied().max().map_or(hi, |b| hi.max(b)))
                });
                (f32::from(lo) / 255.0, f32::from(hi) / 255.0)
            }
            Element::F32 => self.chunks().fold((f32::INFINITY, f32::NEG_INFINITY), |acc, bytes| {
                bytes.chunks_exact(4).map(f32_le).fold(acc, |(lo, hi), x| (lo.min(x), hi.max(x)))
            }),
        }
    }

    /// The first example holding a NaN or infinite value, and that value (a sequential scan; never for bytes).
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        if self.element == Element::U8 {
            return None;
        }
        (0..self.examples())
            .find_map(|i| self.example_bytes(i).chunks_exact(4).map(f32_le).find(|v| !v.is_finite()).map(|v| (i, v)))
    }

    /// All values as f32 in memory (for data that must be held whole, such as latent codes).
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        (0..self.examples()).for_each(|i| self.push_example(i, &mut out));
        out
    }
}

/// A little-endian f32 from a chunk of exactly 4 bytes.
fn f32_le(chunk: &[u8]) -> f32 {
    f32::from_le_bytes(super::word(chunk))
}

/// Maps `path` read-only. The mapping is only sound while the file is neither truncated nor modified, which elbo
/// assumes of its input data for as long as it runs (see the module documentation).
fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: memmap2 cannot guarantee that no other process changes the file while it is mapped; elbo requires
    // (and documents) that its data files are not truncated or modified while it runs. Under that assumption the
    // mapped bytes are plain immutable memory, and every read is bounds-checked against the length checked here.
    unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped_file(bytes: &[u8], offset: usize, element: Element, rows: usize, dim: usize) -> MappedValues {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.bin");
        std::fs::write(&path, bytes).unwrap();
        // the mapping outlives the file's directory entry
        MappedValues::open(&path, offset, element, rows, dim).unwrap()
    }

    #[test]
    fn bytes_are_scaled_and_subsets_narrow_the_rows() {
        let mapped = mapped_file(&[9, 9, 0, 51, 255, 102, 0, 0], 2, Element::U8, 3, 2);
        assert_eq!((mapped.examples(), mapped.len()), (3, 6));
        let mut out = Vec::new();
        mapped.push_example(1, &mut out);
        assert_eq!(out, vec![1.0, 0.4]);
        let subset = mapped.subset(&[2, 0]).subset(&[1]);
        assert_eq!(subset.to_vec(), vec![0.0, 0.2]);
        assert_eq!(mapped.value_range(), (0.0, 1.0));
        assert_eq!(subset.value_range(), (0.0, 0.2));
        assert_eq!(mapped.first_non_finite(), None);
    }

    #[test]
    fn floats_are_read_and_non_finite_values_found() {
        let values = [0.5f32, -1.0, f32::INFINITY, 2.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mapped = mapped_file(&bytes, 0, Element::F32, 2, 2);
        assert_eq!(mapped.subset(&[0]).to_vec(), vec![0.5, -1.0]);
        assert_eq!(mapped.subset(&[0]).value_range(), (-1.0, 0.5));
        assert_eq!(mapped.first_non_finite(), Some((1, f32::INFINITY)));
    }

    #[test]
    fn a_payload_of_the_wrong_length_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.bin");
        std::fs::write(&path, [1, 2, 3]).unwrap();
        let message = MappedValues::open(&path, 0, Element::F32, 1, 1).unwrap_err().to_string();
        assert!(message.contains("short.bin") && message.contains("truncated: expected 4 bytes, found 3"));
        std::fs::write(&path, [1, 2, 3, 4, 5]).unwrap();
        let message = MappedValues::open(&path, 0, Element::F32, 1, 1).unwrap_err().to_string();
        assert!(message.contains("short.bin") && message.contains("longer than its header"), "{message}");
    }
}
