//! The seed's math, tested so that a wrong formula fails: the KL table, finite-difference gradients of every loss
//! term, gradients reaching the encoder through z, and each likelihood against an independent f64 computation.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use elbo::model::likelihood::{bernoulli, categorical::Categorical, gaussian::Gaussian};
use elbo::model::{standard_normal_log_prob, DiagonalGaussian, GaussianVariance, LikelihoodConfig, Vae, VaeConfig};
use elbo::objective::{negative_elbo_terms, NoiseSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DEVICE: Device = Device::Cpu;

fn tensor(values: &[f64], rows: usize) -> Tensor {
    Tensor::from_slice(values, (rows, values.len() / rows), &DEVICE).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn random(rng: &mut ChaCha8Rng, n: usize, low: f64, high: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(low..high)).collect()
}

fn kl(mu: f64, sigma: f64) -> f64 {
    let q = DiagonalGaussian::new(tensor(&[mu], 1), tensor(&[(sigma * sigma).ln()], 1));
    values(&q.kl_to_standard_normal().unwrap())[0]
}

#[test]
fn kl_table_of_the_seed() {
    assert!(kl(0.0, 1.0).abs() < 1e-12, "matching the prior gives KL 0");
    assert!((kl(1.0, 1.0) - 0.5).abs() < 1e-12, "a shifted mean gives 0.5");
    let wider = 0.5 * (4.0 - 1.0 - 4f64.ln());
    assert!((kl(0.0, 2.0) - wider).abs() < 1e-12, "sigma 2 gives 0.5 (4 - 1 - ln 4)");
    assert!((kl(0.0, 2.0) - 0.8069).abs() < 1e-4);
}

#[test]
fn kl_sums_over_latent_dimensions_and_is_positive_away_from_the_prior() {
    let mu = tensor(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 2);
    let log_var = tensor(&[0.0, 0.0, 4f64.ln(), 0.0, 0.0, 0.0], 2);
    let per_example = values(&DiagonalGaussian::new(mu, log_var).kl_to_standard_normal().unwrap());
    assert_eq!(per_example.len(), 2);
    assert!((per_example[0] - (0.5 + 0.5 * (3.0 - 4f64.ln()))).abs() < 1e-12);
    assert!(per_example[1].abs() < 1e-12);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..100 {
        let (mu, sigma) = (rng.random_range(-3.0..3.0), rng.random_range(0.1..3.0));
        assert!(kl(mu, sigma) > 0.0, "KL must be positive away from the prior, mu {mu} sigma {sigma}");
    }
}

#[test]
fn log_prob_matches_the_density_by_hand() {
    let (mu, log_var, z) = ([0.3, -1.2], [0.5, -0.7], [1.0, 0.1]);
    let q = DiagonalGaussian::new(tensor(&mu, 1), tensor(&log_var, 1));
    let expected: f64 = (0..2)
        .map(|i| {
            let var = f64::exp(log_var[i]);
            -0.5 * (2.0 * std::f64::consts::PI * var).ln() - (z[i] - mu[i]).powi(2) / (2.0 * var)
        })
        .sum();
    assert!((values(&q.log_prob(&tensor(&z, 1)).unwrap())[0] - expected).abs() < 1e-12);
    let prior: f64 = z.iter().map(|v| -0.5 * (2.0 * std::f64::consts::PI).ln() - v * v / 2.0).sum();
    assert!((values(&standard_normal_log_prob(&tensor(&z, 1)).unwrap())[0] - prior).abs() < 1e-12);
}

#[test]
fn bernoulli_matches_binary_cross_entropy_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let logits = random(&mut rng, 12, -30.0, 30.0);
    let x = random(&mut rng, 12, 0.0, 1.0); // grey targets allowed
    let got = values(&bernoulli::negative_log_prob(&tensor(&logits, 3), &tensor(&x, 3)).unwrap());
    for (row, &value) in got.iter().enumerate() {
        let expected: f64 = (row * 4..row * 4 + 4)
            .map(|i| {
                let p = 1.0 / (1.0 + (-logits[i]).exp());
                // log(1 - p) computed as log(sigmoid(-l)) to keep the reference exact for large logits
                let log_one_minus_p = -(1.0 + logits[i].exp()).ln();
                -(x[i] * p.ln() + (1.0 - x[i]) * log_one_minus_p)
            })
            .sum();
        assert!((value - expected).abs() < 1e-9 * expected.abs().max(1.0), "row {row}: {value} vs {expected}");
    }
}

#[test]
fn bernoulli_stays_finite_for_extreme_logits() {
    let got = values(&bernoulli::negative_log_prob(&tensor(&[1e4, -1e4], 1), &tensor(&[0.0, 1.0], 1)).unwrap());
    assert!((got[0] - 2e4).abs() < 1e-6, "{got:?}");
}

fn gaussian(variance: GaussianVariance, dim: usize) -> (Gaussian, VarMap) {
    let varmap = VarMap::new();
    let g = Gaussian::new(variance, dim, VarBuilder::from_varmap(&varmap, DType::F64, &DEVICE)).unwrap();
    (g, varmap)
}

#[test]
fn gaussian_is_the_full_density_in_nats() {
    let (mean, x, sigma) = ([0.2, 0.9, -0.4], [0.0, 1.0, 0.5], 0.3);
    let (fixed, _) = gaussian(GaussianVariance::Fixed { sigma }, 3);
    let got = values(&fixed.negative_log_prob(&tensor(&mean, 1), &tensor(&x, 1)).unwrap())[0];
    let expected: f64 = (0..3)
        .map(|i| {
            0.5 * (2.0 * std::f64::consts::PI).ln() + sigma.ln() + (x[i] - mean[i]).powi(2) / (2.0 * sigma * sigma)
        })
        .sum();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");

    let (learned, mut varmap) = gaussian(GaussianVariance::LearnedPerDimension, 3);
    let log_var = [0.1, -2.0, 1.5];
    varmap.set_one("log_var", tensor(&log_var, 1).flatten_all().unwrap()).unwrap();
    let got = values(&learned.negative_log_prob(&tensor(&mean, 1), &tensor(&x, 1)).unwrap())[0];
    let expected: f64 = (0..3)
        .map(|i| 0.5 * ((2.0 * std::f64::consts::PI).ln() + log_var[i] + (x[i] - mean[i]).powi(2) / log_var[i].exp()))
        .sum();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
}

#[test]
fn categorical_matches_log_softmax_by_hand() {
    let levels = 4;
    let categorical = Categorical::new(levels, 2).unwrap();
    let logits = [0.5, -1.0, 2.0, 0.0, 3.0, 1.0, -2.0, 0.25];
    let x = [2.0 / 3.0, 0.0]; // levels 2 and 0
    let got = values(&categorical.negative_log_prob(&tensor(&logits, 1), &tensor(&x, 1)).unwrap())[0];
    let nll = |row: &[f64], k: usize| row.iter().map(|l| l.exp()).sum::<f64>().ln() - row[k];
    let expected = nll(&logits[0..4], 2) + nll(&logits[4..8], 0);
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    assert!(Categorical::new(1, 2).is_err());
}

/// Checks d(sum(w * f(input)))/d(input) by autograd against central finite differences, in f64.
fn check_gradient(name: &str, input: &[f64], rows: usize, f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(&tensor(input, rows)).unwrap();
    let output = f(var.as_tensor());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let weights = Tensor::from_vec(random(&mut rng, output.elem_count(), 0.5, 1.5), output.shape(), &DEVICE).unwrap();
    let objective = |t: &Tensor| (f(t) * &weights).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let grads = (f(var.as_tensor()) * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic = values(grads.get(var.as_tensor()).expect("gradient exists"));
    let h = 1e-6;
    for i in 0..input.len() {
        let mut plus = input.to_vec();
        plus[i] += h;
        let mut minus = input.to_vec();
        minus[i] -= h;
        let numeric = (objective(&tensor(&plus, rows)) - objective(&tensor(&minus, rows))) / (2.0 * h);
        let tolerance = 1e-5 * numeric.abs().max(1.0);
        assert!(
            (analytic[i] - numeric).abs() < tolerance,
            "{name}[{i}]: autograd {} vs finite difference {numeric}",
            analytic[i]
        );
    }
}

#[test]
fn finite_difference_gradients_of_the_kl() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mu = random(&mut rng, 6, -2.0, 2.0);
    let log_var = random(&mut rng, 6, -2.0, 2.0);
    let lv = tensor(&log_var, 2);
    check_gradient("KL wrt mu", &mu, 2, |m| {
        DiagonalGaussian::new(m.clone(), lv.clone()).kl_to_standard_normal().unwrap()
    });
    let m = tensor(&mu, 2);
    check_gradient("KL wrt log_var", &log_var, 2, |lv| {
        DiagonalGaussian::new(m.clone(), lv.clone()).kl_to_standard_normal().unwrap()
    });
}

#[test]
fn finite_difference_gradients_of_the_reparameterized_sample() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mu = random(&mut rng, 6, -2.0, 2.0);
    let log_var = random(&mut rng, 6, -2.0, 2.0);
    let eps = tensor(&random(&mut rng, 6, -2.0, 2.0), 2);
    let lv = tensor(&log_var, 2);
    check_gradient("z wrt mu", &mu, 2, |m| DiagonalGaussian::new(m.clone(), lv.clone()).reparameterize(&eps).unwrap());
    let m = tensor(&mu, 2);
    check_gradient("z wrt log_var", &log_var, 2, |lv| {
        DiagonalGaussian::new(m.clone(), lv.clone()).reparameterize(&eps).unwrap()
    });
}

#[test]
fn finite_difference_gradients_of_each_likelihood() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let outputs = random(&mut rng, 8, -3.0, 3.0);
    let x = tensor(&random(&mut rng, 8, 0.0, 1.0), 2);
    check_gradient("bernoulli wrt logits", &outputs, 2, |l| bernoulli::negative_log_prob(l, &x).unwrap());
    let (fixed, _) = gaussian(GaussianVariance::Fixed { sigma: 0.7 }, 4);
    check_gradient("gaussian wrt mean", &outputs, 2, |m| fixed.negative_log_prob(m, &x).unwrap());
    let categorical = Categorical::new(4, 2).unwrap();
    let x_levels = tensor(&[0.0, 1.0, 1.0 / 3.0, 2.0 / 3.0], 2);
    let logits = random(&mut rng, 16, -3.0, 3.0);
    check_gradient("categorical wrt logits", &logits, 2, |l| categorical.negative_log_prob(l, &x_levels).unwrap());
}

#[test]
fn finite_difference_gradient_of_the_learned_gaussian_log_variance() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (means, x) = (tensor(&random(&mut rng, 8, -1.0, 1.0), 2), tensor(&random(&mut rng, 8, 0.0, 1.0), 2));
    let log_var = random(&mut rng, 4, -1.0, 1.0);
    let (learned, varmap) = gaussian(GaussianVariance::LearnedPerDimension, 4);
    let var = varmap.data().lock().unwrap().get("log_var").unwrap().clone();
    let objective_at = |lv: &[f64]| {
        var.set(&Tensor::from_slice(lv, 4, &DEVICE).unwrap()).unwrap();
        learned.negative_log_prob(&means, &x).unwrap().sum_all().unwrap()
    };
    let grads = objective_at(&log_var).backward().unwrap();
    let analytic = values(grads.get(var.as_tensor()).unwrap());
    for i in 0..4 {
        let (mut plus, mut minus) = (log_var.clone(), log_var.clone());
        plus[i] += 1e-6;
        minus[i] -= 1e-6;
        let numeric = (values(&objective_at(&plus))[0] - values(&objective_at(&minus))[0]) / 2e-6;
        assert!(
            (analytic[i] - numeric).abs() < 1e-5 * numeric.abs().max(1.0),
            "log_var[{i}]: {} vs {numeric}",
            analytic[i]
        );
    }
}

fn small_model(dtype: DType) -> (Vae, VarMap) {
    let config = VaeConfig {
        input_shape: elbo::data::ExampleShape::flat(6),
        latent_dim: 3,
        encoder_hidden: vec![5],
        decoder_hidden: vec![5],
        likelihood: LikelihoodConfig::Bernoulli,
        ..VaeConfig::default()
    };
    Vae::fresh(&config, 7, dtype, &DEVICE).unwrap()
}

fn encoder_gradient_norm(vae: &Vae, varmap: &VarMap, detach_sample: bool) -> f64 {
    let x = tensor(&[0.0, 1.0, 0.5, 0.2, 0.9, 1.0, 1.0, 0.0, 0.3, 0.7, 0.1, 0.0], 2).to_dtype(DType::F32).unwrap();
    let posterior = vae.encode(&x).unwrap();
    let eps = NoiseSource::new(1).like(&posterior.mu).unwrap();
    let mut z = posterior.reparameterize(&eps).unwrap();
    if detach_sample {
        z = z.detach(); // "sample from q directly": no path from z back to mu and sigma
    }
    let reconstruction = vae.likelihood().negative_log_prob(&vae.decode(&z).unwrap(), &x).unwrap();
    let grads = reconstruction.sum_all().unwrap().backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    vars.iter()
        .filter(|(name, _)| name.starts_with("encoder."))
        .map(|(_, var)| grads.get(var.as_tensor()).map_or(0.0, |g| values(&g.sqr().unwrap().sum_all().unwrap())[0]))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn reconstruction_gradient_reaches_the_encoder_through_z() {
    let (vae, varmap) = small_model(DType::F32);
    assert!(encoder_gradient_norm(&vae, &varmap, false) > 1e-3);
}

#[test]
fn a_sample_drawn_without_reparameterization_gives_the_encoder_no_reconstruction_gradient() {
    let (vae, varmap) = small_model(DType::F32);
    assert_eq!(encoder_gradient_norm(&vae, &varmap, true), 0.0, "the seed's first pitfall");
}

#[test]
fn every_parameter_gets_a_gradient_from_the_full_loss() {
    let (vae, varmap) = small_model(DType::F32);
    let x = Tensor::from_vec(vec![0.5f32; 12], (2, 6), &DEVICE).unwrap();
    let eps = NoiseSource::new(3).standard_normal(2, 3, DType::F32, &DEVICE).unwrap();
    let grads = negative_elbo_terms(&vae, &x, &eps).unwrap().loss(1.0).unwrap().backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(values(&grad.abs().unwrap().sum_all().unwrap())[0] > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn the_loss_is_reconstruction_plus_beta_times_kl_per_example() {
    let (vae, _) = small_model(DType::F64);
    let x = Tensor::from_vec(vec![0.25f64; 12], (2, 6), &DEVICE).unwrap();
    let eps = NoiseSource::new(3).standard_normal(2, 3, DType::F64, &DEVICE).unwrap();
    let terms = negative_elbo_terms(&vae, &x, &eps).unwrap();
    let (rec, kl) = (values(&terms.reconstruction), values(&terms.kl));
    let loss = values(&terms.per_example_loss(4.0).unwrap());
    for i in 0..2 {
        assert!((loss[i] - (rec[i] + 4.0 * kl[i])).abs() < 1e-12);
    }
    let mean = values(&terms.loss(1.0).unwrap())[0];
    assert!((mean - (rec[0] + kl[0] + rec[1] + kl[1]) / 2.0).abs() < 1e-12);
}

#[test]
fn same_seed_same_initial_weights_different_seed_different() {
    let weights = |seed| {
        let (_, varmap) = Vae::fresh(&VaeConfig::default(), seed, DType::F32, &DEVICE).unwrap();
        let vars = varmap.data().lock().unwrap();
        values(vars.get("encoder.hidden.0.weight").unwrap().as_tensor())
    };
    assert_eq!(weights(1), weights(1));
    assert_ne!(weights(1), weights(2));
    let w = weights(1);
    let bound = 1.0 / 784f64.sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound), "PyTorch's default init bound 1/sqrt(fan_in)");
}
