//! The middle block's single-head self-attention (diffusers' `Attention` with a GroupNorm and a residual), and the
//! middle block around it.

use candle_core::{Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::KlActivation;
use super::norm::GroupNorm;
use super::resnet::ResnetBlock;
use crate::Result;

/// Self-attention over the H x W positions with one head of all C channels:
/// out = x + W_o softmax(Q K^T / sqrt(C)) V + b_o, with Q, K, V linear maps of GroupNorm(x).
///
/// Weights `group_norm`, `to_q`, `to_k`, `to_v` and `to_out.0`; files written before diffusers 0.14 name the last
/// four `query`, `key`, `value` and `proj_attn`, which the loader ([`super::load`]) maps to these names.
#[derive(Debug, Clone)]
pub struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    /// The attention over `channels` channels, normalized in `groups` groups.
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let linear = |name: &str| candle_nn::linear(channels, channels, vb.pp(name));
        Ok(Attention {
            group_norm: GroupNorm::new(groups, channels, vb.pp("group_norm"))?,
            to_q: linear("to_q")?,
            to_k: linear("to_k")?,
            to_v: linear("to_v")?,
            to_out: linear("to_out.0")?,
        })
    }

    /// The attention applied to `[batch, C, H, W]` maps.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        // tokens: [batch, H * W, C]
        let tokens = self.group_norm.forward(x, None)?.reshape((batch, channels, height * width))?.transpose(1, 2)?;
        let tokens = tokens.contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        // weights = softmax(Q K^T / sqrt(C)) over the keys
        let scores = (q.matmul(&k.t()?)? * (1.0 / (channels as f64).sqrt()))?;
        let weights = softmax_over_keys(&scores)?;
        let attended = self.to_out.forward(&weights.matmul(&v)?)?;
        let maps = attended.transpose(1, 2)?.reshape((batch, channels, height, width))?;
        // out = x + attention
        Ok((x + maps)?)
    }
}

/// softmax over the last axis: candle's fused kernel when no gradient is wanted, its differentiable composition
/// (exp(s - max) / sum exp(s - max)) when `scores` depends on a variable being trained.
fn softmax_over_keys(scores: &Tensor) -> Result<Tensor> {
    if scores.track_op() {
        Ok(candle_nn::ops::softmax(scores, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(scores)?)
    }
}

/// diffusers' `UNetMidBlock2D` without a time embedding: ResNet, attention (when on), ResNet, all at C channels.
#[derive(Debug, Clone)]
pub struct MidBlock {
    first: ResnetBlock,
    attention: Option<Attention>,
    second: ResnetBlock,
}

impl MidBlock {
    /// The middle block of `channels` channels; weights `resnets.0`, `attentions.0` and `resnets.1`.
    pub fn new(
        channels: usize,
        groups: usize,
        activation: KlActivation,
        add_attention: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnet =
            |index: usize| ResnetBlock::new(channels, channels, groups, activation, vb.pp("resnets").pp(index));
        let attention = add_attention.then(|| Attention::new(channels, groups, vb.pp("attentions.0")));
        Ok(MidBlock { first: resnet(0)?, attention: attention.transpose()?, second: resnet(1)? })
    }

    /// The block applied to `[batch, C, H, W]` maps.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x)?;
        let h = match &self.attention {
            Some(attention) => attention.forward(&h)?,
            None => h,
        };
        self.second.forward(&h)
    }
}
