//! The decoder likelihoods' terms with their gradients, each one pass over the decoder's output and the data:
//! every example's -log p(x|z), and the gradient of sum_n s_n * (-log p(x_n|z_n)) for the output (and for a
//! learned Gaussian log-variance), with s_n a per-example weight (c = share / rows for the ELBO; for the IWAE bound
//! 1, each row then multiplied by c times its normalised importance weight). Their plain twins are the tensor-op
//! forms in [`crate::model::likelihood`], which the tests hold these to.
//!
//! - Bernoulli, from logits l: -log p(x|z) = sum_d [ max(l, 0) - x l + log(1 + exp(-|l|)) ]; d/dl = sigmoid(l) - x.
//! - Gaussian with mean m: -log p(x|z) = 0.5 * sum_d [ log 2pi + log sigma_d^2 + (x - m)^2 / sigma_d^2 ];
//!   d/dm = (m - x) / sigma_d^2;  d/dlog sigma_d^2 = 0.5 * (1 - (x - m)^2 / sigma_d^2).
//! - Categorical over K levels: -log p(x|z) = sum_d [ logsumexp_k l_{d,k} - l_{d,x_d} ], x_d = round(x (K - 1));
//!   d/dl_{d,k} = softmax_k(l_d) - [k = x_d].

use rayon::prelude::*;

use super::transpose::transpose_into;
use super::{fast_math, wide_fn, worth_parallel};
use crate::model::gaussian::LN_2PI;

/// Accumulator lanes of a row sum: independent partial sums let the loop vectorise (a single in-order float sum
/// cannot be reordered by the compiler); the order is fixed, so results are the same at every SIMD level.
const LANES: usize = 8;

/// A chunk of rows with its index: (chunk, ((gradient, output), scales)).
type RowChunk<'a> = (usize, ((&'a mut [f32], &'a [f32]), &'a [f32]));

/// One row of the Bernoulli gradient with its index: (row, ((gradient, logits), upstream gradient)).
type GradientRow<'a> = (usize, ((&'a mut [f32], &'a [f32]), &'a f32));

/// Rows per parallel chunk: fixed, so the sums of a learned variance's gradient do not depend on the thread count.
const ROWS_PER_CHUNK: usize = 16;

/// A decoder likelihood as the fused kernels compute it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LikelihoodKernel<'a> {
    /// Bernoulli from logits.
    Bernoulli,
    /// Gaussian around the output; `log_var` holds one log sigma^2 for every dimension, or one per dimension.
    Gaussian {
        /// log sigma^2: 1 or `data_dim` values.
        log_var: &'a [f32],
        /// True when log sigma^2 is a parameter that wants its gradient.
        learned: bool,
    },
    /// Softmax over `levels` values per dimension, the levels of a dimension contiguous in the output.
    Categorical {
        /// K.
        levels: usize,
    },
}

/// What [`LikelihoodKernel::loss_and_gradient`] gives.
pub(crate) struct LikelihoodGradients {
    /// -log p(x_n|z_n) of each example.
    pub losses: Vec<f32>,
    /// The gradient for the decoder's output, its shape.
    pub output: Vec<f32>,
    /// The gradient for a learned log sigma^2 (its shape), else `None`.
    pub log_var: Option<Vec<f32>>,
}

/// The data a likelihood scores the decoder's output rows against: output row r against data row r / draws, so
/// that an importance-weighted bound's draws of z (grouped by example) read their example in place instead of a
/// copy of it per draw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets<'a> {
    /// The data, `[examples, dim]`.
    values: &'a [f32],
    /// Values per example.
    dim: usize,
    /// Output rows per example.
    draws: usize,
}

impl<'a> Targets<'a> {
    /// `values` (`[output rows / draws, dim]`), each example scored against `draws` output rows in a row.
    pub(crate) fn new(values: &'a [f32], dim: usize, draws: usize) -> Self {
        Targets { values, dim, draws: draws.max(1) }
    }

    /// The data row that output row `row` is scored against.
    fn row(&self, row: usize) -> &'a [f32] {
        target_row(self.values, row / self.draws, self.dim)
    }

    /// Values per example, at least 1: the width to cut rows of one value per data value with.
    fn width(&self) -> usize {
        self.dim.max(1)
    }
}

impl LikelihoodKernel<'_> {
    /// Decoder outputs per data value.
    fn outputs_per_value(&self) -> usize {
        match self {
            LikelihoodKernel::Categorical { levels } => *levels,
            _ => 1,
        }
    }

    /// The IWAE bound's pass over the output before its importance weights are known: each example's
    /// -log p(x_n|z_n), and the gradient of sum_n (-log p(x_n|z_n)) for the output, every example's weight 1 (the
    /// caller multiplies each row by its weight: [`scale_rows`]). A learned log sigma^2's gradient, which needs the
    /// weights, is [`Self::log_var_gradient`]'s.
    pub(crate) fn losses_and_unit_gradient(&self, output: &[f32], x: Targets, rows: usize) -> (Vec<f32>, Vec<f32>) {
        let without_log_var = match *self {
            LikelihoodKernel::Gaussian { log_var, .. } => LikelihoodKernel::Gaussian { log_var, learned: false },
            other => other,
        };
        let gradients = without_log_var.loss_and_gradient(output, x, &vec![1.0; rows]);
        (gradients.losses, gradients.output)
    }

    /// The gradient of sum_n scales_n * (-log p(x_n|z_n)) for a learned Gaussian log sigma^2 (its shape), from the
    /// mean `[rows, data_dim]` and the data; `None` for every other likelihood.
    pub(crate) fn log_var_gradient(&self, output: &[f32], x: Targets, scales: &[f32]) -> Option<Vec<f32>> {
        let LikelihoodKernel::Gaussian { log_var, learned: true } = *self else { return None };
        let gaussian = GaussianRows::new(log_var, x.dim);
        let mut per_dimension = vec![0.0f32; x.dim];
        for (row, (mean, &s)) in output.chunks_exact(x.width()).zip(scales).enumerate() {
            gaussian.log_var_gradient(&mut per_dimension, mean, x.row(row), s);
        }
        Some(if log_var.len() == 1 { vec![per_dimension.iter().sum()] } else { per_dimension })
    }

    /// Each output row's -log p(x_n|z_n) and the gradients of sum_n scales_n * (-log p(x_n|z_n)), one output row
    /// per entry of `scales`, scored against `x` as [`Targets`] pairs them.
    pub(crate) fn loss_and_gradient(&self, output: &[f32], x: Targets, scales: &[f32]) -> LikelihoodGradients {
        let rows = scales.len();
        let width = (x.dim * self.outputs_per_value()).max(1);
        let mut grad = vec![0.0f32; output.len()];
        let prepared = Prepared::of(self, x.dim);
        let chunk = |(index, ((grad, output), scales)): RowChunk| {
            prepared.chunk(grad, output, (x, index * ROWS_PER_CHUNK), scales)
        };
        let parts: Vec<(Vec<f32>, Option<Vec<f32>>)> = if worth_parallel(output.len()) {
            let grads = grad.par_chunks_mut(ROWS_PER_CHUNK * width).zip(output.par_chunks(ROWS_PER_CHUNK * width));
            grads.zip(scales.par_chunks(ROWS_PER_CHUNK)).enumerate().map(chunk).collect()
        } else {
            let grads = grad.chunks_mut(ROWS_PER_CHUNK * width).zip(output.chunks(ROWS_PER_CHUNK * width));
            grads.zip(scales.chunks(ROWS_PER_CHUNK)).enumerate().map(chunk).collect()
        };
        let mut losses = Vec::with_capacity(rows);
        let mut log_var: Option<Vec<f32>> = None;
        for (part_losses, part_log_var) in parts {
            losses.extend(part_losses);
            if let Some(part) = part_log_var {
                match log_var.as_mut() {
                    Some(total) => super::add_to(total, &part),
                    None => log_var = Some(part),
                }
            }
        }
        LikelihoodGradients { losses, output: grad, log_var }
    }
}

/// A kernel with what it computes once per call before the rows: the Gaussian's per-dimension numbers.
enum Prepared {
    Bernoulli,
    Gaussian {
        rows: GaussianRows,
        /// Whether log sigma^2 wants its gradient, and whether it is one value shared by every dimension.
        learned: bool,
        shared: bool,
    },
    Categorical {
        levels: usize,
    },
}

impl Prepared {
    fn of(kernel: &LikelihoodKernel, data_dim: usize) -> Self {
        match *kernel {
            LikelihoodKernel::Bernoulli => Prepared::Bernoulli,
            LikelihoodKernel::Gaussian { log_var, learned } => {
                Prepared::Gaussian { rows: GaussianRows::new(log_var, data_dim), learned, shared: log_var.len() == 1 }
            }
            LikelihoodKernel::Categorical { levels } => Prepared::Categorical { levels },
        }
    }

    /// [`LikelihoodKernel::loss_and_gradient`] on a chunk of rows, the first of them row `first` of the whole
    /// output: their losses, and their share of a learned log-variance's gradient.
    fn chunk(
        &self,
        grad: &mut [f32],
        output: &[f32],
        (x, first): (Targets, usize),
        scales: &[f32],
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let rows = scales.len();
        let width = output.len() / rows.max(1);
        let row = |n: usize| (n * width..(n + 1) * width, x.row(first + n));
        match *self {
            Prepared::Bernoulli => {
                let losses = (0..rows).map(|n| {
                    let (out, data) = row(n);
                    bernoulli_row(&mut grad[out.clone()], &output[out], data, scales[n])
                });
                (losses.collect(), None)
            }
            Prepared::Categorical { levels } => {
                let losses = (0..rows).map(|n| {
                    let (out, data) = row(n);
                    categorical_row(&mut grad[out.clone()], &output[out], data, levels, scales[n])
                });
                (losses.collect(), None)
            }
            Prepared::Gaussian { rows: ref gaussian, learned, shared } => {
                let mut log_var_grad = learned.then(|| vec![0.0f32; x.dim]);
                let losses = (0..rows).map(|n| {
                    let (out, data) = row(n);
                    let squared = gaussian.row(&mut grad[out.clone()], &output[out.clone()], data, scales[n]);
                    if let Some(total) = log_var_grad.as_mut() {
                        gaussian.log_var_gradient(total, &output[out], data, scales[n]);
                    }
                    gaussian.constant + 0.5 * squared
                });
                let losses = losses.collect();
                let log_var_grad =
                    log_var_grad
                        .map(|per_dimension| if shared { vec![per_dimension.iter().sum()] } else { per_dimension });
                (losses, log_var_grad)
            }
        }
    }
}

/// The Gaussian's per-dimension numbers, computed once per call.
struct GaussianRows {
    /// 1 / sigma_d^2 for every dimension.
    inverse_variance: Vec<f32>,
    /// 0.5 * sum_d (log 2pi + log sigma_d^2): the part of every example's term that does not depend on it.
    constant: f32,
}

impl GaussianRows {
    fn new(log_var: &[f32], data_dim: usize) -> Self {
        let per_dimension: Vec<f32> = (0..data_dim).map(|d| log_var[d.min(log_var.len() - 1)]).collect();
        let log_var_sum: f64 = per_dimension.iter().map(|&v| f64::from(v)).sum();
        GaussianRows {
            inverse_variance: per_dimension.iter().map(|&v| (-v).exp()).collect(),
            constant: (0.5 * (data_dim as f64 * LN_2PI + log_var_sum)) as f32,
        }
    }

    /// One example: writes s (m - x) / sigma^2 to `grad` and returns sum_d (x - m)^2 / sigma_d^2.
    fn row(&self, grad: &mut [f32], mean: &[f32], x: &[f32], s: f32) -> f32 {
        gaussian_row(grad, mean, x, &self.inverse_variance, s)
    }

    /// Adds one example's s * 0.5 * (1 - (x - m)^2 / sigma_d^2) to `total`.
    fn log_var_gradient(&self, total: &mut [f32], mean: &[f32], x: &[f32], s: f32) {
        gaussian_log_var_row(total, mean, x, &self.inverse_variance, s)
    }
}

wide_fn! {
    /// One Gaussian example: grad_d = s (m_d - x_d) / sigma_d^2; returns sum_d (x_d - m_d)^2 / sigma_d^2.
    fn gaussian_row(grad: &mut [f32], mean: &[f32], x: &[f32], inverse_variance: &[f32], s: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let full = mean.len() / LANES * LANES;
        for start in (0..full).step_by(LANES) {
            for (lane, total) in lanes.iter_mut().enumerate() {
                let d = start + lane;
                let difference = mean[d] - x[d];
                let scaled = difference * inverse_variance[d];
                *total += difference * scaled;
                grad[d] = s * scaled;
            }
        }
        let mut tail = 0.0f32;
        for d in full..mean.len() {
            let difference = mean[d] - x[d];
            let scaled = difference * inverse_variance[d];
            tail += difference * scaled;
            grad[d] = s * scaled;
        }
        lanes.iter().sum::<f32>() + tail
    }
}

wide_fn! {
    /// total_d += s * 0.5 * (1 - (x_d - m_d)^2 / sigma_d^2) for one example.
    fn gaussian_log_var_row(total: &mut [f32], mean: &[f32], x: &[f32], inverse_variance: &[f32], s: f32) {
        for (d, total) in total.iter_mut().enumerate() {
            let difference = mean[d] - x[d];
            *total += s * 0.5 * (1.0 - difference * difference * inverse_variance[d]);
        }
    }
}

/// -log p(x|z) = max(l, 0) - x * l + log(1 + exp(-|l|)) for one value, with s * (sigmoid(l) - x): the one
/// exp(-|l|) serves both, as sigmoid(l) = 1 / (1 + exp(-|l|)) for l >= 0 and exp(-|l|) / (1 + exp(-|l|)) below.
#[inline(always)]
fn bernoulli_term_and_gradient(l: f32, x: f32, s: f32) -> (f32, f32) {
    let e = fast_math::exp(-l.abs());
    let sigmoid = if l >= 0.0 { 1.0 } else { e } / (1.0 + e);
    (l.max(0.0) - x * l + fast_math::ln_1p_unit(e), s * (sigmoid - x))
}

/// -log p(x|z) of one Bernoulli value (the gradient part of [`bernoulli_term_and_gradient`] is dropped by the
/// compiler when unused).
#[inline(always)]
fn bernoulli_term(l: f32, x: f32) -> f32 {
    bernoulli_term_and_gradient(l, x, 0.0).0
}

wide_fn! {
    /// One Bernoulli example's sum_d term(l_d, x_d), with its gradient s * (sigmoid(l_d) - x_d) written to `grad`.
    fn bernoulli_row(grad: &mut [f32], logits: &[f32], targets: &[f32], s: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let full = logits.len() / LANES * LANES;
        let chunks = grad.chunks_exact_mut(LANES).zip(logits.chunks_exact(LANES)).zip(targets.chunks_exact(LANES));
        for ((out, l), x) in chunks {
            for lane in 0..LANES {
                let (term, gradient) = bernoulli_term_and_gradient(l[lane], x[lane], s);
                lanes[lane] += term;
                out[lane] = gradient;
            }
        }
        let mut tail = 0.0f32;
        for index in full..logits.len() {
            let (term, gradient) = bernoulli_term_and_gradient(logits[index], targets[index], s);
            tail += term;
            grad[index] = gradient;
        }
        lanes.iter().sum::<f32>() + tail
    }
}

wide_fn! {
    /// sum_d term(l_d, x_d) over one Bernoulli example, without the gradient.
    fn bernoulli_row_sum(logits: &[f32], targets: &[f32]) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let (l_chunks, x_chunks) = (logits.chunks_exact(LANES), targets.chunks_exact(LANES));
        let tail: f32 =
            l_chunks.remainder().iter().zip(x_chunks.remainder()).map(|(&l, &x)| bernoulli_term(l, x)).sum();
        for (l, x) in l_chunks.zip(x_chunks) {
            for lane in 0..LANES {
                lanes[lane] += bernoulli_term(l[lane], x[lane]);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

wide_fn! {
    /// One Bernoulli example's gradient: out_d = g * (sigmoid(l_d) - x_d).
    fn bernoulli_gradient_row(out: &mut [f32], logits: &[f32], targets: &[f32], g: f32) {
        out.iter_mut().zip(logits).zip(targets).for_each(|((o, &l), &x)| *o = g * (fast_math::sigmoid(l) - x));
    }
}

/// -log p(x|z) of each Bernoulli example: logits `[n * draws, dim]` against `targets` `[n, dim]` (paired as
/// [`Targets`] says: draws of z grouped by example, so that an importance-weighted bound never copies each example
/// once per draw) -> `[n * draws]`, over the threads when worth it. The callers check that the targets have
/// `logits.len() / draws` values.
pub(crate) fn bernoulli_row_sums(logits: &[f32], targets: Targets) -> Vec<f32> {
    let row_sum = |(row, l): (usize, &[f32])| bernoulli_row_sum(l, targets.row(row));
    if worth_parallel(logits.len()) {
        logits.par_chunks(targets.width()).enumerate().map(row_sum).collect()
    } else {
        logits.chunks(targets.width()).enumerate().map(row_sum).collect()
    }
}

/// Row `row` of a row-major matrix of `dim` columns.
fn target_row(targets: &[f32], row: usize, dim: usize) -> &[f32] {
    &targets[row * dim..(row + 1) * dim]
}

/// The gradient of sum_i g_i * (-log p(x|z_i)) for Bernoulli logits: g_i * (sigmoid(l) - x), `[n * draws, dim]`,
/// from logits `[n * draws, dim]`, `targets` (paired as in [`bernoulli_row_sums`]) and the upstream gradient g
/// `[n * draws]`.
pub(crate) fn bernoulli_gradient(logits: &[f32], targets: Targets, upstream: &[f32]) -> Vec<f32> {
    let mut grad = vec![0.0f32; logits.len()];
    let dim = targets.width();
    let fill = |(row, ((out, l), &g)): GradientRow| bernoulli_gradient_row(out, l, targets.row(row), g);
    if worth_parallel(logits.len()) {
        grad.par_chunks_mut(dim).zip(logits.par_chunks(dim)).zip(upstream.par_iter()).enumerate().for_each(fill);
    } else {
        grad.chunks_mut(dim).zip(logits.chunks(dim)).zip(upstream.iter()).enumerate().for_each(fill);
    }
    grad
}

/// Multiplies each row of `values` by its entry of `scales` (as many rows as scales).
pub(crate) fn scale_rows(values: &mut [f32], scales: &[f32]) {
    let width = (values.len() / scales.len().max(1)).max(1);
    values.chunks_exact_mut(width).zip(scales).for_each(|(row, &s)| row.iter_mut().for_each(|v| *v *= s));
}

/// Dimensions a categorical kernel takes at once: their levels, transposed into a tile, make every operation one
/// vector instruction over the dimensions.
const TILE: usize = 16;

wide_fn! {
    /// One categorical example over `levels` outputs per value: sum_d (logsumexp_k l_{d,k} - l_{d,x_d}), with
    /// grad_{d,k} = s * (softmax_k(l_d) - [k = x_d]). [`TILE`] dimensions at a time, through a `[levels, TILE]`
    /// tile (the logits turned into it and the gradient back out in 8 x 8 blocks), so each operation runs across
    /// dimensions; the remaining dimensions one by one.
    fn categorical_row(grad: &mut [f32], logits: &[f32], x: &[f32], levels: usize, s: f32) -> f32 {
        let top = (levels - 1) as f32;
        let full = x.len() / TILE * TILE;
        let mut tile = vec![0.0f32; levels * TILE];
        let mut lanes = [0.0f32; TILE];
        for start in (0..full).step_by(TILE) {
            let (grad, logits) = (&mut grad[start * levels..(start + TILE) * levels], &logits[start * levels..(start + TILE) * levels]);
            transpose_into(logits, levels, (TILE, levels), &mut tile, TILE);
            let mut max = [f32::NEG_INFINITY; TILE];
            for values in tile.chunks_exact(TILE) {
                max.iter_mut().zip(values).for_each(|(max, &l)| *max = max.max(l));
            }
            let mut sum = [0.0f32; TILE];
            for values in tile.chunks_exact_mut(TILE) {
                for ((value, total), &max) in values.iter_mut().zip(sum.iter_mut()).zip(&max) {
                    *value = fast_math::exp(*value - max);
                    *total += *value;
                }
            }
            let level = |i: usize| (x[start + i] * top).round().clamp(0.0, top) as usize;
            for (i, lane) in lanes.iter_mut().enumerate() {
                // -log p = logsumexp_k l_k - l_x = log sum_k exp(l_k - max) + max - l_x
                *lane += fast_math::ln(sum[i]) + max[i] - logits[i * levels + level(i)];
            }
            // grad = s * softmax - s [k = x_d], the softmax scaled in the tile, then turned back
            let scale: [f32; TILE] = std::array::from_fn(|i| s / sum[i]);
            for values in tile.chunks_exact_mut(TILE) {
                values.iter_mut().zip(&scale).for_each(|(value, &scale)| *value *= scale);
            }
            transpose_into(&tile, TILE, (levels, TILE), grad, levels);
            for (i, row) in grad.chunks_exact_mut(levels).enumerate() {
                row[level(i)] -= s;
            }
        }
        let mut total = lanes.iter().sum::<f32>();
        let rest = grad[full * levels..].chunks_exact_mut(levels).zip(logits[full * levels..].chunks_exact(levels));
        for ((grad, logits), &value) in rest.zip(&x[full..]) {
            let level = (value * top).round().clamp(0.0, top) as usize;
            let max = logits.iter().fold(f32::NEG_INFINITY, |max, &l| max.max(l));
            let mut sum = 0.0f32;
            for (g, &l) in grad.iter_mut().zip(logits) {
                *g = fast_math::exp(l - max);
                sum += *g;
            }
            total += fast_math::ln(sum) + max - logits[level];
            let scale = s / sum;
            grad.iter_mut().for_each(|g| *g *= scale);
            grad[level] -= s;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};
    use rand::{Rng, SeedableRng};

    fn values(rng: &mut rand_chacha::ChaCha8Rng, count: usize, low: f32, high: f32) -> Vec<f32> {
        (0..count).map(|_| rng.random_range(low..high)).collect()
    }

    /// Each kernel with its outputs per data value: the Bernoulli, the Gaussian with a learned per-dimension
    /// `log_var`, and the categorical over `levels`.
    fn every_kernel(log_var: &[f32], levels: usize) -> [(LikelihoodKernel<'_>, usize); 3] {
        [
            (LikelihoodKernel::Bernoulli, 1),
            (LikelihoodKernel::Gaussian { log_var, learned: true }, 1),
            (LikelihoodKernel::Categorical { levels }, levels),
        ]
    }

    /// Every kernel gives the same bits at every SIMD level the CPU has.
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (rows, dim) = (5, 37);
        let x = values(&mut rng, rows * dim, 0.0, 1.0);
        let scales = values(&mut rng, rows, 0.1, 1.0);
        let log_var = values(&mut rng, dim, -1.0, 1.0);
        for (kernel, per_value) in every_kernel(&log_var, 16) {
            let output = values(&mut rng, rows * dim * per_value, -8.0, 8.0);
            let results: Vec<_> = SimdLevel::ALL
                .iter()
                .map(|&level| {
                    let targets = Targets::new(&x, dim, 1);
                    let result = with_simd_level(level, || kernel.loss_and_gradient(&output, targets, &scales));
                    (result.losses, result.output, result.log_var)
                })
                .collect();
            assert!(results.windows(2).all(|pair| pair[0] == pair[1]), "{kernel:?}");
        }
    }

    /// Draws that read their example in place give the bits of the same draws scored against a copy of the
    /// example per draw, over more rows than one parallel chunk holds.
    #[test]
    fn draws_read_their_example_in_place() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (examples, draws, dim) = (7, 5, 23);
        let x = values(&mut rng, examples * dim, 0.0, 1.0);
        let repeated: Vec<f32> =
            x.chunks(dim).flat_map(|row| (0..draws).flat_map(move |_| row.iter().copied())).collect();
        let scales = values(&mut rng, examples * draws, 0.1, 1.0);
        let log_var = values(&mut rng, dim, -1.0, 1.0);
        for (kernel, per_value) in every_kernel(&log_var, 4) {
            let output = values(&mut rng, examples * draws * dim * per_value, -8.0, 8.0);
            let (in_place, copied) = (Targets::new(&x, dim, draws), Targets::new(&repeated, dim, 1));
            let [a, b] = [in_place, copied].map(|targets| kernel.loss_and_gradient(&output, targets, &scales));
            assert_eq!((a.losses, a.output, a.log_var), (b.losses, b.output, b.log_var), "{kernel:?}");
            let [a, b] = [in_place, copied].map(|targets| kernel.log_var_gradient(&output, targets, &scales));
            assert_eq!(a, b, "{kernel:?}");
        }
    }
}
