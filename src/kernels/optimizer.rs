//! Fused optimiser kernels for CPU: each parameter is updated in place, in one pass over its memory, instead of
//! a dozen tensor operations that each allocate a fresh buffer. Other devices use the tensor-op path in
//! [`super::optimizer`]; the tests hold both to the same numbers.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};

use rayon::prelude::*;

use crate::kernels::{
    add_to, contiguous_f32, contiguous_f32_mut, cpu_f32, kernel_threads, read_all, wide_fn, worth_parallel,
};

/// Adam's hyper-parameters for one step, bias corrections included.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Learning rate.
    pub learning_rate: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// 1 - beta1^t.
    pub first_correction: f32,
    /// 1 - beta2^t.
    pub second_correction: f32,
}

/// The in-place Adam update of one parameter; its moments live in plain buffers owned by the optimiser.
pub struct FusedAdam<'a> {
    /// The step's hyper-parameters.
    pub step: AdamStep,
    /// First moments m (one per parameter value).
    pub first_moment: Mutex<&'a mut [f32]>,
    /// Second moments v.
    pub second_moment: Mutex<&'a mut [f32]>,
    /// Gradients from the batch's other shards, added to the op's source gradient.
    pub more_gradients: &'a [Tensor],
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    /// dst is the parameter, the source its (first shard's) gradient.
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (param, grad) = f32_pair(dst, dst_l, (src, src_l))?;
        let (mut first, mut second) = (lock(&self.first_moment)?, lock(&self.second_moment)?);
        update_in_parts([param, &mut first, &mut second], grad, self.more_gradients, |[param, first, second], grad| {
            adam_chunk(param, grad, first, second, self.step)
        })
    }
}

/// The in-place SGD-with-momentum update of one parameter.
pub struct FusedSgd<'a> {
    /// Learning rate.
    pub learning_rate: f32,
    /// Momentum.
    pub momentum: f32,
    /// The velocity buffer.
    pub velocity: Mutex<&'a mut [f32]>,
    /// Gradients from the batch's other shards, added to the op's source gradient.
    pub more_gradients: &'a [Tensor],
}

impl InplaceOp2 for FusedSgd<'_> {
    fn name(&self) -> &'static str {
        "fused-sgd"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (param, grad) = f32_pair(dst, dst_l, (src, src_l))?;
        let mut velocity = lock(&self.velocity)?;
        update_in_parts([param, &mut velocity], grad, self.more_gradients, |[param, velocity], grad| {
            sgd_chunk(param, grad, velocity, self.learning_rate, self.momentum)
        })
    }
}

/// Values per chunk of a fused update: the chunk's summed gradient stays in the L1 cache.
const CHUNK: usize = 1024;

/// Calls `update` on matching pieces of the parameter's state buffers `states` (the parameter and its moments) and
/// of its gradient `first + sum(more)`, chunk by chunk: each chunk's gradient is first gathered into a buffer that
/// stays in the L1 cache (the shards' gradients added up, or the one gradient copied), so an update reads every
/// shard's gradient once and never stores their sum. A large parameter is split into one contiguous part per kernel
/// thread ([`on_own_threads`]); every value's update is its own, so neither split changes the numbers.
///
/// The copy of a lone gradient measured faster than updating from the gradient in place: on a 2-core Intel Xeon
/// (BENCHMARKS.md, the nineteenth session), the MLP of row 1 spent 0.64-0.68 ms a step in Adam against 0.71-0.73 in
/// alternating blocks of steps of one run; the update's one pass over four arrays, the gradient written by the
/// other core's product or evicted from this one's L2, read that gradient slowly, while a pass over it alone did
/// not.
fn update_in_parts<const N: usize>(
    states: [&mut [f32]; N],
    first: &[f32],
    more: &[Tensor],
    update: impl Fn([&mut [f32]; N], &[f32]) + Sync,
) -> candle_core::Result<()> {
    let guards = read_all(more);
    let more = guards.iter().map(|guard| cpu_f32(guard, "fused optimiser")).collect::<candle_core::Result<Vec<_>>>()?;
    if let Some(part) =
        more.iter().map(|part| part.len()).chain(states.iter().map(|s| s.len())).find(|&len| len != first.len())
    {
        candle_core::bail!("fused optimiser: a gradient or state of {part} values for a parameter of {}", first.len())
    }
    let parts = if worth_parallel(first.len()) { kernel_threads() } else { 1 };
    let part_len = first.len().div_ceil(parts).next_multiple_of(CHUNK).max(CHUNK);
    let mut pieces: Vec<(usize, [&mut [f32]; N])> = Vec::with_capacity(parts);
    let mut rest = states;
    let mut start = 0;
    while start < first.len() {
        let size = part_len.min(first.len() - start);
        let heads = rest.each_mut().map(|state| {
            let (head, tail) = std::mem::take(state).split_at_mut(size);
            *state = tail;
            head
        });
        pieces.push((start, heads));
        start += size;
    }
    let update_part = |(offset, mut piece): (usize, [&mut [f32]; N])| {
        let len = piece[0].len();
        let mut gradient = [0f32; CHUNK];
        let shards_after_first = more.split_first();
        for local in (0..len).step_by(CHUNK) {
            let range = offset + local..offset + len.min(local + CHUNK);
            let gradient = &mut gradient[..range.len()];
            match shards_after_first {
                None => gradient.copy_from_slice(&first[range.clone()]),
                Some((second, others)) => {
                    add_pair(gradient, &first[range.clone()], &second[range.clone()]);
                    others.iter().for_each(|part| add_to(gradient, &part[range.clone()]));
                }
            }
            update(piece.each_mut().map(|state| &mut state[local..local + range.len()]), gradient);
        }
    };
    on_own_threads(pieces, update_part);
    Ok(())
}

/// Runs `work` on each of `pieces`: piece i on thread i of the pool where there is one piece per thread, so that a
/// parameter's part is updated by the same core at every step and its moments stay in that core's caches; else
/// wherever rayon's work stealing puts them. Measured on a 2-core Intel Xeon (BENCHMARKS.md, the nineteenth
/// session), in alternating blocks of steps of one run: with this and the gradient's copy of [`update_in_parts`],
/// Adam took 0.57-0.58 ms of row 1's step against 0.77 with neither (the copy alone: 0.64-0.68 against 0.71-0.73);
/// the Burda et al. MLP's 0.27-0.28 ms against 0.33-0.34.
fn on_own_threads<P: Send>(pieces: Vec<P>, work: impl Fn(P) + Sync) {
    match pieces.len() {
        0 | 1 => pieces.into_iter().for_each(work),
        count if count == rayon::current_num_threads() => {
            let pieces: Vec<parking_lot::Mutex<Option<P>>> =
                pieces.into_iter().map(|piece| parking_lot::Mutex::new(Some(piece))).collect();
            // every thread of the pool runs this once, its index telling it which piece is its own
            rayon::broadcast(|context| {
                let own = pieces[context.index()].lock().take();
                own.into_iter().for_each(&work);
            });
        }
        _ => pieces.into_par_iter().for_each(&work),
    }
}

wide_fn! {
    /// sum = a + b, value by value.
    fn add_pair(sum: &mut [f32], a: &[f32], b: &[f32]) {
        sum.iter_mut().zip(a).zip(b).for_each(|((sum, &a), &b)| *sum = a + b);
    }
}

/// Optimiser state (Adam's moments, SGD's velocity) smaller than this in size is stored as 0.
///
/// A weight whose gradient stays 0 (a ReLU unit that no longer fires: 130 of the 400 first-layer units of row 1 of
/// the benchmark matrix by its fourth epoch) keeps a first moment that shrinks by b1 = 0.9 a step, and after ~750
/// steps it is a subnormal float, which Intel's CPUs compute through a microcode assist about a hundred times
/// slower than a normal one (PyTorch's benchmark twin runs with `torch.set_flush_denormal(True)` for that reason).
/// Measured on a 2-core Intel Xeon with AVX-512 (BENCHMARKS.md, the twenty-first session): a quarter of the first
/// layer's first moments were subnormal after 4 epochs, and Adam's share of the profile over the third and fourth
/// epochs fell from 24.7% to 13.8% with this flush. A moment below 1e-30 moves its weight by at most
/// lr / (1 - b1^t) * 1e-30 / eps (1e-25 at lr 1e-3): less than the rounding of any weight larger than 1e-17.
pub const NEGLIGIBLE_STATE: f32 = 1e-30;

/// `value`, or 0 where its size is below [`NEGLIGIBLE_STATE`] (the value as flush-to-zero would leave it, with the
/// margin that keeps the next step's products of it out of the subnormal range too).
#[inline(always)]
fn flush_negligible(value: f32) -> f32 {
    if value.abs() < NEGLIGIBLE_STATE {
        0.0
    } else {
        value
    }
}

wide_fn! {
    /// One chunk of Adam: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    /// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    /// (m and v stored through [`flush_negligible`]).
    fn adam_chunk(param: &mut [f32], grad: &[f32], first: &mut [f32], second: &mut [f32], s: AdamStep) {
        let step_size = s.learning_rate / s.first_correction;
        let inverse_root_correction = 1.0 / s.second_correction.sqrt();
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
            *m = flush_negligible(s.beta1 * *m + (1.0 - s.beta1) * g);
            *v = flush_negligible(s.beta2 * *v + (1.0 - s.beta2) * g * g);
            *p -= step_size * *m / (v.sqrt() * inverse_root_correction + s.epsilon);
        }
    }
}

wide_fn! {
    /// One chunk of SGD with momentum: v = momentum * v + g;  p -= lr * v  (v stored through [`flush_negligible`]).
    fn sgd_chunk(param: &mut [f32], grad: &[f32], velocity: &mut [f32], learning_rate: f32, momentum: f32) {
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
            *v = flush_negligible(momentum * *v + g);
            *p -= learning_rate * *v;
        }
    }
}

/// The optimiser state buffer behind a lock (the op is called through `&self`).
fn lock<'m, 'a>(buffer: &'m Mutex<&'a mut [f32]>) -> candle_core::Result<std::sync::MutexGuard<'m, &'a mut [f32]>> {
    buffer.lock().map_err(|_| candle_core::Error::Msg("optimiser state lock poisoned".into()))
}

/// The contiguous f32 slices of a parameter and its gradient, of the same size.
fn f32_pair<'a>(
    dst: &'a mut CpuStorage,
    dst_l: &Layout,
    (src, src_l): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a mut [f32], &'a [f32])> {
    let (param, grad) =
        (contiguous_f32_mut(dst, dst_l, "fused optimiser")?, contiguous_f32(src, src_l, "fused optimiser")?);
    if param.len() != grad.len() {
        candle_core::bail!("fused optimiser: parameter of {} values, gradient of {}", param.len(), grad.len())
    }
    Ok((param, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};

    /// Adam's and SGD's chunks give the same bits at every SIMD level the CPU has.
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let grad: Vec<f32> = (0..1029).map(|i| (i as f32 * 0.31).sin()).collect();
        let step = AdamStep {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            first_correction: 0.19,
            second_correction: 0.002,
        };
        let results: Vec<[Vec<f32>; 5]> = SimdLevel::ALL
            .iter()
            .map(|&level| {
                with_simd_level(level, || {
                    let mut param: Vec<f32> = (0..1029).map(|i| i as f32 / 100.0).collect();
                    let (mut first, mut second) = (vec![0.01; 1029], vec![0.002; 1029]);
                    adam_chunk(&mut param, &grad, &mut first, &mut second, step);
                    let (mut moved, mut velocity) = (param.clone(), vec![0.5; 1029]);
                    sgd_chunk(&mut moved, &grad, &mut velocity, 0.1, 0.9);
                    [param, first, second, moved, velocity]
                })
            })
            .collect();
        assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    }

    /// State whose gradient stays 0 decays to an exact 0, never through subnormal floats, at every SIMD level; the
    /// weights it moves on the way move as without the flush.
    #[test]
    fn decaying_state_is_flushed_to_zero_instead_of_turning_subnormal() {
        let is_subnormal = |value: &f32| value.is_subnormal();
        let step = AdamStep {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.5,
            epsilon: 1e-8,
            first_correction: 1.0,
            second_correction: 1.0,
        };
        for level in SimdLevel::ALL {
            with_simd_level(level, || {
                let (mut param, zero) = (vec![0.25f32; 37], vec![0f32; 37]);
                let (mut first, mut second, mut velocity) = (vec![1e-3f32; 37], vec![1e-6f32; 37], vec![1e-3f32; 37]);
                let mut moved = param.clone();
                for _ in 0..1000 {
                    adam_chunk(&mut param, &zero, &mut first, &mut second, step);
                    sgd_chunk(&mut moved, &zero, &mut velocity, 0.1, 0.9);
                    assert!(!first.iter().chain(&second).chain(&velocity).any(is_subnormal), "{level:?}");
                }
                assert!(first.iter().chain(&second).chain(&velocity).all(|&state| state == 0.0), "{level:?}");
                let mut unflushed = (0.25f32, 1e-3f32, 1e-6f32);
                for _ in 0..1000 {
                    unflushed.1 *= step.beta1;
                    unflushed.2 *= step.beta2;
                    unflushed.0 -= step.learning_rate * unflushed.1 / (unflushed.2.sqrt() + step.epsilon);
                }
                assert!(param.iter().all(|&p| p == unflushed.0), "{level:?}: {} against {}", param[0], unflushed.0);
            });
        }
    }
}
