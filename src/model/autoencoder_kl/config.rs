//! The configuration of a KL autoencoder, field for field diffusers' `AutoencoderKL` `config.json`.
//!
//! A field missing from the file takes diffusers' constructor default, so a `config.json` reads the way
//! `AutoencoderKL.from_pretrained` reads it. Fields elbo does not use (`latents_mean`, `force_upcast`, ...) are kept
//! so that writing the configuration back loses nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `_class_name` this configuration describes.
pub const CLASS_NAME: &str = "AutoencoderKL";
/// The only down block type diffusers' `AutoencoderKL` encoder builds.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
/// The only up block type diffusers' `AutoencoderKL` decoder builds.
pub const UP_BLOCK: &str = "UpDecoderBlock2D";
/// The GroupNorm epsilon of every normalization in the model (diffusers' `resnet_eps`).
pub const NORM_EPS: f64 = 1e-6;
/// The most channels any layer may have: a bound on what a configuration can make elbo allocate.
pub const MAX_CHANNELS: usize = 8192;
/// The most blocks (resolutions) a configuration may have.
pub const MAX_BLOCKS: usize = 8;
/// The most ResNet layers per block.
pub const MAX_LAYERS_PER_BLOCK: usize = 16;

/// The side of the images the model was trained on: one number, or diffusers' `[height, width]` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square images of this side.
    Square(usize),
    /// Sides as written in the file; diffusers' tiling uses the first.
    Sides(Vec<usize>),
}

impl SampleSize {
    /// The side diffusers' tiling uses: the number, or the first of the list (0 for an empty list).
    pub fn side(&self) -> usize {
        match self {
            SampleSize::Square(side) => *side,
            SampleSize::Sides(sides) => sides.first().copied().unwrap_or(0),
        }
    }
}

/// The activation of the ResNet blocks (`act_fn`); the layers before `conv_out` always use SiLU, as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlActivation {
    /// silu(x) = x * sigmoid(x) (`"silu"` or `"swish"`).
    Silu,
    /// mish(x) = x * tanh(softplus(x)).
    Mish,
    /// gelu(x) = x * Phi(x), the exact (erf) form.
    Gelu,
    /// relu(x) = max(x, 0).
    Relu,
}

impl KlActivation {
    /// The activation named `name` as diffusers' `get_activation` reads it (any case); `None` when unknown.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_lowercase().as_str() {
            "silu" | "swish" => Some(KlActivation::Silu),
            "mish" => Some(KlActivation::Mish),
            "gelu" => Some(KlActivation::Gelu),
            "relu" => Some(KlActivation::Relu),
            _ => None,
        }
    }

    /// The activation applied to `x`.
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            // silu(x) = x * sigmoid(x)
            KlActivation::Silu => x.silu(),
            // mish(x) = x * tanh(ln(1 + e^x))
            KlActivation::Mish => x * x.exp()?.affine(1.0, 1.0)?.log()?.tanh()?,
            // gelu(x) = 0.5 x (1 + erf(x / sqrt 2))
            KlActivation::Gelu => x.gelu_erf(),
            // relu(x) = max(x, 0)
            KlActivation::Relu => x.relu(),
        }
    }
}

fn default_class_name() -> String {
    CLASS_NAME.to_string()
}

/// diffusers' `AutoencoderKL` configuration (`config.json`). `Default` is diffusers' constructor default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    /// The diffusers class: must be `"AutoencoderKL"`.
    #[serde(rename = "_class_name", default = "default_class_name")]
    pub class_name: String,
    /// The diffusers version that wrote the file, when it says.
    #[serde(rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    /// Channels of the images in (3 for RGB).
    pub in_channels: usize,
    /// Channels of the images out.
    pub out_channels: usize,
    /// One `"DownEncoderBlock2D"` per resolution of the encoder.
    pub down_block_types: Vec<String>,
    /// One `"UpDecoderBlock2D"` per resolution of the decoder.
    pub up_block_types: Vec<String>,
    /// Channels of each block, from the image side; every block but the last halves the side.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder block (the decoder has one more per block).
    pub layers_per_block: usize,
    /// The ResNet blocks' activation: `silu` (or `swish`), `mish`, `gelu` or `relu`.
    pub act_fn: String,
    /// Channels of the latent.
    pub latent_channels: usize,
    /// Groups of every GroupNorm; must divide every channel count.
    pub norm_num_groups: usize,
    /// The image side the model was trained at; the tile side of tiled encoding and decoding.
    pub sample_size: SampleSize,
    /// Latents fed to a diffusion model are (z - shift_factor) * scaling_factor.
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (`null`: none).
    pub shift_factor: Option<f64>,
    /// Per-channel latent means some models publish (kept, not used).
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent deviations some models publish (kept, not used).
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs such a model in f32 even in a half-precision pipeline (elbo always computes in f32).
    pub force_upcast: bool,
    /// A 1x1 convolution on the encoder's moments.
    pub use_quant_conv: bool,
    /// A 1x1 convolution on the latent before the decoder.
    pub use_post_quant_conv: bool,
    /// A self-attention layer in each middle block.
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        AutoencoderKlConfig {
            class_name: default_class_name(),
            diffusers_version: None,
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_BLOCK.to_string()],
            up_block_types: vec![UP_BLOCK.to_string()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".to_string(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKlConfig {
    /// Reads and checks `path` (a diffusers `config.json`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: AutoencoderKlConfig =
            serde_json::from_str(&text).map_err(|e| Error::bad_input(path, "json", e.to_string()))?;
        config.validate(path)?;
        Ok(config)
    }

    /// The ResNet blocks' activation.
    pub fn activation(&self) -> Result<KlActivation> {
        KlActivation::parse(&self.act_fn).ok_or_else(|| {
            let problem = format!("unknown activation `{}`: expected silu, swish, mish, gelu or relu", self.act_fn);
            Error::invalid_setting("act_fn", problem)
        })
    }

    /// How many times the encoder halves the side: 2^(blocks - 1) is the downsampling factor.
    pub fn halvings(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }

    /// The downsampling factor f = 2^(blocks - 1): a latent is (H / f) x (W / f).
    pub fn downsampling(&self) -> usize {
        1usize << self.halvings().min(MAX_BLOCKS)
    }

    /// The image side of a tile (diffusers' `tile_sample_min_size`: the sample size).
    pub fn tile_sample_size(&self) -> usize {
        self.sample_size.side()
    }

    /// The latent side of a tile (diffusers' `tile_latent_min_size`: int(sample_size / 2^(blocks - 1))).
    pub fn tile_latent_size(&self) -> usize {
        self.tile_sample_size() / self.downsampling()
    }

    /// Checks every field against what the architecture can build; errors name `path` and the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, problem: String| Err(Error::bad_input(path, field, problem));
        if self.class_name != CLASS_NAME {
            return bad(
                "_class_name",
                format!("`{}` is not a KL autoencoder: expected `{CLASS_NAME}`", self.class_name),
            );
        }
        let blocks = self.block_out_channels.len();
        if !(1..=MAX_BLOCKS).contains(&blocks) {
            return bad("block_out_channels", format!("{blocks} blocks: expected 1 to {MAX_BLOCKS}"));
        }
        check_block_types(path, "down_block_types", &self.down_block_types, DOWN_BLOCK, blocks)?;
        check_block_types(path, "up_block_types", &self.up_block_types, UP_BLOCK, blocks)?;
        if !(1..=MAX_LAYERS_PER_BLOCK).contains(&self.layers_per_block) {
            return bad("layers_per_block", format!("{}: expected 1 to {MAX_LAYERS_PER_BLOCK}", self.layers_per_block));
        }
        self.check_channels(path)?;
        if KlActivation::parse(&self.act_fn).is_none() {
            return bad(
                "act_fn",
                format!("unknown activation `{}`: expected silu, swish, mish, gelu or relu", self.act_fn),
            );
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return bad("scaling_factor", format!("{}: expected a finite non-zero number", self.scaling_factor));
        }
        if self.shift_factor.is_some_and(|shift| !shift.is_finite()) {
            return bad("shift_factor", "expected a finite number or null".to_string());
        }
        Ok(())
    }

    /// Every channel count is from 1 to [`MAX_CHANNELS`], and the block channels divide into `norm_num_groups`.
    fn check_channels(&self, path: &Path) -> Result<()> {
        let in_range = |field: &str, n: usize| {
            if (1..=MAX_CHANNELS).contains(&n) {
                Ok(())
            } else {
                Err(Error::bad_input(path, field, format!("{n}: expected 1 to {MAX_CHANNELS}")))
            }
        };
        in_range("in_channels", self.in_channels)?;
        in_range("out_channels", self.out_channels)?;
        in_range("latent_channels", self.latent_channels)?;
        in_range("norm_num_groups", self.norm_num_groups)?;
        for &channels in &self.block_out_channels {
            in_range("block_out_channels", channels)?;
            if channels % self.norm_num_groups != 0 {
                let problem = format!(
                    "{channels} channels do not split into norm_num_groups = {} GroupNorm groups",
                    self.norm_num_groups
                );
                return Err(Error::bad_input(path, "block_out_channels", problem));
            }
        }
        Ok(())
    }
}

/// `types` has one entry per block, each `expected`.
fn check_block_types(path: &Path, field: &str, types: &[String], expected: &str, blocks: usize) -> Result<()> {
    if types.len() != blocks {
        let problem = format!("{} entries, but block_out_channels has {blocks}", types.len());
        return Err(Error::bad_input(path, field, problem));
    }
    match types.iter().find(|t| t.as_str() != expected) {
        Some(other) => Err(Error::bad_input(path, field, format!("`{other}`: AutoencoderKL builds only `{expected}`"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_diffusers_defaults_and_lists_give_the_first_side() {
        let config: AutoencoderKlConfig = serde_json::from_str(r#"{"sample_size": [48, 64]}"#).unwrap();
        assert_eq!(config.block_out_channels, vec![64]);
        assert_eq!((config.tile_sample_size(), config.downsampling()), (48, 1));
        config.validate(Path::new("config.json")).unwrap();
    }

    #[test]
    fn a_wrong_class_or_uneven_groups_name_the_field() {
        let path = Path::new("x/config.json");
        let other = AutoencoderKlConfig { class_name: "VQModel".into(), ..Default::default() };
        let message = other.validate(path).unwrap_err().to_string();
        assert!(message.contains("x/config.json") && message.contains("_class_name"), "{message}");
        let uneven = AutoencoderKlConfig { block_out_channels: vec![48], ..Default::default() };
        assert!(uneven.validate(path).unwrap_err().to_string().contains("block_out_channels"));
    }
}
