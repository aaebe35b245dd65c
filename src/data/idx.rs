//! MNIST-style IDX files (`train-images-idx3-ubyte` and friends), raw or gzip-compressed.
//!
//! The format: two zero bytes, a type code (only `0x08`, unsigned byte, is supported), the number of dimensions,
//! one big-endian u32 per dimension, then the values. Gzip is recognised by its magic bytes, whatever the name.
//! Raw image files whose data is at least the [map threshold](super::mapped::map_threshold) are memory-mapped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::mapped::{self, Element, MappedValues};
use super::{element_count, read_array, read_exactly, read_payload, show_dims, word, Dataset, Values};
use crate::{Error, Result};

/// The only supported type code: unsigned bytes.
const TYPE_U8: u8 = 0x08;
/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The content of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The values, row-major; `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes (type code `0x08`), raw or gzip-compressed, checking the magic, the type
/// code, the number of dimensions (1 to 4) and that the data is exactly as long as the header says.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let (reader, is_gzip) = open(path)?;
    let mut reader: Box<dyn Read> = if is_gzip { Box::new(MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    let dims = read_header(&mut reader, path)?;
    let len = element_count(path, "dims", &dims)?;
    let data = read_payload(&mut reader, len, path)?;
    Ok(IdxArray { dims, data })
}

/// Loads examples from an IDX file: `N x H x W` gives grey images, `N x D` flat vectors (and `N x H x W x C` images
/// with channels last). A raw (not gzip) file of `N x D` or `N x H x W` whose data is at least
/// [`mapped::map_threshold`] bytes is memory-mapped rather than read.
pub fn load_images(path: &Path) -> Result<Dataset> {
    load_images_with_threshold(path, mapped::map_threshold()?)
}

/// [`load_images`], mapping raw files whose data is at least `map_threshold` bytes (0 maps every raw file).
pub fn load_images_with_threshold(path: &Path, map_threshold: u64) -> Result<Dataset> {
    let (mut reader, is_gzip) = open(path)?;
    if is_gzip {
        let IdxArray { dims, data } = read_idx(path)?;
        return Dataset::from_array(path, &dims, Values::U8(data));
    }
    let dims = read_header(&mut reader, path)?;
    let len = element_count(path, "dims", &dims)?;
    let values = if len as u64 >= map_threshold && dims.len() != 4 {
        let (rows, dim) = (dims[0], dims[1..].iter().product());
        Values::Mapped(MappedValues::open(path, 4 + 4 * dims.len(), Element::U8, rows, dim)?)
    } else {
        Values::U8(read_payload(&mut reader, len, path)?)
    };
    Dataset::from_array(path, &dims, values)
}

/// Loads class labels from a one-dimensional IDX file.
pub fn load_labels(path: &Path) -> Result<Vec<u32>> {
    let IdxArray { dims, data } = read_idx(path)?;
    if dims.len() != 1 {
        let problem = format!("labels must have 1 dimension, found {} ({})", dims.len(), show_dims(&dims));
        return Err(Error::bad_input(path, "dims", problem));
    }
    Ok(data.into_iter().map(u32::from).collect())
}

/// The file `name` in `dir`, or else `name.gz`, whichever exists first; `None` if neither does.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

/// Opens `path`, and tells whether it starts with the gzip magic bytes.
fn open(path: &Path) -> Result<(BufReader<File>, bool)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let is_gzip = reader.fill_buf().map_err(|e| Error::io(path, e))?.starts_with(&GZIP_MAGIC);
    Ok((reader, is_gzip))
}

/// Reads and checks the magic, type code and dimension count, and returns the dimensions.
fn read_header(reader: &mut impl Read, path: &Path) -> Result<Vec<usize>> {
    let [zero0, zero1, type_code, ndims] = read_array(reader, path, "header")?;
    if [zero0, zero1] != [0, 0] {
        let problem = format!("expected an IDX file starting with two zero bytes, found {zero0:#04x} {zero1:#04x}");
        return Err(Error::bad_input(path, "magic", problem));
    }
    if type_code != TYPE_U8 {
        let problem = format!(
            "type code {type_code:#04x} ({}) is not supported; expected 0x08 (unsigned byte)",
            type_name(type_code)
        );
        return Err(Error::bad_input(path, "type code", problem));
    }
    if !(1..=4).contains(&ndims) {
        return Err(Error::bad_input(path, "dims", format!("expected 1 to 4 dimensions, found {ndims}")));
    }
    let dims = read_exactly(reader, 4 * usize::from(ndims), path, "dims")?;
    Ok(dims.chunks_exact(4).map(|d| u32::from_be_bytes(word(d)) as usize).collect())
}

/// The element type an IDX type code stands for.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::ExampleShape;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;
    use tempfile::TempDir;

    /// The bytes of an IDX file with the given header fields and data.
    pub(crate) fn idx_bytes(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, type_code, dims.len() as u8];
        dims.iter().for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
        bytes.extend_from_slice(data);
        bytes
    }

    /// `bytes`, gzip-compressed.
    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn error_of<T: std::fmt::Debug>(result: Result<T>) -> String {
        result.unwrap_err().to_string()
    }

    fn images() -> Vec<u8> {
        (0..24).map(|v| v * 10).collect()
    }

    #[test]
    fn raw_and_gzip_images_round_trip() {
        let dir = TempDir::new().unwrap();
        let raw = idx_bytes(0x08, &[2, 3, 4], &images());
        for (name, bytes) in [("img-idx3-ubyte", raw.clone()), ("img-idx3-ubyte.gz", gzip(&raw))] {
            let data = load_images(&write(&dir, name, &bytes)).unwrap();
            assert_eq!(data.shape, ExampleShape::image(1, 3, 4));
            assert_eq!(data.len(), 2);
            assert_eq!(data.values, Values::U8(images()));
        }
    }

    #[test]
    fn flat_examples_and_labels_load() {
        let dir = TempDir::new().unwrap();
        let flat = load_images(&write(&dir, "flat-idx2-ubyte", &idx_bytes(0x08, &[4, 6], &images()))).unwrap();
        assert_eq!(flat.shape, ExampleShape::flat(6));
        let labels = write(&dir, "labels-idx1-ubyte.gz", &gzip(&idx_bytes(0x08, &[3], &[7, 0, 9])));
        assert_eq!(load_labels(&labels).unwrap(), vec![7, 0, 9]);
    }

    #[test]
    fn find_file_prefers_raw_then_gzip() {
        let dir = TempDir::new().unwrap();
        assert_eq!(find_file(dir.path(), "a"), None);
        let gz = write(&dir, "a.gz", b"x");
        assert_eq!(find_file(dir.path(), "a"), Some(gz));
        let raw = write(&dir, "a", b"x");
        assert_eq!(find_file(dir.path(), "a"), Some(raw));
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = TempDir::new().unwrap();
        let message = error_of(read_idx(&dir.path().join("nothing-idx3-ubyte")));
        assert!(message.contains("nothing-idx3-ubyte"), "{message}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let dir = TempDir::new().unwrap();
        let mut bytes = idx_bytes(0x08, &[2, 3, 4], &images());
        bytes[0] = 0x42;
        let message = error_of(read_idx(&write(&dir, "magic-idx3-ubyte", &bytes)));
        assert!(message.contains("magic-idx3-ubyte") && message.contains("magic"), "{message}");
    }

    #[test]
    fn unknown_type_code_is_named() {
        let dir = TempDir::new().unwrap();
        let message = error_of(read_idx(&write(&dir, "f32-idx3-ubyte", &idx_bytes(0x0D, &[1, 1, 1], &[0; 4]))));
        assert!(message.contains("f32-idx3-ubyte") && message.contains("type code 0x0d"), "{message}");
    }

    #[test]
    fn bad_dimension_counts_are_rejected() {
        let dir = TempDir::new().unwrap();
        let message = error_of(read_idx(&write(&dir, "dims-idx-ubyte", &idx_bytes(0x08, &[1; 5], &[1]))));
        assert!(message.contains("dims-idx-ubyte") && message.contains("1 to 4 dimensions"), "{message}");
        let labels = write(&dir, "labels-idx-ubyte", &idx_bytes(0x08, &[2, 2], &[1; 4]));
        let message = error_of(load_labels(&labels));
        assert!(message.contains("labels-idx-ubyte") && message.contains("1 dimension"), "{message}");
    }

    #[test]
    fn truncated_data_says_expected_and_found() {
        let dir = TempDir::new().unwrap();
        let raw = idx_bytes(0x08, &[2, 3, 4], &images()[..20]);
        for (name, bytes) in [("short-idx3-ubyte", raw.clone()), ("short-idx3-ubyte.gz", gzip(&raw))] {
            let message = error_of(read_idx(&write(&dir, name, &bytes)));
            assert!(message.contains(name) && message.contains("expected 24 bytes, found 20"), "{message}");
        }
        let message = error_of(read_idx(&write(&dir, "header-idx3-ubyte", &[0, 0, 8])));
        assert!(message.contains("header-idx3-ubyte") && message.contains("truncated"), "{message}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let dir = TempDir::new().unwrap();
        let bytes = idx_bytes(0x08, &[2, 2], &[1; 5]);
        let message = error_of(read_idx(&write(&dir, "long-idx2-ubyte", &bytes)));
        assert!(message.contains("long-idx2-ubyte") && message.contains("longer than its header"), "{message}");
    }

    #[test]
    fn huge_header_claim_errors_without_allocating() {
        let dir = TempDir::new().unwrap();
        let bytes = idx_bytes(0x08, &[1_000_000, 1_000_000, 1_000], &[1; 10]);
        let message = error_of(read_idx(&write(&dir, "huge-idx3-ubyte", &bytes)));
        assert!(message.contains("huge-idx3-ubyte") && message.contains("found 10"), "{message}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = TempDir::new().unwrap();
        let message = error_of(load_images(&write(&dir, "empty-idx3-ubyte", &idx_bytes(0x08, &[0, 28, 28], &[]))));
        assert!(message.contains("empty-idx3-ubyte") && message.contains("no examples"), "{message}");
    }
}
