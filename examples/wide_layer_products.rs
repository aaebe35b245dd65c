//! Times the three products of a wide dense layer (the categorical MNIST decoder's 400 -> 12,544 output layer) on
//! two threads at once, as the fused training step runs them: by 64-row shards (each thread every column) or with
//! the columns split between the threads (each 128 rows), the forward product as x W^T or as W x^T then
//! transposed. The figures behind `few_rows_for` in `src/model/dense.rs` and the whole-batch weight gradient of
//! the fused step (BENCHMARKS.md). Run: `cargo run --release --example wide_layer_products`.

use std::time::Instant;

/// A matrix operand's row and column strides.
#[derive(Clone, Copy)]
struct Strides {
    row: isize,
    column: isize,
}

/// dst (`m` x `n`, row stride `dst_row`) = lhs (`m` x `k`) rhs (`k` x `n`); with `by_outputs`, computed as its
/// transpose into `scratch` and transposed back.
///
/// # Safety
/// Every pointer must be valid for the extents its strides and the shape reach; dst must not overlap the others.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply(
    (m, k, n): (usize, usize, usize),
    (dst, dst_row): (*mut f32, isize),
    (lhs, lhs_strides): (*const f32, Strides),
    (rhs, rhs_strides): (*const f32, Strides),
    by_outputs: bool,
    scratch: &mut [f32],
) {
    let (out, out_column, out_row) = if by_outputs { (scratch.as_mut_ptr(), m as isize, 1) } else { (dst, 1, dst_row) };
    gemm::gemm(
        m,
        n,
        k,
        out,
        out_column,
        out_row,
        false,
        lhs,
        lhs_strides.column,
        lhs_strides.row,
        rhs,
        rhs_strides.column,
        rhs_strides.row,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
    if by_outputs {
        for j in 0..n {
            for i in 0..m {
                *dst.offset(i as isize * dst_row + j as isize) = scratch[j * m + i];
            }
        }
    }
}

/// One thread's buffers.
struct Buffers {
    hidden: Vec<f32>,
    grad_logits: Vec<f32>,
    logits: Vec<f32>,
    grad_hidden: Vec<f32>,
    grad_weight: Vec<f32>,
    scratch: Vec<f32>,
}

fn main() {
    // as elbo sets it at AVX-512: the products read their operands in place
    gemm::set_lhs_packing_threshold_single_thread(256);
    let (inner, outputs) = (400usize, 12_544usize);
    let weight: Vec<f32> = (0..outputs * inner).map(|i| (i as f32 * 0.11).cos()).collect();
    let modes = [(false, false), (false, true), (true, false), (true, true)];
    for (split_columns, by_outputs) in modes {
        let (rows, columns) = if split_columns { (128, outputs / 2) } else { (64, outputs) };
        let buffers = |seed: usize| Buffers {
            hidden: (0..rows * inner).map(|i| (i as f32 * 0.37 + seed as f32).sin()).collect(),
            grad_logits: (0..rows * outputs).map(|i| (i as f32 * 0.07).sin()).collect(),
            logits: vec![0.0; rows * outputs],
            grad_hidden: vec![0.0; rows * inner],
            grad_weight: vec![0.0; outputs * inner],
            scratch: vec![0.0; rows * outputs],
        };
        let mut threads = [buffers(0), buffers(1)];
        let mut times: Vec<[f64; 3]> = Vec::new();
        for repeat in 0..12 {
            let weight = &weight;
            let round: Vec<[f64; 3]> = std::thread::scope(|scope| {
                let handles: Vec<_> = threads
                    .iter_mut()
                    .enumerate()
                    .map(|(thread, b)| {
                        scope.spawn(move || {
                            let first = if split_columns { thread * columns } else { 0 };
                            let (row, column) = (
                                Strides { row: inner as isize, column: 1 },
                                Strides { row: 1, column: inner as isize },
                            );
                            let logits_rows = Strides { row: outputs as isize, column: 1 };
                            // SAFETY: every extent is inside its buffer: `first + columns <= outputs`
                            unsafe {
                                let w = weight.as_ptr().add(first * inner);
                                let start = Instant::now();
                                multiply(
                                    (rows, inner, columns),
                                    (b.logits.as_mut_ptr().add(first), outputs as isize),
                                    (b.hidden.as_ptr(), row),
                                    (w, column),
                                    by_outputs,
                                    &mut b.scratch,
                                );
                                let forward = start.elapsed().as_secs_f64();
                                let start = Instant::now();
                                multiply(
                                    (rows, columns, inner),
                                    (b.grad_hidden.as_mut_ptr(), inner as isize),
                                    (b.grad_logits.as_ptr().add(first), logits_rows),
                                    (w, row),
                                    false,
                                    &mut b.scratch,
                                );
                                let input_gradient = start.elapsed().as_secs_f64();
                                let start = Instant::now();
                                multiply(
                                    (columns, rows, inner),
                                    (b.grad_weight.as_mut_ptr().add(first * inner), inner as isize),
                                    (b.grad_logits.as_ptr().add(first), Strides { row: 1, column: outputs as isize }),
                                    (b.hidden.as_ptr(), row),
                                    false,
                                    &mut b.scratch,
                                );
                                [forward, input_gradient, start.elapsed().as_secs_f64()]
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|handle| handle.join().expect("a product thread panicked")).collect()
            });
            if repeat > 2 {
                times.extend(round);
            }
        }
        let median = |index: usize| {
            let mut values: Vec<f64> = times.iter().map(|t| t[index]).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2] * 1e3
        };
        let (forward, input_gradient, weight_gradient) = (median(0), median(1), median(2));
        println!(
            "{rows} rows x {columns} columns per thread, forward as {}: forward {forward:.2} ms, dL/dx \
             {input_gradient:.2}, dL/dW {weight_gradient:.2}, the three {:.2} ms",
            if by_outputs { "W x^T" } else { "x W^T" },
            forward + input_gradient + weight_gradient
        );
    }
}
