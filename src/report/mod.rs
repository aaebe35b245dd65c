//! The run report: one self-contained HTML page (`report.html` in the run directory) with the training curves, the
//! latent usage, pictures of the model, the final figures (the ELBO labelled as a bound) and the configuration.
//! Plots are inline SVG, pictures inline PNG data; the page needs no network access.

pub mod autoencoder;
pub mod curves;
pub mod figures;
pub mod html;
pub mod latent_use;
pub mod pictures;
pub mod plots;

use std::path::PathBuf;

use candle_core::Device;

use crate::atomic::write_atomic;
use crate::data::Splits;
use crate::latent::encode_dataset;
use crate::model::Vae;
use crate::outputs::metrics::read_metrics;
use crate::outputs::{RunDir, RunFile};
use crate::Result;

/// Builds the report of `run` for the trained `vae` (latent usage and pictures from `splits.test`) and writes it to
/// `report.html` in the run directory, atomically. Returns its path.
pub fn write_report(run: &RunDir, vae: &Vae, splits: &Splits, device: &Device) -> Result<PathBuf> {
    let path = run.path(RunFile::Report);
    write_atomic(&path, report_html(run, vae, splits, device)?.as_bytes())?;
    Ok(path)
}

/// The report page of `run` as HTML text.
pub fn report_html(run: &RunDir, vae: &Vae, splits: &Splits, device: &Device) -> Result<String> {
    let config = run.load_config()?;
    let held_out = &splits.test;
    let encodings = encode_dataset(vae, held_out, config.training.eval_batch_size, device)?;
    let kl = encodings.mean_kl_per_dimension()?;
    let data = format!("the {} held-out examples of {}", held_out.len(), held_out.source);
    let diagnosis = run.read_optional(RunFile::Diagnosis);
    let sections = [
        figures::summary_section(run),
        curves::curves_section(read_metrics(&run.metrics_path()))?,
        latent_use::latent_section(&kl, &data, diagnosis)?,
        pictures::pictures_section(run, vae, held_out, &encodings, device)?,
        figures::probe_section(run),
        figures::disentanglement_section(run),
        figures::config_section(run, &config)?,
    ];
    let title = format!("elbo run report: {}", run.root().display());
    let header = format!(
        "<h1>{}</h1>\n{}",
        html::escape(&title),
        html::note("A variational autoencoder trained by elbo. Every figure is in nats per example.")
    );
    Ok(html::page(&title, &(header + &sections.concat())))
}
