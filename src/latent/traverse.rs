//! Latent traversals, the standard disentanglement picture: for one seed example, sweep each chosen latent dimension
//! over [-range, range] with the others fixed at the seed's mu, one row per dimension, the dimensions ordered by
//! their KL (the most used first).

use std::str::FromStr;

use candle_core::{Device, Tensor};

use super::encode::{encode_dataset, Encodings};
use super::trained::check_index;
use crate::data::Dataset;
use crate::model::Vae;
use crate::outputs::pictures::flat_values;
use crate::{Error, Result};

/// Which latent dimensions to sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimensions {
    /// Every dimension.
    All,
    /// These dimensions (0-based).
    List(Vec<usize>),
}

impl FromStr for Dimensions {
    type Err = Error;

    /// `all`, or a comma-separated list such as `0,3,7`.
    fn from_str(text: &str) -> Result<Self> {
        if text.trim() == "all" {
            return Ok(Dimensions::All);
        }
        let parsed: std::result::Result<Vec<usize>, _> = text.split(',').map(|d| d.trim().parse()).collect();
        parsed.map(Dimensions::List).map_err(|_| {
            Error::invalid_setting("dims", format!("`{text}` is neither `all` nor a list of dimensions such as 0,3,7"))
        })
    }
}

impl Dimensions {
    /// The dimensions picked out of `latent_dim`, without repeats; an error names one that does not exist.
    pub fn resolve(&self, latent_dim: usize) -> Result<Vec<usize>> {
        let Dimensions::List(list) = self else { return Ok((0..latent_dim).collect()) };
        if let Some(bad) = list.iter().find(|&&d| d >= latent_dim) {
            let problem = format!("dimension {bad} does not exist; the model has dimensions 0 to {}", latent_dim - 1);
            return Err(Error::invalid_setting("dims", problem));
        }
        let mut unique: Vec<usize> = Vec::with_capacity(list.len());
        for &d in list {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        Ok(unique)
    }
}

/// What to traverse.
#[derive(Debug, Clone, PartialEq)]
pub struct TraversalSettings {
    /// The example whose code is the starting point.
    pub seed_index: usize,
    /// The dimensions swept.
    pub dimensions: Dimensions,
    /// Each dimension goes from -range to +range.
    pub range: f64,
    /// Points per sweep, ends included.
    pub steps: usize,
}

impl Default for TraversalSettings {
    /// Example 0, every dimension, -3 to 3 in 9 steps.
    fn default() -> Self {
        TraversalSettings { seed_index: 0, dimensions: Dimensions::All, range: 3.0, steps: 9 }
    }
}

/// One swept dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraversalRow {
    /// The latent dimension.
    pub dimension: usize,
    /// Its KL to the prior, averaged over the data: how much the model uses it.
    pub kl: f32,
}

/// A decoded traversal: `rows.len()` rows of `steps` examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Traversal {
    /// The dimensions in the order of the rows, highest KL first.
    pub rows: Vec<TraversalRow>,
    /// Points per row.
    pub steps: usize,
    /// The codes, one per picture, row by row.
    pub latents: Vec<f32>,
    /// The decoded means of p(x|z), one example per code.
    pub decoded: Vec<f32>,
}

/// The codes of a traversal: for each of `dimensions` in turn, `steps` copies of `seed` whose value in that
/// dimension runs evenly from -range to +range.
pub fn traversal_latents(seed: &[f32], dimensions: &[usize], range: f64, steps: usize) -> Result<Vec<f32>> {
    if !(range > 0.0 && range.is_finite()) {
        return Err(Error::invalid_setting("range", format!("must be a positive number, got {range}")));
    }
    if steps < 2 {
        return Err(Error::invalid_setting("steps", format!("{steps} is too few; a sweep needs at least 2 points")));
    }
    let mut latents = Vec::with_capacity(dimensions.len() * steps * seed.len());
    for &dimension in dimensions {
        for step in 0..steps {
            let mut code = seed.to_vec();
            code[dimension] = (-range + 2.0 * range * step as f64 / (steps - 1) as f64) as f32;
            latents.extend(code);
        }
    }
    Ok(latents)
}

/// `dimensions` with their KL from `kl` (one value per latent dimension), the highest KL first.
pub fn order_by_kl(dimensions: &[usize], kl: &[f32]) -> Vec<TraversalRow> {
    let mut rows: Vec<TraversalRow> = dimensions.iter().map(|&d| TraversalRow { dimension: d, kl: kl[d] }).collect();
    rows.sort_by(|a, b| b.kl.total_cmp(&a.kl).then(a.dimension.cmp(&b.dimension)));
    rows
}

/// Traverses the latent space of `vae` around example `settings.seed_index` of `dataset`; the KL that orders the
/// rows is averaged over all of `dataset` (encoded in batches of `batch_size`).
pub fn traverse(
    vae: &Vae,
    dataset: &Dataset,
    settings: &TraversalSettings,
    batch_size: usize,
    device: &Device,
) -> Result<Traversal> {
    check_index(dataset, settings.seed_index, "seed example")?;
    let encodings = encode_dataset(vae, dataset, batch_size, device)?;
    traverse_encodings(vae, &encodings, settings, device)
}

/// Like [`traverse`], from the encodings of the data.
pub fn traverse_encodings(
    vae: &Vae,
    encodings: &Encodings,
    settings: &TraversalSettings,
    device: &Device,
) -> Result<Traversal> {
    if settings.seed_index >= encodings.len() {
        let problem = format!("{} is past the {} encoded examples", settings.seed_index, encodings.len());
        return Err(Error::invalid_setting("seed example", problem));
    }
    let dimensions = settings.dimensions.resolve(encodings.latent_dim)?;
    let rows = order_by_kl(&dimensions, &encodings.mean_kl_per_dimension()?);
    let ordered: Vec<usize> = rows.iter().map(|r| r.dimension).collect();
    let seed = encodings.mu_row(settings.seed_index);
    let latents = traversal_latents(seed, &ordered, settings.range, settings.steps)?;
    let z = Tensor::from_slice(&latents, (latents.len() / seed.len(), seed.len()), device)?;
    let decoded = flat_values(&vae.decode_mean(&z)?)?;
    Ok(Traversal { rows, steps: settings.steps, latents, decoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_changes_only_its_dimension() {
        let seed = [0.5, -0.25, 1.0];
        let latents = traversal_latents(&seed, &[2, 0], 3.0, 4).unwrap();
        assert_eq!(latents.len(), 2 * 4 * 3);
        for (row, &dimension) in [2, 0].iter().enumerate() {
            let sweep: Vec<&[f32]> = latents[row * 12..(row + 1) * 12].chunks(3).collect();
            let values: Vec<f32> = sweep.iter().map(|code| code[dimension]).collect();
            assert_eq!(values, [-3.0, -1.0, 1.0, 3.0]);
            for code in sweep {
                (0..3).filter(|&d| d != dimension).for_each(|d| assert_eq!(code[d], seed[d]));
            }
        }
    }

    #[test]
    fn rows_are_ordered_by_kl() {
        let rows = order_by_kl(&[0, 1, 2], &[0.1, 2.0, 0.5]);
        assert_eq!(rows.iter().map(|r| r.dimension).collect::<Vec<_>>(), [1, 2, 0]);
    }

    #[test]
    fn dimensions_parse_and_are_checked() {
        assert_eq!("all".parse::<Dimensions>().unwrap().resolve(3).unwrap(), [0, 1, 2]);
        assert_eq!("2, 0,2".parse::<Dimensions>().unwrap().resolve(3).unwrap(), [2, 0]);
        let message = "0,5".parse::<Dimensions>().unwrap().resolve(3).unwrap_err().to_string();
        assert!(message.contains("dims") && message.contains("dimension 5"), "{message}");
        assert!("zero".parse::<Dimensions>().unwrap_err().to_string().contains("0,3,7"));
        assert!(traversal_latents(&[0.0], &[0], -1.0, 3).unwrap_err().to_string().contains("range"));
    }
}
