//! Convolutional VAEs on image data: every likelihood, grey and RGB, stable weight names, configs that still load,
//! clear errors for sizes the strides cannot take; and the beta-TCVAE objective, the step limit and `elbo metrics`
//! end to end.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use elbo::data::{Dataset, ExampleShape, Splits, Values};
use elbo::model::{ConvConfig, GaussianVariance, LikelihoodConfig, Vae, VaeConfig};
use elbo::objective::negative_elbo_terms;
use elbo::training::{train, Objective, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIDE: usize = 16;

/// Squares of two colours on black, at random places: `channels` 1 (grey) or 3 (RGB), as bytes.
fn squares(count: usize, channels: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let plane = SIDE * SIDE;
    let mut values = vec![0u8; count * channels * plane];
    for (index, image) in values.chunks_exact_mut(channels * plane).enumerate() {
        let (top, left) = (rng.random_range(0..SIDE - 6), rng.random_range(0..SIDE - 6));
        for channel in 0..channels {
            let on = channels == 1 || (index % 2 == 0) == (channel == 0) || channel == 2;
            for row in top..top + 6 {
                for column in left..left + 6 {
                    image[channel * plane + row * SIDE + column] = if on { 255 } else { 40 };
                }
            }
        }
    }
    Dataset {
        source: "squares".into(),
        values: Values::U8(values),
        shape: ExampleShape::image(channels, SIDE, SIDE),
        labels: None,
        class_names: None,
        factors: None,
    }
}

fn splits(channels: usize) -> Splits {
    Splits { train: squares(192, channels, 1), test: squares(64, channels, 2), test_is_validation: true }
}

fn conv_model(channels: usize, likelihood: LikelihoodConfig) -> VaeConfig {
    VaeConfig {
        conv: Some(ConvConfig { channels: vec![8, 16], ..ConvConfig::default() }),
        encoder_hidden: vec![32],
        decoder_hidden: vec![32],
        ..VaeConfig::convolutional(ExampleShape::image(channels, SIDE, SIDE), 3, likelihood)
    }
}

fn training(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, batch_size: 32, learning_rate: 3e-3, eval_batch_size: 64, ..TrainConfig::default() }
}

/// Trains and returns the held-out negative ELBO after the first and the last epoch.
fn first_and_last(config: &VaeConfig, splits: &Splits, training: &TrainConfig) -> (f64, f64) {
    let (vae, varmap) = Vae::fresh(config, 3, DType::F32, &Device::Cpu).unwrap();
    let outcome =
        train(&vae, &varmap, splits, &TrainConfig { epochs: 1, ..training.clone() }, &Device::Cpu, &mut []).unwrap();
    let first = outcome.last_epoch.unwrap().held_out.unwrap().negative_elbo();
    let outcome = train(&vae, &varmap, splits, training, &Device::Cpu, &mut []).unwrap();
    (first, outcome.last_epoch.unwrap().held_out.unwrap().negative_elbo())
}

#[test]
fn a_conv_vae_learns_grey_and_rgb_images_with_every_likelihood() {
    let likelihoods = [
        LikelihoodConfig::Bernoulli,
        LikelihoodConfig::Gaussian { variance: GaussianVariance::LearnedPerDimension },
        LikelihoodConfig::Gaussian { variance: GaussianVariance::LearnedShared },
        LikelihoodConfig::Categorical { levels: 4 },
    ];
    for channels in [1, 3] {
        for likelihood in &likelihoods {
            let config = conv_model(channels, *likelihood);
            let (first, last) = first_and_last(&config, &splits(channels), &training(6));
            assert!(last.is_finite() && last < first - 1.0, "{channels} channels, {likelihood:?}: {first} -> {last}");
        }
    }
}

#[test]
fn the_decoder_gives_each_pixels_categorical_logits_side_by_side() {
    // a categorical decoder's parameters must be laid out [batch, C*H*W, levels] like the MLP's
    let config = conv_model(3, LikelihoodConfig::Categorical { levels: 5 });
    let (vae, _) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
    let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.decode(&z).unwrap().dims(), &[2, 3 * SIDE * SIDE * 5]);
    let x = Tensor::zeros((2, 3 * SIDE * SIDE), DType::F32, &Device::Cpu).unwrap();
    let eps = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let terms = negative_elbo_terms(&vae, &x, &eps).unwrap();
    assert_eq!(terms.reconstruction.dims(), &[2]);
}

#[test]
fn weight_names_follow_the_documented_scheme() {
    let config = VaeConfig::convolutional(ExampleShape::image(1, 64, 64), 10, LikelihoodConfig::Bernoulli);
    let (_, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
    let mut names: Vec<(String, Vec<usize>)> =
        varmap.data().lock().unwrap().iter().map(|(name, var)| (name.clone(), var.dims().to_vec())).collect();
    names.sort();
    let expected = [
        ("decoder.deconv.0.weight", vec![64, 64, 4, 4]),
        ("decoder.deconv.1.weight", vec![64, 32, 4, 4]),
        ("decoder.deconv.2.weight", vec![32, 32, 4, 4]),
        ("decoder.grid.weight", vec![1024, 256]),
        ("decoder.hidden.0.weight", vec![256, 10]),
        ("decoder.output.weight", vec![32, 1, 4, 4]),
        ("encoder.conv.0.weight", vec![32, 1, 4, 4]),
        ("encoder.conv.3.weight", vec![64, 64, 4, 4]),
        ("encoder.hidden.0.weight", vec![256, 1024]),
        ("encoder.log_var.weight", vec![10, 256]),
        ("encoder.mu.weight", vec![10, 256]),
    ];
    for (name, dims) in expected {
        assert!(names.contains(&(name.to_string(), dims.clone())), "{name} {dims:?} missing from {names:?}");
    }
    assert_eq!(names.len(), 2 * (4 + 4 + 2 + 2 + 1), "weight and bias of 13 layers");
}

#[test]
fn configs_without_conv_still_load_and_conv_configs_round_trip() {
    let old = r#"{"input_shape":{"channels":1,"height":28,"width":28},"latent_dim":20,"encoder_hidden":[400],
        "decoder_hidden":[400],"activation":"relu","likelihood":{"kind":"bernoulli"}}"#;
    let config: VaeConfig = serde_json::from_str(old).unwrap();
    assert_eq!(config.conv, None);
    let conv = conv_model(3, LikelihoodConfig::Bernoulli);
    let text = serde_json::to_string(&conv).unwrap();
    assert_eq!(serde_json::from_str::<VaeConfig>(&text).unwrap(), conv);
}

#[test]
fn sizes_the_strides_cannot_take_are_refused_by_name() {
    let config = VaeConfig::convolutional(ExampleShape::image(1, 30, 30), 4, LikelihoodConfig::Bernoulli);
    let error = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("height is 15 pixels at convolution 2"), "{error}");
    let flat = VaeConfig { conv: Some(ConvConfig::small()), ..VaeConfig::default() };
    let error = Vae::fresh(&flat, 1, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("flat vectors"), "{error}");
}

#[test]
fn beta_tcvae_trains_and_logs_its_weighted_kl_apart_from_the_kl() {
    let config = conv_model(1, LikelihoodConfig::Bernoulli);
    let training = TrainConfig { objective: Objective::Tcvae { tc_beta: 6.0 }, ..training(4) };
    let (first, last) = first_and_last(&config, &splits(1), &training);
    assert!(last < first - 1.0, "{first} -> {last}");
    let tc_one = TrainConfig { objective: Objective::Tcvae { tc_beta: 1.0 }, ..training.clone() };
    let (vae, varmap) = Vae::fresh(&config, 3, DType::F32, &Device::Cpu).unwrap();
    let outcome =
        train(&vae, &varmap, &splits(1), &TrainConfig { epochs: 1, ..tc_one }, &Device::Cpu, &mut []).unwrap();
    let epoch = outcome.last_epoch.unwrap();
    // with beta 1 the three parts add up to the one-sample KL, whose mean is close to the closed-form KL
    let (weighted, kl) = (epoch.train_weighted_kl.unwrap(), epoch.train.kl);
    assert!((weighted - kl).abs() < 0.5 + 0.2 * kl, "weighted {weighted} vs KL {kl}");
    // 192 examples in batches of 191 leave a last batch of one, whose q(z) is estimated from itself alone
    let ragged = TrainConfig { batch_size: 191, epochs: 1, ..training.clone() };
    assert!(train(&vae, &varmap, &splits(1), &ragged, &Device::Cpu, &mut []).is_ok());
    let bad = TrainConfig { batch_size: 1, ..training };
    assert!(train(&vae, &varmap, &splits(1), &bad, &Device::Cpu, &mut []).unwrap_err().to_string().contains("batch"));
}

#[test]
fn the_step_limit_ends_training_inside_an_epoch_and_still_evaluates() {
    let config = conv_model(1, LikelihoodConfig::Bernoulli);
    let (vae, varmap) = Vae::fresh(&config, 3, DType::F32, &Device::Cpu).unwrap();
    let limited = TrainConfig { max_steps: Some(8), ..training(5) };
    let outcome = train(&vae, &varmap, &splits(1), &limited, &Device::Cpu, &mut []).unwrap();
    // 192 examples in batches of 32: 6 steps per epoch, so step 8 falls in epoch 2
    assert_eq!((outcome.steps, outcome.epochs_completed, outcome.interrupted), (8, 2, false));
    assert!(outcome.last_epoch.unwrap().held_out.unwrap().negative_elbo().is_finite());
}

fn elbo(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elbo")).args(args).current_dir(dir).output().expect("elbo runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn train_a_conv_model_on_sprites_then_measure_its_disentanglement() {
    let dir = tempfile::tempdir().unwrap();
    let train_args = [
        "train",
        "--sprite-size",
        "16",
        "--sprite-count",
        "256",
        "--architecture",
        "conv",
        "--conv-channels",
        "8,16",
        "--hidden",
        "32",
        "--latent-dim",
        "4",
        "--epochs",
        "2",
        "--max-steps",
        "12",
        "--batch-size",
        "32",
        "--objective",
        "tcvae",
        "--threads",
        "1",
        "--quiet",
        "--out",
        "run",
    ];
    let output = elbo(&train_args, dir.path());
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("1x16x16 conv [8, 16]"), "{}", text(&output));
    let metrics = elbo(&["metrics", "--run", "run", "--dataset", "sprites16", "--scale", "0.01"], dir.path());
    assert!(metrics.status.success(), "{}", text(&metrics));
    let printed = text(&metrics);
    assert!(printed.contains("beta-VAE score") && printed.contains("MIG") && printed.contains("DCI"), "{printed}");
    let report = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(report.contains("FactorVAE score (Kim &amp; Mnih 2018)"), "the report shows the metric table");
    let wrong = elbo(&["metrics", "--run", "run", "--dataset", "sprites64"], dir.path());
    assert!(!wrong.status.success() && text(&wrong).contains("sprites16"), "{}", text(&wrong));
    let odd =
        elbo(&["train", "--sprite-size", "18", "--architecture", "conv", "--epochs", "1", "--out", "x"], dir.path());
    assert!(!odd.status.success() && text(&odd).contains("height is 9 pixels"), "{}", text(&odd));
    let mlp = elbo(&["train", "--conv-channels", "8", "--epochs", "1", "--out", "y"], dir.path());
    assert!(!mlp.status.success() && text(&mlp).contains("--architecture conv"), "{}", text(&mlp));
}
