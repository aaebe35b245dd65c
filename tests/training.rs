//! Training end to end on small data made in code: reproducibility, learning, and every way a run can stop.

use candle_core::{DType, Device};
use candle_nn::VarMap;
use elbo::data::{DataSpec, Dataset, ExampleShape, Splits, Values};
use elbo::model::{LikelihoodConfig, Vae, VaeConfig};
use elbo::outputs::{RunConfig, RunDir};
use elbo::run::train_run;
use elbo::training::{train, EpochRecord, StepRecord, TrainConfig, TrainingObserver};
use elbo::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIM: usize = 16;

/// Two prototypes with pixel noise: a VAE can learn this in a few epochs.
fn dataset(count: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(count * DIM);
    for i in 0..count {
        for d in 0..DIM {
            let on = if i % 2 == 0 { d < DIM / 2 } else { d % 2 == 0 };
            values.push(if on { rng.random_range(0.8..1.0) } else { rng.random_range(0.0..0.2) });
        }
    }
    Dataset {
        source: "synthetic".into(),
        values: Values::F32(values),
        shape: ExampleShape::flat(DIM),
        labels: None,
        class_names: None,
        factors: None,
    }
}

fn splits() -> Splits {
    Splits { train: dataset(256, 1), test: dataset(64, 2), test_is_validation: false }
}

fn model_config() -> VaeConfig {
    VaeConfig {
        input_shape: ExampleShape::flat(DIM),
        latent_dim: 2,
        encoder_hidden: vec![32],
        decoder_hidden: vec![32],
        ..VaeConfig::default()
    }
}

fn train_config(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, batch_size: 32, learning_rate: 3e-3, eval_batch_size: 50, ..TrainConfig::default() }
}

fn run_config(epochs: usize) -> RunConfig {
    RunConfig {
        elbo_version: "test".into(),
        data: DataSpec::Path { path: "synthetic".into(), label_column: None },
        validation_fraction: 0.1,
        model: model_config(),
        training: train_config(epochs),
        threads: 1,
        device: "cpu".into(),
    }
}

/// Collects epoch records.
#[derive(Default)]
struct Recorder {
    epochs: Vec<EpochRecord>,
    steps: Vec<StepRecord>,
}

impl TrainingObserver for Recorder {
    fn on_step(&mut self, record: &StepRecord) -> elbo::Result<()> {
        self.steps.push(*record);
        Ok(())
    }
    fn on_epoch_end(&mut self, record: &EpochRecord, _: &VarMap) -> elbo::Result<()> {
        self.epochs.push(*record);
        Ok(())
    }
}

fn weights(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn train_fresh(seed: u64, epochs: usize) -> (VarMap, Recorder) {
    let (vae, varmap) = Vae::fresh(&model_config(), seed, DType::F32, &Device::Cpu).unwrap();
    let mut recorder = Recorder::default();
    let config = TrainConfig { seed, ..train_config(epochs) };
    train(&vae, &varmap, &splits(), &config, &Device::Cpu, &mut [&mut recorder]).unwrap();
    (varmap, recorder)
}

#[test]
fn same_seed_gives_the_same_numbers_bit_for_bit() {
    let (first, first_log) = train_fresh(5, 2);
    let (second, second_log) = train_fresh(5, 2);
    assert_eq!(weights(&first), weights(&second));
    let bits =
        |log: &Recorder| log.steps.iter().map(|s| (s.reconstruction.to_bits(), s.kl.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&first_log), bits(&second_log));
    let (other, _) = train_fresh(6, 2);
    assert_ne!(weights(&first), weights(&other));
}

#[test]
fn training_lowers_the_held_out_negative_elbo_and_uses_the_latent() {
    let (_, log) = train_fresh(1, 15);
    let (first, last) = (log.epochs.first().unwrap(), log.epochs.last().unwrap());
    assert!(
        last.held_out.unwrap().negative_elbo() < first.held_out.unwrap().negative_elbo() - 1.0,
        "held-out -ELBO went from {} to {}",
        first.held_out.unwrap().negative_elbo(),
        last.held_out.unwrap().negative_elbo()
    );
    assert!(
        last.held_out.unwrap().kl > 0.1,
        "two distinct prototypes need information in z; KL {}",
        last.held_out.unwrap().kl
    );
    assert_eq!(log.steps.len(), 15 * 8);
    assert_eq!(log.steps.last().unwrap().step, 120);
}

/// Breaks the weights at the end of epoch `at`, so the next step's loss is NaN.
struct Sabotage {
    at: usize,
}

impl TrainingObserver for Sabotage {
    fn on_epoch_end(&mut self, record: &EpochRecord, varmap: &VarMap) -> elbo::Result<()> {
        if record.epoch == self.at {
            let vars = varmap.data().lock().unwrap();
            let var = vars.get("decoder.output.bias").unwrap();
            var.set(&(var.as_tensor() * f64::NAN)?)?;
        }
        Ok(())
    }
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let error = train_run(&run_config(3), &splits(), &run, &Device::Cpu, &mut Sabotage { at: 1 }).err().unwrap();
    match &error {
        Error::NonFinite { step, epoch, term, .. } => {
            assert_eq!((*step, *epoch), (9, 2), "first step of epoch 2");
            assert_eq!(term, "reconstruction");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(error.to_string().contains("step 9"), "{error}");
    let (vae, varmap, _) = run.load_model(&Device::Cpu).unwrap();
    assert!(weights(&varmap).iter().all(|(_, w)| w.iter().all(|v| v.is_finite())), "checkpoint of epoch 1 is finite");
    let _ = vae;
    let summary = std::fs::read_to_string(run.summary_path()).unwrap();
    assert!(summary.contains("failed: non-finite reconstruction at step 9"), "{summary}");
}

/// Asks to stop after `after` steps, like Ctrl-C.
struct StopAfter {
    after: usize,
    seen: usize,
}

impl TrainingObserver for StopAfter {
    fn on_step(&mut self, _: &StepRecord) -> elbo::Result<()> {
        self.seen += 1;
        Ok(())
    }
    fn should_stop(&self) -> bool {
        self.seen >= self.after
    }
}

#[test]
fn an_interrupted_run_keeps_its_weights_logs_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let finished =
        train_run(&run_config(5), &splits(), &run, &Device::Cpu, &mut StopAfter { after: 12, seen: 0 }).unwrap();
    assert_eq!(finished.summary.status, "interrupted");
    assert_eq!(finished.summary.steps, 12);
    assert_eq!(finished.summary.epochs_completed, 1);
    let (_, saved, _) = run.load_model(&Device::Cpu).unwrap();
    assert_eq!(weights(&saved), weights(&finished.varmap), "the partial epoch's weights are saved");
    let metrics = std::fs::read_to_string(run.metrics_path()).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.starts_with("step,")).count(), 12);
}

#[test]
fn a_completed_run_leaves_a_readable_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let finished = train_run(&run_config(2), &splits(), &run, &Device::Cpu, &mut Recorder::default()).unwrap();
    assert_eq!(run.load_config().unwrap(), run_config(2));
    let (_, varmap, _) = run.load_model(&Device::Cpu).unwrap();
    assert_eq!(weights(&varmap), weights(&finished.varmap));
    let names: Vec<String> = weights(&varmap).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "decoder.hidden.0.bias",
            "decoder.hidden.0.weight",
            "decoder.output.bias",
            "decoder.output.weight",
            "encoder.hidden.0.bias",
            "encoder.hidden.0.weight",
            "encoder.log_var.bias",
            "encoder.log_var.weight",
            "encoder.mu.bias",
            "encoder.mu.weight"
        ]
    );
    let metrics = std::fs::read_to_string(run.metrics_path()).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(lines.next().unwrap(), elbo::outputs::metrics::METRICS_HEADER);
    assert_eq!(metrics.lines().filter(|l| l.starts_with("step,")).count(), 16);
    assert_eq!(metrics.lines().filter(|l| l.starts_with("epoch,")).count(), 4);
    assert!(metrics.lines().any(|l| l.starts_with("epoch,2,16,test,")));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.summary_path()).unwrap()).unwrap();
    assert_eq!(summary["status"], "completed");
    assert!(summary["note"].as_str().unwrap().contains("lower bound"));
    for picture in [elbo::outputs::RunFile::Samples, elbo::outputs::RunFile::Reconstructions] {
        let image = image::open(run.path(picture)).unwrap();
        assert!(image.width() > 16 && image.height() > 4, "{picture:?}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn data_that_does_not_fit_the_model_is_a_clear_error() {
    let (vae, varmap) = Vae::fresh(&VaeConfig::default(), 1, DType::F32, &Device::Cpu).unwrap();
    let error = train(&vae, &varmap, &splits(), &train_config(1), &Device::Cpu, &mut []).err().unwrap();
    let message = error.to_string();
    assert!(message.contains("synthetic") && message.contains("16 values") && message.contains("784"), "{message}");
}

#[test]
fn bernoulli_targets_outside_the_unit_interval_are_rejected_with_the_source() {
    let mut bad = splits();
    if let Values::F32(values) = &mut bad.train.values {
        values[5] = 3.5;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let error = train_run(&run_config(1), &bad, &run, &Device::Cpu, &mut Recorder::default()).err().unwrap();
    let message = error.to_string();
    assert!(message.contains("synthetic") && message.contains("[0, 1]") && message.contains("3.5"), "{message}");
    let gaussian = RunConfig {
        model: VaeConfig { likelihood: LikelihoodConfig::Gaussian { variance: Default::default() }, ..model_config() },
        ..run_config(1)
    };
    assert!(
        train_run(&gaussian, &bad, &run, &Device::Cpu, &mut Recorder::default()).is_ok(),
        "gaussian takes any value"
    );
}

#[test]
fn sgd_with_momentum_and_every_likelihood_train() {
    for likelihood in [
        LikelihoodConfig::Bernoulli,
        LikelihoodConfig::Categorical { levels: 8 },
        LikelihoodConfig::Gaussian { variance: elbo::model::GaussianVariance::LearnedPerDimension },
        LikelihoodConfig::Gaussian { variance: elbo::model::GaussianVariance::LearnedShared },
    ] {
        let config = VaeConfig { likelihood, ..model_config() };
        let (vae, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let mut recorder = Recorder::default();
        let training = TrainConfig {
            optimizer: elbo::training::OptimizerConfig::Sgd { momentum: 0.9 },
            learning_rate: 1e-3,
            ..train_config(4)
        };
        train(&vae, &varmap, &splits(), &training, &Device::Cpu, &mut [&mut recorder]).unwrap();
        let (first, last) = (
            recorder.epochs[0].held_out.unwrap().negative_elbo(),
            recorder.epochs[3].held_out.unwrap().negative_elbo(),
        );
        assert!(last < first, "{likelihood:?}: held-out -ELBO {first} -> {last}");
    }
}

#[test]
fn a_warm_up_shows_as_a_weighted_kl_beside_the_raw_kl() {
    use elbo::objective::{KlSchedule, KlWeighting};
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let mut config = run_config(3);
    config.training.kl = KlWeighting {
        schedule: KlSchedule::Linear { over: elbo::objective::Span::Steps(16) },
        ..KlWeighting::default()
    };
    train_run(&config, &splits(), &run, &Device::Cpu, &mut Recorder::default()).unwrap();
    let metrics = std::fs::read_to_string(run.metrics_path()).unwrap();
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (kl, weighted) = (column("kl"), column("weighted_kl"));
    let steps: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("step,"))
        .map(|l| l.split(',').collect::<Vec<_>>())
        .map(|cells| (cells[kl].parse().unwrap(), cells[weighted].parse().unwrap()))
        .collect();
    let (first_kl, first_weighted) = steps[0];
    assert!((first_weighted - first_kl / 16.0).abs() < 1e-4 * first_kl.max(1.0), "step 1 weighs the KL by 1/16");
    let (last_kl, last_weighted) = steps[20];
    assert!((last_weighted - last_kl).abs() < 1e-5, "after the warm-up the weight is beta = 1");
}

#[test]
fn the_iwae_objective_trains_and_has_no_separate_kl_term() {
    let (vae, varmap) = Vae::fresh(&model_config(), 1, DType::F32, &Device::Cpu).unwrap();
    let mut recorder = Recorder::default();
    let config = TrainConfig { objective: elbo::training::Objective::Iwae { samples: 5 }, ..train_config(6) };
    train(&vae, &varmap, &splits(), &config, &Device::Cpu, &mut [&mut recorder]).unwrap();
    assert!(recorder.steps.iter().all(|s| s.weighted_kl.is_none()));
    let (first, last) =
        (recorder.epochs[0].held_out.unwrap().negative_elbo(), recorder.epochs[5].held_out.unwrap().negative_elbo());
    assert!(last < first - 1.0, "held-out -ELBO {first} -> {last}");
    let bad = TrainConfig { kl: elbo::objective::KlWeighting { beta: 4.0, ..Default::default() }, ..config };
    let error = train(&vae, &varmap, &splits(), &bad, &Device::Cpu, &mut []).unwrap_err();
    assert!(error.to_string().contains("IWAE objective takes no beta"), "{error}");
}

#[test]
fn in_memory_arrays_train_without_a_held_out_split() {
    let values: Vec<f32> = (0..256 * 12).map(|i| ((i * 31) % 17) as f32 / 16.0).collect();
    let data = elbo::data::Dataset::from_f32(values, ExampleShape::flat(12)).unwrap();
    assert_eq!(data.len(), 256);
    assert!(elbo::data::Dataset::from_f32(vec![0.5; 13], ExampleShape::flat(12)).is_err(), "not whole examples");
    assert!(elbo::data::Dataset::from_f32(vec![f32::NAN; 12], ExampleShape::flat(12)).is_err(), "not finite");
    let config = VaeConfig {
        input_shape: data.shape,
        latent_dim: 2,
        encoder_hidden: vec![8],
        decoder_hidden: vec![8],
        ..VaeConfig::default()
    };
    let (vae, varmap) = Vae::fresh(&config, 1, DType::F32, &Device::Cpu).unwrap();
    let training = TrainConfig { epochs: 2, batch_size: 64, ..TrainConfig::default() };
    let outcome =
        train(&vae, &varmap, &elbo::data::Splits::train_only(data), &training, &Device::Cpu, &mut []).unwrap();
    let last = outcome.last_epoch.unwrap();
    assert_eq!((last.epoch, last.held_out), (2, None));
    assert!(last.train.negative_elbo().is_finite());
}
