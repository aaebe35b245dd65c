//! Objective: the negative ELBO and its terms, and the noise that feeds the reparameterization.

pub mod elbo;
pub mod noise;

pub use elbo::{negative_elbo_terms, ElboTerms};
pub use noise::NoiseSource;
