//! A dense layer y = activation(x W^T + b), with a fused CPU kernel: the bias is added inside the matrix multiply
//! and the activation applied in place, so a layer is one pass instead of three allocating ops; its backward skips
//! the gradient of an input that needs none (the data batch), a fifth of a training step's matrix work.
//! Other devices, dtypes and activations without an output-only derivative use candle's ops; tests hold both paths
//! to the same values and gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::activation::Activation;
use crate::kernels::activation::{FusedActivation, OutputActivation};
use crate::kernels::sparse::SparseColumns;
use crate::kernels::transpose::transpose_into;
use crate::kernels::{
    add_to, contiguous_f32, gemm_parallelism, matmul, product, recycle, slow_to_read_down, transpose, Destination,
    Operand,
};
use crate::Result;

/// A linear layer followed by an optional activation. Weights: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct Dense {
    linear: Linear,
    activation: Option<Activation>,
}

impl Dense {
    /// A layer from `input_dim` to `output_dim` values, weights under `vb`.
    pub fn new(input_dim: usize, output_dim: usize, activation: Option<Activation>, vb: VarBuilder) -> Result<Self> {
        Ok(Dense { linear: candle_nn::linear(input_dim, output_dim, vb)?, activation })
    }

    /// The output width.
    pub fn output_dim(&self) -> usize {
        self.linear.weight().dims().first().copied().unwrap_or(0)
    }

    /// activation(x W^T + b), fused where possible.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.fused_op(x), self.linear.bias()) {
            (Some(op), Some(bias)) => Ok(x.apply_op3(self.linear.weight(), bias, op)?),
            _ => self.forward_unfused(x),
        }
    }

    /// The same layer with candle's ops only.
    pub fn forward_unfused(&self, x: &Tensor) -> Result<Tensor> {
        let pre_activation = self.linear.forward(x)?;
        match self.activation {
            Some(activation) => activation.apply(&pre_activation),
            None => Ok(pre_activation),
        }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.linear.bias()
    }

    /// The activation as fused kernels apply it; `None` where its derivative needs the input (SiLU).
    pub(crate) fn output_activation(&self) -> Option<OutputActivation> {
        OutputActivation::of(self.activation)
    }

    /// The activation as the fused training step runs it.
    pub(crate) fn fused_activation(&self) -> FusedActivation {
        FusedActivation::of(self.activation)
    }

    fn fused_op(&self, x: &Tensor) -> Option<FusedDense> {
        let activation = self.output_activation()?;
        (x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2).then_some(FusedDense { activation })
    }
}

/// activation(x W^T + b) on row-major slices: x `[rows, inner]`, weight `[outputs, inner]`, bias `[outputs]`,
/// with the weight's contiguous transpose where [`reads_transposed_weight`] asks for one (the fused step makes it
/// once per step for all its shards), or as W x^T for few rows against a large weight ([`few_rows_for`]); the
/// output is `[rows, outputs]`. Shapes must fit (checked by the callers).
pub(crate) fn forward_values(
    x: &[f32],
    (weight, transposed): (&[f32], Option<&[f32]>),
    bias: &[f32],
    rows: usize,
    activation: OutputActivation,
) -> Vec<f32> {
    let outputs = bias.len();
    let inner = weight.len() / outputs.max(1);
    let mut out = match (transposed, few_rows_for(rows, (inner, outputs))) {
        (None, true) => forward_by_outputs(x, weight, bias, rows),
        (transposed, _) => {
            let mut out = biased_rows(rows, bias);
            // out = out + x W^T: the bias rides in the matrix multiply
            let w_t = match transposed {
                Some(transposed) => Operand::rows(transposed, outputs),
                None => Operand::transposed(weight, inner),
            };
            let parallelism = gemm_parallelism(rows * outputs * inner);
            let shape = (rows, inner, outputs);
            matmul(&mut out, Operand::rows(x, inner), w_t, shape, Destination::Accumulate, parallelism);
            out
        }
    };
    activation.apply_in_place(&mut out);
    out
}

/// True where [`forward_values`] of `rows` rows reads a weight of `outputs` rows through its contiguous transpose:
/// a weight slow to read down its columns ([`slow_to_read_down`]) against too many rows for the product by outputs
/// ([`few_rows_for`]), which reads the weight in place. Measured on an Intel Xeon at AVX-512 (BENCHMARKS.md), the
/// 32 x 32 RGB conv model's 4,096 -> 256 layer with 32 rows a shard: training steps 6% faster by outputs than
/// through W^T, whose transpose (4 MiB each step) was 5% of the step's samples.
pub(crate) fn reads_transposed_weight(rows: usize, weight_len: usize, outputs: usize) -> bool {
    let inner = weight_len / outputs.max(1);
    slow_to_read_down(inner) && !few_rows_for(rows, (inner, outputs))
}

/// True where a product x W^T of `rows` rows is cheaper as its transpose W x^T ([`forward_by_outputs`]): where the
/// values copied that way (x packed, the `[outputs, rows]` result transposed) are fewer than half of W's, which the
/// `gemm` crate copies into its packed layout when it reads W^T as an operand. Measured on an AMD EPYC Zen 4 at
/// AVX-512 (BENCHMARKS.md): 64 rows with a 400 x 784 weight, one product on one thread, 0.40 ms that way against
/// 0.49 (320 rows: 2.05 against 2.02); with a 400 x 12,544 weight on each of two threads at once, 8.2 ms against
/// 9.5. At AVX2 no difference outside the noise.
fn few_rows_for(rows: usize, (inner, outputs): (usize, usize)) -> bool {
    2 * rows * (inner + outputs) < inner * outputs
}

/// x W^T + b as its transpose W x^T + b `[outputs, rows]` (b down each column), transposed into `[rows, outputs]`:
/// the product reads W in place and packs x, where x W^T would pack W ([`few_rows_for`]).
fn forward_by_outputs(x: &[f32], weight: &[f32], bias: &[f32], rows: usize) -> Vec<f32> {
    let outputs = bias.len();
    let inner = weight.len() / outputs.max(1);
    let mut by_output = recycle::stale(outputs * rows);
    by_output.chunks_exact_mut(rows.max(1)).zip(bias).for_each(|(line, &b)| line.fill(b));
    let parallelism = gemm_parallelism(rows * outputs * inner);
    let (w, x_t) = (Operand::rows(weight, inner), Operand::transposed(x, inner));
    matmul(&mut by_output, w, x_t, (outputs, inner, rows), Destination::Accumulate, parallelism);
    let mut out = recycle::stale(rows * outputs);
    transpose_into(&by_output, rows, (outputs, rows), &mut out, outputs);
    recycle::recycle(by_output);
    out
}

/// activation(x W^T + b) for an input `x` given by its nonzero values, from the weight's transpose `w_t`
/// (`[inner, outputs]`): the products of its zeros left out ([`SparseColumns`]).
pub(crate) fn sparse_forward_values(
    x: &SparseColumns,
    w_t: &[f32],
    bias: &[f32],
    activation: OutputActivation,
) -> Vec<f32> {
    let mut out = biased_rows(x.rows(), bias);
    x.multiply_transposed_into(w_t, &mut out);
    activation.apply_in_place(&mut out);
    out
}

/// `rows` copies of the bias, `[rows, outputs]`, in a recycled buffer (the fused step hands its layers' outputs
/// back there).
fn biased_rows(rows: usize, bias: &[f32]) -> Vec<f32> {
    let mut out = recycle::stale(rows * bias.len());
    out.chunks_exact_mut(bias.len().max(1)).for_each(|row| row.copy_from_slice(bias));
    out
}

/// [`parameter_gradients`] for an input given by its nonzero values.
pub(crate) fn sparse_parameter_gradients(grad_pre: &[f32], input: &SparseColumns) -> (Vec<f32>, Vec<f32>) {
    let outputs = grad_pre.len() / input.rows();
    (input.weight_gradient(grad_pre), column_sums(grad_pre, outputs))
}

/// A dense layer's parameter gradients from dL/dpre `[rows, outputs]` and the layer's input `[rows, inner]`:
/// dL/dW = (dL/dpre)^T x (`[outputs, inner]`) and dL/db = sum over rows of dL/dpre (`[outputs]`).
pub(crate) fn parameter_gradients(grad_pre: &[f32], input: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
    let outputs = grad_pre.len() / rows.max(1);
    (weight_gradient(grad_pre, input, rows), column_sums(grad_pre, outputs))
}

/// dL/dW = (dL/dpre)^T x alone, from dL/dpre `[rows, outputs]` and the input `[rows, inner]`.
pub(crate) fn weight_gradient(grad_pre: &[f32], input: &[f32], rows: usize) -> Vec<f32> {
    let outputs = grad_pre.len() / rows.max(1);
    let inner = input.len() / rows.max(1);
    product(Operand::transposed(grad_pre, outputs), Operand::rows(input, inner), (outputs, rows, inner))
}

/// The gradient for a dense layer's input: dL/dx = dL/dpre W, `[rows, inner]` from `[rows, outputs]` and the
/// weight `[outputs, inner]`.
pub(crate) fn input_gradient(grad_pre: &[f32], weight: &[f32], rows: usize) -> Vec<f32> {
    let outputs = grad_pre.len() / rows.max(1);
    let inner = weight.len() / outputs.max(1);
    product(Operand::rows(grad_pre, outputs), Operand::rows(weight, inner), (rows, outputs, inner))
}

/// The sums down the rows of a row-major matrix with `columns` columns.
pub(crate) fn column_sums(values: &[f32], columns: usize) -> Vec<f32> {
    let mut sums = vec![0f32; columns];
    values.chunks_exact(columns.max(1)).for_each(|row| add_to(&mut sums, row));
    sums
}

/// The fused op: inputs x `[n, k]`, weight `[m, k]`, bias `[m]`; output `[n, m]`.
struct FusedDense {
    activation: OutputActivation,
}

impl CustomOp3 for FusedDense {
    fn name(&self) -> &'static str {
        "fused-dense"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(xs, xl, "fused dense")?,
            contiguous_f32(ws, wl, "fused dense")?,
            contiguous_f32(bs, bl, "fused dense")?,
        );
        let (&[rows, inner], &[outputs, weight_inner]) = (xl.dims(), wl.dims()) else {
            candle_core::bail!(
                "fused dense: expected x [n, k] and weight [m, k], got {:?} and {:?}",
                xl.dims(),
                wl.dims()
            )
        };
        if inner != weight_inner || b.len() != outputs {
            candle_core::bail!("fused dense: shapes {:?}, {:?}, {:?} do not fit", xl.dims(), wl.dims(), bl.dims())
        }
        let transposed = reads_transposed_weight(rows, w.len(), outputs).then(|| transpose(w, outputs));
        let out = forward_values(x, (w, transposed.as_deref()), b, rows, self.activation);
        Ok((CpuStorage::F32(out), Shape::from((rows, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_pre = self.activation.gradient_through(output, grad_output)?;
        let grad_pre = grad_pre.contiguous()?;
        // dL/dW = (dL/dpre)^T x;  dL/db = sum over rows of dL/dpre;  dL/dx = dL/dpre W
        let grad_weight = grad_pre.apply_op2_no_bwd(x, &GradientProduct { transpose_lhs: true })?;
        let grad_bias = grad_pre.apply_op1_no_bwd(&ColumnSums)?;
        // the data batch needs no gradient: skip its matrix multiply
        let grad_x = if x.track_op() {
            Some(grad_pre.apply_op2_no_bwd(weight, &GradientProduct { transpose_lhs: false })?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_weight), Some(grad_bias)))
    }
}

/// A product in the dense layer's backward pass, lhs · rhs with row-major `[a, b]` x `[b, c]` operands, or
/// lhs^T · rhs (for the weight gradient, lhs `[b, a]`).
struct GradientProduct {
    transpose_lhs: bool,
}

impl CustomOp2 for GradientProduct {
    fn name(&self) -> &'static str {
        "dense-gradient-product"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (lhs, rhs) = (contiguous_f32(ls, ll, self.name())?, contiguous_f32(rs, rl, self.name())?);
        let (&[lhs_rows, lhs_columns], &[inner, columns]) = (ll.dims(), rl.dims()) else {
            candle_core::bail!("{}: expected two matrices, got {:?} and {:?}", self.name(), ll.dims(), rl.dims())
        };
        let (rows, lhs_inner, lhs) = match self.transpose_lhs {
            true => (lhs_columns, lhs_rows, Operand::transposed(lhs, lhs_columns)),
            false => (lhs_rows, lhs_columns, Operand::rows(lhs, lhs_columns)),
        };
        if lhs_inner != inner {
            candle_core::bail!("{}: shapes {:?} and {:?} do not fit", self.name(), ll.dims(), rl.dims())
        }
        let values = product(lhs, Operand::rows(rhs, columns), (rows, inner, columns));
        Ok((CpuStorage::F32(values), Shape::from((rows, columns))))
    }
}

/// The sums down the rows of a `[rows, columns]` matrix: a dense layer's bias gradient, dL/db = sum_n dL/dpre_n.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = contiguous_f32(storage, layout, self.name())?;
        let (_, columns) = layout.shape().dims2()?;
        Ok((CpuStorage::F32(column_sums(values, columns)), Shape::from(columns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut rand_chacha::ChaCha8Rng, shape: (usize, usize)) -> Tensor {
        let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values and gradients of the fused and the unfused layer, for `rows x inputs -> outputs`.
    fn compare(rows: usize, inputs: usize, outputs: usize, activation: Option<Activation>) {
        let varmap = VarMap::new();
        let layer = Dense::new(inputs, outputs, activation, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
            .unwrap();
        crate::model::init::initialize(&varmap, 3).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((rows * 1000 + inputs * 10 + outputs) as u64);
        let x = Var::from_tensor(&random(&mut rng, (rows, inputs))).unwrap();
        let weights = random(&mut rng, (rows, outputs));
        let grads_of = |y: Tensor| (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (fused, unfused) = (layer.forward(&x).unwrap(), layer.forward_unfused(&x).unwrap());
        assert!(max_difference(&fused, &unfused) < 1e-4, "{activation:?} {rows}x{inputs}->{outputs}: values differ");
        let (fused_grads, unfused_grads) = (grads_of(fused), grads_of(unfused));
        let vars = varmap.data().lock().unwrap();
        for tensor in [x.as_tensor(), vars["weight"].as_tensor(), vars["bias"].as_tensor()] {
            let (a, b) = (fused_grads.get(tensor).unwrap(), unfused_grads.get(tensor).unwrap());
            assert!(
                max_difference(a, b) < 1e-3,
                "{activation:?} {rows}x{inputs}->{outputs}: gradients differ by {}",
                max_difference(a, b)
            );
        }
    }

    #[test]
    fn the_fused_layer_matches_candles_ops_in_values_and_gradients() {
        for activation in
            [None, Some(Activation::Relu), Some(Activation::Tanh), Some(Activation::Softplus), Some(Activation::Silu)]
        {
            // 1,024 and 512 inputs: the forward product reads a contiguous W^T; (128, 784, 400) and the last
            // three: few rows for the weight, the product made as W x^T
            let shapes = [
                (1, 1, 1),
                (3, 7, 5),
                (128, 784, 400),
                (17, 33, 65),
                (64, 20, 400),
                (5, 1024, 17),
                (9, 512, 3),
                (3, 40, 100),
                (13, 200, 130),
                (6, 50, 1000),
            ];
            for (rows, inputs, outputs) in shapes {
                compare(rows, inputs, outputs, activation);
            }
        }
    }

    /// The rule for W x^T picks few rows against a large weight, and leaves the rest to x W^T.
    #[test]
    fn few_rows_for_a_large_weight_take_the_product_by_outputs() {
        for (rows, inputs, outputs) in [(128, 784, 400), (3, 40, 100), (13, 200, 130), (6, 50, 1000), (64, 400, 12_544)]
        {
            assert!(few_rows_for(rows, (inputs, outputs)), "{rows} x {inputs} -> {outputs}");
        }
        for (rows, inputs, outputs) in [(1, 1, 1), (17, 33, 65), (64, 20, 400), (320, 400, 784)] {
            assert!(!few_rows_for(rows, (inputs, outputs)), "{rows} x {inputs} -> {outputs}");
        }
    }

    /// W^T is made for a weight slow to read down with many rows only: few rows take the product by outputs.
    #[test]
    fn the_transposed_weight_is_read_where_the_weight_is_slow_to_read_down_and_the_rows_many() {
        for (rows, inputs, outputs) in [(128, 1024, 256), (320, 4096, 256), (64, 512, 64)] {
            assert!(reads_transposed_weight(rows, inputs * outputs, outputs), "{rows} x {inputs} -> {outputs}");
        }
        for (rows, inputs, outputs) in [(32, 4096, 256), (64, 1024, 256), (128, 784, 400), (320, 1000, 100)] {
            assert!(!reads_transposed_weight(rows, inputs * outputs, outputs), "{rows} x {inputs} -> {outputs}");
        }
    }

    #[test]
    fn an_untracked_input_gets_no_gradient() {
        let varmap = VarMap::new();
        let layer =
            Dense::new(4, 3, Some(Activation::Relu), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
                .unwrap();
        let x = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let grads = layer.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(varmap.data().lock().unwrap()["weight"].as_tensor()).is_some());
    }
}
