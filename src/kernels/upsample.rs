//! Nearest-neighbour upsampling by 2 of `[batch, C, H, W]` maps as a differentiable op on contiguous f32 CPU maps:
//! y[2i + a, 2j + b] = x[i, j], and its gradient dx[i, j] = sum over a, b of dy[2i + a, 2j + b]. As candle ops
//! (a broadcast), the gradient is a strided sum over two axes, which took a sizeable share of a KL autoencoder's
//! training step; `model::autoencoder_kl::layers` holds this op to that composition.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// y = nearest 2x upsampling of x.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nearest2x;

/// dx = the 2 x 2 block sums of dy (no gradient of its own).
#[derive(Debug, Clone, Copy)]
struct BlockSums2x;

impl CustomOp1 for Nearest2x {
    fn name(&self) -> &'static str {
        "nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let mut out = vec![0f32; x.len() * 4];
        out.par_chunks_exact_mut(4 * width).zip(x.par_chunks_exact(width)).for_each(|(rows, row)| {
            let (top, bottom) = rows.split_at_mut(2 * width);
            for (pair, &value) in top.chunks_exact_mut(2).zip(row) {
                pair.fill(value);
            }
            bottom.copy_from_slice(top);
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, 2 * height, 2 * width))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&BlockSums2x)?))
    }
}

impl CustomOp1 for BlockSums2x {
    fn name(&self) -> &'static str {
        "block-sums-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(storage, layout, self.name())?;
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let (half_h, half_w) = (height / 2, width / 2);
        if 2 * half_h != height || 2 * half_w != width {
            candle_core::bail!("{}: sides {height} x {width} are not even", self.name());
        }
        let mut out = vec![0f32; batch * channels * half_h * half_w];
        out.par_chunks_exact_mut(half_w).zip(grad.par_chunks_exact(2 * width)).for_each(|(row, rows)| {
            let (top, bottom) = rows.split_at(width);
            for (j, slot) in row.iter_mut().enumerate() {
                *slot = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, half_h, half_w))))
    }
}
