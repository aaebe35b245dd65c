//! Large raw IDX and NPY files are memory-mapped: examples, subsets and splits read the same values as the in-memory
//! load, without copying the data. A map threshold of 0 stands in for "larger than 1 GiB".

use std::path::{Path, PathBuf};

use elbo::data::{self, idx, npy, DataSpec, Dataset, Values};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter().for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
    bytes.extend_from_slice(data);
    bytes
}

fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn pixels(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 256) as u8).collect()
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32 * 0.125 - 3.0).to_le_bytes()).collect()
}

fn examples(data: &Dataset) -> Vec<Vec<f32>> {
    (0..data.len())
        .map(|i| {
            let mut out = Vec::new();
            data.push_example(i, &mut out);
            out
        })
        .collect()
}

fn is_mapped(data: &Dataset) -> bool {
    matches!(data.values, Values::Mapped(_))
}

/// A loader taking a map threshold.
type Loader = fn(&Path, u64) -> elbo::Result<Dataset>;

/// The four files of the tests: raw IDX images, NPY bytes, NPY floats (grey images) and NPY floats (flat).
fn files(dir: &TempDir) -> Vec<(PathBuf, Loader)> {
    vec![
        (write(dir, "images-idx3-ubyte", &idx_bytes(&[10, 3, 4], &pixels(120))), idx::load_images_with_threshold),
        (write(dir, "bytes.npy", &npy_bytes("|u1", "(10, 3, 4)", &pixels(120))), npy::load_examples_with_threshold),
        (write(dir, "floats.npy", &npy_bytes("<f4", "(10, 2, 3)", &floats(60))), npy::load_examples_with_threshold),
        (write(dir, "flat.npy", &npy_bytes("<f4", "(10, 6)", &floats(60))), npy::load_examples_with_threshold),
    ]
}

#[test]
fn mapped_examples_equal_the_in_memory_load() {
    let dir = TempDir::new().unwrap();
    for (path, load) in files(&dir) {
        let mapped = load(&path, 0).unwrap();
        let memory = load(&path, u64::MAX).unwrap();
        assert!(is_mapped(&mapped), "{}", path.display());
        assert!(matches!(memory.values, Values::U8(_) | Values::F32(_)), "{}", path.display());
        assert_eq!((mapped.shape, mapped.len(), mapped.values.len()), (memory.shape, 10, memory.values.len()));
        assert_eq!(examples(&mapped), examples(&memory), "{}", path.display());
        assert_eq!(mapped.value_range(), memory.value_range());
        let binary = |d: &Dataset| data::binarized(d, data::Binarization::Dynamic, 3).values;
        assert_eq!(binary(&mapped), binary(&memory));
        let subset = mapped.subset(&[7, 2, 9]);
        assert!(is_mapped(&subset), "a subset of mapped data shares the map");
        assert_eq!(examples(&subset), examples(&memory.subset(&[7, 2, 9])));
        assert_eq!(examples(&subset.subset(&[2, 0])), examples(&memory.subset(&[9, 7])));
        assert_eq!(subset.value_range(), memory.subset(&[7, 2, 9]).value_range());
    }
}

#[test]
fn the_default_threshold_keeps_small_files_in_memory() {
    let dir = TempDir::new().unwrap();
    for (path, _) in files(&dir) {
        let data = data::load_file(&path, None).unwrap();
        assert!(matches!(data.values, Values::U8(_) | Values::F32(_)), "{}", path.display());
        let at_size = data.values.len() as u64 * if matches!(data.values, Values::U8(_)) { 1 } else { 4 };
        let load = if path.extension().is_some() {
            npy::load_examples_with_threshold
        } else {
            idx::load_images_with_threshold
        };
        assert!(!is_mapped(&load(&path, at_size + 1).unwrap()), "one byte short of the threshold");
        assert!(is_mapped(&load(&path, at_size).unwrap()), "exactly the threshold maps");
    }
}

#[test]
fn a_single_mapped_file_is_split_without_copying() {
    let dir = TempDir::new().unwrap();
    for (path, load) in files(&dir) {
        let spec = DataSpec::Path { path: path.clone(), label_column: None };
        let splits = data::source::load_with_threshold(&spec, 0.3, 5, 0).unwrap();
        let memory = data::source::load_with_threshold(&spec, 0.3, 5, u64::MAX).unwrap();
        assert!(splits.test_is_validation && is_mapped(&splits.train) && is_mapped(&splits.test));
        assert_eq!((splits.train.len(), splits.test.len()), (7, 3));
        assert_eq!(examples(&splits.train), examples(&memory.train), "{}", path.display());
        assert_eq!(examples(&splits.test), examples(&memory.test), "{}", path.display());
        let mut all = [examples(&splits.train), examples(&splits.test)].concat();
        let mut file = examples(&load(&path, u64::MAX).unwrap());
        let key = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        all.sort_by_key(key);
        file.sort_by_key(key);
        assert_eq!(all, file, "train and validation together hold every example once");
    }
}

#[test]
fn a_mapped_directory_loads_its_train_and_test_files() {
    let dir = TempDir::new().unwrap();
    write(&dir, "train.npy", &npy_bytes("|u1", "(4, 2, 3)", &pixels(24)));
    write(&dir, "test.npy", &npy_bytes("|u1", "(2, 2, 3)", &pixels(12)));
    let spec = DataSpec::Path { path: dir.path().to_path_buf(), label_column: None };
    let splits = data::source::load_with_threshold(&spec, 0.1, 1, 0).unwrap();
    assert!(!splits.test_is_validation && is_mapped(&splits.train) && is_mapped(&splits.test));
    assert_eq!((splits.train.len(), splits.test.len()), (4, 2));
}

#[test]
fn bad_mapped_files_are_errors_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let short = write(&dir, "short-idx3-ubyte", &idx_bytes(&[2, 3, 4], &pixels(20)));
    let message = idx::load_images_with_threshold(&short, 0).unwrap_err().to_string();
    assert!(message.contains("short-idx3-ubyte") && message.contains("expected 24 bytes, found 20"), "{message}");
    let long = write(&dir, "long.npy", &npy_bytes("<f4", "(2, 3)", &floats(7)));
    let message = npy::load_examples_with_threshold(&long, 0).unwrap_err().to_string();
    assert!(message.contains("long.npy") && message.contains("longer than its header"), "{message}");
    let short = write(&dir, "short.npy", &npy_bytes("|u1", "(2, 3)", &pixels(5)));
    let message = npy::load_examples_with_threshold(&short, 0).unwrap_err().to_string();
    assert!(message.contains("short.npy") && message.contains("truncated"), "{message}");
    let mut nan = floats(6);
    nan[16..20].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = write(&dir, "nan.npy", &npy_bytes("<f4", "(3, 2)", &nan));
    let message = npy::load_examples_with_threshold(&path, 0).unwrap_err().to_string();
    assert!(message.contains("nan.npy") && message.contains("example 2 contains NaN"), "{message}");
    let empty = write(&dir, "empty.npy", &npy_bytes("|u1", "(0, 3)", &[]));
    let message = npy::load_examples_with_threshold(&empty, 0).unwrap_err().to_string();
    assert!(message.contains("empty.npy") && message.contains("no examples"), "{message}");
}

#[test]
fn channels_last_gzip_and_f8_files_load_in_memory_whatever_the_threshold() {
    let dir = TempDir::new().unwrap();
    let rgb = write(&dir, "rgb.npy", &npy_bytes("|u1", "(2, 2, 2, 3)", &pixels(24)));
    assert!(matches!(npy::load_examples_with_threshold(&rgb, 0).unwrap().values, Values::U8(_)));
    let f8: Vec<u8> = (0..4).flat_map(|i| f64::from(i).to_le_bytes()).collect();
    let f8 = write(&dir, "f8.npy", &npy_bytes("<f8", "(2, 2)", &f8));
    assert!(matches!(npy::load_examples_with_threshold(&f8, 0).unwrap().values, Values::F32(_)));
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &idx_bytes(&[2, 3, 4], &pixels(24))).unwrap();
    let gz = write(&dir, "images-idx3-ubyte.gz", &encoder.finish().unwrap());
    assert!(matches!(idx::load_images_with_threshold(&gz, 0).unwrap().values, Values::U8(_)));
}
