//! The variational autoencoder: a Gaussian encoder, a decoder, and the decoder's likelihood, with the N(0, I) prior.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::activation::Activation;
use super::conv::ConvConfig;
use super::decoder::{Decoder, DecoderConfig};
use super::encoder::{Encoder, EncoderConfig};
use super::gaussian::DiagonalGaussian;
use super::init;
use super::likelihood::{Likelihood, LikelihoodConfig};
use crate::data::ExampleShape;
use crate::{Error, Result};

/// Everything needed to rebuild a VAE's architecture. Saved in a run's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    /// The shape of one input example.
    pub input_shape: ExampleShape,
    /// Number of latent dimensions d.
    pub latent_dim: usize,
    /// Convolutional layers before the encoder's hidden layers (mirrored after the decoder's); `None` for an MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvConfig>,
    /// Widths of the encoder's hidden layers (after the convolutions, if any).
    pub encoder_hidden: Vec<usize>,
    /// Widths of the decoder's hidden layers.
    pub decoder_hidden: Vec<usize>,
    /// The non-linearity of every hidden layer.
    pub activation: Activation,
    /// The decoder's distribution p(x|z).
    pub likelihood: LikelihoodConfig,
}

impl Default for VaeConfig {
    /// The classic MLP VAE: 784-400-20, ReLU, Bernoulli decoder (the encoder's and decoder's defaults).
    fn default() -> Self {
        let (encoder, decoder) = (EncoderConfig::default(), DecoderConfig::default());
        VaeConfig {
            input_shape: encoder.input_shape,
            latent_dim: encoder.latent_dim,
            conv: encoder.conv,
            encoder_hidden: encoder.hidden,
            decoder_hidden: decoder.hidden,
            activation: encoder.activation,
            likelihood: LikelihoodConfig::Bernoulli,
        }
    }
}

/// The most values the dense layers of a model may hold (2^31, 8 GiB of f32 weights): a larger architecture, as
/// from a damaged `config.json`, is refused before anything is allocated.
pub const MAX_PARAMETERS: usize = 1 << 31;

impl VaeConfig {
    /// Checks that the sizes can build a network, of at most [`MAX_PARAMETERS`] values in its dense layers.
    pub fn validate(&self) -> Result<()> {
        if self.input_shape.dim() == 0 {
            return Err(Error::invalid_setting("input_shape", "examples must have at least one value"));
        }
        if self.latent_dim == 0 {
            return Err(Error::invalid_setting("latent_dim", "must be at least 1"));
        }
        if self.encoder_hidden.iter().chain(&self.decoder_hidden).any(|&w| w == 0) {
            return Err(Error::invalid_setting("hidden", "hidden layer widths must be at least 1"));
        }
        let features = match &self.conv {
            Some(conv) => {
                let (channels, height, width) = conv.feature_map(&self.input_shape)?;
                channels * height * width
            }
            None => self.input_shape.dim(),
        };
        self.likelihood.validate()?;
        self.check_size(features)
    }

    /// Refuses an architecture whose dense layers would hold more than [`MAX_PARAMETERS`] values (before anything is
    /// allocated): `features` values enter the encoder's dense layers.
    fn check_size(&self, features: usize) -> Result<()> {
        let outputs = self.input_shape.dim().checked_mul(self.likelihood.outputs_per_dimension());
        let encoder = std::iter::once(Some(features))
            .chain(self.encoder_hidden.iter().map(|&w| Some(w)))
            .chain([self.latent_dim.checked_mul(2)]);
        let decoder = std::iter::once(Some(self.latent_dim))
            .chain(self.decoder_hidden.iter().map(|&w| Some(w)))
            .chain([if self.conv.is_some() { Some(features) } else { outputs }]);
        let weights = |widths: Vec<Option<usize>>| {
            widths.windows(2).try_fold(0usize, |total, pair| total.checked_add(pair[0]?.checked_mul(pair[1]?)?))
        };
        let total = weights(encoder.collect()).zip(weights(decoder.collect())).and_then(|(a, b)| a.checked_add(b));
        match total {
            Some(total) if total <= MAX_PARAMETERS => Ok(()),
            _ => Err(Error::invalid_setting(
                "latent_dim / hidden / input_shape",
                format!(
                    "the dense layers of {} would hold more than {MAX_PARAMETERS} values; use smaller layers",
                    self.describe()
                ),
            )),
        }
    }

    /// A one-line description, e.g. `784-[400]-20 MLP, relu, bernoulli decoder` or
    /// `1x64x64 conv [32, 32, 64, 64] (4x4, stride 2)-[256]-10, relu, bernoulli decoder`.
    pub fn describe(&self) -> String {
        let input = &self.input_shape;
        let front = match &self.conv {
            Some(conv) => format!(
                "{}x{}x{} conv {:?} ({}x{}, stride {})",
                input.channels, input.height, input.width, conv.channels, conv.kernel, conv.kernel, conv.stride
            ),
            None => format!("{}", input.dim()),
        };
        let kind = if self.conv.is_some() { "" } else { " MLP" };
        let activation = serde_json::to_value(self.activation).ok().and_then(|v| v.as_str().map(String::from));
        format!(
            "{front}-{:?}-{}{kind}, {}, {} decoder",
            self.encoder_hidden,
            self.latent_dim,
            activation.unwrap_or_default(),
            self.likelihood.name()
        )
    }

    /// The encoder's part of the architecture.
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            input_shape: self.input_shape,
            conv: self.conv.clone(),
            hidden: self.encoder_hidden.clone(),
            latent_dim: self.latent_dim,
            activation: self.activation,
        }
    }

    /// The decoder's part of the architecture: it gives the likelihood's parameters for every data value.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            latent_dim: self.latent_dim,
            hidden: self.decoder_hidden.clone(),
            conv: self.conv.clone(),
            output_shape: self.input_shape,
            outputs_per_value: self.likelihood.outputs_per_dimension(),
            activation: self.activation,
        }
    }

    /// The MLP architecture for inputs of `input_shape`: one 400-unit ReLU layer each way (the classic VAE), with the
    /// given latent size and likelihood.
    pub fn mlp(input_shape: ExampleShape, latent_dim: usize, likelihood: LikelihoodConfig) -> Self {
        VaeConfig { input_shape, latent_dim, likelihood, ..VaeConfig::default() }
    }

    /// The encoder's hidden widths `widths` (after any convolutions) and the decoder's as their mirror image.
    pub fn with_hidden(self, widths: Vec<usize>) -> Self {
        let decoder_hidden = widths.iter().rev().copied().collect();
        VaeConfig { encoder_hidden: widths, decoder_hidden, ..self }
    }

    /// The convolutional architecture for images of `input_shape`: the [`ConvConfig::preset_for`] its side, then
    /// one 256-unit dense layer each way (as in disentanglement_lib), with the given latent size and likelihood.
    pub fn convolutional(input_shape: ExampleShape, latent_dim: usize, likelihood: LikelihoodConfig) -> Self {
        VaeConfig {
            input_shape,
            latent_dim,
            conv: Some(ConvConfig::preset_for(input_shape.height.min(input_shape.width))),
            encoder_hidden: vec![256],
            decoder_hidden: vec![256],
            activation: Activation::Relu,
            likelihood,
        }
    }
}

/// A VAE: encoder q(z|x), decoder p(x|z), prior p(z) = N(0, I) (fixed, no parameters).
#[derive(Debug, Clone)]
pub struct Vae {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    likelihood: Likelihood,
}

impl Vae {
    /// Builds the networks, reading or creating weights through `vb` under `encoder.*` and `decoder.*`.
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let encoder = Encoder::new(&config.encoder(), vb.pp("encoder"))?;
        let decoder = Decoder::new(&config.decoder(), vb.pp("decoder"))?;
        let likelihood = Likelihood::new(&config.likelihood, config.input_shape.dim(), vb.pp("decoder"))?;
        Ok(Vae { config: config.clone(), encoder, decoder, likelihood })
    }

    /// A freshly initialised, trainable model: its variables in a `VarMap`, initialised from `seed`.
    pub fn fresh(config: &VaeConfig, seed: u64, dtype: DType, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vae = Vae::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        init::initialize(&varmap, seed)?;
        Ok((vae, varmap))
    }
}

/// An error naming `file` and the tensor `name` when `tensor` holds NaN or an infinity.
pub(crate) fn check_finite(file: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let values = tensor.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    match values.iter().find(|value| !value.is_finite()) {
        Some(value) => {
            let problem = format!("holds a non-finite value ({value}); the model cannot be used");
            Err(Error::bad_input(file, name, problem))
        }
        None => Ok(()),
    }
}

impl Vae {
    /// A model with weights loaded from a safetensors file written by [`crate::outputs`] (or any tool using the same
    /// names). Every weight the architecture needs must be present with the right shape, and finite: a tensor with
    /// NaN or infinity is an error naming it.
    pub fn load(config: &VaeConfig, weights: &Path, device: &Device) -> Result<(Self, VarMap)> {
        let mut varmap = VarMap::new();
        let vae = Vae::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        varmap.load(weights).map_err(|e| Error::bad_input(weights, "weights", e.to_string()))?;
        for (name, var) in varmap.data().lock().map_err(|_| Error::invalid_setting("weights", "lock poisoned"))?.iter()
        {
            check_finite(weights, name, var.as_tensor())?;
        }
        Ok((vae, varmap))
    }

    /// The architecture.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The decoder's likelihood.
    pub fn likelihood(&self) -> &Likelihood {
        &self.likelihood
    }

    /// The encoder network.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The decoder network.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Encoder forward on x (`[batch, data_dim]`): q(z|x) as (mu_x, log sigma^2_x).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.encoder.forward(x)
    }

    /// Decoder forward on z (`[batch, latent_dim]`): the raw parameters of p(x|z).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(z)
    }

    /// The mean of p(x|z) in data space, e.g. pixel intensities in [0, 1] for a Bernoulli decoder.
    pub fn decode_mean(&self, z: &Tensor) -> Result<Tensor> {
        self.likelihood.mean(&self.decode(z)?)
    }

    /// Checks that data of `shape` fits this model, with a message saying what each side has.
    pub fn check_input(&self, shape: &ExampleShape, source: &str) -> Result<()> {
        if shape.dim() != self.config.input_shape.dim() {
            return Err(Error::ShapeMismatch(format!(
                "{source} has examples of {}x{}x{} = {} values, the model expects {}x{}x{} = {}",
                shape.channels,
                shape.height,
                shape.width,
                shape.dim(),
                self.config.input_shape.channels,
                self.config.input_shape.height,
                self.config.input_shape.width,
                self.config.input_shape.dim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ExampleShape;

    #[test]
    fn an_architecture_too_large_for_memory_is_refused_before_anything_is_allocated() {
        let huge = VaeConfig { latent_dim: 1 << 40, ..VaeConfig::default() };
        let message = Vae::fresh(&huge, 1, DType::F32, &Device::Cpu).err().unwrap().to_string();
        assert!(message.contains("latent_dim") && message.contains(&MAX_PARAMETERS.to_string()), "{message}");
        let wide = VaeConfig { encoder_hidden: vec![1 << 22], ..VaeConfig::default() };
        assert!(wide.validate().is_err());
        let overflowing = VaeConfig { input_shape: ExampleShape::flat(usize::MAX / 2), ..VaeConfig::default() };
        assert!(overflowing.validate().is_err());
        assert!(VaeConfig::default().validate().is_ok());
    }

    #[test]
    fn weights_with_a_non_finite_value_are_refused_naming_the_tensor() {
        let config = VaeConfig {
            input_shape: ExampleShape::flat(6),
            latent_dim: 2,
            encoder_hidden: vec![4],
            decoder_hidden: vec![4],
            ..VaeConfig::default()
        };
        let (_, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        varmap.save(&path).unwrap();
        assert!(Vae::load(&config, &path, &Device::Cpu).is_ok());
        let bias = varmap.data().lock().unwrap()["decoder.output.bias"].clone();
        bias.set(&Tensor::new(&[0.0f32, 1.0, f32::NAN, 0.0, 0.0, 0.0], &Device::Cpu).unwrap()).unwrap();
        varmap.save(&path).unwrap();
        let message = Vae::load(&config, &path, &Device::Cpu).err().unwrap().to_string();
        assert!(message.contains("model.safetensors") && message.contains("decoder.output.bias"), "{message}");
        assert!(message.contains("non-finite"), "{message}");
    }
}
