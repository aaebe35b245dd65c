//! Objective: the negative ELBO and its terms, the importance-weighted bound, how the KL is weighted during
//! training, the beta-TCVAE decomposition of the KL, the noise that feeds the reparameterization, and latent
//! diffusion's autoencoder: its reconstruction terms (`autoencoder`) and its adversarial loss terms (`ldm`).

pub mod autoencoder;
pub mod elbo;
pub mod iwae;
pub mod kl_weighting;
pub mod ldm;
pub mod noise;
pub mod tcvae;

pub use elbo::{negative_elbo_terms, negative_elbo_terms_given, ElboTerms};
pub use iwae::{log_importance_weights, log_mean_exp};
pub use kl_weighting::{Capacity, KlSchedule, KlWeighting, Span};
pub use ldm::{
    adaptive_weight, adopt_weight, discriminator_loss, generator_loss, gradient_norm, laplace_reconstruction,
    mean_absolute_error, DiscriminatorLoss,
};
pub use noise::NoiseSource;
pub use tcvae::{decompose_kl, KlDecomposition};
