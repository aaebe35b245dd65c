//! A trained encoder as a [`Representation`] of the sprites' factors: each factor configuration is rendered to its
//! sprite and encoded, and its code is the posterior mean mu(x) (the "mean representation" the disentanglement
//! metrics use).

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::disentanglement::{FactorSpace, Representation};
use crate::data::sprites::{self, FACTOR_NAMES, FACTOR_SIZES};
use crate::data::{Binarization, ExampleShape};
use crate::model::Vae;
use crate::{Error, Result};

/// The factors of the sprites: shape, scale, rotation, x, y.
pub fn sprite_factor_space() -> FactorSpace {
    FactorSpace {
        names: FACTOR_NAMES.iter().map(|name| name.to_string()).collect(),
        sizes: FACTOR_SIZES.iter().map(|&size| size as usize).collect(),
    }
}

/// The encoder means of sprites rendered at the model's input size.
pub struct SpriteCodes<'a> {
    vae: &'a Vae,
    size: usize,
    binarization: Binarization,
    device: Device,
}

impl<'a> SpriteCodes<'a> {
    /// Codes from `vae`, whose inputs must be grey square images of at least [`sprites::MIN_SIZE`] pixels; inputs
    /// are thresholded like the model's training data when `binarization` is static (a dynamic binarization is
    /// replaced by its expectation, the grey values).
    pub fn new(vae: &'a Vae, binarization: Binarization, device: &Device) -> Result<Self> {
        let shape = vae.config().input_shape;
        if shape != ExampleShape::image(1, shape.height, shape.height) || shape.height < sprites::MIN_SIZE {
            let problem = format!(
                "the sprites are grey square images of at least {} pixels; the model takes {}x{}x{}",
                sprites::MIN_SIZE,
                shape.channels,
                shape.height,
                shape.width
            );
            return Err(Error::ShapeMismatch(problem));
        }
        Ok(SpriteCodes { vae, size: shape.height, binarization, device: device.clone() })
    }

    /// The rendered sprites of `factors` (five indices per row), scaled to [0, 1], rendered in parallel.
    fn render(&self, factors: &[u32]) -> Vec<f32> {
        let pixels = self.size * self.size;
        let mut values = vec![0f32; factors.len() / FACTOR_SIZES.len() * pixels];
        values.par_chunks_mut(pixels).zip(factors.par_chunks(FACTOR_SIZES.len())).for_each(|(image, row)| {
            sprites::render_scaled(&[row[0], row[1], row[2], row[3], row[4]], self.size, image);
        });
        if let Binarization::Static { .. } = self.binarization {
            // a static threshold draws nothing from the generator
            self.binarization.apply(&mut values, &mut ChaCha8Rng::seed_from_u64(0));
        }
        values
    }
}

impl Representation for SpriteCodes<'_> {
    fn code_dim(&self) -> usize {
        self.vae.config().latent_dim
    }

    fn codes(&mut self, factors: &[u32]) -> Result<Vec<f32>> {
        if !factors.len().is_multiple_of(FACTOR_SIZES.len()) {
            let problem = format!("{} factor indices are not rows of {}", factors.len(), FACTOR_SIZES.len());
            return Err(Error::ShapeMismatch(problem));
        }
        let rows = factors.len() / FACTOR_SIZES.len();
        let x = Tensor::from_vec(self.render(factors), (rows, self.size * self.size), &self.device)?;
        Ok(self.vae.encode(&x)?.mu.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaeConfig;
    use candle_core::DType;

    #[test]
    fn codes_are_the_encoder_means_of_the_rendered_sprites() {
        let config = VaeConfig::convolutional(ExampleShape::image(1, 32, 32), 3, Default::default());
        let (vae, _) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let mut codes = SpriteCodes::new(&vae, Binarization::None, &Device::Cpu).unwrap();
        let factors = [0, 1, 2, 3, 4, 2, 5, 39, 31, 0];
        let values = codes.codes(&factors).unwrap();
        let image: Vec<f32> =
            sprites::render(&[2, 5, 39, 31, 0], 32).into_iter().map(|b| f32::from(b) / 255.0).collect();
        let x = Tensor::from_vec(image, (1, 1024), &Device::Cpu).unwrap();
        let expected = vae.encode(&x).unwrap().mu.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values.len(), 6);
        assert!(values[3..].iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(codes.codes(&factors[..7]).is_err());
    }

    #[test]
    fn models_of_other_inputs_are_refused() {
        let (vae, _) = Vae::fresh(&VaeConfig::default(), 1, DType::F32, &Device::Cpu).unwrap();
        let error = SpriteCodes::new(&vae, Binarization::None, &Device::Cpu).err().unwrap().to_string();
        assert!(error.contains("1x1x784"), "{error}");
    }
}
