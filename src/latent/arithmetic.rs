//! Latent arithmetic, controllable generation: the attribute vector mean(mu | class B) - mean(mu | class A), added
//! to the codes of class-A examples and decoded (turning 1s into 7s, or squares into hearts).

use candle_core::{Device, Tensor};

use super::encode::{encode_dataset, Encodings};
use crate::data::Dataset;
use crate::model::Vae;
use crate::outputs::pictures::flat_values;
use crate::{Error, Result};

/// The mean code of the examples labelled `label`; an error when there are none.
pub fn class_mean(encodings: &Encodings, labels: &[u32], label: u32) -> Result<Vec<f32>> {
    let mut sum = vec![0f64; encodings.latent_dim];
    let mut count = 0usize;
    for index in (0..encodings.len()).filter(|&i| labels[i] == label) {
        sum.iter_mut().zip(encodings.mu_row(index)).for_each(|(s, &v)| *s += f64::from(v));
        count += 1;
    }
    if count == 0 {
        let problem = format!("no example has label {label}, so it has no mean code");
        return Err(Error::invalid_setting("label", problem));
    }
    Ok(sum.into_iter().map(|s| (s / count as f64) as f32).collect())
}

/// The attribute vector from class `from` to class `to`: mean(mu | to) - mean(mu | from).
pub fn attribute_vector(encodings: &Encodings, labels: &[u32], from: u32, to: u32) -> Result<Vec<f32>> {
    let (a, b) = (class_mean(encodings, labels, from)?, class_mean(encodings, labels, to)?);
    Ok(b.iter().zip(&a).map(|(y, x)| y - x).collect())
}

/// Class-A examples, their reconstructions, and the same codes moved by the attribute vector, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Arithmetic {
    /// mean(mu | B) - mean(mu | A).
    pub vector: Vec<f32>,
    /// The class-A examples shown (indices into the data).
    pub indices: Vec<usize>,
    /// Those examples, one after another.
    pub inputs: Vec<f32>,
    /// Their reconstructions, decoded from mu.
    pub reconstructions: Vec<f32>,
    /// Decoded from mu + vector.
    pub shifted: Vec<f32>,
}

impl Arithmetic {
    /// Three rows of pictures: inputs, reconstructions, shifted.
    pub fn rows(&self) -> Vec<f32> {
        [&self.inputs[..], &self.reconstructions, &self.shifted].concat()
    }
}

/// Computes the attribute vector from class `from` to class `to` over all of `dataset` (whose classes are
/// `labels`, encoded in batches of `batch_size`), and applies it to the first `count` examples of class `from`.
pub fn latent_arithmetic(
    vae: &Vae,
    dataset: &Dataset,
    labels: &[u32],
    (from, to): (u32, u32),
    count: usize,
    batch_size: usize,
    device: &Device,
) -> Result<Arithmetic> {
    if labels.len() != dataset.len() {
        let problem = format!("{} labels for {} examples", labels.len(), dataset.len());
        return Err(Error::bad_input(&dataset.source, "labels", problem));
    }
    let encodings = encode_dataset(vae, dataset, batch_size, device)?;
    let vector = attribute_vector(&encodings, labels, from, to)?;
    let indices: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == from).take(count.max(1)).collect();
    let mu: Vec<f32> = indices.iter().flat_map(|&i| encodings.mu_row(i).to_vec()).collect();
    let moved: Vec<f32> =
        mu.chunks(vector.len()).flat_map(|code| code.iter().zip(&vector).map(|(m, v)| m + v)).collect();
    let decode = |codes: &[f32]| -> Result<Vec<f32>> {
        let z = Tensor::from_slice(codes, (indices.len(), vector.len()), device)?;
        flat_values(&vae.decode_mean(&z)?)
    };
    let mut inputs = Vec::with_capacity(indices.len() * dataset.shape.dim());
    indices.iter().for_each(|&i| dataset.push_example(i, &mut inputs));
    Ok(Arithmetic { reconstructions: decode(&mu)?, shifted: decode(&moved)?, vector, indices, inputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_joins_the_class_means() {
        let encodings =
            Encodings { latent_dim: 2, mu: vec![0.0, 0.0, 2.0, 0.0, 1.0, 4.0], log_var: vec![0.0; 6], labels: None };
        let labels = [0, 0, 1];
        assert_eq!(class_mean(&encodings, &labels, 0).unwrap(), [1.0, 0.0]);
        assert_eq!(attribute_vector(&encodings, &labels, 0, 1).unwrap(), [0.0, 4.0]);
        let message = attribute_vector(&encodings, &labels, 0, 7).unwrap_err().to_string();
        assert!(message.contains("label 7"), "{message}");
    }
}
