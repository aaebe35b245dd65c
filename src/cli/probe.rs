//! `elbo probe`: a linear classifier on the codes, next to raw inputs and a random projection.

use std::path::PathBuf;

use clap::Args;
use elbo::latent::probe::{probe, ProbeConfig, ProbeScore};
use elbo::latent::LabelChoice;
use elbo::outputs::write_json;
use elbo::stats::logistic::LogisticConfig;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Predict this ground-truth factor of the sprites (shape, scale, rotation, x, y) instead of the labels.
    #[arg(long)]
    factor: Option<String>,
    /// Full-batch Adam steps of the logistic regression.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Learning rate of the logistic regression.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// L2 penalty on the weights.
    #[arg(long, default_value_t = 1e-4)]
    l2: f64,
    /// Seed of the random projection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output JSON (default: RUN/probe.json, which the run report shows).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `elbo probe`.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let (trained, device) = args.run.open()?;
    let splits = args.input.splits(&trained)?;
    let config = ProbeConfig {
        labels: LabelChoice::from_factor(args.factor.as_deref()),
        logistic: LogisticConfig { steps: args.steps, learning_rate: args.lr, l2: args.l2 },
        seed: args.seed,
    };
    let report = probe(&trained.vae, &splits, &config, trained.eval_batch_size(), &device)?;
    println!(
        "linear probe on the {} ({} classes): trained on {} examples of {}, scored on {} held-out examples",
        report.target, report.classes, report.train_examples, splits.train.source, report.test_examples
    );
    println!("{:<28} {:>5} {:>9} {:>9}", "features", "dims", "train", "held-out");
    let line = |name: &str, s: &ProbeScore| {
        println!("{name:<28} {:>5} {:>8.2}% {:>8.2}%", s.features, 100.0 * s.train_accuracy, 100.0 * s.test_accuracy)
    };
    line("codes mu", &report.latent);
    line("raw inputs", &report.raw);
    line("random projection", &report.random_projection);
    println!("{:<28} {:>5} {:>9} {:>8.2}%", "most common class (chance)", "-", "-", 100.0 * report.chance);
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Probe));
    write_json(&out, &report)?;
    println!("wrote {}", out.display());
    Ok(())
}
