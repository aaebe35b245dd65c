//! `elbo train`: load data, train, and leave a run directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use elbo::data::{self, DataSpec};
use elbo::outputs::{Existing, RunConfig, RunDir};
use elbo::run::train_run;
use elbo::training::{OptimizerConfig, StepChoice, TrainConfig};

use super::data_args::{BinarizeMode, DataArgs};
use super::model_args::ModelArgs;
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
    /// Passes over the training data.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Stop after this many optimisation steps, if that comes before the last epoch ends (the last epoch is then
    /// partial, but evaluated and saved like the others).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Seed for weights, shuffling, noise and binarization (and the built-in data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Binarization of inputs.
    #[arg(long, value_enum, default_value_t = BinarizeMode::None)]
    binarize: BinarizeMode,
    /// Threshold for --binarize static.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Training step: auto (elbo's fused CPU step where it covers the run, else candle's graph), graph or fused
    /// (an error where it does not cover the run). The choice and its reason are printed.
    #[arg(long, value_enum, default_value_t = StepChoice::Auto)]
    step: StepChoice,
    /// Compute threads (0 = all cores). Results repeat bit for bit for the same seed and thread count.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Device: cpu, cuda or cuda:N (cuda needs the `cuda` build feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run directory (default: runs/<data name>-<n>, the first free n).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar; one line per epoch only.
    #[arg(long)]
    quiet: bool,
    /// Replace the run already in --out: remove the files elbo wrote there (config, weights, metrics, summary,
    /// diagnosis, probe and disentanglement scores, report, pictures, temporaries) first. Without it, a directory
    /// that is not empty is refused.
    #[arg(long)]
    overwrite: bool,
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
/// (130 for Ctrl-C, 143 for SIGTERM); a failure is an error.
pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let threads = super::set_threads(args.threads)?;
    let device = super::device(&args.device)?;
    let spec = args.data.spec(args.seed);
    let splits = data::load(&spec, args.data.validation_fraction, args.seed).context("loading the data")?;
    let config = RunConfig {
        elbo_version: env!("CARGO_PKG_VERSION").to_string(),
        model: args.model.config(splits.train.shape)?,
        training: train_config(&args, splits.train.len()),
        data: spec,
        validation_fraction: args.data.validation_fraction,
        threads,
        device: args.device.clone(),
    };
    config.validate()?;
    config.model.likelihood.check_data(&splits.train)?;
    let out = args.out.clone().unwrap_or_else(|| next_free_run_dir(&config.data));
    let existing = if args.overwrite { Existing::Overwrite } else { Existing::Refuse };
    let run = RunDir::create_with(&out, existing)?;
    print_plan(&config, &splits, &out);
    let mut progress = Progress::new(args.quiet, splits.test_is_validation)?;
    let finished = train_run(&config, &splits, &run, &device, &mut progress).with_context(|| {
        format!("training failed; {} keeps metrics.csv and the last completed epoch's model", out.display())
    })?;
    print!("{}", finished.diagnosis);
    let exit = match progress.interrupted_by() {
        Some(signal) => {
            println!("interrupted by signal {signal}: weights, metrics and summary of the steps so far are saved");
            // the shell's convention for a process ended by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
        None => ExitCode::SUCCESS,
    };
    println!(
        "done: {} epochs, {:.0} train examples/s; the held-out -ELBO is an upper bound on -log p(x), not the likelihood",
        finished.summary.epochs_completed, finished.summary.train_examples_per_second
    );
    println!(
        "wrote {}/{{config.json, model.safetensors, metrics.csv, summary.json, samples.png, reconstructions.png, diagnosis.json, report.html}}",
        out.display()
    );
    Ok(exit)
}

fn train_config(args: &TrainArgs, train_examples: usize) -> TrainConfig {
    let steps_per_epoch = train_examples.div_ceil(args.batch_size.max(1));
    TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        optimizer: match args.optimizer {
            OptimizerKind::Adam => OptimizerConfig::default(),
            OptimizerKind::Sgd => OptimizerConfig::Sgd { momentum: args.momentum },
        },
        objective: args.objective.objective(),
        kl: args.objective.kl_weighting(steps_per_epoch, args.epochs),
        seed: args.seed,
        binarization: args.binarize.to_binarization(args.threshold),
        max_steps: args.max_steps,
        step: args.step,
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
