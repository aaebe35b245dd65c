//! Evaluation: figures of a trained model on held-out data, labelled for what they are (bounds, not likelihoods).

pub mod elbo;

pub use elbo::{evaluate_negative_elbo, ElboEstimate};
