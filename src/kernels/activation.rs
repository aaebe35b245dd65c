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

wide_fn! {
    /// y = x for x > 0, slope x otherwise, in place.
    pub(crate) fn leaky_relu_in_place(values: &mut [f32], slope: f32) {
        values.iter_mut().for_each(|v| *v = leaky(*v, slope));
    }
}

/// LeakyReLU of one value: x for x > 0, slope x otherwise.
#[inline(always)]
pub(crate) fn leaky(value: f32, slope: f32) -> f32 {
    if value > 0.0 {
        value
    } else {
        slope * value
    }
}

wide_fn! {
    /// grad *= LeakyReLU'(x), read off the output: 1 where y > 0, slope elsewhere (with slope >= 0, y > 0
    /// exactly where x > 0).
    pub(crate) fn leaky_relu_gradient(output: &[f32], grad: &mut [f32], slope: f32) {
        grad.iter_mut().zip(output).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { slope * *g });
    }
}

/// LeakyReLU, y = x for x > 0 and slope x otherwise (slope >= 0), as a differentiable op on contiguous f32 CPU
/// values: one pass forward, one backward (from the output), where candle's `leaky_relu` composes five ops.
#[derive(Debug, Clone, Copy)]
struct LeakyRelu {
    slope: f32,
}

impl candle_core::CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut values = contiguous_f32(storage, layout, self.name())?.to_vec();
        leaky_relu_in_place(&mut values, self.slope);
        Ok((CpuStorage::F32(values), layout.shape().clone()))
    }

    fn bwd(&self, _input: &Tensor, output: &Tensor, grad_output: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let slope = self.slope;
        let (output, grad) = (output.contiguous()?, grad_output.contiguous()?);
        let gradient = super::with_f32(&output, |output| {
            super::with_f32(&grad, |grad| {
                let mut gradient = grad.to_vec();
                leaky_relu_gradient(output, &mut gradient, slope);
                gradient
            })
        })
        .flatten()
        .ok_or_else(|| candle_core::Error::Msg("leaky-relu: needs f32 CPU tensors".into()))?;
        Ok(Some(Tensor::from_vec(gradient, output.shape(), output.device())?))
    }
}

/// LeakyReLU with a `slope` >= 0 for negative inputs: one fused op for f32 on the CPU, candle's `leaky_relu`
/// elsewhere.
pub(crate) fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    match x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        true => x.contiguous()?.apply_op1(LeakyRelu { slope: slope as f32 }),
        false => candle_nn::ops::leaky_relu(x, slope),
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

    /// The fused LeakyReLU against candle's composed one, values and input gradients, at every SIMD level. At an
    /// input of exactly 0 the gradient is the slope's, as torch's `leaky_relu` has it (candle's composed op, a
    /// maximum plus a minimum, splits it between the two there).
    #[test]
    fn leaky_relu_matches_candles_values_and_gradient_at_every_level() {
        let device = candle_core::Device::Cpu;
        let values: Vec<f32> =
            (0..1031).map(|i| if i % 97 == 0 { 0.0 } else { (i as f32 * 0.173).sin() * 9.0 }).collect();
        let weights = Tensor::from_vec((0..1031).map(|i| (i as f32 * 0.071).cos()).collect(), 1031, &device).unwrap();
        let x = candle_core::Var::from_vec(values.clone(), 1031, &device).unwrap();
        let run = |fused: bool| {
            let y = match fused {
                true => leaky_relu(x.as_tensor(), 0.2).unwrap(),
                false => candle_nn::ops::leaky_relu(x.as_tensor(), 0.2).unwrap(),
            };
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            (y.to_vec1::<f32>().unwrap(), grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap())
        };
        let (expected_y, expected_gradient) = run(false);
        let upstream = weights.to_vec1::<f32>().unwrap();
        for level in SimdLevel::ALL {
            let (y, gradient) = with_simd_level(level, || run(true));
            assert_eq!(y, expected_y, "{level}");
            for (i, (&got, &want)) in gradient.iter().zip(&expected_gradient).enumerate() {
                let want = if values[i] == 0.0 { 0.2 * upstream[i] } else { want };
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{level}: {got} against {want} at {i}");
            }
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
