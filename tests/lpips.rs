//! LPIPS held to the `lpips` package's own outputs: `tests/fixtures/lpips/expected.safetensors`, written by
//! `scripts/make_lpips_fixture.py` from the package (0.1.4, VGG16, version 0.1) with the weights set by a formula
//! that `tests/common/lpips_network.rs` writes again, so the fixture holds only the images, the distances and one gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use elbo::model::Lpips;
use elbo::Error;

#[path = "common/lpips_network.rs"]
mod lpips_network;
use lpips_network::formula_network;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lpips/expected.safetensors")
}

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(), &Device::Cpu).unwrap()
}

fn network() -> Lpips {
    Lpips::new(VarBuilder::from_tensors(formula_network(), DType::F32, &Device::Cpu)).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1().unwrap()
}

/// The largest difference between `actual` and `expected`, over the largest expected magnitude.
fn relative_difference(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    actual.iter().zip(expected).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max) / scale
}

/// The distances of three image pairs, and the gradient of their sum with respect to the second images, are the
/// `lpips` package's to within f32 rounding through sixteen layers.
#[test]
fn lpips_matches_the_lpips_package() {
    let fixture = fixture();
    let lpips = network();
    let y = Var::from_tensor(&fixture["y"]).unwrap();
    let distance = lpips.distance(&fixture["x"], y.as_tensor()).unwrap();
    let (actual, expected) = (values(&distance), values(&fixture["distance"]));
    // measured: 3e-5 of the largest distance
    assert!(relative_difference(&actual, &expected) < 2e-4, "{actual:?} vs {expected:?}");
    // the pairs differ more and more: a distance that ignores the images would not keep their order
    assert!(expected.windows(2).all(|pair| pair[0] < pair[1]), "{expected:?}");
    let gradient = distance.sum_all().unwrap().backward().unwrap().remove(y.as_tensor()).unwrap();
    let difference = relative_difference(&values(&gradient), &values(&fixture["gradient"]));
    // measured: 9e-5; candle's own max_pool2d backward (see `max_pool` in src/model/lpips.rs) left it 0.74 off
    assert!(difference < 5e-4, "gradient off by {difference} of its largest value");
}

#[test]
fn an_image_is_at_distance_zero_from_itself_and_the_distance_is_symmetric() {
    let fixture = fixture();
    let lpips = network();
    let (x, y) = (&fixture["x"], &fixture["y"]);
    assert!(values(&lpips.distance(x, x).unwrap()).iter().all(|&d| d == 0.0));
    let (forward, backward) = (lpips.distance(x, y).unwrap(), lpips.distance(y, x).unwrap());
    assert!(relative_difference(&values(&forward), &values(&backward)) < 1e-5);
}

#[test]
fn images_too_small_or_not_rgb_are_refused() {
    let lpips = network();
    let small = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(lpips.distance(&small, &small), Err(Error::ShapeMismatch(_))));
    let grey = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(lpips.distance(&grey, &grey), Err(Error::ShapeMismatch(_))));
}

/// A file missing a lin layer, or with a misshapen weight, is an error naming the file and the tensor.
#[test]
fn a_wrong_weights_file_names_the_file_and_the_tensor() {
    let dir = std::env::temp_dir().join(format!("elbo-lpips-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut missing = formula_network();
    missing.remove("lin3.model.1.weight");
    let mut misshapen = formula_network();
    misshapen.insert("net.slice2.5.weight".into(), Tensor::zeros((128, 64, 1, 1), DType::F32, &Device::Cpu).unwrap());
    for (case, tensors, tensor) in
        [("missing", missing, "lin3.model.1.weight"), ("misshapen", misshapen, "net.slice2.5")]
    {
        let path = dir.join(format!("{case}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let message = Lpips::load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains(tensor), "{case}: {message}");
    }
    let good = dir.join("good.safetensors");
    candle_core::safetensors::save(&formula_network(), &good).unwrap();
    let fixture = fixture();
    let loaded = Lpips::load(&good, &Device::Cpu).unwrap().distance(&fixture["x"], &fixture["y"]).unwrap();
    assert_eq!(values(&loaded), values(&network().distance(&fixture["x"], &fixture["y"]).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}
