//! The LPIPS network of `scripts/make_lpips_fixture.py`'s formula weights, as tensors under the `lpips` package's
//! names: the fixture's network (tests/lpips.rs), and a small stand-in for the pretrained one where a training test
//! needs a file.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

/// `(name, inputs, outputs)` of the trunk's convolutions, in the fixture script's order.
const CONVS: [(&str, usize, usize); 13] = [
    ("net.slice1.0", 3, 64),
    ("net.slice1.2", 64, 64),
    ("net.slice2.5", 64, 128),
    ("net.slice2.7", 128, 128),
    ("net.slice3.10", 128, 256),
    ("net.slice3.12", 256, 256),
    ("net.slice3.14", 256, 256),
    ("net.slice4.17", 256, 512),
    ("net.slice4.19", 512, 512),
    ("net.slice4.21", 512, 512),
    ("net.slice5.24", 512, 512),
    ("net.slice5.26", 512, 512),
    ("net.slice5.28", 512, 512),
];
/// Channels of the five lin layers.
const LINS: [usize; 5] = [64, 128, 256, 512, 512];

/// `count` values of a formula of the value index, computed in f64 and rounded to f32 (as the script does).
fn formula(count: usize, value: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..count).map(|i| value(i as f64) as f32).collect()
}

/// The network of the fixture script's formula weights, as tensors under the `lpips` package's names.
pub fn formula_network() -> HashMap<String, Tensor> {
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut t = 0usize;
    for (name, inputs, outputs) in CONVS {
        let offset = 1.3 * t as f64;
        let scale = 2.0 / ((inputs * 9) as f64).sqrt();
        let weight = formula(outputs * inputs * 9, |i| scale * (0.37 * i + offset).sin());
        let bias_offset = 1.3 * (t + 1) as f64;
        let bias = formula(outputs, |i| 0.01 * (0.11 * i + bias_offset).cos());
        tensors.insert(format!("{name}.weight"), Tensor::from_vec(weight, (outputs, inputs, 3, 3), &device).unwrap());
        tensors.insert(format!("{name}.bias"), Tensor::from_vec(bias, outputs, &device).unwrap());
        t += 2;
    }
    for (k, channels) in LINS.into_iter().enumerate() {
        let offset = 1.3 * t as f64;
        let weight = formula(channels, |i| 0.05 * (1.0 + (0.29 * i + offset).sin()));
        tensors
            .insert(format!("lin{k}.model.1.weight"), Tensor::from_vec(weight, (1, channels, 1, 1), &device).unwrap());
        t += 1;
    }
    tensors
}
