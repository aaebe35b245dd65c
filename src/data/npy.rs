//! NumPy `.npy` files (format versions 1, 2 and 3), read and written by hand.
//!
//! Examples can be `|u1` (kept as bytes, scaled to [0, 1] when batched), `<f4` or `<f8` (converted to f32), in C
//! order only. Shapes: `N x D` (flat), `N x H x W` (grey images) or `N x H x W x C` (images with channels last,
//! reordered to channels-first). Labels can be any little-endian integer type up to 64 bits. Examples of `|u1` or
//! `<f4` that are not channels-last and whose data is at least the [map threshold](super::mapped::map_threshold)
//! are memory-mapped rather than read.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::mapped::{self, Element, MappedValues};
use super::{element_count, read_array, read_exactly, read_payload, show_dims, word, Dataset, Values};
use crate::{Error, Result};

/// The first six bytes of every NPY file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The header of a written file (magic, version, length and text) is padded to a multiple of this.
const HEADER_ALIGNMENT: usize = 64;

/// An element type of an NPY file (little-endian or single-byte only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// An integer of `bytes` bytes (1, 2, 4 or 8), `signed` or not.
    Int {
        /// Size of one element in bytes.
        bytes: usize,
        /// Whether the integer is signed.
        signed: bool,
    },
    /// An IEEE float of `bytes` bytes (4 or 8).
    Float {
        /// Size of one element in bytes.
        bytes: usize,
    },
}

/// The supported `descr` strings and their types.
const DTYPES: [(&str, Dtype); 12] = [
    ("|u1", Dtype::Int { bytes: 1, signed: false }),
    ("<u1", Dtype::Int { bytes: 1, signed: false }),
    ("|i1", Dtype::Int { bytes: 1, signed: true }),
    ("<i1", Dtype::Int { bytes: 1, signed: true }),
    ("<u2", Dtype::Int { bytes: 2, signed: false }),
    ("<i2", Dtype::Int { bytes: 2, signed: true }),
    ("<u4", Dtype::Int { bytes: 4, signed: false }),
    ("<i4", Dtype::Int { bytes: 4, signed: true }),
    ("<u8", Dtype::Int { bytes: 8, signed: false }),
    ("<i8", Dtype::Int { bytes: 8, signed: true }),
    ("<f4", Dtype::Float { bytes: 4 }),
    ("<f8", Dtype::Float { bytes: 8 }),
];

impl Dtype {
    /// The type a `descr` string such as `<f4` stands for, if supported.
    fn from_descr(descr: &str) -> Option<Dtype> {
        DTYPES.iter().find(|(name, _)| *name == descr).map(|&(_, dtype)| dtype)
    }

    /// Size of one element in bytes.
    pub fn size(&self) -> usize {
        match *self {
            Dtype::Int { bytes, .. } | Dtype::Float { bytes } => bytes,
        }
    }
}

/// The content of an NPY file: its shape, element type and raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: Dtype,
    /// The elements' bytes, in C order; `shape` product times `dtype.size()` of them.
    pub data: Vec<u8>,
}

/// Reads an NPY file, checking the magic, the header (`descr`, `fortran_order`, `shape`) and that the data is
/// exactly as long as the shape says.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let (mut reader, header, _) = open(path)?;
    let len = payload_len(path, &header)?;
    let data = read_payload(&mut reader, len, path)?;
    Ok(NpyArray { shape: header.shape, dtype: header.dtype, data })
}

/// Opens `path` and reads its header; returns the reader (at the start of the data), the header and its length in
/// bytes (where the data starts).
fn open(path: &Path) -> Result<(BufReader<File>, Header, usize)> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let (header, offset) = read_header(&mut reader, path)?;
    let header = parse_header(&header).map_err(|(field, problem)| Error::bad_input(path, field, problem))?;
    Ok((reader, header, offset))
}

/// The number of bytes of data `header` announces.
fn payload_len(path: &Path, header: &Header) -> Result<usize> {
    let count = element_count(path, "shape", &header.shape)?;
    count.checked_mul(header.dtype.size()).ok_or_else(|| {
        Error::bad_input(path, "shape", format!("{} elements do not fit in memory", show_dims(&header.shape)))
    })
}

/// Loads examples from an NPY file of type `|u1`, `<f4` or `<f8`; float values must all be finite. `|u1` and `<f4`
/// data of at least [`mapped::map_threshold`] bytes, not channels-last, is memory-mapped rather than read.
pub fn load_examples(path: &Path) -> Result<Dataset> {
    load_examples_with_threshold(path, mapped::map_threshold()?)
}

/// [`load_examples`], mapping `|u1` and `<f4` data of at least `map_threshold` bytes (0 maps every such file).
pub fn load_examples_with_threshold(path: &Path, map_threshold: u64) -> Result<Dataset> {
    let (mut reader, header, offset) = open(path)?;
    let len = payload_len(path, &header)?;
    let element = match header.dtype {
        Dtype::Int { bytes: 1, signed: false } => Some(Element::U8),
        Dtype::Float { bytes: 4 } => Some(Element::F32),
        _ => None,
    };
    let values = match element {
        Some(element) if len as u64 >= map_threshold && !header.shape.is_empty() && header.shape.len() != 4 => {
            let (rows, dim) = (header.shape[0], header.shape[1..].iter().product());
            Values::Mapped(MappedValues::open(path, offset, element, rows, dim)?)
        }
        _ => {
            let data = read_payload(&mut reader, len, path)?;
            match header.dtype {
                Dtype::Int { bytes: 1, signed: false } => Values::U8(data),
                Dtype::Float { bytes } => Values::F32(floats(&data, bytes)),
                Dtype::Int { .. } => {
                    let problem = "integer examples are not supported; expected '|u1', '<f4' or '<f8'";
                    return Err(Error::bad_input(path, "descr", problem));
                }
            }
        }
    };
    let dataset = Dataset::from_array(path, &header.shape, values)?;
    check_finite(&dataset, path)?;
    Ok(dataset)
}

/// Loads class labels from a one-dimensional NPY file of non-negative integers that fit in 32 bits.
pub fn load_labels(path: &Path) -> Result<Vec<u32>> {
    let array = read_npy(path)?;
    if array.shape.len() != 1 {
        let problem = format!("labels must have 1 dimension, found {}", show_dims(&array.shape));
        return Err(Error::bad_input(path, "shape", problem));
    }
    let Dtype::Int { bytes, signed } = array.dtype else {
        return Err(Error::bad_input(path, "descr", "labels must be integers, found floats"));
    };
    array.data.chunks_exact(bytes).enumerate().map(|(i, c)| label(path, i, int_from_le(c, signed))).collect()
}

/// Writes `values` with dimensions `shape` as a version 1.0 NPY file of `<f4` that `np.load` reads; the file is
/// written under a temporary name in the same directory, then renamed.
pub fn write_npy_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    write_npy(path, "<f4", shape, values, f32::to_le_bytes)
}

/// Writes `values` with dimensions `shape` as a version 1.0 NPY file of `<u4` (e.g. labels), like
/// [`write_npy_f32`].
pub fn write_npy_u32(path: &Path, shape: &[usize], values: &[u32]) -> Result<()> {
    write_npy(path, "<u4", shape, values, u32::to_le_bytes)
}

/// The fields of an NPY header.
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
}

/// Reads the magic, version and header length, and returns the header text (decoded as Latin-1, which every
/// header numpy writes is) and the number of bytes read, where the data starts.
fn read_header(reader: &mut impl Read, path: &Path) -> Result<(String, usize)> {
    let [start @ .., major, minor] = read_array::<8>(reader, path, "magic")?;
    if start != *MAGIC {
        let problem = format!("expected an NPY file starting with \\x93NUMPY, found {start:02x?}");
        return Err(Error::bad_input(path, "magic", problem));
    }
    let (len, len_bytes) = match major {
        1 => (usize::from(u16::from_le_bytes(read_array(reader, path, "header length")?)), 2),
        2 | 3 => (u32::from_le_bytes(read_array(reader, path, "header length")?) as usize, 4),
        _ => {
            let problem = format!("version {major}.{minor} is not supported; expected 1.0, 2.0 or 3.0");
            return Err(Error::bad_input(path, "version", problem));
        }
    };
    let text = read_exactly(reader, len, path, "header")?.into_iter().map(char::from).collect();
    Ok((text, MAGIC.len() + 2 + len_bytes + len))
}

/// Parses a header such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`; an error names the field
/// and the problem.
fn parse_header(text: &str) -> std::result::Result<Header, (&'static str, String)> {
    // numpy writes one Python dict literal, padded with spaces and ending in a newline
    let dictionary = text.trim_end();
    if !(dictionary.starts_with('{') && dictionary.ends_with('}')) {
        return Err(("header", format!("expected a dictionary in braces, got {dictionary:?}")));
    }
    let descr = field(text, "descr").and_then(quoted).ok_or(("descr", "missing or not a quoted string".into()))?;
    let dtype = Dtype::from_descr(descr).ok_or_else(|| {
        let supported: Vec<&str> = DTYPES.iter().map(|(name, _)| *name).collect();
        ("descr", format!("'{descr}' is not supported; expected one of {}", supported.join(", ")))
    })?;
    match field(text, "fortran_order").map(python_bool) {
        Some(Some(false)) => {}
        Some(Some(true)) => {
            let problem = "True (column-major) is not supported; save C-order data, e.g. with np.ascontiguousarray";
            return Err(("fortran_order", problem.into()));
        }
        _ => return Err(("fortran_order", "missing or not True/False".into())),
    }
    let shape = field(text, "shape").and_then(tuple).ok_or(("shape", "missing or not a tuple of integers".into()))?;
    Ok(Header { dtype, shape })
}

/// The text following `'key':` in a header, if the key is there.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = text.split_once(&format!("'{key}'")).or_else(|| text.split_once(&format!("\"{key}\"")))?;
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// The content of the quoted string at the start of `text`.
fn quoted(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|&c| c == '\'' || c == '"')?;
    text.strip_prefix(quote)?.split(quote).next()
}

/// The Python boolean at the start of `text`.
fn python_bool(text: &str) -> Option<bool> {
    [("True", true), ("False", false)].into_iter().find(|(word, _)| text.starts_with(word)).map(|(_, value)| value)
}

/// The tuple of integers at the start of `text`, e.g. `(3, 4)` or `(5,)`.
fn tuple(text: &str) -> Option<Vec<usize>> {
    let (inside, _) = text.strip_prefix('(')?.split_once(')')?;
    inside.split(',').map(str::trim).filter(|d| !d.is_empty()).map(|d| d.parse().ok()).collect()
}

/// Decodes little-endian floats of `bytes` bytes (4 or 8) to f32.
fn floats(data: &[u8], bytes: usize) -> Vec<f32> {
    if bytes == 8 {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(word(c)) as f32).collect()
    } else {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(word(c))).collect()
    }
}

/// Decodes one little-endian integer of up to 8 bytes, sign-extending when `signed`.
fn int_from_le(bytes: &[u8], signed: bool) -> i128 {
    let negative = signed && bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut full = [if negative { 0xff } else { 0 }; 16];
    full.iter_mut().zip(bytes).for_each(|(to, from)| *to = *from);
    i128::from_le_bytes(full)
}

/// The label `value` found at `index`, if it fits in a u32.
fn label(path: &Path, index: usize, value: i128) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        let problem = format!("label {index} is {value}; expected a class label in 0..={}", u32::MAX);
        Error::bad_input(path, "data", problem)
    })
}

/// An error naming the first example that holds a NaN or infinite value.
fn check_finite(dataset: &Dataset, path: &Path) -> Result<()> {
    let found = match &dataset.values {
        Values::F32(values) => {
            values.iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, &v)| (i / dataset.shape.dim(), v))
        }
        Values::Mapped(mapped) => mapped.first_non_finite(),
        Values::U8(_) | Values::Rendered(_) => None,
    };
    match found {
        None => Ok(()),
        Some((example, v)) => {
            let problem = format!("example {example} contains {v}; values must be finite");
            Err(Error::bad_input(path, "data", problem))
        }
    }
}

/// Writes an NPY file of type `descr` whose elements are `values` encoded by `to_le`.
fn write_npy<T: Copy, const N: usize>(
    path: &Path,
    descr: &str,
    shape: &[usize],
    values: &[T],
    to_le: fn(T) -> [u8; N],
) -> Result<()> {
    let count = element_count(path, "shape", shape)?;
    if count != values.len() {
        let problem = format!("{} holds {count} values but {} were given", show_dims(shape), values.len());
        return Err(Error::bad_input(path, "shape", problem));
    }
    let header = header_bytes(path, descr, shape)?;
    write_atomically(path, |out| {
        out.write_all(&header)?;
        values.iter().try_for_each(|&v| out.write_all(&to_le(v)))
    })
}

/// Magic, version 1.0, header length and header text, padded with spaces to a multiple of 64 bytes and ending in a
/// newline, as numpy writes them; an error if `shape` has so many dimensions that the text exceeds 64 KiB.
fn header_bytes(path: &Path, descr: &str, shape: &[usize]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims.join("")) } else { format!("({})", dims.join(", ")) };
    let mut text = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    let unpadded = MAGIC.len() + 4 + text.len() + 1;
    text.push_str(&" ".repeat(unpadded.next_multiple_of(HEADER_ALIGNMENT) - unpadded));
    text.push('\n');
    let len = u16::try_from(text.len()).map_err(|_| {
        Error::bad_input(path, "shape", format!("{} dimensions do not fit in an NPY 1.0 header", shape.len()))
    })?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    Ok(bytes)
}

/// Writes `path` through `write` into a temporary file in the same directory, then renames it into place.
fn write_atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    crate::atomic::write_atomic_with(path, |temporary| {
        let mut out = BufWriter::new(File::create(temporary)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ExampleShape;
    use std::path::PathBuf;
    use tempfile::TempDir;

    /// An NPY file of the given version with `header` as header text and `data` after it.
    fn npy_bytes(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[major, 0]);
        if major == 1 {
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn header(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n")
    }

    fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn error_of<T: std::fmt::Debug>(result: Result<T>) -> String {
        result.unwrap_err().to_string()
    }

    fn f64_bytes(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn u8_images_round_trip_in_every_version() {
        let dir = TempDir::new().unwrap();
        let pixels: Vec<u8> = (0..18).collect();
        for (major, descr) in [(1, "|u1"), (2, "<u1"), (3, "|u1")] {
            let path = write(&dir, "u8.npy", &npy_bytes(major, &header(descr, "(2, 3, 3)"), &pixels));
            let data = load_examples(&path).unwrap();
            assert_eq!(data.shape, ExampleShape::image(1, 3, 3));
            assert_eq!(data.values, Values::U8(pixels.clone()));
        }
    }

    #[test]
    fn f32_round_trips_through_the_writer() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("codes.npy");
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.25 - 1.0).collect();
        write_npy_f32(&path, &[4, 3], &values).unwrap();
        let data = load_examples(&path).unwrap();
        assert_eq!(data.shape, ExampleShape::flat(3));
        assert_eq!(data.values, Values::F32(values));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file was renamed away");
    }

    #[test]
    fn written_header_is_aligned_and_ends_in_newline() {
        for shape in [&[5][..], &[2, 3], &[60000, 28, 28, 3]] {
            let bytes = header_bytes(Path::new("x.npy"), "<f4", shape).unwrap();
            assert_eq!(bytes.len() % HEADER_ALIGNMENT, 0);
            assert_eq!(bytes.last(), Some(&b'\n'));
            let text: String = bytes[10..].iter().map(|&b| char::from(b)).collect();
            assert_eq!(parse_header(&text).unwrap().shape, shape);
        }
    }

    #[test]
    fn f64_is_converted_to_f32() {
        let dir = TempDir::new().unwrap();
        let path = write(&dir, "f8.npy", &npy_bytes(1, &header("<f8", "(2, 2)"), &f64_bytes(&[0.5, 1.0, -2.0, 0.0])));
        assert_eq!(load_examples(&path).unwrap().values, Values::F32(vec![0.5, 1.0, -2.0, 0.0]));
    }

    #[test]
    fn channels_last_images_become_channels_first() {
        let dir = TempDir::new().unwrap();
        // One 2 x 2 RGB image; pixel p has channel values (p, 10 + p, 20 + p).
        let hwc: Vec<u8> = (0..4).flat_map(|p| [p, 10 + p, 20 + p]).collect();
        let path = write(&dir, "rgb.npy", &npy_bytes(1, &header("|u1", "(1, 2, 2, 3)"), &hwc));
        let data = load_examples(&path).unwrap();
        assert_eq!(data.shape, ExampleShape::image(3, 2, 2));
        assert_eq!(data.values, Values::U8(vec![0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]));
    }

    #[test]
    fn labels_load_from_int64_and_the_u32_writer() {
        let dir = TempDir::new().unwrap();
        let ints: Vec<u8> = [3i64, 0, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = write(&dir, "labels.npy", &npy_bytes(1, &header("<i8", "(3,)"), &ints));
        assert_eq!(load_labels(&path).unwrap(), vec![3, 0, 9]);
        let written = dir.path().join("written.npy");
        write_npy_u32(&written, &[2], &[7, 1]).unwrap();
        assert_eq!(load_labels(&written).unwrap(), vec![7, 1]);
    }

    #[test]
    fn negative_labels_are_rejected() {
        let dir = TempDir::new().unwrap();
        let path = write(&dir, "neg.npy", &npy_bytes(1, &header("|i1", "(2,)"), &[1, 0xff]));
        let message = error_of(load_labels(&path));
        assert!(message.contains("neg.npy") && message.contains("label 1 is -1"), "{message}");
    }

    #[test]
    fn writer_rejects_a_shape_that_does_not_match() {
        let dir = TempDir::new().unwrap();
        let message = error_of(write_npy_f32(&dir.path().join("bad.npy"), &[2, 3], &[0.0; 5]));
        assert!(message.contains("bad.npy") && message.contains("2 x 3 holds 6 values but 5"), "{message}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = TempDir::new().unwrap();
        let message = error_of(load_examples(&dir.path().join("absent.npy")));
        assert!(message.contains("absent.npy"), "{message}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let dir = TempDir::new().unwrap();
        let mut bytes = npy_bytes(1, &header("|u1", "(1, 1)"), &[0]);
        bytes[1] = b'X';
        let message = error_of(load_examples(&write(&dir, "magic.npy", &bytes)));
        assert!(message.contains("magic.npy") && message.contains("magic"), "{message}");
    }

    #[test]
    fn header_errors_name_the_field() {
        let dir = TempDir::new().unwrap();
        let cases = [
            ("{'descr': '<c8', 'fortran_order': False, 'shape': (1, 1), }", "descr", "'<c8' is not supported"),
            ("{'fortran_order': False, 'shape': (1, 1), }", "descr", "missing"),
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }", "fortran_order", "column-major"),
            ("{'descr': '<f4', 'shape': (1, 1), }", "fortran_order", "missing"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, x), }", "shape", "tuple of integers"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), ", "header", "dictionary in braces"),
        ];
        for (text, field, problem) in cases {
            let message = error_of(load_examples(&write(&dir, "header.npy", &npy_bytes(1, text, &[0; 4]))));
            assert!(message.contains("header.npy: ") && message.contains(field), "{message}");
            assert!(message.contains(problem), "{message}");
        }
    }

    #[test]
    fn unsupported_version_is_rejected() {
        let dir = TempDir::new().unwrap();
        let path = write(&dir, "v9.npy", &npy_bytes(9, &header("|u1", "(1, 1)"), &[0]));
        let message = error_of(load_examples(&path));
        assert!(message.contains("v9.npy") && message.contains("version 9.0"), "{message}");
    }

    #[test]
    fn truncated_data_says_expected_and_found() {
        let dir = TempDir::new().unwrap();
        let path = write(&dir, "short.npy", &npy_bytes(1, &header("<f4", "(2, 3)"), &[0; 20]));
        let message = error_of(load_examples(&path));
        assert!(message.contains("short.npy") && message.contains("expected 24 bytes, found 20"), "{message}");
    }

    #[test]
    fn huge_shape_claim_errors_without_allocating() {
        let dir = TempDir::new().unwrap();
        let path = write(&dir, "huge.npy", &npy_bytes(1, &header("<f4", "(1000000, 1000000, 1000)"), &[0; 10]));
        let message = error_of(load_examples(&path));
        assert!(message.contains("huge.npy") && message.contains("found 10"), "{message}");
        let path = write(&dir, "overflow.npy", &npy_bytes(1, &header("<f8", "(4294967296, 4294967296)"), &[0; 10]));
        let message = error_of(load_examples(&path));
        assert!(message.contains("overflow.npy") && message.contains("shape"), "{message}");
    }

    #[test]
    fn non_finite_values_name_the_example() {
        let dir = TempDir::new().unwrap();
        let nan: Vec<u8> = [0.0f32, 1.0, 2.0, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = write(&dir, "nan.npy", &npy_bytes(1, &header("<f4", "(2, 2)"), &nan));
        let message = error_of(load_examples(&path));
        assert!(message.contains("nan.npy") && message.contains("example 1 contains NaN"), "{message}");
        let inf = f64_bytes(&[f64::INFINITY, 0.0]);
        let path = write(&dir, "inf.npy", &npy_bytes(1, &header("<f8", "(2, 1)"), &inf));
        let message = error_of(load_examples(&path));
        assert!(message.contains("inf.npy") && message.contains("example 0 contains inf"), "{message}");
    }

    #[test]
    fn empty_and_scalar_arrays_are_rejected() {
        let dir = TempDir::new().unwrap();
        let message = error_of(load_examples(&write(&dir, "empty.npy", &npy_bytes(1, &header("<f4", "(0, 3)"), &[]))));
        assert!(message.contains("empty.npy") && message.contains("no examples"), "{message}");
        let message = error_of(load_examples(&write(&dir, "one.npy", &npy_bytes(1, &header("<f4", "(3,)"), &[0; 12]))));
        assert!(message.contains("one.npy") && message.contains("found 1"), "{message}");
    }
}
