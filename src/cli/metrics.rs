//! `elbo metrics`: disentanglement scores of a model trained on the sprites (beta-VAE, FactorVAE, MIG, DCI).

use anyhow::Context;
use clap::Args;
use elbo::evaluation::disentanglement::{MetricsConfig, MetricsReport, Representation};
use elbo::evaluation::sprite_codes::SpriteCodes;
use elbo::report::write_report;
use elbo::run::disentanglement_run;
use indicatif::{ProgressBar, ProgressStyle};

use super::run_args::RunArgs;

/// Flags of `elbo metrics`.
#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The dataset with ground-truth factors: `sprites` (rendered at the model's input size) or `sprites<N>`, e.g.
    /// sprites64, which must match the model's input size.
    #[arg(long, default_value = "sprites")]
    dataset: String,
    /// Fraction of disentanglement_lib's sample sizes to use (1 = its 10,000 training points per metric; 0.1 is
    /// ten times faster and noisier).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of the factor sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `elbo metrics`; writes `disentanglement.json` into the run directory and refreshes its report.
pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let (loaded, device) = args.run.open()?;
    if !matches!(loaded.config.data, elbo::data::DataSpec::Sprites(_)) {
        anyhow::bail!(
            "{}: the model was trained on {:?}, not on the sprites; the metrics score a model by the sprites' known \
             factors, so they need a model trained on them (`elbo train` without --data)",
            loaded.run.root().display(),
            loaded.config.data
        );
    }
    check_dataset(&args.dataset, loaded.vae.config().input_shape.height)?;
    let config = MetricsConfig { seed: args.seed, ..MetricsConfig::default() }.scaled(args.scale)?;
    let codes = SpriteCodes::new(&loaded.vae, loaded.config.training.binarization, &device)?;
    let mut counted = Counted { inner: codes, bar: bar(config.code_rows(), args.json) };
    let report = disentanglement_run(&loaded.run, &mut counted, &config)
        .with_context(|| format!("disentanglement metrics of {}", loaded.run.root().display()))?;
    counted.bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report);
    let splits = loaded.splits(None)?;
    let page = write_report(&loaded.run, &loaded.vae, &splits, &device)?;
    println!("wrote {} and {}", loaded.run.path(elbo::outputs::RunFile::Disentanglement).display(), page.display());
    Ok(())
}

/// A representation that counts the codes it gives on a progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Representation> Representation for Counted<R> {
    fn code_dim(&self) -> usize {
        self.inner.code_dim()
    }

    fn codes(&mut self, factors: &[u32]) -> elbo::Result<Vec<f32>> {
        let codes = self.inner.codes(factors)?;
        self.bar.inc((codes.len() / self.inner.code_dim().max(1)) as u64);
        Ok(codes)
    }
}

/// A bar over the `rows` codes the metrics need; hidden with `quiet`.
fn bar(rows: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {human_pos}/{human_len} codes, {per_sec}, eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(rows as u64).with_style(style).with_message("encoding sprites")
}

/// An error unless `dataset` names the sprites at the model's input size `side`.
fn check_dataset(dataset: &str, side: usize) -> anyhow::Result<()> {
    let size = dataset
        .strip_prefix("sprites")
        .context("--dataset: the metrics know the sprites' factors only; use `sprites` or `sprites<N>`")?;
    if !size.is_empty() && size.parse::<usize>().ok() != Some(side) {
        anyhow::bail!("--dataset {dataset}: the model takes images of {side} pixels; use sprites{side} or sprites");
    }
    Ok(())
}

fn print_report(report: &MetricsReport) {
    println!(
        "disentanglement of {} code dimensions over the factors {}",
        report.code_dim,
        report.factor_names.join(", ")
    );
    println!(
        "  beta-VAE score   {:6.1}%  (train {:.1}%)",
        100.0 * report.beta_vae.eval_accuracy,
        100.0 * report.beta_vae.train_accuracy
    );
    println!(
        "  FactorVAE score  {:6.1}%  ({} active dimensions)",
        100.0 * report.factor_vae.eval_accuracy,
        report.factor_vae.num_active_dims
    );
    println!("  MIG              {:7.3}", report.mig.score);
    println!(
        "  DCI              disentanglement {:.3}, completeness {:.3}, informativeness {:.1}%",
        report.dci.disentanglement,
        report.dci.completeness,
        100.0 * report.dci.informativeness_test
    );
}
