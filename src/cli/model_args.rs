//! Command-line flags that choose the architecture and the likelihood.

use clap::{Args, ValueEnum};
use elbo::data::ExampleShape;
use elbo::model::{Activation, GaussianVariance, LikelihoodConfig, VaeConfig};

/// The architecture flags.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The decoder's distribution p(x|z).
    #[arg(long, value_enum, default_value_t = LikelihoodKind::Bernoulli)]
    pub likelihood: LikelihoodKind,
    /// Gaussian decoder: how its variance is set.
    #[arg(long, value_enum, default_value_t = VarianceKind::Fixed)]
    pub gaussian_variance: VarianceKind,
    /// Gaussian decoder with fixed variance: the standard deviation sigma.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub gaussian_sigma: f64,
    /// Categorical decoder: number of levels K per dimension (256 for 8-bit pixels).
    #[arg(long, default_value_t = 256)]
    pub levels: usize,
    /// Number of latent dimensions.
    #[arg(long, default_value_t = VaeConfig::default().latent_dim)]
    pub latent_dim: usize,
    /// The network type: dense layers only, or convolutions (images) before and after them.
    #[arg(long, value_enum, default_value_t = ArchitectureKind::Mlp)]
    pub architecture: ArchitectureKind,
    /// Convolutional models: output channels of each 4x4 stride-2 convolution, comma-separated (default: 32,32,64,64
    /// for images of 64 pixels or more, the disentanglement architecture; 32,64 for smaller ones).
    #[arg(long, value_delimiter = ',')]
    pub conv_channels: Option<Vec<usize>>,
    /// Encoder hidden widths, comma-separated (default: 400 for the mlp, 256 after the convolutions).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Decoder hidden widths, comma-separated (default: the encoder's, reversed).
    #[arg(long, value_delimiter = ',')]
    pub decoder_hidden: Option<Vec<usize>>,
    /// Hidden-layer activation.
    #[arg(long, value_enum, default_value_t = Activation::default())]
    pub activation: Activation,
}

/// Likelihood choices.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LikelihoodKind {
    /// Bernoulli from logits (grey targets in [0, 1] allowed).
    Bernoulli,
    /// Gaussian, fixed or learned variance.
    Gaussian,
    /// Softmax over K levels per dimension.
    Categorical,
    /// autoencoder-kl only (its default): latent diffusion's L1 under one learned scale, a Laplace likelihood.
    Laplace,
}

/// Architecture choices.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchitectureKind {
    /// Dense layers on flattened inputs.
    Mlp,
    /// Strided convolutions, dense layers, transposed convolutions (images only).
    Conv,
    /// Latent diffusion's KL autoencoder (diffusers' AutoencoderKL) with a spatial latent, trained on random crops
    /// of a folder of photos (--data DIR); saved in diffusers' layout too.
    AutoencoderKl,
}

/// Gaussian variance choices.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum VarianceKind {
    /// sigma given by --gaussian-sigma.
    Fixed,
    /// One learned log-variance for all dimensions.
    Shared,
    /// One learned log-variance per dimension.
    PerDimension,
}

impl ModelArgs {
    /// The architecture for inputs of `input_shape` (the library's defaults where a flag is not given); an error
    /// for convolution flags on an MLP.
    pub fn config(&self, input_shape: ExampleShape) -> anyhow::Result<VaeConfig> {
        if self.conv_channels.is_some() && self.architecture != ArchitectureKind::Conv {
            anyhow::bail!("--conv-channels sets the layers of a convolutional model: add --architecture conv");
        }
        let mut config = match self.architecture {
            ArchitectureKind::Conv => VaeConfig::convolutional(input_shape, self.latent_dim, self.likelihood()?),
            ArchitectureKind::Mlp => VaeConfig::mlp(input_shape, self.latent_dim, self.likelihood()?),
            ArchitectureKind::AutoencoderKl => anyhow::bail!("the KL autoencoder is not a flat-latent VAE"),
        };
        if let Some(widths) = &self.hidden {
            config = config.with_hidden(widths.clone());
        }
        if let Some(widths) = &self.decoder_hidden {
            config.decoder_hidden = widths.clone();
        }
        if let (Some(conv), Some(channels)) = (config.conv.as_mut(), &self.conv_channels) {
            conv.channels = channels.clone();
        }
        config.activation = self.activation;
        Ok(config)
    }

    fn likelihood(&self) -> anyhow::Result<LikelihoodConfig> {
        Ok(match self.likelihood {
            LikelihoodKind::Laplace => {
                anyhow::bail!(
                    "--likelihood laplace is latent diffusion's term: use it with --architecture autoencoder-kl"
                )
            }
            LikelihoodKind::Bernoulli => LikelihoodConfig::Bernoulli,
            LikelihoodKind::Categorical => LikelihoodConfig::Categorical { levels: self.levels },
            LikelihoodKind::Gaussian => LikelihoodConfig::Gaussian {
                variance: match self.gaussian_variance {
                    VarianceKind::Fixed => GaussianVariance::Fixed { sigma: self.gaussian_sigma },
                    VarianceKind::Shared => GaussianVariance::LearnedShared,
                    VarianceKind::PerDimension => GaussianVariance::LearnedPerDimension,
                },
            },
        })
    }
}
