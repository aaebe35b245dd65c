//! diffusers' `Encoder` (with `double_z`): images to the moments (mean and log-variance) of q(z|x).

use candle_core::Tensor;
use candle_nn::{Conv2d, VarBuilder};

use super::attention::MidBlock;
use super::config::{AutoencoderKlConfig, KlActivation};
use super::layers::{conv3x3, convolve, Downsample};
use super::norm::GroupNorm;
use super::resnet::{resnet_stack, through, ResnetBlock};
use crate::Result;

/// diffusers' `DownEncoderBlock2D`: ResNet blocks, then (except in the last block) a downsampler.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsampler: Option<Downsample>,
}

impl DownBlock {
    /// The block from `in_channels` to `out_channels` with `layers` ResNets; weights `resnets.{j}` and
    /// `downsamplers.0`.
    pub fn new(
        (in_channels, out_channels): (usize, usize),
        layers: usize,
        downsample: bool,
        (groups, activation): (usize, KlActivation),
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnet_stack((in_channels, out_channels), layers, (groups, activation), &vb)?;
        let downsampler = downsample.then(|| Downsample::new(out_channels, vb.pp("downsamplers.0")));
        Ok(DownBlock { resnets, downsampler: downsampler.transpose()? })
    }

    /// The block applied to `[batch, C_in, H, W]` maps.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = through(&self.resnets, x)?;
        match &self.downsampler {
            Some(downsampler) => downsampler.forward(&h),
            None => Ok(h),
        }
    }
}

/// conv_in, the down blocks, the middle block, GroupNorm, SiLU and conv_out to 2 x latent channels.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// The encoder of `config` (checked with [`AutoencoderKlConfig::validate`]); weights under `vb` (`encoder`).
    pub fn new(config: &AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        let (channels, groups, activation) = (&config.block_out_channels, config.norm_num_groups, config.activation()?);
        let first = channels.first().copied().unwrap_or(config.in_channels);
        let last = channels.last().copied().unwrap_or(first);
        let mut down_blocks = Vec::with_capacity(channels.len());
        for (i, &out) in channels.iter().enumerate() {
            let from = if i == 0 { first } else { channels[i - 1] };
            let downsample = i + 1 < channels.len();
            let sides = (from, out);
            let vb_block = vb.pp("down_blocks").pp(i);
            down_blocks.push(DownBlock::new(
                sides,
                config.layers_per_block,
                downsample,
                (groups, activation),
                vb_block,
            )?);
        }
        Ok(Encoder {
            conv_in: conv3x3(config.in_channels, first, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(last, groups, activation, config.mid_block_add_attention, vb.pp("mid_block"))?,
            conv_norm_out: GroupNorm::new(groups, last, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(last, 2 * config.latent_channels, vb.pp("conv_out"))?,
        })
    }

    /// `[batch, in_channels, H, W]` images to `[batch, 2 * latent_channels, H / f, W / f]` moments.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = convolve(&self.conv_in, x)?;
        let h = self.down_blocks.iter().try_fold(h, |h, block| block.forward(&h))?;
        let h = self.mid_block.forward(&h)?;
        // the output layers always use SiLU, whatever act_fn says
        let h = self.conv_norm_out.forward(&h, Some(KlActivation::Silu))?;
        convolve(&self.conv_out, &h)
    }
}
