//! diffusers' `Decoder`: a latent to the image, through the middle block and up blocks of layers_per_block + 1
//! ResNets each.

use candle_core::Tensor;
use candle_nn::{Conv2d, VarBuilder};

use super::attention::MidBlock;
use super::config::{AutoencoderKlConfig, KlActivation};
use super::layers::{conv3x3, convolve, Upsample};
use super::norm::GroupNorm;
use super::resnet::{resnet_stack, through, ResnetBlock};
use crate::Result;

/// diffusers' `UpDecoderBlock2D`: ResNet blocks, then (except in the last block) an upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Upsample>,
}

impl UpBlock {
    /// The block from `in_channels` to `out_channels` with `layers` ResNets; weights `resnets.{j}` and
    /// `upsamplers.0`.
    pub fn new(
        (in_channels, out_channels): (usize, usize),
        layers: usize,
        upsample: bool,
        (groups, activation): (usize, KlActivation),
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnet_stack((in_channels, out_channels), layers, (groups, activation), &vb)?;
        let upsampler = upsample.then(|| Upsample::new(out_channels, vb.pp("upsamplers.0")));
        Ok(UpBlock { resnets, upsampler: upsampler.transpose()? })
    }

    /// The block applied to `[batch, C_in, h, w]` maps.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = through(&self.resnets, x)?;
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&h),
            None => Ok(h),
        }
    }
}

/// conv_in, the middle block, the up blocks (channels in reverse), GroupNorm, SiLU and conv_out.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// The decoder of `config` (checked with [`AutoencoderKlConfig::validate`]); weights under `vb` (`decoder`).
    pub fn new(config: &AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        let (groups, activation) = (config.norm_num_groups, config.activation()?);
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let top = reversed.first().copied().unwrap_or(config.latent_channels);
        let bottom = reversed.last().copied().unwrap_or(top);
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &out) in reversed.iter().enumerate() {
            let from = if i == 0 { top } else { reversed[i - 1] };
            let upsample = i + 1 < reversed.len();
            let vb_block = vb.pp("up_blocks").pp(i);
            let layers = config.layers_per_block + 1;
            up_blocks.push(UpBlock::new((from, out), layers, upsample, (groups, activation), vb_block)?);
        }
        Ok(Decoder {
            conv_in: conv3x3(config.latent_channels, top, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(top, groups, activation, config.mid_block_add_attention, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: GroupNorm::new(groups, bottom, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(bottom, config.out_channels, vb.pp("conv_out"))?,
        })
    }

    /// `[batch, latent_channels, h, w]` latents to `[batch, out_channels, h * f, w * f]` images.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.output_layer(&self.features(z)?)
    }

    /// Everything before the last layer: the maps `conv_out` takes, `[batch, block_out_channels[0], H, W]`.
    pub fn features(&self, z: &Tensor) -> Result<Tensor> {
        let h = convolve(&self.conv_in, z)?;
        let h = self.mid_block.forward(&h)?;
        let h = self.up_blocks.iter().try_fold(h, |h, block| block.forward(&h))?;
        // the output layers always use SiLU, whatever act_fn says
        self.conv_norm_out.forward(&h, Some(KlActivation::Silu))
    }

    /// The last layer, `conv_out`, applied to [`Self::features`]: the layer whose gradients LDM's adaptive
    /// discriminator weight compares.
    pub fn output_layer(&self, features: &Tensor) -> Result<Tensor> {
        convolve(&self.conv_out, features)
    }
}
