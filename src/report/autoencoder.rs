//! The report page of a KL autoencoder's run: the held-out figures (distortion, rate, compression), every term of
//! the loss as its own curve, the held-out PSNR, SSIM and rate over training, the reconstruction grid, and the
//! configuration.

use std::path::PathBuf;

use plotters::style::RGBColor;

use super::html::{escape, inline_svg, legend, note, page, section, table};
use super::plots::{line_chart, xy_chart, Series, XAxis};
use crate::atomic::write_atomic;
use crate::autoencoder_run::AutoencoderRunSummary;
use crate::outputs::autoencoder_log::{read_autoencoder_metrics, AutoencoderRow};
use crate::outputs::{RunDir, RunFile};
use crate::{Error, Result};

const STEP_COLOUR: RGBColor = RGBColor(130, 170, 225);
const HELD_OUT_COLOUR: RGBColor = RGBColor(220, 90, 20);

/// One plot: a column of the rows, which rows, and its titles.
struct Plot {
    value: fn(&AutoencoderRow) -> Option<f64>,
    kind: &'static str,
    title: &'static str,
    y_label: &'static str,
}

const PLOTS: [Plot; 12] = [
    Plot {
        value: |r| Some(r.reconstruction),
        kind: "step",
        title: "Reconstruction  -log p(x|z)",
        y_label: "nats per image",
    },
    Plot { value: |r| Some(r.kl), kind: "step", title: "KL( q(z|x) || p(z) )", y_label: "nats per image" },
    Plot {
        value: |r| r.weighted_kl,
        kind: "step",
        title: "Weighted KL (as the loss used it)",
        y_label: "nats per image",
    },
    Plot { value: |r| r.l1, kind: "step", title: "L1 |x - x_hat| per value", y_label: "on [-1, 1]" },
    Plot { value: |r| r.log_scale, kind: "step", title: "Learned log-scale", y_label: "log b" },
    Plot { value: |r| r.perceptual, kind: "step", title: "LPIPS(x, x_hat)", y_label: "distance" },
    Plot { value: |r| r.generator_loss, kind: "step", title: "Generator loss -D(x_hat)", y_label: "mean logit" },
    Plot { value: |r| r.discriminator_loss, kind: "step", title: "Discriminator loss", y_label: "loss" },
    Plot { value: |r| r.adaptive_weight, kind: "step", title: "Adaptive weight", y_label: "weight" },
    Plot { value: |r| r.psnr, kind: "eval", title: "Held-out PSNR", y_label: "dB" },
    Plot { value: |r| r.perceptual, kind: "eval", title: "Held-out LPIPS", y_label: "distance" },
    Plot { value: |r| r.bits_per_pixel, kind: "eval", title: "Held-out rate (KL)", y_label: "bits per pixel" },
];

/// Writes `report.html` of the autoencoder run `run`, atomically; returns its path.
pub fn write_autoencoder_report(run: &RunDir) -> Result<PathBuf> {
    let path = run.path(RunFile::Report);
    write_atomic(&path, autoencoder_report_html(run)?.as_bytes())?;
    Ok(path)
}

/// The report page of the autoencoder run `run`.
pub fn autoencoder_report_html(run: &RunDir) -> Result<String> {
    let summary = run.read_optional::<AutoencoderRunSummary>(RunFile::Summary).transpose()?;
    let sections = [
        summary_section(summary.as_ref()),
        curves_section(read_autoencoder_metrics(&run.metrics_path()))?,
        pictures_section(run)?,
        config_section(run),
    ];
    let title = format!("elbo autoencoder report: {}", run.root().display());
    let header = format!(
        "<h1>{}</h1>\n{}",
        escape(&title),
        note("A KL autoencoder (latent diffusion's VAE) trained by elbo on random crops of photos.")
    );
    Ok(page(&title, &(header + &sections.concat())))
}

fn summary_section(summary: Option<&AutoencoderRunSummary>) -> String {
    let Some(summary) = summary else { return section("summary", "Summary", &note("No summary.json yet.")) };
    let mut rows = vec![
        vec!["status".into(), escape(&summary.status)],
        vec!["steps".into(), summary.steps.to_string()],
        vec!["training crops / s".into(), format!("{:.2} (SIMD {})", summary.images_per_second, escape(&summary.simd))],
        vec!["training photos".into(), escape(&summary.training_photos.join(", "))],
        vec!["held-out photos".into(), escape(&held_out_text(&summary.held_out_photos))],
    ];
    if let Some(report) = &summary.held_out {
        let [channels, height, width] = report.latent_shape;
        rows.extend([
            vec!["held-out crops".into(), report.images.to_string()],
            vec!["PSNR".into(), format!("{:.2} dB", report.psnr)],
            vec!["SSIM".into(), format!("{:.4}", report.ssim)],
            vec![
                "rate (KL)".into(),
                format!(
                    "{:.4} bits per pixel, {:.4} bits per latent value",
                    report.bits_per_pixel, report.bits_per_latent_value
                ),
            ],
            vec![
                "latent".into(),
                format!(
                    "{channels} x {height} x {width}; {:.1} input values per latent value",
                    report.compression_ratio
                ),
            ],
        ]);
    }
    let body = table(&["", ""], &rows)
        + &note("PSNR and SSIM are of reconstructions from the posterior mean on [0, 1] pixels. The rate is the KL to the prior: what sending the latent costs with bits-back coding.");
    section("summary", "Summary", &body)
}

fn held_out_text(names: &[String]) -> String {
    if names.is_empty() {
        "none: the held-out crops are fixed crops of the training photos".into()
    } else {
        names.join(", ")
    }
}

fn curves_section(rows: Result<Vec<AutoencoderRow>>) -> Result<String> {
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return Ok(section("curves", "Training curves", &note(&format!("Not available: {error}")))),
    };
    let mut html = legend(&[("train, each step", STEP_COLOUR), ("held-out crops", HELD_OUT_COLOUR)]);
    html.push_str("<div class=\"plots\">\n");
    for plot in &PLOTS {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|row| row.kind == plot.kind)
            .filter_map(|row| (plot.value)(row).map(|value| (row.step as f64, value)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let colour = if plot.kind == "eval" { HELD_OUT_COLOUR } else { STEP_COLOUR };
        let series = [Series { points, colour, per_epoch: plot.kind == "eval" }];
        let svg = line_chart(plot.title, plot.y_label, &series).map_err(|e| Error::io("report.html", e))?;
        html.push_str(&inline_svg(&svg));
        html.push('\n');
    }
    html.push_str("</div>\n");
    Ok(section("curves", "Training curves", &html))
}

fn pictures_section(run: &RunDir) -> Result<String> {
    let path = run.path(RunFile::Reconstructions);
    let body = match image::open(&path) {
        Ok(picture) => {
            super::html::image_figure(&picture.to_rgb8(), 2, "held-out crops (top) and their reconstructions (bottom)")
                .map_err(|e| Error::io(&path, e))?
        }
        Err(error) => note(&format!("No reconstruction grid: {error}")),
    };
    Ok(section("pictures", "Reconstructions", &body))
}

fn config_section(run: &RunDir) -> String {
    let text = std::fs::read_to_string(run.config_path()).unwrap_or_else(|error| format!("config.json: {error}"));
    section("config", "Configuration", &format!("<pre>{}</pre>", escape(&text)))
}

/// One trained autoencoder run as a point of a rate-distortion curve: its KL weight, and its held-out rate and
/// distortion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RatePoint {
    /// The run directory.
    pub run: String,
    /// The KL weight (beta) it trained with.
    pub kl_weight: f64,
    /// Held-out rate, bits per pixel.
    pub bits_per_pixel: f64,
    /// Held-out PSNR, dB.
    pub psnr: f64,
    /// Held-out SSIM.
    pub ssim: f64,
}

/// The points of the finished autoencoder runs `runs`, by increasing rate; an error names a run that is not a
/// finished autoencoder run.
pub fn rate_distortion_points(runs: &[PathBuf]) -> Result<Vec<RatePoint>> {
    let mut points = Vec::with_capacity(runs.len());
    for dir in runs {
        let run = RunDir::open(dir)?;
        let config: crate::autoencoder_run::AutoencoderRunConfig = crate::outputs::read_json(&run.config_path())?;
        let summary: AutoencoderRunSummary = crate::outputs::read_json(&run.summary_path())?;
        let report = summary.held_out.ok_or_else(|| {
            Error::bad_input(run.summary_path(), "held_out", "is empty: the run has not been evaluated yet")
        })?;
        points.push(RatePoint {
            run: dir.display().to_string(),
            kl_weight: config.training.kl.beta,
            bits_per_pixel: report.bits_per_pixel,
            psnr: report.psnr,
            ssim: report.ssim,
        });
    }
    points.sort_by(|a, b| a.bits_per_pixel.total_cmp(&b.bits_per_pixel));
    Ok(points)
}

/// The rate-distortion curve of `points`: held-out PSNR against the rate in bits per pixel, as an SVG document.
pub fn rate_distortion_svg(points: &[RatePoint]) -> Result<String> {
    let series = [Series {
        points: points.iter().map(|point| (point.bits_per_pixel, point.psnr)).collect(),
        colour: HELD_OUT_COLOUR,
        per_epoch: true,
    }];
    let x_axis = XAxis { label: "rate: KL, bits per pixel", decimals: 2 };
    xy_chart("Rate-distortion (held-out crops)", (&x_axis, "PSNR, dB"), &series)
        .map_err(|e| Error::io("rate-distortion", e))
}
