//! Interpolation in latent space: the decoded path between the encodings (mu) of two examples, along a straight
//! line or along a great circle (spherical interpolation, slerp).

use candle_core::{Device, Tensor};

use super::encode::examples_tensor;
use super::trained::check_index;
use crate::data::Dataset;
use crate::model::Vae;
use crate::outputs::pictures::flat_values;
use crate::{Error, Result};

/// Below this angle (radians) between two codes, slerp is replaced by the straight line it tends to.
const PARALLEL: f64 = 1e-6;

/// The point `t` of the way from `a` to `b` on the straight line: (1 - t) a + t b.
pub fn lerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| ((1.0 - t) * f64::from(x) + t * f64::from(y)) as f32).collect()
}

/// Spherical interpolation: sin((1 - t) w) / sin w * a + sin(t w) / sin w * b, where w is the angle between `a` and
/// `b`. It keeps the norm of codes drawn from a Gaussian prior typical along the way; for (nearly) parallel or zero
/// vectors it is the straight line. t = 0 gives `a` and t = 1 gives `b` exactly.
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(a) * norm(b));
    let angle = cosine.clamp(-1.0, 1.0).acos();
    if !cosine.is_finite() || angle < PARALLEL || (std::f64::consts::PI - angle) < PARALLEL {
        return lerp(a, b, t);
    }
    let (wa, wb) = (((1.0 - t) * angle).sin() / angle.sin(), (t * angle).sin() / angle.sin());
    a.iter().zip(b).map(|(&x, &y)| (wa * f64::from(x) + wb * f64::from(y)) as f32).collect()
}

/// `steps` evenly spaced points from `a` to `b` (both included), one after another.
pub fn interpolation_path(a: &[f32], b: &[f32], steps: usize, spherical: bool) -> Result<Vec<f32>> {
    if steps < 2 {
        return Err(Error::invalid_setting("steps", format!("{steps} is too few; the path needs at least 2 points")));
    }
    let point = if spherical { slerp } else { lerp };
    Ok((0..steps).flat_map(|i| point(a, b, i as f64 / (steps - 1) as f64)).collect())
}

/// A decoded interpolation between two examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpolation {
    /// The two input examples, one after the other.
    pub inputs: Vec<f32>,
    /// The codes along the path, `steps x latent_dim`, from mu of the first input to mu of the second.
    pub latents: Vec<f32>,
    /// The means of p(x|z) decoded from each code, one example after another.
    pub decoded: Vec<f32>,
}

impl Interpolation {
    /// One row of pictures: the first input, the decoded path, the second input.
    pub fn row(&self) -> Vec<f32> {
        let half = self.inputs.len() / 2;
        [&self.inputs[..half], &self.decoded, &self.inputs[half..]].concat()
    }
}

/// Encodes examples `from` and `to` of `dataset`, and decodes `steps` points of the path between their means.
pub fn interpolate(
    vae: &Vae,
    dataset: &Dataset,
    (from, to): (usize, usize),
    steps: usize,
    spherical: bool,
    device: &Device,
) -> Result<Interpolation> {
    vae.check_input(&dataset.shape, &dataset.source)?;
    check_index(dataset, from, "from")?;
    check_index(dataset, to, "to")?;
    let x = examples_tensor(dataset, &[from, to], device)?;
    let mu = flat_values(&vae.encode(&x)?.mu)?;
    let (a, b) = mu.split_at(mu.len() / 2);
    let latents = interpolation_path(a, b, steps, spherical)?;
    let z = Tensor::from_slice(&latents, (steps, a.len()), device)?;
    Ok(Interpolation { inputs: flat_values(&x)?, decoded: flat_values(&vae.decode_mean(&z)?)?, latents })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn both_paths_start_and_end_at_the_codes() {
        let (a, b) = ([1.0, 0.0, 2.0], [0.0, -3.0, 1.0]);
        for spherical in [false, true] {
            let path = interpolation_path(&a, &b, 5, spherical).unwrap();
            assert_eq!(path.len(), 15);
            assert_eq!(&path[..3], &a);
            assert!(close(&path[12..], &b), "{path:?}");
        }
    }

    #[test]
    fn slerp_follows_the_circle_and_lerp_the_chord() {
        let (a, b) = ([1.0, 0.0], [0.0, 1.0]);
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert!(close(&slerp(&a, &b, 0.5), &[half, half]));
        assert!(close(&lerp(&a, &b, 0.5), &[0.5, 0.5]));
        assert!(close(&slerp(&a, &a, 0.3), &a), "parallel codes fall back to the line");
        assert!(close(&slerp(&[0.0, 0.0], &b, 0.5), &[0.0, 0.5]), "a zero code falls back to the line");
    }

    #[test]
    fn too_few_steps_is_an_error() {
        let message = interpolation_path(&[0.0], &[1.0], 1, false).unwrap_err().to_string();
        assert!(message.contains("steps") && message.contains("at least 2"), "{message}");
    }
}
