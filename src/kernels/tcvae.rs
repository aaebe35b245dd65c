//! beta-TCVAE's KL decomposition and its gradient on plain slices, for the fused training step. Its plain twin, the
//! tests' oracle, is [`crate::objective::decompose_kl`] on candle's graph, differentiated by candle.
//!
//! For a batch of M posteriors N(mu_j, exp(lv_j)) and one sample z_i from each, with
//! P_ijk = log q(z_ik | x_j) = -0.5 (log 2pi + lv_jk + (z_ik - mu_jk)^2 e^(-lv_jk)) and N the dataset's size, the
//! minibatch-weighted-sampling estimate of MI + tc_beta * TC + dimension-wise KL is
//!
//! ```text
//! K = (1/M) sum_i [ log q(z_i|x_i) + (tc_beta - 1) log q(z_i) + (1 - tc_beta) sum_k log q(z_ik) - log p(z_i) ]
//! log q(z_i) = logsumexp_j sum_k P_ijk - ln(N M),   log q(z_ik) = logsumexp_j P_ijk - ln(N M)
//! ```
//!
//! (MI = log q(z_i|x_i) - log q(z_i), TC = log q(z_i) - sum_k log q(z_ik), dimension-wise KL = sum_k log q(z_ik) -
//! log p(z_i), each a batch mean). Its derivative in P_ijk is
//! W_ijk = (1/M) [ (tc_beta - 1) (S_ij - T_ijk) + [i = j] ], with S_ij = softmax_j sum_k P_ijk and
//! T_ijk = softmax_j P_ijk, and then
//!
//! ```text
//! dK/dz_ik  = -sum_j W_ijk (z_ik - mu_jk) e^(-lv_jk) + z_ik / M        (the last term from -log p(z_i))
//! dK/dmu_jk =  sum_i W_ijk (z_ik - mu_jk) e^(-lv_jk)
//! dK/dlv_jk =  sum_i W_ijk ((z_ik - mu_jk)^2 e^(-lv_jk) - 1) / 2
//! ```
//!
//! The rows i run in fixed chunks over the threads, their sums over i added in chunk order, so the bits do not
//! depend on the thread count.

use rayon::prelude::*;

use super::fast_math::{exp, ln};
use super::wide_fn;
use crate::model::gaussian::LN_2PI;

/// Rows i per chunk of work: fixed, so that the sums over i, and their bits, do not depend on the threads.
const ROW_CHUNK: usize = 16;

/// A batch of posteriors and their samples, each `[rows, latent_dim]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posteriors<'a> {
    /// The means mu.
    pub mu: &'a [f32],
    /// The log-variances lv = log sigma^2.
    pub log_var: &'a [f32],
    /// One sample z per posterior.
    pub z: &'a [f32],
    /// Latent dimensions d.
    pub latent_dim: usize,
}

/// K's three parts (batch means, the ln(N M) constants included) and K's gradients, `[rows, latent_dim]` each.
#[derive(Debug, Clone)]
pub(crate) struct Decomposition {
    /// Index-code mutual information.
    pub mutual_information: f64,
    /// Total correlation.
    pub total_correlation: f64,
    /// Dimension-wise KL.
    pub dimension_kl: f64,
    /// dK/dz.
    pub grad_z: Vec<f32>,
    /// dK/dmu.
    pub grad_mu: Vec<f32>,
    /// dK/dlog sigma^2.
    pub grad_log_var: Vec<f32>,
}

impl Decomposition {
    /// K = MI + tc_beta * TC + dimension-wise KL.
    pub fn weighted(&self, tc_beta: f64) -> f64 {
        self.mutual_information + tc_beta * self.total_correlation + self.dimension_kl
    }
}

/// One chunk of rows' share: the sums over its rows of (MI, TC, dimension-wise KL), its rows of dK/dz, and its rows'
/// terms of dK/dmu and dK/dlog sigma^2 (every row j).
struct ChunkShare {
    parts: [f64; 3],
    grad_z: Vec<f32>,
    grad_mu: Vec<f32>,
    grad_log_var: Vec<f32>,
}

/// The decomposition of `posteriors` on a dataset of `dataset_size` examples, and its gradients for the loss term
/// K = MI + tc_beta * TC + dimension-wise KL. The caller checks that the batch is not empty and that the dataset
/// holds at least as many examples.
pub(crate) fn decomposition(posteriors: Posteriors, dataset_size: usize, tc_beta: f32) -> Decomposition {
    let d = posteriors.latent_dim.max(1);
    let rows = posteriors.mu.len() / d;
    let inverse_var: Vec<f32> = posteriors.log_var.iter().map(|&lv| exp(-lv)).collect();
    let log_nm = ((dataset_size * rows) as f64).ln();
    let shares: Vec<ChunkShare> = (0..rows.div_ceil(ROW_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let range = chunk * ROW_CHUNK..rows.min((chunk + 1) * ROW_CHUNK);
            chunk_share(posteriors, &inverse_var, range, (log_nm, tc_beta))
        })
        .collect();
    let mut total = ChunkShare {
        parts: [0.0; 3],
        grad_z: Vec::with_capacity(rows * d),
        grad_mu: vec![0.0; rows * d],
        grad_log_var: vec![0.0; rows * d],
    };
    for share in shares {
        total.parts.iter_mut().zip(share.parts).for_each(|(sum, part)| *sum += part);
        total.grad_z.extend_from_slice(&share.grad_z);
        super::add_to(&mut total.grad_mu, &share.grad_mu);
        super::add_to(&mut total.grad_log_var, &share.grad_log_var);
    }
    let mean = |sum: f64| sum / rows.max(1) as f64;
    Decomposition {
        mutual_information: mean(total.parts[0]),
        total_correlation: mean(total.parts[1]),
        dimension_kl: mean(total.parts[2]),
        grad_z: total.grad_z,
        grad_mu: total.grad_mu,
        grad_log_var: total.grad_log_var,
    }
}

/// The share of the rows i in `range`, with ln(N M) and tc_beta.
fn chunk_share(
    posteriors: Posteriors,
    inverse_var: &[f32],
    range: std::ops::Range<usize>,
    (log_nm, tc_beta): (f64, f32),
) -> ChunkShare {
    let d = posteriors.latent_dim.max(1);
    let rows = posteriors.mu.len() / d;
    let c = 1.0 / rows as f32;
    let mut share = ChunkShare {
        parts: [0.0; 3],
        grad_z: vec![0.0; range.len() * d],
        grad_mu: vec![0.0; rows * d],
        grad_log_var: vec![0.0; rows * d],
    };
    let mut scratch = vec![0.0f32; rows * d + rows + 2 * d];
    for (i, grad_z_row) in range.zip(share.grad_z.chunks_exact_mut(d)) {
        let z_row = &posteriors.z[i * d..][..d];
        let row = RowInputs { i, z_row, mu: posteriors.mu, log_var: posteriors.log_var, inverse_var };
        let gradients = RowGradients { z: grad_z_row, mu: &mut share.grad_mu, log_var: &mut share.grad_log_var };
        let [own, joint, marginals] = row_terms(row, (c * (tc_beta - 1.0), c), gradients, &mut scratch);
        // log q(z_i) = logsumexp_j sum_k P_ijk - ln(N M); sum_k log q(z_ik) = sum_k logsumexp_j P_ijk - d ln(N M)
        let log_qz = f64::from(joint) - log_nm;
        let log_marginals = f64::from(marginals) - d as f64 * log_nm;
        // log p(z_i) = sum_k -0.5 (z_ik^2 + log 2pi)
        let log_pz: f64 = z_row.iter().map(|&z| -0.5 * (f64::from(z * z) + LN_2PI)).sum();
        share.parts[0] += f64::from(own) - log_qz;
        share.parts[1] += log_qz - log_marginals;
        share.parts[2] += log_marginals - log_pz;
    }
    share
}

/// Row j of a `[rows, d]` matrix.
#[inline(always)]
fn latent_row(values: &[f32], j: usize, d: usize) -> &[f32] {
    &values[j * d..][..d]
}

/// What [`row_terms`] reads for row i.
#[derive(Clone, Copy)]
struct RowInputs<'a> {
    i: usize,
    z_row: &'a [f32],
    mu: &'a [f32],
    log_var: &'a [f32],
    inverse_var: &'a [f32],
}

/// Where [`row_terms`] writes row i's dK/dz and adds its terms of dK/dmu and dK/dlog sigma^2.
struct RowGradients<'a> {
    z: &'a mut [f32],
    mu: &'a mut [f32],
    log_var: &'a mut [f32],
}

wide_fn! {
    /// Row i: writes dK/dz_i, adds its terms W_ijk (...) to dK/dmu_j and dK/dlv_j for every j, and returns
    /// [log q(z_i|x_i), logsumexp_j sum_k P_ijk, sum_k logsumexp_j P_ijk]. `weights` is ((tc_beta - 1) / M, 1 / M);
    /// `scratch` holds at least M d + M + 2 d values.
    fn row_terms(row: RowInputs, weights: (f32, f32), gradients: RowGradients, scratch: &mut [f32]) -> [f32; 3] {
        let (d, (a, c)) = (row.z_row.len(), weights);
        let rows = row.mu.len() / d;
        let (densities, rest) = scratch.split_at_mut(rows * d);
        let (joint, rest) = rest.split_at_mut(rows);
        let (column_max, rest) = rest.split_at_mut(d);
        let column_sum = &mut rest[..d];
        // P_ijk = -0.5 (log 2pi + lv_jk + (z_ik - mu_jk)^2 e^(-lv_jk)), and sum_k P_ijk
        let half_ln_2pi = 0.5 * LN_2PI as f32;
        let row_of = |values, j| latent_row(values, j, d);
        for (j, (p_row, joint_j)) in densities.chunks_exact_mut(d).zip(joint.iter_mut()).enumerate() {
            let (mu_row, log_var_row) = (row_of(row.mu, j), row_of(row.log_var, j));
            let inverse_var_row = row_of(row.inverse_var, j);
            for k in 0..d {
                let difference = row.z_row[k] - mu_row[k];
                p_row[k] = -half_ln_2pi - 0.5 * (log_var_row[k] + difference * difference * inverse_var_row[k]);
            }
            *joint_j = p_row.iter().sum();
        }
        let own: f32 = densities[row.i * d..][..d].iter().sum();
        // S_ij = softmax_j of the joint densities
        let joint_max = joint.iter().fold(f32::NEG_INFINITY, |max, &v| max.max(v));
        joint.iter_mut().for_each(|v| *v = exp(*v - joint_max));
        let joint_sum: f32 = joint.iter().sum();
        joint.iter_mut().for_each(|v| *v /= joint_sum);
        // T_ijk = softmax_j P_ijk, per dimension k
        column_max.fill(f32::NEG_INFINITY);
        for p_row in densities.chunks_exact(d) {
            column_max.iter_mut().zip(p_row).for_each(|(max, &p)| *max = max.max(p));
        }
        column_sum.fill(0.0);
        for p_row in densities.chunks_exact_mut(d) {
            for k in 0..d {
                p_row[k] = exp(p_row[k] - column_max[k]);
                column_sum[k] += p_row[k];
            }
        }
        let marginals: f32 = column_max.iter().zip(column_sum.iter()).map(|(&max, &sum)| max + ln(sum)).sum();
        column_sum.iter_mut().for_each(|sum| *sum = 1.0 / *sum);
        // W_ijk = a (S_ij - T_ijk) + c [i = j], and the three gradients
        gradients.z.iter_mut().zip(row.z_row).for_each(|(g, &z)| *g = c * z);
        for (j, t_row) in densities.chunks_exact(d).enumerate() {
            let (mu_row, inverse_var_row) = (row_of(row.mu, j), row_of(row.inverse_var, j));
            let (g_mu, g_lv) = (&mut gradients.mu[j * d..][..d], &mut gradients.log_var[j * d..][..d]);
            let (s, own_row) = (joint[j], if j == row.i { c } else { 0.0 });
            for k in 0..d {
                let w = a * (s - t_row[k] * column_sum[k]) + own_row;
                let difference = row.z_row[k] - mu_row[k];
                let scaled = difference * inverse_var_row[k];
                gradients.z[k] -= w * scaled;
                g_mu[k] += w * scaled;
                g_lv[k] += w * 0.5 * (difference * scaled - 1.0);
            }
        }
        [own, joint_max + ln(joint_sum), marginals]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DiagonalGaussian;
    use crate::objective::decompose_kl;
    use candle_core::{Device, Tensor, Var};
    use rand::{Rng, SeedableRng};

    fn values(rng: &mut rand_chacha::ChaCha8Rng, len: usize, (low, high): (f32, f32)) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(low..high)).collect()
    }

    /// Runs `work` on a pool of `threads` threads.
    fn on_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(work)
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The kernel's parts and its gradients in z, mu and log sigma^2, each taken as independent inputs, against
    /// candle's graph and autograd on the same numbers, at every SIMD level the CPU has and on 1 and 2 threads.
    #[test]
    fn the_decomposition_and_its_gradients_match_candles_graph() {
        for (rows, d, dataset_size, tc_beta) in
            [(1, 3, 10, 6.0), (7, 5, 100, 6.0), (37, 4, 1000, 0.5), (70, 10, 70, 2.0)]
        {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rows as u64);
            let (mu, log_var) = (values(&mut rng, rows * d, (-1.5, 1.5)), values(&mut rng, rows * d, (-2.0, 1.0)));
            let z = values(&mut rng, rows * d, (-2.0, 2.0));
            let var = |v: &[f32]| Var::from_tensor(&Tensor::from_slice(v, (rows, d), &Device::Cpu).unwrap()).unwrap();
            let (mu_var, log_var_var, z_var) = (var(&mu), var(&log_var), var(&z));
            let posterior = DiagonalGaussian::new(mu_var.as_tensor().clone(), log_var_var.as_tensor().clone());
            let parts = decompose_kl(&posterior, z_var.as_tensor(), dataset_size).unwrap();
            let weighted = parts.weighted(tc_beta).unwrap();
            let grads = weighted.backward().unwrap();
            let gradient = |v: &Var| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scalar = |t: &Tensor| f64::from(t.to_scalar::<f32>().unwrap());
            // every level on one thread (a forced level holds on the thread that forces it), the CPU's on two
            let detected = crate::kernels::SimdLevel::detected();
            let cases = crate::kernels::SimdLevel::ALL.into_iter().map(|level| (level, 1)).chain([(detected, 2)]);
            for (level, threads) in cases {
                let posteriors = Posteriors { mu: &mu, log_var: &log_var, z: &z, latent_dim: d };
                let fused = on_threads(threads, || {
                    crate::kernels::simd::with_simd_level(level, || {
                        decomposition(posteriors, dataset_size, tc_beta as f32)
                    })
                });
                {
                    let label =
                        format!("{rows} x {d}, N {dataset_size}, tc_beta {tc_beta}, {level}, {threads} threads");
                    let figures = [
                        (fused.mutual_information, scalar(&parts.mutual_information)),
                        (fused.total_correlation, scalar(&parts.total_correlation)),
                        (fused.dimension_kl, scalar(&parts.dimension_kl)),
                        (fused.weighted(tc_beta), scalar(&weighted)),
                    ];
                    for (kernel, graph) in figures {
                        assert!((kernel - graph).abs() <= 2e-4 * (1.0 + graph.abs()), "{label}: {kernel} vs {graph}");
                    }
                    for (name, kernel, graph) in [
                        ("z", &fused.grad_z, gradient(&z_var)),
                        ("mu", &fused.grad_mu, gradient(&mu_var)),
                        ("log sigma^2", &fused.grad_log_var, gradient(&log_var_var)),
                    ] {
                        let scale = graph.iter().fold(0f32, |max, v| max.max(v.abs()));
                        let difference = largest_difference(kernel, &graph);
                        assert!(difference <= 1e-4 * scale + 1e-6, "{label}: d/d{name} differs by {difference}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_same_batch_gives_the_same_bits_on_any_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (rows, d) = (100, 6);
        let (mu, log_var, z) = (
            values(&mut rng, rows * d, (-1.0, 1.0)),
            values(&mut rng, rows * d, (-1.0, 1.0)),
            values(&mut rng, rows * d, (-2.0, 2.0)),
        );
        let run = |threads| {
            let posteriors = Posteriors { mu: &mu, log_var: &log_var, z: &z, latent_dim: d };
            on_threads(threads, || decomposition(posteriors, 1000, 6.0))
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.weighted(6.0).to_bits(), two.weighted(6.0).to_bits());
        for (a, b) in [(&one.grad_z, &two.grad_z), (&one.grad_mu, &two.grad_mu), (&one.grad_log_var, &two.grad_log_var)]
        {
            assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
