//! diffusers' `ResnetBlock2D` as the KL autoencoder uses it (no time embedding, output scale 1).

use candle_core::Tensor;
use candle_nn::{Conv2d, VarBuilder};

use super::config::KlActivation;
use super::layers::{conv1x1, conv3x3, convolve};
use super::norm::GroupNorm;
use crate::Result;

/// x + conv2(act(norm2(conv1(act(norm1(x)))))), with a 1 x 1 `conv_shortcut` on x when the channels change.
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    activation: KlActivation,
}

impl ResnetBlock {
    /// The block from `in_channels` to `out_channels`; weights `norm1`, `conv1`, `norm2`, `conv2` and, when the
    /// channels change, `conv_shortcut`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        activation: KlActivation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv_shortcut =
            (in_channels != out_channels).then(|| conv1x1(in_channels, out_channels, vb.pp("conv_shortcut")));
        Ok(ResnetBlock {
            norm1: GroupNorm::new(groups, in_channels, vb.pp("norm1"))?,
            conv1: conv3x3(in_channels, out_channels, vb.pp("conv1"))?,
            norm2: GroupNorm::new(groups, out_channels, vb.pp("norm2"))?,
            conv2: conv3x3(out_channels, out_channels, vb.pp("conv2"))?,
            conv_shortcut: conv_shortcut.transpose()?,
            activation,
        })
    }

    /// The block applied to `[batch, C_in, H, W]` maps.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x, Some(self.activation))?;
        let h = convolve(&self.conv1, &h)?;
        let h = self.norm2.forward(&h, Some(self.activation))?;
        let h = convolve(&self.conv2, &h)?;
        // out = shortcut(x) + h
        let skip = match &self.conv_shortcut {
            Some(shortcut) => convolve(shortcut, x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

/// `layers` ResNets from `in_channels` to `out_channels` (the first one changes the channels), weights
/// `resnets.{j}` under `vb`: the body of a down or up block.
pub fn resnet_stack(
    (in_channels, out_channels): (usize, usize),
    layers: usize,
    (groups, activation): (usize, KlActivation),
    vb: &VarBuilder,
) -> Result<Vec<ResnetBlock>> {
    (0..layers)
        .map(|j| {
            let from = if j == 0 { in_channels } else { out_channels };
            ResnetBlock::new(from, out_channels, groups, activation, vb.pp("resnets").pp(j))
        })
        .collect()
}

/// `x` through the ResNets in turn.
pub fn through(resnets: &[ResnetBlock], x: &Tensor) -> Result<Tensor> {
    resnets.iter().try_fold(x.clone(), |h, resnet| resnet.forward(&h))
}
