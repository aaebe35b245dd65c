//! The middle block's single-head self-attention (diffusers' `Attention` with a GroupNorm and a residual), and the
//! middle block around it.

use candle_core::{Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::KlActivation;
use super::norm::GroupNorm;
use super::resnet::ResnetBlock;
use crate::Result;

/// Queries per block of the attention: the score matrix held at once is QUERY_CHUNK x (H * W), so an image run
/// whole (without tiling) needs memory linear in its number of positions, not quadratic.
pub const QUERY_CHUNK: usize = 4096;

/// Self-attention over the H x W positions with one head of all C channels:
/// out = x + W_o softmax(Q K^T / sqrt(C)) V + b_o, with Q, K, V linear maps of GroupNorm(x).
///
/// Weights `group_norm`, `to_q`, `to_k`, `to_v` and `to_out.0`; files written before diffusers 0.14 name the last
/// four `query`, `key`, `value` and `proj_attn`, which the loader ([`mod@super::load`]) maps to these names.
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
        let attended = self.to_out.forward(&attend(&q, &k, &v, QUERY_CHUNK)?)?;
        let maps = attended.transpose(1, 2)?.reshape((batch, channels, height, width))?;
        // out = x + attention
        Ok((x + maps)?)
    }
}

/// softmax(Q K^T / sqrt(C)) V for `[batch, tokens, C]` queries, keys and values, `chunk` queries at a time.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, chunk: usize) -> Result<Tensor> {
    let (_, tokens, channels) = q.dims3()?;
    let key_t = k.t()?;
    let mut parts = Vec::with_capacity(tokens.div_ceil(chunk.max(1)));
    for start in (0..tokens).step_by(chunk.max(1)) {
        let queries = q.narrow(1, start, chunk.min(tokens - start))?;
        // weights = softmax(Q K^T / sqrt(C)) over the keys
        let scores = (queries.matmul(&key_t)? * (1.0 / (channels as f64).sqrt()))?;
        parts.push(softmax_over_keys(&scores)?.matmul(v)?);
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    Ok(Tensor::cat(&parts, 1)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn attention_in_query_chunks_equals_attention_at_once() {
        let qkv: Vec<Tensor> = (0..3).map(|_| Tensor::randn(0f32, 1.0, (2, 10, 4), &Device::Cpu).unwrap()).collect();
        let whole = attend(&qkv[0], &qkv[1], &qkv[2], 64).unwrap();
        let chunked = attend(&qkv[0], &qkv[1], &qkv[2], 3).unwrap();
        let error = (whole - chunked).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(error < 1e-6, "{error}");
    }
}
