//! Exact resume: a run trained to the end in one go and the same run stopped (after an epoch, by a stop request, or
//! by a crash between checkpoints) and resumed end with the same weights, byte for byte, and the same metrics rows,
//! for an MLP and a convolutional model, the ELBO with warm-up and dynamic binarization, and IWAE.

use std::path::Path;

use candle_core::Device;
use elbo::data::sprites::SpriteConfig;
use elbo::data::{self, Binarization, DataSpec, ExampleShape, Splits};
use elbo::model::{ConvConfig, LikelihoodConfig, VaeConfig};
use elbo::objective::{KlSchedule, KlWeighting};
use elbo::outputs::{RunConfig, RunDir};
use elbo::run::{resume_run, train_run, ResumeChanges};
use elbo::training::{CheckpointEvery, Objective, StepRecord, TrainConfig, TrainingObserver};
use elbo::Error;

const SIDE: usize = 16;
const EPOCHS: usize = 4;

/// 256 training sprites and 51 held out: 4 steps of 64 per epoch.
fn spec() -> DataSpec {
    DataSpec::Sprites(SpriteConfig { size: SIDE, count: 256, seed: 3, full_grid: false })
}

fn splits() -> Splits {
    data::load(&spec(), 0.2, 3).unwrap()
}

fn mlp() -> VaeConfig {
    VaeConfig {
        input_shape: ExampleShape::image(1, SIDE, SIDE),
        latent_dim: 4,
        encoder_hidden: vec![32],
        decoder_hidden: vec![32],
        ..VaeConfig::default()
    }
}

fn conv() -> VaeConfig {
    VaeConfig {
        conv: Some(ConvConfig { channels: vec![8, 16], ..ConvConfig::default() }),
        encoder_hidden: vec![32],
        decoder_hidden: vec![32],
        ..VaeConfig::convolutional(ExampleShape::image(1, SIDE, SIDE), 4, LikelihoodConfig::Bernoulli)
    }
}

fn run_config(model: VaeConfig, training: TrainConfig) -> RunConfig {
    RunConfig {
        elbo_version: "test".into(),
        data: spec(),
        validation_fraction: 0.2,
        model,
        training: TrainConfig { batch_size: 64, eval_batch_size: 64, learning_rate: 3e-3, ..training },
        threads: 2,
        device: "cpu".into(),
    }
}

/// Stops training after a given step: by asking to stop (as Ctrl-C does), or by failing (as a crash would, after
/// the rows of that step are logged).
struct StopAfter {
    step: usize,
    crash: bool,
    seen: usize,
}

impl TrainingObserver for StopAfter {
    fn on_step(&mut self, record: &StepRecord) -> elbo::Result<()> {
        self.seen = record.step;
        if self.crash && record.step == self.step {
            return Err(Error::invalid_setting("test", "a crash"));
        }
        Ok(())
    }

    fn should_stop(&self) -> bool {
        !self.crash && self.seen >= self.step
    }
}

/// A do-nothing observer.
struct Quiet;
impl TrainingObserver for Quiet {}

/// The rows of `metrics.csv`, without the timing columns (wall seconds, examples per second).
fn metric_rows(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines().map(|line| line.rsplitn(3, ',').nth(2).unwrap().to_string()).collect()
}

/// Trains `config` to the end in `straight`; trains it again in `stopped` as `first_leg` says, then resumes it to
/// the end; checks that both leave the same weights and metrics.
fn assert_resume_is_exact(config: &RunConfig, first_leg: FirstLeg, label: &str) {
    let splits = splits();
    let dir = tempfile::tempdir().unwrap();
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    train_run(config, &splits, &RunDir::create(&straight).unwrap(), &Device::Cpu, &mut Quiet).unwrap();
    {
        let run = RunDir::create(&stopped).unwrap();
        match first_leg {
            FirstLeg::Epochs(epochs) => {
                let shorter =
                    RunConfig { training: TrainConfig { epochs, ..config.training.clone() }, ..config.clone() };
                train_run(&shorter, &splits, &run, &Device::Cpu, &mut Quiet).unwrap();
            }
            FirstLeg::StopAfter { step, crash } => {
                let mut stop = StopAfter { step, crash, seen: 0 };
                let result = train_run(config, &splits, &run, &Device::Cpu, &mut stop);
                assert_eq!(result.is_err(), crash, "{label}");
            }
        }
    }
    let changes = ResumeChanges { epochs: Some(EPOCHS), ..ResumeChanges::default() };
    let resumed = resume_run(&RunDir::resume(&stopped).unwrap(), &changes, &splits, &Device::Cpu, &mut Quiet).unwrap();
    assert_eq!(resumed.summary.epochs_completed, EPOCHS, "{label}");
    assert_eq!(resumed.summary.status, "completed", "{label}");
    let weights = |run: &Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(weights(&straight) == weights(&stopped), "{label}: the resumed run's weights differ");
    assert_eq!(metric_rows(&straight), metric_rows(&stopped), "{label}");
}

/// How the run to be resumed is stopped the first time.
#[derive(Clone, Copy)]
enum FirstLeg {
    /// It is trained for this many epochs and ends.
    Epochs(usize),
    /// It stops after this step: asked to (a checkpoint is written there) or by a crash (it restarts from the last
    /// checkpoint before).
    StopAfter { step: usize, crash: bool },
}

#[test]
fn an_mlp_resumed_after_two_epochs_ends_as_if_never_stopped() {
    let config = run_config(mlp(), TrainConfig { epochs: EPOCHS, ..TrainConfig::default() });
    assert_resume_is_exact(&config, FirstLeg::Epochs(2), "mlp");
}

#[test]
fn a_conv_model_resumed_after_two_epochs_ends_as_if_never_stopped() {
    let config = run_config(conv(), TrainConfig { epochs: EPOCHS, ..TrainConfig::default() });
    assert_resume_is_exact(&config, FirstLeg::Epochs(2), "conv");
}

#[test]
fn warm_up_and_dynamic_binarization_resume_where_they_were() {
    let warm_up = KlWeighting {
        schedule: KlSchedule::Linear { over: elbo::objective::Span::Steps(10) },
        ..KlWeighting::default()
    };
    let training =
        TrainConfig { epochs: EPOCHS, kl: warm_up, binarization: Binarization::Dynamic, ..TrainConfig::default() };
    let config = run_config(mlp(), training);
    assert_resume_is_exact(&config, FirstLeg::Epochs(2), "warm-up, epoch end");
    assert_resume_is_exact(&config, FirstLeg::StopAfter { step: 6, crash: false }, "warm-up, stopped mid-epoch");
}

#[test]
fn iwae_resumes_exactly() {
    let config = run_config(
        mlp(),
        TrainConfig { epochs: EPOCHS, objective: Objective::Iwae { samples: 3 }, ..TrainConfig::default() },
    );
    assert_resume_is_exact(&config, FirstLeg::Epochs(2), "iwae");
}

#[test]
fn a_crash_between_checkpoints_resumes_from_the_last_one() {
    let every_three =
        TrainConfig { epochs: EPOCHS, checkpoint_every: Some(CheckpointEvery::Steps(3)), ..TrainConfig::default() };
    // step 7 is in epoch 2, after the checkpoint at step 6 (mid-epoch); step 9 follows the one at the end of epoch 2
    for step in [7, 9] {
        assert_resume_is_exact(
            &run_config(mlp(), every_three.clone()),
            FirstLeg::StopAfter { step, crash: true },
            &format!("crash at step {step}"),
        );
    }
    // by the clock: a checkpoint whenever the interval has passed (here: after every step)
    let every_moment = TrainConfig { checkpoint_every: Some(CheckpointEvery::Minutes(1e-9)), ..every_three.clone() };
    assert_resume_is_exact(&run_config(mlp(), every_moment), FirstLeg::StopAfter { step: 6, crash: true }, "minutes");
    let conv_config =
        run_config(conv(), TrainConfig { checkpoint_every: Some(CheckpointEvery::Steps(3)), ..every_three });
    assert_resume_is_exact(&conv_config, FirstLeg::StopAfter { step: 7, crash: true }, "conv, crash at step 7");
}

#[test]
fn a_finished_run_is_not_resumed_without_more_epochs_and_changes_are_limited() {
    let splits = splits();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("run");
    let config = run_config(mlp(), TrainConfig { epochs: 1, ..TrainConfig::default() });
    train_run(&config, &splits, &RunDir::create(&root).unwrap(), &Device::Cpu, &mut Quiet).unwrap();
    let resume = |changes: ResumeChanges| {
        resume_run(&RunDir::resume(&root).unwrap(), &changes, &splits, &Device::Cpu, &mut Quiet)
    };
    let message = resume(ResumeChanges::default()).err().unwrap().to_string();
    assert!(message.contains("epochs") && message.contains("completed 1"), "{message}");
    let limited = ResumeChanges { epochs: Some(3), max_steps: Some(Some(4)), ..ResumeChanges::default() };
    let message = resume(limited).err().unwrap().to_string();
    assert!(message.contains("max-steps"), "{message}");
    let resumed = resume(ResumeChanges { epochs: Some(2), ..ResumeChanges::default() }).unwrap();
    assert_eq!((resumed.summary.epochs_completed, resumed.summary.steps), (2, 8));
    assert_eq!(RunDir::open(&root).unwrap().load_config().unwrap().training.epochs, 2, "config.json says 2 epochs now");
}

#[test]
fn resume_needs_a_checkpoint_and_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let message = RunDir::resume(&dir.path().join("nothing")).unwrap_err().to_string();
    assert!(message.contains("does not exist"), "{message}");
    let root = dir.path().join("empty");
    let writer = RunDir::create(&root).unwrap();
    std::fs::write(writer.config_path(), "{}").unwrap();
    let message = RunDir::resume(&root).unwrap_err().to_string();
    assert!(message.contains("process"), "a second writer is refused: {message}");
    drop(writer);
    let message = RunDir::resume(&root).unwrap_err().to_string();
    assert!(message.contains("checkpoint.safetensors is missing"), "{message}");
}
