//! Seeded parameter initialisation, so that the same seed gives the same model bit for bit.
//!
//! Linear and convolutional layers follow PyTorch's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
//! with `fan_in = dims[1] x kernel height x kernel width` as PyTorch computes it (for a transposed convolution, whose
//! weight is `[in, out, k, k]`, that is out x k x k). Other
//! parameters (a decoder's learned log-variance) keep their constant initial value. Each parameter draws from its
//! own stream, seeded from the run seed and the parameter's name, so adding a parameter never changes the others.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Re-initialises every `*.weight` / `*.bias` of `varmap` from `seed`.
pub fn initialize(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap.data().lock().map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    for (name, var) in vars.iter() {
        let Some(fan_in) = fan_in(name, var, &vars) else { continue };
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut rng = parameter_rng(seed, name);
        let values: Vec<f64> = (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect();
        let tensor = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&tensor)?;
    }
    Ok(())
}

/// The random stream of the parameter `name` under the run seed `seed`: its own, so that drawing one parameter never
/// shifts another's values.
pub(crate) fn parameter_rng(seed: u64, name: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ name_hash(name))
}

/// The fan-in of a layer's weight (`[out, in]` or `[out, in, k, k]`) or of its bias (read from the sibling weight).
fn fan_in(name: &str, var: &Var, vars: &std::collections::HashMap<String, Var>) -> Option<usize> {
    if name.ends_with(".weight") {
        return weight_fan_in(var);
    }
    let layer = name.strip_suffix(".bias")?;
    vars.get(&format!("{layer}.weight")).and_then(weight_fan_in)
}

/// dims[1] times the kernel's size, for weights of rank 2 (linear) or 4 (convolution).
fn weight_fan_in(weight: &Var) -> Option<usize> {
    match weight.dims() {
        [_, fan_in] => Some(*fan_in),
        [_, channels, height, width] => Some(channels * height * width),
        _ => None,
    }
}

/// FNV-1a: a stable hash of a parameter name (std's hasher may change between Rust versions).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}
