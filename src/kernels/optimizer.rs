//! Fused optimiser kernels for CPU: each parameter is updated in place, in one pass over its memory, instead of
//! a dozen tensor operations that each allocate a fresh buffer. Other devices use the tensor-op path in
//! [`super::optimizer`]; the tests hold both to the same numbers.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};

use crate::kernels::{add_to, contiguous_f32, contiguous_f32_mut, cpu_f32, read_all, wide_fn};

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
        for_each_chunk(grad, self.more_gradients, |range, grad| {
            adam_chunk(&mut param[range.clone()], grad, &mut first[range.clone()], &mut second[range], self.step)
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
        for_each_chunk(grad, self.more_gradients, |range, grad| {
            sgd_chunk(&mut param[range.clone()], grad, &mut velocity[range], self.learning_rate, self.momentum)
        })
    }
}

/// Values per chunk of a fused update: the chunk's summed gradient stays in the L1 cache.
const CHUNK: usize = 1024;

/// Calls `update` on the gradient `first + sum(more)` with its index range: on `first` itself when there is no
/// other, else on consecutive chunks, so an update reads every shard's gradient once and never stores their sum.
fn for_each_chunk(
    first: &[f32],
    more: &[Tensor],
    mut update: impl FnMut(std::ops::Range<usize>, &[f32]),
) -> candle_core::Result<()> {
    let guards = read_all(more);
    let more = guards.iter().map(|guard| cpu_f32(guard, "fused optimiser")).collect::<candle_core::Result<Vec<_>>>()?;
    if let Some(part) = more.iter().find(|part| part.len() != first.len()) {
        candle_core::bail!("fused optimiser: shard gradients of {} and {} values", first.len(), part.len())
    }
    let Some((second, rest)) = more.split_first() else {
        update(0..first.len(), first);
        return Ok(());
    };
    let mut sum = [0f32; CHUNK];
    for start in (0..first.len()).step_by(CHUNK) {
        let range = start..first.len().min(start + CHUNK);
        let sum = &mut sum[..range.len()];
        add_pair(sum, &first[range.clone()], &second[range.clone()]);
        for part in rest {
            add_to(sum, &part[range.clone()]);
        }
        update(range, sum);
    }
    Ok(())
}

wide_fn! {
    /// sum = a + b, value by value.
    fn add_pair(sum: &mut [f32], a: &[f32], b: &[f32]) {
        sum.iter_mut().zip(a).zip(b).for_each(|((sum, &a), &b)| *sum = a + b);
    }
}

wide_fn! {
    /// One chunk of Adam: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    /// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    fn adam_chunk(param: &mut [f32], grad: &[f32], first: &mut [f32], second: &mut [f32], s: AdamStep) {
        let step_size = s.learning_rate / s.first_correction;
        let inverse_root_correction = 1.0 / s.second_correction.sqrt();
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
            *m = s.beta1 * *m + (1.0 - s.beta1) * g;
            *v = s.beta2 * *v + (1.0 - s.beta2) * g * g;
            *p -= step_size * *m / (v.sqrt() * inverse_root_correction + s.epsilon);
        }
    }
}

wide_fn! {
    /// One chunk of SGD with momentum: v = momentum * v + g;  p -= lr * v
    fn sgd_chunk(param: &mut [f32], grad: &[f32], velocity: &mut [f32], learning_rate: f32, momentum: f32) {
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
            *v = momentum * *v + g;
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
