//! `elbo`: variational autoencoders done as the seed cheatsheet describes them.
//!
//! The pipeline, one folder per stage: [`data`] -> [`model`] -> [`objective`] -> [`training`] ->
//! [`evaluation`] -> [`outputs`]; [`latent`] uses a trained model's latent space and [`report`] writes a run's
//! HTML report. The `elbo` binary is a thin command-line layer over this library.
//!
//! Train a VAE on an array in memory, encode and decode a batch, and evaluate the bound:
//!
//! ```
//! use candle_core::{DType, Device};
//! use elbo::data::{batch_tensor, Batcher, Binarization, Dataset, ExampleShape, Splits};
//! use elbo::evaluation::evaluate_negative_elbo;
//! use elbo::model::{Vae, VaeConfig};
//! use elbo::training::{train, TrainConfig};
//!
//! # fn main() -> elbo::Result<()> {
//! let values: Vec<f32> = (0..512 * 16).map(|i| ((i * 7919) % 13) as f32 / 12.0).collect(); // 512 x 16 in [0, 1]
//! let data = Dataset::from_f32(values, ExampleShape::flat(16))?;
//! let model = VaeConfig { input_shape: data.shape, latent_dim: 2, ..VaeConfig::default() }; // Bernoulli decoder
//! let (vae, varmap) = Vae::fresh(&model, 1, DType::F32, &Device::Cpu)?;
//! let settings = TrainConfig { epochs: 2, batch_size: 64, ..TrainConfig::default() };
//! train(&vae, &varmap, &Splits::train_only(data.clone()), &settings, &Device::Cpu, &mut [])?;
//!
//! let (batch, rows) = Batcher::sequential(&data, 8).next().unwrap_or_default(); // the first 8 examples
//! let x = batch_tensor(batch, rows, 16, &Device::Cpu)?;
//! let posterior = vae.encode(&x)?; // q(z|x): mu and log sigma^2
//! let decoded = vae.decode_mean(&posterior.mu)?; // back to data space, 8 x 16
//! let bound = evaluate_negative_elbo(&vae, &data, 256, Binarization::None, 1, &Device::Cpu)?;
//! println!("-ELBO {:.2} nats (an upper bound on -log p(x)); decoded {:?}", bound.negative_elbo(), decoded.dims());
//! # Ok(())
//! # }
//! ```

pub(crate) mod atomic;
pub mod autoencoder_run;
pub mod benchmark;
pub mod data;
pub mod error;
pub mod evaluation;
pub(crate) mod kernels;
pub mod latent;
pub mod model;
pub mod objective;
pub mod optimizer;
pub mod outputs;
pub mod report;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod training;

pub use error::{Error, Result};
