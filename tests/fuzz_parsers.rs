//! Property tests of every reader of untrusted files: IDX, NPY, CSV, image folders, `config.json`, safetensors
//! weights and checkpoints, and the codes files `decode` reads. Each starts from a valid file, applies random
//! mutations (bytes changed, inserted or removed, the file cut short), and checks that the reader does not panic,
//! that no single allocation on the reading thread exceeds a stated bound (sized by the file, not by what it
//! claims), and that it either returns an error or a read whose parts agree with each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device};
use elbo::data::{csv, idx, npy, Dataset, ExampleShape, Values};
use elbo::model::{Vae, VaeConfig};
use elbo::outputs::RunConfig;
use proptest::prelude::*;

/// The system allocator, noting the largest single request of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(pointer, layout, new_size) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// The bound on one allocation while reading a file of `len` bytes: 16 bytes per byte of file (a byte can become an
/// f32, in a vector that may have doubled), plus 1 MiB for fixed buffers.
fn bound(len: usize) -> usize {
    16 * len + (1 << 20)
}

/// One change to a file's bytes; positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Writes a little-endian u32 (a length, a dimension) over four bytes.
    Word(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![Just(0u32), Just(1), Just(255), Just(u32::MAX), Just(1 << 31), any::<u32>()];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, count)| Mutation::Remove(at, count)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), interesting).prop_map(|(at, word)| Mutation::Word(at, word)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len().max(1);
        match mutation {
            Mutation::Set(at, byte) if !bytes.is_empty() => bytes[at % len] = *byte,
            Mutation::Insert(at, new) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove(at, count) if !bytes.is_empty() => {
                let at = at % len;
                bytes.drain(at..(at + count).min(bytes.len()));
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
            Mutation::Word(at, word) if bytes.len() >= 4 => {
                let at = at % (bytes.len() - 3);
                bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Writes `bytes` to `name` in `dir`, runs `read` on it, and checks the allocation bound; returns the result.
fn read_with_bound<T>(dir: &Path, name: &str, bytes: &[u8], limit: usize, read: impl FnOnce(&Path) -> T) -> T {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    LARGEST.with(|largest| largest.set(0));
    let result = read(&path);
    let largest = LARGEST.with(Cell::get);
    assert!(largest <= limit, "{name}: one allocation of {largest} bytes reading a file of {} bytes", bytes.len());
    result
}

/// A dataset's parts agree: as many values as examples times values per example, a label per example.
fn check_dataset(data: &Dataset) {
    let count = match &data.values {
        Values::U8(values) => values.len(),
        Values::F32(values) => values.len(),
        Values::Mapped(mapped) => mapped.len(),
        Values::Rendered(_) => return,
    };
    assert_eq!(count, data.len() * data.shape.dim(), "{}", data.source);
    if let Some(labels) = &data.labels {
        assert_eq!(labels.len(), data.len());
    }
}

fn cases(count: u32) -> ProptestConfig {
    ProptestConfig { cases: count, failure_persistence: None, ..ProptestConfig::default() }
}

/// An IDX image file: 3 images of 4 x 5 bytes.
fn idx_file() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, 3];
    for dim in [3u32, 4, 5] {
        bytes.extend(dim.to_be_bytes());
    }
    bytes.extend((0..60u8).map(|v| v * 4));
    bytes
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn idx_files(changes in mutations(), mapped in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = mutate(idx_file(), &changes);
        let threshold = if mapped { 0 } else { u64::MAX };
        if let Ok(data) = read_with_bound(dir.path(), "images-idx3-ubyte", &bytes, bound(bytes.len()), |path| {
            idx::load_images_with_threshold(path, threshold)
        }) {
            check_dataset(&data);
        }
        if let Ok(labels) = read_with_bound(dir.path(), "labels-idx1-ubyte", &bytes, bound(bytes.len()), idx::load_labels) {
            prop_assert!(labels.len() <= bytes.len());
        }
    }

    #[test]
    fn npy_files(changes in mutations(), floats in any::<bool>(), mapped in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let valid = dir.path().join("valid.npy");
        if floats {
            npy::write_npy_f32(&valid, &[3, 4], &(0..12).map(|v| v as f32 / 7.0).collect::<Vec<_>>()).unwrap();
        } else {
            npy::write_npy_u32(&valid, &[6], &[1, 2, 3, 4, 5, 6]).unwrap();
        }
        let bytes = mutate(std::fs::read(&valid).unwrap(), &changes);
        let threshold = if mapped { 0 } else { u64::MAX };
        if let Ok(data) = read_with_bound(dir.path(), "x.npy", &bytes, bound(bytes.len()), |path| {
            npy::load_examples_with_threshold(path, threshold)
        }) {
            check_dataset(&data);
        }
        if let Ok(labels) = read_with_bound(dir.path(), "y.npy", &bytes, bound(bytes.len()), npy::load_labels) {
            prop_assert!(labels.len() <= bytes.len());
        }
        if let Ok(codes) = read_with_bound(dir.path(), "codes.npy", &bytes, bound(bytes.len()), |path| {
            elbo::latent::codes::read_latents(path, 4)
        }) {
            prop_assert_eq!(codes.len() % 4, 0);
        }
    }

    #[test]
    fn csv_files(changes in mutations(), label_column in proptest::option::of(0usize..4)) {
        let dir = tempfile::tempdir().unwrap();
        let text = "a,b,\"c, quoted\",label\n0.5,1,2e-1,3\n\n0,255,7,1\r\n-1.5,0.25,3,0\n";
        let bytes = mutate(text.as_bytes().to_vec(), &changes);
        if let Ok(data) = read_with_bound(dir.path(), "x.csv", &bytes, bound(bytes.len()), |path| {
            csv::load_csv(path, label_column)
        }) {
            check_dataset(&data);
        }
    }

    #[test]
    fn config_files(changes in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let config = RunConfig {
            elbo_version: "test".into(),
            data: elbo::data::DataSpec::Sprites(Default::default()),
            validation_fraction: 0.1,
            model: VaeConfig::default(),
            training: Default::default(),
            threads: 1,
            device: "cpu".into(),
        };
        let bytes = mutate(serde_json::to_vec_pretty(&config).unwrap(), &changes);
        let read = read_with_bound(dir.path(), "config.json", &bytes, bound(bytes.len()), |path| {
            elbo::outputs::read_json::<RunConfig>(path).and_then(|config| config.validate().map(|()| config))
        });
        if let Ok(config) = read {
            // a configuration that validates describes a model of bounded size
            prop_assert!(config.model.input_shape.dim() > 0 && config.model.latent_dim > 0);
        }
    }
}

/// A small model's config and its weights file.
fn small_model(dir: &Path) -> (VaeConfig, Vec<u8>) {
    let config = VaeConfig {
        input_shape: ExampleShape::flat(6),
        latent_dim: 2,
        encoder_hidden: vec![5],
        decoder_hidden: vec![5],
        ..VaeConfig::default()
    };
    let (_, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
    let path = dir.join("valid.safetensors");
    varmap.save(&path).unwrap();
    (config, std::fs::read(path).unwrap())
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn safetensors_weights_and_checkpoints(changes in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let (config, bytes) = small_model(dir.path());
        let bytes = mutate(bytes, &changes);
        let _ = read_with_bound(dir.path(), "model.safetensors", &bytes, bound(bytes.len()), |path| {
            Vae::load(&config, path, &Device::Cpu)
        });
        let (_, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let _ = read_with_bound(dir.path(), "checkpoint.safetensors", &bytes, bound(bytes.len()), |path| {
            elbo::outputs::load_checkpoint(path, &varmap, &Device::Cpu)
        });
    }
}

/// A 6 x 4 PNG or JPEG.
fn image_file(jpeg: bool) -> Vec<u8> {
    let image = image::RgbImage::from_fn(6, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 60) as u8, 128]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    let format = if jpeg { image::ImageFormat::Jpeg } else { image::ImageFormat::Png };
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn image_folders(changes in mutations(), jpeg in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("images");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("a.png"), image_file(false)).unwrap();
        let bytes = mutate(image_file(jpeg), &changes);
        // the decoder's own limit (512 MiB per image) bounds what a header may claim
        let limit = 512 << 20;
        let name = if jpeg { "images/b.jpg" } else { "images/b.png" };
        let read = read_with_bound(dir.path(), name, &bytes, limit, |_| {
            elbo::data::image_folder::load(&elbo::data::image_folder::ImageFolderConfig::new(&folder))
        });
        if let Ok(images) = read {
            check_dataset(&images.train);
            prop_assert_eq!(images.train.len(), 2);
        }
    }
}
