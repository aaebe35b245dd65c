//! `elbo`: variational autoencoders done as the seed cheatsheet describes them.
//!
//! The pipeline, one folder per stage: [`data`] -> [`model`] -> [`objective`] -> [`training`] ->
//! [`evaluation`] -> [`outputs`]; [`latent`] uses a trained model's latent space and [`report`] writes a run's
//! HTML report. The `elbo` binary is a thin command-line layer over this library.

pub mod atomic;
pub mod benchmark;
pub mod data;
pub mod error;
pub mod evaluation;
pub mod kernels;
pub mod latent;
pub mod model;
pub mod objective;
pub mod outputs;
pub mod report;
pub mod run;
pub mod runtime;
pub mod training;

pub use error::{Error, Result};
