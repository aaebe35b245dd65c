//! `elbo arithmetic`: move class-A codes by mean(mu | B) - mean(mu | A) and decode them.

use std::path::PathBuf;

use clap::Args;
use elbo::latent::arithmetic::latent_arithmetic;
use elbo::latent::labels::{label_name, labels_of, parse_label};
use elbo::latent::pictures::arithmetic_grid;
use elbo::latent::LabelChoice;
use elbo::outputs::grid::save_png;

use super::run_args::{InputArgs, RunArgs};

/// Flags of `elbo arithmetic`.
#[derive(Args, Debug)]
pub struct ArithmeticArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    input: InputArgs,
    /// The class to start from: a label number, or a sprite shape name (square, ellipse, heart).
    #[arg(long)]
    from_label: String,
    /// The class whose attribute is added.
    #[arg(long)]
    to_label: String,
    /// Use this ground-truth factor of the sprites (shape, scale, rotation, x, y) as the classes.
    #[arg(long)]
    factor: Option<String>,
    /// Number of class-A examples shown.
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Output PNG (default: RUN/arithmetic.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `elbo arithmetic`.
pub fn run(args: ArithmeticArgs) -> anyhow::Result<()> {
    let (trained, device) = args.run.open()?;
    let dataset = args.input.dataset(&trained)?;
    let choice = LabelChoice::from_factor(args.factor.as_deref());
    let labels = labels_of(&dataset, &choice)?;
    let from = parse_label(&dataset, &choice, &labels, &args.from_label)?;
    let to = parse_label(&dataset, &choice, &labels, &args.to_label)?;
    let result =
        latent_arithmetic(&trained.vae, &dataset, &labels, (from, to), args.n, trained.eval_batch_size(), &device)?;
    let names = (label_name(&dataset, &choice, from), label_name(&dataset, &choice, to));
    let out = args.out.unwrap_or_else(|| trained.run.path(elbo::outputs::RunFile::Arithmetic));
    save_png(&arithmetic_grid(&result, &dataset.shape, (&names.0, &names.1))?, &out)?;
    let norm = result.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    println!(
        "attribute vector mean(mu | {}) - mean(mu | {}) over {}: length {norm:.3}",
        names.1, names.0, dataset.source
    );
    println!(
        "wrote {} (rows: {} examples of class {}, their reconstructions, the same codes plus the vector)",
        out.display(),
        result.indices.len(),
        names.0
    );
    Ok(())
}
