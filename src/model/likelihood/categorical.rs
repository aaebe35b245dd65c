//! Categorical decoder: a softmax over K levels per data dimension.
//! -log p(x|z) = sum_d [ logsumexp_k(l_{d,k}) - l_{d, x_d} ], with x_d the level index of the data value.

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// A categorical likelihood over `levels` values for each of `data_dim` dimensions.
#[derive(Debug, Clone)]
pub struct Categorical {
    levels: usize,
    data_dim: usize,
}

impl Categorical {
    /// Creates the likelihood; `levels` must be at least 2.
    pub fn new(levels: usize, data_dim: usize) -> Result<Self> {
        if levels < 2 {
            return Err(Error::invalid_setting(
                "levels",
                format!("a categorical decoder needs at least 2 levels, got {levels}"),
            ));
        }
        Ok(Categorical { levels, data_dim })
    }

    /// The level index of each value in [0, 1]: round(x * (K - 1)), as u32, shape `[batch, data_dim, 1]`.
    pub fn quantize(&self, x: &Tensor) -> Result<Tensor> {
        let scaled = x.affine((self.levels - 1) as f64, 0.0)?.round()?;
        let clamped = scaled.clamp(0.0, (self.levels - 1) as f64)?;
        Ok(clamped.to_dtype(DType::U32)?.unsqueeze(D::Minus1)?)
    }

    /// The number of levels K.
    pub fn levels(&self) -> usize {
        self.levels
    }

    fn log_probs(&self, logits: &Tensor) -> Result<Tensor> {
        let batch = logits.dim(0)?;
        Ok(candle_nn::ops::log_softmax(&logits.reshape((batch, self.data_dim, self.levels))?, D::Minus1)?)
    }

    /// -log p(x|z) per example, summed over dimensions; `logits` is `[batch, data_dim * levels]`.
    pub fn negative_log_prob(&self, logits: &Tensor, x: &Tensor) -> Result<Tensor> {
        // -log p(x|z) = sum_d ( logsumexp_k l_{d,k} - l_{d,x_d} )
        let chosen = self.log_probs(logits)?.gather(&self.quantize(x)?, D::Minus1)?;
        Ok(chosen.squeeze(D::Minus1)?.sum(D::Minus1)?.neg()?)
    }

    /// The expected value sum_k p_k * k / (K - 1), in [0, 1]; shape `[batch, data_dim]`.
    pub fn mean(&self, logits: &Tensor) -> Result<Tensor> {
        let probs = self.log_probs(logits)?.exp()?;
        let level_values: Vec<f32> = (0..self.levels).map(|k| k as f32 / (self.levels - 1) as f32).collect();
        let level_values = Tensor::from_vec(level_values, self.levels, logits.device())?.to_dtype(logits.dtype())?;
        Ok(probs.broadcast_mul(&level_values)?.sum(D::Minus1)?)
    }
}
