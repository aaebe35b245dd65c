//! The bounds against an exact answer. A linear-Gaussian decoder (probabilistic PCA) has a closed-form marginal:
//! p(x) = N(b, W W^T + sigma^2 I). With an imperfect encoder, the ELBO must sit below the importance-weighted
//! bounds, which rise with K and approach log p(x) from below.

use candle_core::{DType, Device, Tensor};
use elbo::data::{Dataset, ExampleShape, Values};
use elbo::evaluation::{evaluate_bounds, BoundsConfig, BoundsReport};
use elbo::model::{GaussianVariance, LikelihoodConfig, Vae, VaeConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const DATA_DIM: usize = 4;
const LATENT_DIM: usize = 2;
const SIGMA: f64 = 0.6;
const W: [[f64; LATENT_DIM]; DATA_DIM] = [[1.0, 0.3], [-0.5, 0.8], [0.2, -1.1], [0.7, 0.4]];
const B: [f64; DATA_DIM] = [0.1, -0.3, 0.5, 0.0];

fn ppca_model() -> Vae {
    let config = VaeConfig {
        input_shape: ExampleShape::flat(DATA_DIM),
        latent_dim: LATENT_DIM,
        encoder_hidden: vec![],
        decoder_hidden: vec![],
        likelihood: LikelihoodConfig::Gaussian { variance: GaussianVariance::Fixed { sigma: SIGMA } },
        ..VaeConfig::default()
    };
    let (vae, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
    let set = |name: &str, values: Vec<f32>, shape: &[usize]| {
        let vars = varmap.data().lock().unwrap();
        vars[name].set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap();
    };
    set("decoder.output.weight", W.iter().flatten().map(|&v| v as f32).collect(), &[DATA_DIM, LATENT_DIM]);
    set("decoder.output.bias", B.iter().map(|&v| v as f32).collect(), &[DATA_DIM]);
    // An imperfect encoder: roughly W^T-shaped means, a fixed variance.
    let mu_weight: Vec<f32> =
        (0..LATENT_DIM).flat_map(|j| (0..DATA_DIM).map(move |i| (0.5 * W[i][j]) as f32)).collect();
    set("encoder.mu.weight", mu_weight, &[LATENT_DIM, DATA_DIM]);
    set("encoder.mu.bias", vec![0.0; LATENT_DIM], &[LATENT_DIM]);
    set("encoder.log_var.weight", vec![0.0; LATENT_DIM * DATA_DIM], &[LATENT_DIM, DATA_DIM]);
    set("encoder.log_var.bias", vec![-1.5; LATENT_DIM], &[LATENT_DIM]);
    vae
}

/// x = W z + b + sigma * noise, z ~ N(0, I).
fn sample_data(count: usize) -> Vec<[f64; DATA_DIM]> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut normal = || -> f64 { StandardNormal.sample(&mut rng) };
    (0..count)
        .map(|_| {
            let z = [normal(), normal()];
            std::array::from_fn(|i| W[i][0] * z[0] + W[i][1] * z[1] + B[i] + SIGMA * normal())
        })
        .collect()
}

/// log N(x; b, W W^T + sigma^2 I) by Cholesky, in f64.
fn exact_log_likelihood(x: &[f64; DATA_DIM]) -> f64 {
    let mut covariance = [[0.0; DATA_DIM]; DATA_DIM];
    for (i, row) in covariance.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..LATENT_DIM).map(|k| W[i][k] * W[j][k]).sum::<f64>() + if i == j { SIGMA * SIGMA } else { 0.0 };
        }
    }
    let mut lower = [[0.0; DATA_DIM]; DATA_DIM];
    for i in 0..DATA_DIM {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| lower[i][k] * lower[j][k]).sum();
            lower[i][j] = if i == j { (covariance[i][i] - sum).sqrt() } else { (covariance[i][j] - sum) / lower[j][j] };
        }
    }
    let mut solved = [0.0; DATA_DIM]; // L y = x - b
    for i in 0..DATA_DIM {
        solved[i] = (x[i] - B[i] - (0..i).map(|k| lower[i][k] * solved[k]).sum::<f64>()) / lower[i][i];
    }
    let log_det: f64 = (0..DATA_DIM).map(|i| 2.0 * lower[i][i].ln()).sum();
    let mahalanobis: f64 = solved.iter().map(|v| v * v).sum();
    -0.5 * (DATA_DIM as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + mahalanobis)
}

fn dataset(data: &[[f64; DATA_DIM]]) -> Dataset {
    Dataset {
        source: "ppca".into(),
        values: Values::F32(data.iter().flatten().map(|&v| v as f32).collect()),
        shape: ExampleShape::flat(DATA_DIM),
        labels: None,
        class_names: None,
        factors: None,
    }
}

fn bounds(vae: &Vae, data: &Dataset, samples: usize, max_rows: usize) -> BoundsReport {
    let config = BoundsConfig { importance_samples: samples, max_rows, seed: 3 };
    evaluate_bounds(vae, data, &config, &Device::Cpu, &mut |_| {}).unwrap()
}

#[test]
fn bounds_are_ordered_rise_with_k_and_approach_the_exact_likelihood() {
    let vae = ppca_model();
    let data = sample_data(2000);
    let exact = data.iter().map(exact_log_likelihood).sum::<f64>() / data.len() as f64;
    let data = dataset(&data);
    let reports: Vec<BoundsReport> = [1, 10, 100, 1000].iter().map(|&k| bounds(&vae, &data, k, 50_000)).collect();
    let elbo = -reports[0].negative_elbo.mean;
    let iwae: Vec<f64> = reports.iter().map(|r| -r.negative_iwae.unwrap().mean).collect();
    println!("exact {exact:.4}  ELBO {elbo:.4}  IWAE-1/10/100/1000 {iwae:?}");
    assert!(exact - elbo > 0.3, "the encoder is imperfect, so the ELBO gap is visible: {elbo} vs {exact}");
    for pair in iwae.windows(2) {
        assert!(pair[1] > pair[0], "IWAE-K rises with K: {iwae:?}");
    }
    assert!(elbo < iwae[1], "ELBO <= IWAE-10");
    assert!(iwae[3] <= exact + 0.01, "IWAE-1000 stays below log p(x): {} vs {exact}", iwae[3]);
    assert!(exact - iwae[3] < 0.1 * (exact - elbo), "IWAE-1000 closes most of the gap: {} vs {exact}", iwae[3]);
    let averaged = -reports[0].negative_elbo_averaged.unwrap().mean;
    assert!((iwae[0] - averaged).abs() < 0.1, "IWAE-1 equals the ELBO in expectation: {} vs {averaged}", iwae[0]);
    assert!((iwae[0] - elbo).abs() < 0.1, "IWAE-1 equals the single-sample ELBO in expectation: {} vs {elbo}", iwae[0]);
}

#[test]
fn chunking_the_samples_does_not_change_the_estimate() {
    let vae = ppca_model();
    let data = dataset(&sample_data(50));
    let whole = bounds(&vae, &data, 300, 100_000);
    let chunked = bounds(&vae, &data, 300, 128); // 128 samples at a time: three chunks per example
    assert_eq!(whole.examples, 50);
    let (a, b) = (whole.negative_iwae.unwrap().mean, chunked.negative_iwae.unwrap().mean);
    assert!((a - b).abs() < 0.05, "same estimator, different noise order: {a} vs {b}");
    assert!(whole.negative_iwae.unwrap().standard_error > 0.0);
    assert!((whole.bits_per_dim(a) - a / (4.0 * std::f64::consts::LN_2)).abs() < 1e-12);
}
