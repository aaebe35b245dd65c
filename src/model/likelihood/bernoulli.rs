//! Bernoulli decoder from logits l: -log p(x|z) = sum_d [ softplus(l_d) - x_d * l_d ].
//!
//! Written in the stable form max(l, 0) - x * l + log(1 + exp(-|l|)), which never overflows and accepts grey
//! targets x in [0, 1] (binary cross-entropy with soft labels, as in the classic PyTorch example).
//! On CPU in f32 it is one fused pass per example (forward) and one per value (backward: sigmoid(l) - x),
//! instead of ten allocating ops over `[batch, dim]`; tests hold it to the tensor-op form.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use super::repeat_rows;
use crate::kernels::contiguous_f32;
use crate::kernels::likelihood::{bernoulli_gradient, bernoulli_row_sums, Targets};
use crate::Result;

/// -log Bernoulli(x; sigmoid(logits)) per example, summed over dimensions; shape `[batch]`.
pub fn negative_log_prob(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    negative_log_prob_of_draws(logits, x, 1)
}

/// -log Bernoulli(x_n; sigmoid(logits_nk)) for `draws` rows of logits per example (grouped by example, `[batch *
/// draws, dim]`) against the examples x `[batch, dim]`; shape `[batch * draws]`. The fused CPU kernel reads each
/// example's row once per draw in place; elsewhere, and where x itself needs a gradient, x is repeated first.
pub fn negative_log_prob_of_draws(logits: &Tensor, x: &Tensor, draws: usize) -> Result<Tensor> {
    let draws = draws.max(1);
    let (rows, dim) = (logits.dim(0)?, logits.dim(D::Minus1)?);
    let fusable =
        logits.device().is_cpu() && logits.dtype() == DType::F32 && x.dtype() == DType::F32 && logits.rank() == 2;
    let paired = rows % draws == 0 && x.dims() == [rows / draws, dim];
    // a tracked x would need its gradient summed over its draws: candle's ops on x repeated do that
    if fusable && paired && (draws == 1 || !x.track_op()) {
        return Ok(logits.apply_op2(x, FusedBernoulli { draws })?);
    }
    negative_log_prob_unfused(logits, &repeat_rows(x, draws)?)
}

/// The same with candle's tensor ops, on any device.
pub fn negative_log_prob_unfused(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    // -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|))
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_dimension = ((logits.relu()? - (x * logits)?)? + softplus_tail)?;
    Ok(per_dimension.sum(D::Minus1)?)
}

/// Forward: logits `[n * draws, d]`, targets `[n, d]` -> per-row sums `[n * draws]`.
struct FusedBernoulli {
    draws: usize,
}

impl CustomOp2 for FusedBernoulli {
    fn name(&self) -> &'static str {
        "fused-bernoulli"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets) = (contiguous_f32(ls, ll, self.name())?, contiguous_f32(xs, xl, self.name())?);
        let (rows, dim) = ll.shape().dims2()?;
        let sums = bernoulli_row_sums(logits, Targets::new(targets, dim, self.draws));
        Ok((CpuStorage::F32(sums), Shape::from(rows)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        x: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dl = sigmoid(l) - x;  d/dx = -l (only when the targets are themselves computed)
        let grad_logits =
            logits.apply_op3_no_bwd(x, &grad_res.contiguous()?, &BernoulliGradient { draws: self.draws })?;
        let grad_x = if x.track_op() { Some(logits.broadcast_mul(&grad_res.unsqueeze(1)?)?.neg()?) } else { None };
        Ok((Some(grad_logits), grad_x))
    }
}

/// Backward: logits `[n * draws, d]`, targets `[n, d]`, upstream gradient `[n * draws]` -> g_i * (sigmoid(l_i) -
/// x_{i / draws}), `[n * draws, d]`.
struct BernoulliGradient {
    draws: usize,
}

impl CustomOp3 for BernoulliGradient {
    fn name(&self) -> &'static str {
        "fused-bernoulli-gradient"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets, upstream) = (
            contiguous_f32(ls, ll, self.name())?,
            contiguous_f32(xs, xl, self.name())?,
            contiguous_f32(gs, gl, self.name())?,
        );
        let (_, dim) = ll.shape().dims2()?;
        let grad = bernoulli_gradient(logits, Targets::new(targets, dim, self.draws), upstream);
        Ok((CpuStorage::F32(grad), ll.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    #[test]
    fn fused_matches_the_tensor_ops_in_values_and_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for (rows, dim) in [(1, 1), (3, 7), (128, 784), (33, 65), (700, 300)] {
            let values = |rng: &mut rand_chacha::ChaCha8Rng, low: f32, high: f32| -> Vec<f32> {
                (0..rows * dim).map(|_| rng.random_range(low..high)).collect()
            };
            let logits = Var::from_vec(values(&mut rng, -30.0, 30.0), (rows, dim), &Device::Cpu).unwrap();
            let x = Tensor::from_vec(values(&mut rng, 0.0, 1.0), (rows, dim), &Device::Cpu).unwrap();
            let weights = Tensor::from_vec(
                (0..rows).map(|_| rng.random_range(0.5f32..1.5)).collect::<Vec<_>>(),
                rows,
                &Device::Cpu,
            )
            .unwrap();
            let (fused, unfused) =
                (negative_log_prob(&logits, &x).unwrap(), negative_log_prob_unfused(&logits, &x).unwrap());
            let relative =
                ((&fused - &unfused).unwrap().abs().unwrap() / (unfused.abs().unwrap() + 1.0).unwrap()).unwrap();
            let difference = relative.max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(difference < 1e-5, "{rows}x{dim}: values differ by {difference} (relative)");
            let gradient = |t: Tensor| {
                (t * &weights).unwrap().sum_all().unwrap().backward().unwrap().get(logits.as_tensor()).unwrap().clone()
            };
            let (a, b) = (gradient(fused), gradient(unfused));
            let difference =
                (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(difference < 1e-5, "{rows}x{dim}: gradients differ by {difference}");
        }
    }
}
