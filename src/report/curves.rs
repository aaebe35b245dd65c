//! The training-curves section: reconstruction and KL as separate plots, the total beside them, and the weighted KL
//! when the loss weighted the KL differently from the ELBO (a beta or a warm-up).

use plotters::style::RGBColor;

use super::html::{inline_svg, legend, note, section};
use super::metrics::MetricsTable;
use super::plots::{line_chart, Series};
use crate::Result;

/// Colours: per-step training figures, per-epoch training figures, per-epoch held-out figures.
const STEP_COLOUR: RGBColor = RGBColor(130, 170, 225);
const TRAIN_COLOUR: RGBColor = RGBColor(20, 80, 190);
const HELD_OUT_COLOUR: RGBColor = RGBColor(220, 90, 20);

/// One plot: a column of the metrics and how to title it.
struct Plot {
    column: &'static str,
    title: &'static str,
}

const PLOTS: [Plot; 3] = [
    Plot { column: "reconstruction", title: "Reconstruction  -log p(x|z)" },
    Plot { column: "kl", title: "KL( q(z|x) || p(z) )" },
    Plot { column: "negative_elbo", title: "Total: negative ELBO (upper bound on -log p(x))" },
];

/// The weighted KL plot, shown only when it differs from the KL.
const WEIGHTED: Plot = Plot { column: "weighted_kl", title: "Weighted KL (the KL term as the loss used it)" };

/// The section, or a note when `metrics` could not be read.
pub fn curves_section(metrics: Result<MetricsTable>) -> Result<String> {
    let body = match metrics {
        Ok(table) => plots_html(&table)?,
        Err(error) => note(&format!("Training curves not available: {error}")),
    };
    Ok(section("curves", "Training curves", &body))
}

fn plots_html(table: &MetricsTable) -> Result<String> {
    let mut plots: Vec<&Plot> = PLOTS.iter().collect();
    if weighted_kl_differs(table)? {
        plots.push(&WEIGHTED);
    }
    let held_out = table.held_out_split();
    let mut html = legend(&[
        ("train, each step", STEP_COLOUR),
        ("train, mean per epoch", TRAIN_COLOUR),
        (&format!("{held_out}, after each epoch"), HELD_OUT_COLOUR),
    ]);
    html.push_str("<div class=\"plots\">\n");
    for plot in plots {
        let svg = line_chart(plot.title, "nats per example", &series(table, plot.column)?)
            .map_err(|e| crate::Error::io("report.html", e))?;
        html.push_str(&inline_svg(&svg));
        html.push('\n');
    }
    html.push_str("</div>\n");
    html.push_str(&note(
        "Each training step is one batch with one Monte Carlo sample; the first tenth of the steps may run off the edge \
         of a plot. Reading the curves: a KL that collapses to ~0 early warns of posterior collapse; a reconstruction \
         that stays flat means the decoder is not using the latent; both falling is healthy.",
    ));
    Ok(html)
}

/// Per-step training, per-epoch training and per-epoch held-out values of `column`.
fn series(table: &MetricsTable, column: &str) -> Result<Vec<Series>> {
    let curve = |kind: &str, split: &str, colour: RGBColor| -> Result<Series> {
        Ok(Series { points: table.series(kind, split, column)?, colour, per_epoch: kind == "epoch" })
    };
    Ok(vec![
        curve("step", "train", STEP_COLOUR)?,
        curve("epoch", "train", TRAIN_COLOUR)?,
        curve("epoch", table.held_out_split(), HELD_OUT_COLOUR)?,
    ])
}

/// True when the metrics have a `weighted_kl` column that differs from `kl` somewhere.
fn weighted_kl_differs(table: &MetricsTable) -> Result<bool> {
    if !table.has_column(WEIGHTED.column) {
        return Ok(false);
    }
    let (kl, weighted) = (table.series("step", "train", "kl")?, table.series("step", "train", WEIGHTED.column)?);
    Ok(kl.iter().zip(&weighted).any(|(a, b)| (a.1 - b.1).abs() > 1e-6 * (1.0 + a.1.abs())))
}
