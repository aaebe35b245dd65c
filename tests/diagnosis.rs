//! The diagnosis tells posterior collapse apart from a prior that simply fits: trained models, checked against
//! what is known about them.

use candle_core::{DType, Device};
use elbo::data::{Dataset, ExampleShape, Splits, Values};
use elbo::evaluation::{diagnose, Diagnosis, Verdict};
use elbo::model::{GaussianVariance, LikelihoodConfig, Vae, VaeConfig};
use elbo::objective::KlWeighting;
use elbo::training::{train, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn dataset(values: Vec<f32>, dim: usize) -> Dataset {
    Dataset {
        source: "synthetic".into(),
        values: Values::F32(values),
        shape: ExampleShape::flat(dim),
        labels: None,
        class_names: None,
        factors: None,
    }
}

/// Binary-ish images: one of four prototypes with pixel noise.
fn prototypes(count: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values =
        (0..count)
            .flat_map(|i| (0..16).map(move |d| (i % 4, d)))
            .map(|(class, d)| {
                if (d / 4 == class) || (d % 4 == class) {
                    rng.random_range(0.8..1.0)
                } else {
                    rng.random_range(0.0..0.2)
                }
            })
            .collect();
    dataset(values, 16)
}

/// x = W s + small noise, with 2 true factors s ~ N(0, I) in 12 dimensions.
fn two_factor_data(count: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let weights: Vec<[f32; 2]> = (0..12).map(|_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)]).collect();
    let mut values = Vec::with_capacity(count * 12);
    for _ in 0..count {
        let s: [f32; 2] = [StandardNormal.sample(&mut rng), StandardNormal.sample(&mut rng)];
        for w in &weights {
            let noise: f32 = StandardNormal.sample(&mut rng);
            values.push(w[0] * s[0] + w[1] * s[1] + 0.05 * noise);
        }
    }
    dataset(values, 12)
}

fn train_and_diagnose(config: &VaeConfig, splits: &Splits, training: &TrainConfig) -> Diagnosis {
    let (vae, varmap) = Vae::fresh(config, 1, DType::F32, &Device::Cpu).unwrap();
    train(&vae, &varmap, splits, training, &Device::Cpu, &mut []).unwrap();
    diagnose(&vae, &splits.test, 1000, 1, &Device::Cpu).unwrap()
}

fn mlp(dim: usize, latent_dim: usize, likelihood: LikelihoodConfig) -> VaeConfig {
    VaeConfig {
        input_shape: ExampleShape::flat(dim),
        latent_dim,
        encoder_hidden: vec![32],
        decoder_hidden: vec![32],
        likelihood,
        ..VaeConfig::default()
    }
}

fn training(epochs: usize, beta: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        learning_rate: 3e-3,
        kl: KlWeighting { beta, ..KlWeighting::default() },
        ..TrainConfig::default()
    }
}

#[test]
fn a_normally_trained_model_is_healthy() {
    let splits = Splits { train: prototypes(1024, 1), test: prototypes(256, 2), test_is_validation: false };
    let diagnosis = train_and_diagnose(&mlp(16, 4, LikelihoodConfig::Bernoulli), &splits, &training(10, 1.0));
    println!("{diagnosis}");
    assert_eq!(diagnosis.verdict, Verdict::Healthy);
    assert!(diagnosis.active_units > 0);
    assert!(
        diagnosis.mutual_information > 0.5,
        "four prototypes carry up to ln 4 = 1.39 nats: {}",
        diagnosis.mutual_information
    );
    assert!(diagnosis.latent_use.uses_latent);
    assert!(diagnosis.remedies.is_empty());
}

#[test]
fn a_very_large_beta_collapses_the_posterior() {
    let splits = Splits { train: prototypes(1024, 1), test: prototypes(256, 2), test_is_validation: false };
    let diagnosis = train_and_diagnose(&mlp(16, 4, LikelihoodConfig::Bernoulli), &splits, &training(10, 200.0));
    println!("{diagnosis}");
    assert_eq!(diagnosis.verdict, Verdict::PosteriorCollapse);
    assert_eq!(diagnosis.active_units, 0);
    assert!(diagnosis.mutual_information < 0.05, "{}", diagnosis.mutual_information);
    assert_eq!(diagnosis.inactive_dimensions, vec![0, 1, 2, 3], "the collapsed dimensions are named");
    assert!(!diagnosis.latent_use.uses_latent, "a collapsed posterior leaves the decoder nothing to use");
    assert!(
        diagnosis.remedies.iter().any(|r| r.contains("warm-up"))
            && diagnosis.remedies.iter().any(|r| r.contains("free bits"))
    );
}

#[test]
fn two_true_factors_in_ten_latent_dimensions_give_two_active_units_not_collapse() {
    let splits = Splits { train: two_factor_data(3000, 1), test: two_factor_data(500, 2), test_is_validation: false };
    let gaussian = LikelihoodConfig::Gaussian { variance: GaussianVariance::Fixed { sigma: 0.3 } };
    // A linear encoder and decoder: the linear VAE's optimum is probabilistic PCA, whose unused directions
    // collapse exactly to the prior (Lucas et al. 2019), so the right answer is known.
    let linear = VaeConfig { encoder_hidden: vec![], decoder_hidden: vec![], ..mlp(12, 10, gaussian) };
    let diagnosis = train_and_diagnose(&linear, &splits, &TrainConfig { learning_rate: 1e-2, ..training(150, 1.0) });
    println!("{diagnosis}");
    assert!((2..=3).contains(&diagnosis.active_units), "about one active unit per true factor");
    let informative: Vec<f64> = diagnosis.per_dimension.iter().map(|d| d.kl).filter(|&kl| kl > 0.1).collect();
    assert_eq!(informative.len(), 2, "two dimensions carry the information");
    assert!(informative.iter().sum::<f64>() > 0.9 * diagnosis.total_kl);
    assert_eq!(diagnosis.verdict, Verdict::Healthy, "not collapse");
    assert!(diagnosis.reasons.iter().any(|r| r.contains("unused") && r.contains("not collapse")));
}

#[test]
fn a_small_kl_with_inputs_still_distinguished_is_not_collapse() {
    // A tiny signal: each example shifts one pixel a little, so an informative posterior needs little KL.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let make = |rng: &mut ChaCha8Rng, count: usize| {
        let values = (0..count)
            .flat_map(|_| {
                let s: f32 = StandardNormal.sample(rng);
                [0.3 * s, 0.0, 0.0, 0.0]
            })
            .collect();
        dataset(values, 4)
    };
    let splits = Splits { train: make(&mut rng, 2000), test: make(&mut rng, 400), test_is_validation: false };
    let gaussian = LikelihoodConfig::Gaussian { variance: GaussianVariance::Fixed { sigma: 0.2 } };
    let diagnosis = train_and_diagnose(&mlp(4, 2, gaussian), &splits, &training(15, 1.0));
    println!("{diagnosis}");
    assert!(diagnosis.total_kl < 1.0, "small KL: {}", diagnosis.total_kl);
    assert!(diagnosis.active_units >= 1);
    assert_eq!(diagnosis.verdict, Verdict::SmallKlNotCollapse);
}
