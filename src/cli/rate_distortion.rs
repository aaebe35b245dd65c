//! `elbo rate-distortion`: the rate-distortion curve of KL autoencoder runs trained with different KL weights
//! (held-out PSNR against the rate in bits per pixel), as a table, CSV and an SVG plot.

use std::path::PathBuf;

use clap::Args;
use elbo::report::autoencoder::{rate_distortion_points, rate_distortion_svg};

/// Flags of `elbo rate-distortion`.
#[derive(Args, Debug)]
pub struct RateDistortionArgs {
    /// The autoencoder run directories (e.g. one per --beta).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Write the plot here (SVG).
    #[arg(long, default_value = "rate_distortion.svg")]
    out: PathBuf,
    /// Also write the points as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Runs `elbo rate-distortion`.
pub fn run(args: RateDistortionArgs) -> anyhow::Result<()> {
    let points = rate_distortion_points(&args.runs)?;
    println!("{:>12}  {:>14}  {:>9}  {:>7}  run", "KL weight", "bits per pixel", "PSNR dB", "SSIM");
    for point in &points {
        println!(
            "{:>12.3e}  {:>14.4}  {:>9.3}  {:>7.4}  {}",
            point.kl_weight, point.bits_per_pixel, point.psnr, point.ssim, point.run
        );
    }
    elbo::outputs::write_atomic(&args.out, rate_distortion_svg(&points)?.as_bytes())?;
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.csv {
        let mut writer = csv::Writer::from_path(path)?;
        points.iter().try_for_each(|point| writer.serialize(point))?;
        writer.flush()?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
