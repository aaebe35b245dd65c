//! Bernoulli decoder from logits l: -log p(x|z) = sum_d [ softplus(l_d) - x_d * l_d ].
//!
//! Written in the stable form max(l, 0) - x * l + log(1 + exp(-|l|)), which never overflows and accepts grey
//! targets x in [0, 1] (binary cross-entropy with soft labels, as in the classic PyTorch example).
//! On CPU in f32 it is one fused pass per example (forward) and one per value (backward: sigmoid(l) - x),
//! instead of ten allocating ops over `[batch, dim]`; tests hold it to the tensor-op form.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, wide_fn, worth_parallel};
use crate::fast_math;
use crate::Result;

/// -log Bernoulli(x; sigmoid(logits)) per example, summed over dimensions; shape `[batch]`.
pub fn negative_log_prob(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    let fusable =
        logits.device().is_cpu() && logits.dtype() == DType::F32 && x.dtype() == DType::F32 && logits.rank() == 2;
    if fusable && logits.shape() == x.shape() {
        return Ok(logits.apply_op2(x, FusedBernoulli)?);
    }
    negative_log_prob_unfused(logits, x)
}

/// The same with candle's tensor ops, on any device.
pub fn negative_log_prob_unfused(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    // -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|))
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_dimension = ((logits.relu()? - (x * logits)?)? + softplus_tail)?;
    Ok(per_dimension.sum(D::Minus1)?)
}

/// -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|)) for one value (the gradient part of
/// [`term_and_gradient`] is dropped by the compiler when unused).
#[inline(always)]
fn term(l: f32, x: f32) -> f32 {
    term_and_gradient(l, x, 0.0).0
}

/// Accumulator lanes of a row sum: independent partial sums let the loop vectorise (a single in-order float sum
/// cannot be reordered by the compiler); the order is fixed, so results stay reproducible.
const LANES: usize = 8;

wide_fn! {
    /// sum_d term(l_d, x_d) over one example.
    fn row_sum(logits: &[f32], targets: &[f32]) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let (l_chunks, x_chunks) = (logits.chunks_exact(LANES), targets.chunks_exact(LANES));
        let tail: f32 = l_chunks.remainder().iter().zip(x_chunks.remainder()).map(|(&l, &x)| term(l, x)).sum();
        for (l, x) in l_chunks.zip(x_chunks) {
            for lane in 0..LANES {
                lanes[lane] += term(l[lane], x[lane]);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

wide_fn! {
    /// One example's gradient: out_d = g * (sigmoid(l_d) - x_d).
    fn gradient_row(out: &mut [f32], logits: &[f32], targets: &[f32], g: f32) {
        out.iter_mut().zip(logits).zip(targets).for_each(|((o, &l), &x)| *o = g * (fast_math::sigmoid(l) - x));
    }
}

/// -log p(x|z) of each example: logits and targets `[n, dim]` -> `[n]`, over the threads when worth it.
pub(crate) fn row_sums(logits: &[f32], targets: &[f32], dim: usize) -> Vec<f32> {
    let row_sum = |(l, x): (&[f32], &[f32])| row_sum(l, x);
    let dim = dim.max(1);
    if worth_parallel(logits.len()) {
        logits.par_chunks(dim).zip(targets.par_chunks(dim)).map(row_sum).collect()
    } else {
        logits.chunks(dim).zip(targets.chunks(dim)).map(row_sum).collect()
    }
}

/// The gradient of sum_n g_n * (-log p(x_n|z_n)) for the logits: g_n * (sigmoid(l) - x), `[n, dim]`, from logits
/// and targets `[n, dim]` and the upstream gradient g `[n]`.
pub(crate) fn gradient_values(logits: &[f32], targets: &[f32], upstream: &[f32], dim: usize) -> Vec<f32> {
    let mut grad = vec![0.0f32; logits.len()];
    let fill = |((out, l), (x, &g)): RowPair<'_>| {
        gradient_row(out, l, x, g);
    };
    let dim = dim.max(1);
    if worth_parallel(logits.len()) {
        grad.par_chunks_mut(dim)
            .zip(logits.par_chunks(dim))
            .zip(targets.par_chunks(dim).zip(upstream.par_iter()))
            .for_each(fill);
    } else {
        grad.chunks_mut(dim).zip(logits.chunks(dim)).zip(targets.chunks(dim).zip(upstream.iter())).for_each(fill);
    }
    grad
}

/// -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|)) for one value, with g * (sigmoid(l) - x): the one
/// exp(-|l|) serves both, as sigmoid(l) = 1 / (1 + exp(-|l|)) for l >= 0 and exp(-|l|) / (1 + exp(-|l|)) below.
#[inline(always)]
fn term_and_gradient(l: f32, x: f32, g: f32) -> (f32, f32) {
    let e = fast_math::exp(-l.abs());
    let sigmoid = if l >= 0.0 { 1.0 } else { e } / (1.0 + e);
    (l.max(0.0) - x * l + fast_math::ln_1p_unit(e), g * (sigmoid - x))
}

wide_fn! {
    /// One example's sum_d term(l_d, x_d), with its gradient g * (sigmoid(l_d) - x_d) written to `grad`.
    fn loss_and_gradient_row(grad: &mut [f32], logits: &[f32], targets: &[f32], g: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let full = logits.len() / LANES * LANES;
        let chunks = grad.chunks_exact_mut(LANES).zip(logits.chunks_exact(LANES)).zip(targets.chunks_exact(LANES));
        for ((out, l), x) in chunks {
            for lane in 0..LANES {
                let (term, gradient) = term_and_gradient(l[lane], x[lane], g);
                lanes[lane] += term;
                out[lane] = gradient;
            }
        }
        let mut tail = 0.0f32;
        for index in full..logits.len() {
            let (term, gradient) = term_and_gradient(logits[index], targets[index], g);
            tail += term;
            grad[index] = gradient;
        }
        lanes.iter().sum::<f32>() + tail
    }
}

/// Each example's -log p(x|z) (`[n]`) and the gradient of g * (their sum) for the logits (`[n, dim]`), in one
/// pass over logits and targets `[n, dim]`.
pub(crate) fn loss_and_gradient(logits: &[f32], targets: &[f32], dim: usize, g: f32) -> (Vec<f32>, Vec<f32>) {
    let mut grad = vec![0.0f32; logits.len()];
    let dim = dim.max(1);
    let row = |((out, l), x): ((&mut [f32], &[f32]), &[f32])| loss_and_gradient_row(out, l, x, g);
    let losses = if worth_parallel(logits.len()) {
        grad.par_chunks_mut(dim).zip(logits.par_chunks(dim)).zip(targets.par_chunks(dim)).map(row).collect()
    } else {
        grad.chunks_mut(dim).zip(logits.chunks(dim)).zip(targets.chunks(dim)).map(row).collect()
    };
    (losses, grad)
}

/// Forward: logits `[n, d]`, targets `[n, d]` -> per-example sums `[n]`.
struct FusedBernoulli;

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
        let sums = row_sums(logits, targets, dim);
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
        let grad_logits = logits.apply_op3_no_bwd(x, &grad_res.contiguous()?, &BernoulliGradient)?;
        let grad_x = if x.track_op() { Some(logits.broadcast_mul(&grad_res.unsqueeze(1)?)?.neg()?) } else { None };
        Ok((Some(grad_logits), grad_x))
    }
}

/// One row of the gradient kernel: (output, logits) with (targets, upstream gradient).
type RowPair<'a> = ((&'a mut [f32], &'a [f32]), (&'a [f32], &'a f32));

/// Backward: logits `[n, d]`, targets `[n, d]`, upstream gradient `[n]` -> g_n * (sigmoid(l) - x), `[n, d]`.
struct BernoulliGradient;

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
        let grad = gradient_values(logits, targets, upstream, dim);
        Ok((CpuStorage::F32(grad), ll.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_one_pass_loss_and_gradient_match_the_separate_kernels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (rows, dim) in [(1, 1), (3, 7), (64, 784), (5, 17)] {
            let logits: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-40.0..40.0)).collect();
            let targets: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(0.0..1.0)).collect();
            let (losses, grad) = loss_and_gradient(&logits, &targets, dim, 0.25);
            assert_eq!(losses, row_sums(&logits, &targets, dim), "{rows}x{dim}: the same terms in the same order");
            let expected = gradient_values(&logits, &targets, &vec![0.25; rows], dim);
            let worst = grad.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-7, "{rows}x{dim}: gradients differ by {worst}");
        }
    }

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
