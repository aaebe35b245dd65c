//! Objective: the negative ELBO and its terms, the importance-weighted bound, how the KL is weighted during
//! training, the beta-TCVAE decomposition of the KL, and the noise that feeds the reparameterization.

pub mod elbo;
pub mod iwae;
pub mod kl_weighting;
pub mod noise;
pub mod tcvae;

pub use elbo::{negative_elbo_terms, negative_elbo_terms_given, ElboTerms};
pub use iwae::{log_importance_weights, log_mean_exp};
pub use kl_weighting::{Capacity, KlSchedule, KlWeighting, Span};
pub use noise::NoiseSource;
pub use tcvae::{decompose_kl, KlDecomposition};
