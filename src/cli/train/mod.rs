//! `elbo train`: load data, train, and leave a run directory; or repeat a run from its `config.json`
//! (`--config`), or continue one from its checkpoint (`--resume`).

mod autoencoder;
mod repeat;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, Args, ValueEnum};
use elbo::data::{self, DataSpec, Splits};
use elbo::outputs::{Existing, RunConfig, RunDir};
use elbo::run::{resume_run, train_run, FinishedRun, ResumeChanges};
use elbo::training::{CheckpointEvery, OptimizerConfig, StepChoice, TrainConfig};

use super::compute_args::{parse_device, ComputeArgs};
use super::data_args::{BinarizeMode, DataArgs};
use super::model_args::{ArchitectureKind, ModelArgs};
use super::objective_args::ObjectiveArgs;
use super::progress::Progress;

/// Flags of `elbo train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    objective: ObjectiveArgs,
    #[command(flatten)]
    autoencoder: autoencoder::AutoencoderArgs,
    /// Passes over the training data.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Stop after this many optimisation steps, if that comes before the last epoch ends (the last epoch is then
    /// partial, but evaluated and saved like the others).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate, allow_negative_numbers = true)]
    lr: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Seed for weights, shuffling, noise and binarization (and the built-in data).
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Binarization of inputs.
    #[arg(long, value_enum, default_value_t = BinarizeMode::None)]
    binarize: BinarizeMode,
    /// Threshold for --binarize static.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Training step: auto (elbo's fused CPU step where it covers the run, else candle's graph), graph or fused
    /// (an error where it does not cover the run). The choice and its reason are printed.
    #[arg(long, value_enum, default_value_t = StepChoice::default())]
    step: StepChoice,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Run directory (default: runs/<data name>-<n>, the first free n).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar; one line per epoch only.
    #[arg(long)]
    quiet: bool,
    /// Replace the run already in --out: remove the files elbo wrote there (config, weights, checkpoint, metrics,
    /// summary, diagnosis, probe and disentanglement scores, report, pictures, temporaries) first. Without it, a
    /// directory that is not empty is refused.
    #[arg(long)]
    overwrite: bool,
    /// Besides the checkpoint at the end of every epoch, one every N steps (`500`) or minutes (`10m`).
    #[arg(long, value_name = "N|Nm")]
    checkpoint_every: Option<CheckpointEvery>,
    /// Continue the run in this directory from its last checkpoint, exactly as if it had never stopped (same
    /// threads, device and settings as its config.json). Takes only --epochs (the total, e.g. more than the run
    /// had), --max-steps, --checkpoint-every and --quiet; metrics.csv is continued.
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// Repeat the run a config.json describes (e.g. RUN/config.json) in a new directory. Flags given with it change
    /// its fields: --epochs, --max-steps, --batch-size, --lr, --seed, --beta, --free-bits, --latent-dim,
    /// --activation, --binarize, --step, --threads, --device, --validation-fraction, --checkpoint-every; the other
    /// settings are edited in the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Optimiser choices.
#[derive(ValueEnum, Debug, Clone, Copy)]
enum OptimizerKind {
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8).
    Adam,
    /// SGD with momentum.
    Sgd,
}

/// Runs `elbo train`: the exit code is 0 for a completed run, 128 + the signal's number for one a signal stopped
/// (130 for Ctrl-C, 143 for SIGTERM); a failure is an error. `matches` tells the flags given from the defaults.
pub fn run(args: TrainArgs, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let given = repeat::given_flags(matches);
    if let Some(dir) = args.resume.clone() {
        if elbo::autoencoder_run::is_autoencoder_run(&dir) {
            return autoencoder::resume(&args, &given, &dir);
        }
        return resume(&args, &given, &dir);
    }
    if args.model.architecture == ArchitectureKind::AutoencoderKl {
        return autoencoder::run(&args, &given);
    }
    let (config, splits) = match &args.config {
        Some(file) => {
            let config = repeat::config_with_flags(file, &args, &given)?;
            let splits = load_data(&config)?;
            (config, splits)
        }
        None => config_from_flags(&args)?,
    };
    let device = parse_device(&config.device).map_err(anyhow::Error::msg)?.open()?;
    config.validate()?;
    config.model.likelihood.check_data(&splits.train)?;
    let out = args.out.clone().unwrap_or_else(|| next_free_run_dir(&config.data));
    let existing = if args.overwrite { Existing::Overwrite } else { Existing::Refuse };
    let run = RunDir::create_with(&out, existing)?;
    print_plan(&config, &splits, &out);
    let mut progress = Progress::new(args.quiet, splits.test_is_validation)?;
    let finished = train_run(&config, &splits, &run, &device, &mut progress).with_context(|| failed(&out))?;
    Ok(finish(&finished, &progress, &out))
}

/// `elbo train --resume RUN`: continues the run from its checkpoint with its own settings.
fn resume(args: &TrainArgs, given: &[String], dir: &Path) -> anyhow::Result<ExitCode> {
    repeat::check_resume_flags(given)?;
    let run = RunDir::resume(dir)?;
    let stored = run.load_config()?;
    super::set_threads(stored.threads)?;
    let device = parse_device(&stored.device).map_err(anyhow::Error::msg)?.open()?;
    let was_given = |id: &str| given.iter().any(|flag| flag == id);
    let changes = ResumeChanges {
        epochs: was_given("epochs").then_some(args.epochs),
        max_steps: was_given("max_steps").then_some(args.max_steps),
        checkpoint_every: was_given("checkpoint_every").then_some(args.checkpoint_every),
    };
    let config = changes.apply(&stored);
    let splits = load_data(&config)?;
    print_plan(&config, &splits, dir);
    println!("resuming from {}", run.checkpoint_path().display());
    let mut progress = Progress::new(args.quiet, splits.test_is_validation)?;
    let finished = resume_run(&run, &changes, &splits, &device, &mut progress).with_context(|| failed(dir))?;
    Ok(finish(&finished, &progress, dir))
}

/// The context of a failed run's error.
fn failed(out: &Path) -> String {
    format!("training failed; {} keeps metrics.csv and the last checkpoint", out.display())
}

/// The configuration the flags describe, and its data.
fn config_from_flags(args: &TrainArgs) -> anyhow::Result<(RunConfig, Splits)> {
    let threads = super::set_threads(args.compute.threads)?;
    let spec = args.data.spec(args.seed);
    let splits = data::load(&spec, args.data.validation_fraction, args.seed).context("loading the data")?;
    let config = RunConfig {
        elbo_version: env!("CARGO_PKG_VERSION").to_string(),
        model: args.model.config(splits.train.shape)?,
        training: train_config(args),
        data: spec,
        validation_fraction: args.data.validation_fraction,
        threads,
        device: args.compute.device.to_string(),
    };
    Ok((config, splits))
}

/// The data a configuration names.
fn load_data(config: &RunConfig) -> anyhow::Result<Splits> {
    data::load(&config.data, config.validation_fraction, config.training.seed).context("loading the data")
}

/// The exit code of a run: 0 when it completed; when a signal stopped it, the shell's code for that signal, with
/// how to continue printed.
fn exit_code(progress: &Progress, out: &Path) -> ExitCode {
    match progress.interrupted_by() {
        Some(signal) => {
            println!("interrupted by signal {signal}: weights, checkpoint, metrics and summary of the steps so far are saved");
            println!("continue with: elbo train --resume {}", out.display());
            // the shell's convention for a process ended by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
        None => ExitCode::SUCCESS,
    }
}

/// Prints the diagnosis and the outcome; the exit code: 0 for a completed run, the shell's code for a signal.
fn finish(finished: &FinishedRun, progress: &Progress, out: &Path) -> ExitCode {
    print!("{}", finished.diagnosis);
    let exit = exit_code(progress, out);
    println!(
        "done: {} epochs, {:.0} train examples/s; the held-out -ELBO is an upper bound on -log p(x), not the likelihood",
        finished.summary.epochs_completed, finished.summary.train_examples_per_second
    );
    println!(
        "wrote {}/{{config.json, model.safetensors, checkpoint.safetensors, metrics.csv, summary.json, samples.png, reconstructions.png, diagnosis.json, report.html}}",
        out.display()
    );
    exit
}

fn train_config(args: &TrainArgs) -> TrainConfig {
    TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        optimizer: match args.optimizer {
            OptimizerKind::Adam => OptimizerConfig::default(),
            OptimizerKind::Sgd => OptimizerConfig::Sgd { momentum: args.momentum },
        },
        objective: args.objective.objective(),
        kl: args.objective.kl_weighting(),
        seed: args.seed,
        binarization: args.binarize.to_binarization(args.threshold),
        max_steps: args.max_steps,
        step: args.step,
        checkpoint_every: args.checkpoint_every,
        ..TrainConfig::default()
    }
}

fn print_plan(config: &RunConfig, splits: &data::Splits, out: &Path) {
    let model = &config.model;
    println!(
        "data: {} ({} train, {} {}), {} values per example",
        splits.train.source,
        splits.train.len(),
        splits.test.len(),
        if splits.test_is_validation { "validation" } else { "test" },
        model.input_shape.dim()
    );
    println!(
        "model: {}; {} epochs, batch {}, lr {}, {:?}, beta {}, seed {}, {} threads",
        model.describe(),
        config.training.epochs,
        config.training.batch_size,
        config.training.learning_rate,
        config.training.objective,
        config.training.kl.beta,
        config.training.seed,
        config.threads
    );
    println!("run directory: {}", out.display());
}

/// `runs/<data name>-<n>` for the first n not taken.
fn next_free_run_dir(spec: &DataSpec) -> PathBuf {
    let name = match spec {
        DataSpec::Sprites(_) => "sprites".to_string(),
        DataSpec::Path { path, .. } | DataSpec::Images(elbo::data::image_folder::ImageFolderConfig { path, .. }) => {
            path.file_stem().map_or("data".into(), |s| s.to_string_lossy().into_owned())
        }
    };
    (1..).map(|n| PathBuf::from(format!("runs/{name}-{n}"))).find(|p| !p.exists()).unwrap_or_default()
}
