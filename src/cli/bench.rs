//! `elbo bench`: examples per second of the training step and of the importance-weighted bound, with warm-up,
//! repeats and the median, on synthetic data or the user's own.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use elbo::benchmark::{bounds_throughput, cpu_model, peak_resident_mib, training_throughput, BenchConfig, Throughput};
use elbo::data::{self, synthetic, DataSpec, Dataset};
use elbo::evaluation::BoundsConfig;
use elbo::model::VaeConfig;
use elbo::training::{StepChoice, TrainConfig};

use super::compute_args::ComputeArgs;
use super::model_args::ModelArgs;

/// Flags of `elbo bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Data: an MNIST-style IDX directory, `train.npy`/`test.npy` directory, or one .npy, .csv or IDX file.
    /// Without it, synthetic uniform values (see --synthetic-examples).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Without --data: examples of synthetic data to train on.
    #[arg(long, default_value_t = 60_000)]
    synthetic_examples: usize,
    /// Without --data: values per synthetic example.
    #[arg(long, default_value_t = 784)]
    synthetic_dim: usize,
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    batch_sizes: Vec<usize>,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Training steps run before the clock starts, each repeat.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Training steps timed, each repeat (fewer where one pass over the data has fewer full batches left after the
    /// warm-up).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Repeats of each measurement, from fresh weights; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Importance samples K for the timed IWAE bound; 0 skips it.
    #[arg(long, default_value_t = 50)]
    iw_samples: usize,
    /// Held-out examples the IWAE bound is evaluated on, each repeat.
    #[arg(long, default_value_t = 1000)]
    eval_examples: usize,
    /// Seed of the weights, the noise and the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Training step: auto (elbo's fused CPU step where it covers the run, else candle's graph), graph or fused
    /// (an error where it does not cover the run). The choice and its reason are printed.
    #[arg(long, value_enum, default_value_t = StepChoice::Auto)]
    step: StepChoice,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `elbo bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let (threads, device) = args.compute.apply()?;
    let (train, held_out) = bench_data(&args)?;
    let model = args.model.config(train.shape)?;
    model.validate()?;
    model.likelihood.check_data(&train)?;
    let bench = BenchConfig { warmup_steps: args.warmup, steps: args.steps, repeats: args.repeats };
    let setup = serde_json::json!({
        "elbo_version": env!("CARGO_PKG_VERSION"),
        "model": model.describe(),
        "data": train.source,
        "threads": threads,
        "device": args.compute.device.to_string(),
        "matrix_multiply": elbo::runtime::MATMUL_BACKEND,
        "cpu": cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        "simd": elbo::runtime::simd_level().name(),
        "bench": bench,
    });
    if !args.json {
        print_setup(&setup);
    }
    let mut results = Vec::new();
    for &batch_size in &args.batch_sizes {
        results.push(time_training(&args, &model, &train, batch_size, &bench, &device)?);
    }
    if args.iw_samples > 0 {
        results.push(time_bound(&args, &model, &held_out, &device)?);
    }
    let peak = peak_resident_mib();
    if args.json {
        let value = serde_json::json!({"setup": setup, "results": results, "peak_resident_mib": peak});
        println!("{}", serde_json::to_string(&value)?);
    } else if let Some(mib) = peak {
        println!("peak resident memory: {mib:.0} MiB");
    }
    Ok(())
}

/// Refuses, before any timing, flags that would leave a measurement with nothing to time.
fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    if args.batch_sizes.contains(&0) {
        anyhow::bail!("--batch-sizes: every batch size must be at least 1 (got {:?})", args.batch_sizes);
    }
    if args.iw_samples > 0 && args.eval_examples == 0 {
        anyhow::bail!("--eval-examples must be at least 1 to time the IWAE bound (or set --iw-samples 0 to skip it)");
    }
    Ok(())
}

/// Times training at `batch_size`; prints the line (unless --json) and returns the measurement as JSON.
fn time_training(
    args: &BenchArgs,
    model: &VaeConfig,
    train: &Dataset,
    batch_size: usize,
    bench: &BenchConfig,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let training =
        TrainConfig { batch_size, learning_rate: args.lr, seed: args.seed, step: args.step, ..TrainConfig::default() };
    let timed = training_throughput(model, &training, train, device, bench)
        .with_context(|| format!("timing training at batch size {batch_size}"))?;
    let shards = super::progress::shards_text(timed.plan.shards);
    let what = format!("train, batch {batch_size} ({}; {shards}; {} steps)", timed.plan.reason, timed.timed_steps);
    let details = serde_json::json!({"batch_size": batch_size, "plan": timed.plan, "timed_steps": timed.timed_steps});
    Ok(report(args, &what, &timed.throughput, details))
}

/// Times the IWAE bound on the first --eval-examples of `held_out`; prints and returns the measurement.
fn time_bound(
    args: &BenchArgs,
    model: &VaeConfig,
    held_out: &Dataset,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let data = held_out.subset(&(0..held_out.len().min(args.eval_examples)).collect::<Vec<_>>());
    let bounds = BoundsConfig { importance_samples: args.iw_samples, seed: args.seed, ..BoundsConfig::default() };
    let training = TrainConfig { seed: args.seed, ..TrainConfig::default() };
    let throughput =
        bounds_throughput(model, &training, &data, &bounds, device, args.repeats).context("timing the IWAE bound")?;
    let what = format!("IWAE bound, K = {}, {} examples", args.iw_samples, data.len());
    Ok(report(args, &what, &throughput, serde_json::json!({"importance_samples": args.iw_samples})))
}

/// The training data and the held-out data the bound is timed on.
fn bench_data(args: &BenchArgs) -> anyhow::Result<(Dataset, Dataset)> {
    match &args.data {
        Some(path) => {
            let spec = DataSpec::Path { path: path.clone(), label_column: None };
            let splits = data::load(&spec, 0.1, args.seed).context("loading the data")?;
            Ok((splits.train, splits.test))
        }
        None => {
            let (examples, dim) = (args.synthetic_examples, args.synthetic_dim);
            Ok((
                synthetic::uniform(examples, dim, args.seed),
                synthetic::uniform(args.eval_examples, dim, args.seed.wrapping_add(1)),
            ))
        }
    }
}

/// Prints one measurement (unless --json) and returns it as JSON, with `details` merged in.
fn report(args: &BenchArgs, what: &str, throughput: &Throughput, details: serde_json::Value) -> serde_json::Value {
    let (slowest, fastest) = throughput.range();
    if !args.json {
        println!(
            "{what}: {:.0} examples/s (median of {}; {slowest:.0} to {fastest:.0})",
            throughput.median(),
            throughput.runs.len()
        );
    }
    let mut value = serde_json::json!({
        "what": what,
        "examples_per_second_median": throughput.median(),
        "examples_per_second_runs": throughput.runs,
    });
    if let (Some(object), serde_json::Value::Object(extra)) = (value.as_object_mut(), details) {
        object.extend(extra);
    }
    value
}

/// Prints the setup of the run (model, data, threads, library, timing plan) as the table's header.
fn print_setup(setup: &serde_json::Value) {
    let text = |key: &str| setup[key].as_str().unwrap_or_default().to_string();
    println!("model: {}", text("model"));
    println!("data: {}", text("data"));
    println!(
        "{} threads on {} ({}, SIMD {}); matrix multiplies: {}; elbo {}",
        setup["threads"],
        text("device"),
        text("cpu"),
        text("simd"),
        text("matrix_multiply"),
        text("elbo_version")
    );
    let bench = &setup["bench"];
    println!(
        "timing: {} training steps after {} warm-up steps, {} repeats from fresh weights",
        bench["steps"], bench["warmup_steps"], bench["repeats"]
    );
}
