//! Bernoulli decoder from logits l: -log p(x|z) = sum_d [ softplus(l_d) - x_d * l_d ].
//!
//! Written in the stable form max(l, 0) - x * l + log(1 + exp(-|l|)), which never overflows and accepts grey
//! targets x in [0, 1] (binary cross-entropy with soft labels, as in the classic PyTorch example).

use candle_core::{Tensor, D};

use crate::Result;

/// -log Bernoulli(x; sigmoid(logits)) per example, summed over dimensions; shape `[batch]`.
pub fn negative_log_prob(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    // -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|))
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_dimension = ((logits.relu()? - (x * logits)?)? + softplus_tail)?;
    Ok(per_dimension.sum(D::Minus1)?)
}
