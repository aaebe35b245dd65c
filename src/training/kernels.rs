//! Fused optimiser kernels for CPU: each parameter is updated in place, in one pass over its memory, instead of
//! a dozen tensor operations that each allocate a fresh buffer. Other devices use the tensor-op path in
//! [`super::optimizer`]; the tests hold both to the same numbers.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp2, Layout};

use crate::cpu::{contiguous_f32, contiguous_f32_mut};

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
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    /// dst is the parameter, the source its gradient.
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (param, grad) = f32_pair(dst, dst_l, (src, src_l))?;
        let (mut first, mut second) = (lock(&self.first_moment)?, lock(&self.second_moment)?);
        let s = self.step;
        let step_size = s.learning_rate / s.first_correction;
        let root_correction = s.second_correction.sqrt();
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
            // m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
            *m = s.beta1 * *m + (1.0 - s.beta1) * g;
            *v = s.beta2 * *v + (1.0 - s.beta2) * g * g;
            *p -= step_size * *m / (v.sqrt() / root_correction + s.epsilon);
        }
        Ok(())
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
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
            // v = momentum * v + g;  p -= lr * v
            *v = self.momentum * *v + g;
            *p -= self.learning_rate * *v;
        }
        Ok(())
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
