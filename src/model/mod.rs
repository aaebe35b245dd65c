//! Model: the Gaussian encoder, the decoder with its likelihood, and the VAE that joins them; and diffusers'
//! KL autoencoder with its spatial latent (`autoencoder_kl`) and the PatchGAN discriminator it trains against
//! (`discriminator`), and the LPIPS network of its perceptual term (`lpips`).

pub mod activation;
pub mod autoencoder_kl;
pub mod conv;
pub mod decoder;
pub mod dense;
pub mod discriminator;
pub mod encoder;
pub mod gaussian;
pub mod init;
pub mod likelihood;
pub mod lpips;
pub mod mlp;
pub mod vae;

pub use activation::Activation;
pub use autoencoder_kl::{AutoencoderKl, AutoencoderKlConfig};
pub use conv::ConvConfig;
pub use discriminator::{DiscriminatorConfig, PatchDiscriminator};
pub use gaussian::{standard_normal_log_prob, DiagonalGaussian};
pub use likelihood::{GaussianVariance, Likelihood, LikelihoodConfig};
pub use lpips::Lpips;
pub(crate) use vae::check_finite;
pub use vae::{Vae, VaeConfig};
