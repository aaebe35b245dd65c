//! Activations fused into the layers' kernels: applied in place on a layer's output, and differentiated from that
//! output alone (relu: y > 0; tanh: 1 - y^2; softplus: 1 - exp(-y)), so no pre-activation copy is kept. SiLU's
//! derivative needs its input: the fused training step keeps the pre-activation of its SiLU layers ([`silu`],
//! [`silu_gradient`]).

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use crate::kernels::fast_math;
use crate::kernels::{contiguous_f32, wide_fn};
use crate::model::Activation;

/// Activations whose derivative can be read off the output alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputActivation {
    /// No activation.
    Identity,
    /// max(v, 0).
    Relu,
    /// tanh(v).
    Tanh,
    /// log(1 + exp(v)).
    Softplus,
}

impl OutputActivation {
    /// The fused form of an optional activation; `None` for activations whose derivative needs the input (SiLU).
    pub(crate) fn of(activation: Option<Activation>) -> Option<Self> {
        match activation {
            None => Some(OutputActivation::Identity),
            Some(Activation::Relu) => Some(OutputActivation::Relu),
            Some(Activation::Tanh) => Some(OutputActivation::Tanh),
            Some(Activation::Softplus) => Some(OutputActivation::Softplus),
            Some(Activation::Silu) => None,
        }
    }

    /// grad_output * activation'(output) as a tensor: one pass for a real activation, `grad_output` itself for the
    /// identity.
    pub(crate) fn gradient_through(&self, output: &Tensor, grad_output: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            OutputActivation::Identity => Ok(grad_output.clone()),
            &activation => output.apply_op2_no_bwd(&grad_output.contiguous()?, &ActivationGradient { activation }),
        }
    }

    /// Applies the activation to every value.
    pub(crate) fn apply_in_place(&self, values: &mut [f32]) {
        activate(*self, values)
    }

    /// grad * d activation / d pre-activation, from the output y.
    pub(crate) fn gradient(&self, output: &[f32], grad: &[f32]) -> Vec<f32> {
        let mut gradient = grad.to_vec();
        differentiate(*self, output, &mut gradient);
        gradient
    }

    /// [`Self::gradient`] written over `grad`.
    pub(crate) fn gradient_in_place(&self, output: &[f32], grad: &mut [f32]) {
        differentiate(*self, output, grad)
    }
}

/// An activation as the fused training step runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FusedActivation {
    /// Applied in place and differentiated from the output.
    Output(OutputActivation),
    /// SiLU, x sigmoid(x), differentiated from its input, which the layer keeps.
    Silu,
}

impl FusedActivation {
    /// The fused form of an optional activation.
    pub(crate) fn of(activation: Option<Activation>) -> Self {
        match OutputActivation::of(activation) {
            Some(output_activation) => FusedActivation::Output(output_activation),
            None => FusedActivation::Silu,
        }
    }
}

wide_fn! {
    /// out = silu(pre) = pre * sigmoid(pre), value by value.
    pub(crate) fn silu(pre: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(pre).for_each(|(y, &x)| *y = x * fast_math::sigmoid(x));
    }
}

wide_fn! {
    /// grad *= silu'(pre) = sigmoid(pre) (1 + pre (1 - sigmoid(pre))), value by value.
    pub(crate) fn silu_gradient(pre: &[f32], grad: &mut [f32]) {
        grad.iter_mut().zip(pre).for_each(|(g, &x)| {
            let s = fast_math::sigmoid(x);
            *g *= s * (1.0 + x * (1.0 - s));
        });
    }
}

wide_fn! {
    /// Applies `activation` to every value; one loop per activation, so each vectorises.
    fn activate(activation: OutputActivation, values: &mut [f32]) {
        match activation {
            OutputActivation::Identity => {}
            OutputActivation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
            OutputActivation::Tanh => values.iter_mut().for_each(|v| *v = fast_math::tanh(*v)),
            // softplus(v) = max(v, 0) + log(1 + exp(-|v|))
            OutputActivation::Softplus => values.iter_mut().for_each(|v| *v = fast_math::softplus(*v)),
        }
    }
}

wide_fn! {
    /// grad *= d activation / d pre-activation, from the output y: relu: y > 0; tanh: 1 - y^2; softplus:
    /// 1 - exp(-y). One loop per activation, so each vectorises.
    fn differentiate(activation: OutputActivation, output: &[f32], grad: &mut [f32]) {
        let pairs = grad.iter_mut().zip(output);
        match activation {
            OutputActivation::Identity => {}
            OutputActivation::Relu => pairs.for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 }),
            OutputActivation::Tanh => pairs.for_each(|(g, &y)| *g *= 1.0 - y * y),
            OutputActivation::Softplus => pairs.for_each(|(g, &y)| *g *= 1.0 - fast_math::exp(-y)),
        }
    }
}

/// The gradient through the activation in one pass: grad_output * activation'(output).
struct ActivationGradient {
    activation: OutputActivation,
}

impl candle_core::CustomOp2 for ActivationGradient {
    fn name(&self) -> &'static str {
        "fused-activation-gradient"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (output, grad) = (contiguous_f32(ys, yl, self.name())?, contiguous_f32(gs, gl, self.name())?);
        Ok((CpuStorage::F32(self.activation.gradient(output, grad)), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{with_simd_level, SimdLevel};

    /// Every activation and its gradient give the same bits at every SIMD level the CPU has, odd lengths included.
    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let values: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.173).sin() * 9.0).collect();
        let grad: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.071).cos()).collect();
        for activation in [OutputActivation::Relu, OutputActivation::Tanh, OutputActivation::Softplus] {
            let results: Vec<(Vec<f32>, Vec<f32>)> = SimdLevel::ALL
                .iter()
                .map(|&level| {
                    with_simd_level(level, || {
                        let mut output = values.clone();
                        activation.apply_in_place(&mut output);
                        let gradient = activation.gradient(&output, &grad);
                        (output, gradient)
                    })
                })
                .collect();
            assert!(results.windows(2).all(|pair| pair[0] == pair[1]), "{activation:?}");
        }
    }

    /// SiLU and its gradient against the plain formulas in f64, at every SIMD level, odd lengths included.
    #[test]
    fn silu_and_its_gradient_match_the_formulas_at_every_level() {
        let pre: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.173).sin() * 12.0).collect();
        let grad: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.071).cos()).collect();
        for level in SimdLevel::ALL {
            let (mut out, mut gradient) = (vec![0.0; pre.len()], grad.clone());
            with_simd_level(level, || {
                silu(&pre, &mut out);
                silu_gradient(&pre, &mut gradient);
            });
            for ((&x, (&y, &g)), &g0) in pre.iter().zip(out.iter().zip(&gradient)).zip(&grad) {
                let (x64, s) = (f64::from(x), 1.0 / (1.0 + (-f64::from(x)).exp()));
                let (expected_y, expected_g) = (x64 * s, f64::from(g0) * s * (1.0 + x64 * (1.0 - s)));
                assert!((f64::from(y) - expected_y).abs() <= 1e-5 * (1.0 + expected_y.abs()), "{level}: silu({x})");
                assert!((f64::from(g) - expected_g).abs() <= 1e-5 * (1.0 + expected_g.abs()), "{level}: at {x}");
            }
        }
    }
}
