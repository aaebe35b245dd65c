//! `elbo eval`: the negative ELBO and the importance-weighted estimate of -log p(x), labelled as the bounds they are.

use clap::Args;
use elbo::data::binarized;
use elbo::evaluation::{evaluate_bounds, BoundsConfig, BoundsReport, Figure, DEFAULT_MAX_ROWS};
use indicatif::{ProgressBar, ProgressStyle};

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Importance samples K per example for the IWAE estimate (and S for the averaged ELBO); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    iw_samples: usize,
    /// Evaluate only the first N examples.
    #[arg(long)]
    max_examples: Option<usize>,
    /// Most decoder rows (examples x samples) at once; bounds memory. On a GPU, more may run faster.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS)]
    max_rows: usize,
    /// Seed of the noise (and of a dynamic binarization of the data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// autoencoder-kl runs: the LPIPS VGG16 network (scripts/export_lpips.py writes it) for the held-out crops'
    /// perceptual distance; without it, the run's own when it trained with one.
    #[arg(long, value_name = "FILE")]
    lpips: Option<std::path::PathBuf>,
}

/// Runs `elbo eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if elbo::autoencoder_run::is_autoencoder_run(&args.run.run) {
        return autoencoder(&args);
    }
    if args.lpips.is_some() {
        anyhow::bail!(
            "--lpips scores the reconstructions of an autoencoder-kl run; {} is a VAE run",
            args.run.run.display()
        );
    }
    let (loaded, device) = args.run.open()?;
    let mut dataset = args.input.dataset(&loaded)?;
    if let Some(limit) = args.max_examples {
        dataset = dataset.subset(&(0..dataset.len().min(limit)).collect::<Vec<_>>());
    }
    let dataset = binarized(&dataset, loaded.config.training.binarization, args.seed);
    let config = BoundsConfig { importance_samples: args.iw_samples, max_rows: args.max_rows, seed: args.seed };
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(dataset.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("evaluating [{bar:30}] {pos}/{len} examples, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let report = evaluate_bounds(&loaded.vae, &dataset, &config, &device, &mut |done| bar.set_position(done as u64))?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if args.json {
        let mut value = json_report(&report, &dataset.source);
        value["seconds"] = seconds.into();
        value["examples_per_second"] = (report.examples as f64 / seconds).into();
        println!("{}", serde_json::to_string(&value)?);
    } else {
        print_table(&report, &dataset.source);
        println!("evaluated in {seconds:.2} s ({:.1} examples/s)", report.examples as f64 / seconds);
    }
    Ok(())
}

/// `elbo eval` of a KL autoencoder run: distortion and rate of its held-out crops.
fn autoencoder(args: &EvalArgs) -> anyhow::Result<()> {
    let (_, device) = args.run.compute.apply()?;
    let run = elbo::outputs::RunDir::open(&args.run.run)?;
    let (report, photos) = elbo::autoencoder_run::evaluate_autoencoder_run(&run, args.lpips.as_deref(), &device)?;
    let photos = if photos.is_empty() { "the training photos".to_string() } else { photos.join(", ") };
    if args.json {
        let mut value = serde_json::to_value(report)?;
        value["photos"] = photos.into();
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    let [channels, height, width] = report.latent_shape;
    println!("{} held-out crops of {photos}, reconstructed from the posterior mean:", report.images);
    let rows = [
        ("PSNR", format!("{:.3} dB", report.psnr)),
        ("SSIM", format!("{:.4}", report.ssim)),
        ("-log p(x|z)", format!("{:.1} nats per crop (the reconstruction term at the mean)", report.reconstruction)),
        ("rate: KL", format!("{:.1} nats per crop", report.kl)),
        ("", format!("{:.4} bits per pixel", report.bits_per_pixel)),
        ("", format!("{:.4} bits per latent value", report.bits_per_latent_value)),
    ];
    rows.iter().for_each(|(name, value)| println!("  {name:<18}{value}"));
    if let Some(distance) = report.lpips {
        println!("  {:<18}{distance:.4}", "LPIPS");
    }
    println!(
        "  latent            {channels} x {height} x {width}: {:.1} input values per latent value",
        report.compression_ratio
    );
    Ok(())
}

fn json_report(report: &BoundsReport, source: &str) -> serde_json::Value {
    let with_bits = |f: &Figure| serde_json::json!({"nats": f.mean, "standard_error": f.standard_error, "bits_per_dim": report.bits_per_dim(f.mean)});
    serde_json::json!({
        "data": source,
        "examples": report.examples,
        "data_dim": report.data_dim,
        "negative_elbo": with_bits(&report.negative_elbo),
        "reconstruction": with_bits(&report.reconstruction),
        "kl": with_bits(&report.kl),
        "importance_samples": report.importance_samples,
        "negative_elbo_averaged": report.negative_elbo_averaged.as_ref().map(with_bits),
        "negative_iwae": report.negative_iwae.as_ref().map(with_bits),
        "note": "every figure is an upper bound on -log p(x): the ELBO and the IWAE estimate are lower bounds on log p(x); the IWAE bound tightens as K grows",
    })
}

fn print_table(report: &BoundsReport, source: &str) {
    println!(
        "{source}: {} examples x {} values; nats per example, +- standard error across examples",
        report.examples, report.data_dim
    );
    println!("{:<58} {:>10} {:>9} {:>9}", "", "nats", "+- s.e.", "bits/dim");
    let row = |label: &str, f: &Figure| {
        println!("{label:<58} {:>10.3} {:>9.3} {:>9.4}", f.mean, f.standard_error, report.bits_per_dim(f.mean));
    };
    row("-ELBO, 1 sample (ELBO = a lower bound on log p(x))", &report.negative_elbo);
    row("  reconstruction -log p(x|z)", &report.reconstruction);
    row("  KL(q(z|x) || p(z)), exact", &report.kl);
    let k = report.importance_samples;
    if let Some(averaged) = &report.negative_elbo_averaged {
        row(&format!("-ELBO, reconstruction averaged over S = {k} samples"), averaged);
    }
    if let Some(iwae) = &report.negative_iwae {
        row(&format!("-log p(x) estimate, IWAE K = {k}"), iwae);
        println!("  the IWAE estimate is still a bound (an upper bound on -log p(x)); it tightens as K grows");
    }
}
