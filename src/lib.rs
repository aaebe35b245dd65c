//! `elbo`: variational autoencoders done as the seed cheatsheet describes them.
//!
//! The pipeline, one folder per stage: [`data`] -> [`model`] -> [`objective`] -> [`training`] ->
//! [`evaluation`] -> [`outputs`]. The `elbo` binary is a thin command-line layer over this library.

pub mod atomic;
pub mod data;
pub mod error;
pub mod evaluation;
pub mod model;
pub mod objective;
pub mod outputs;
pub mod run;
pub mod runtime;
pub mod training;

pub use error::{Error, Result};
