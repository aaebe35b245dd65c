//! The training-curves section: reconstruction and KL as separate plots, the total beside them, and the weighted KL
//! when the loss weighted the KL differently from the ELBO (a beta or a warm-up).

use plotters::style::RGBColor;

use super::html::{inline_svg, legend, note, section};
use super::plots::{line_chart, Series};
use crate::outputs::metrics::{MetricsRow, RowKind};
use crate::Result;

/// Colours: per-step training figures, per-epoch training figures, per-epoch held-out figures.
const STEP_COLOUR: RGBColor = RGBColor(130, 170, 225);
const TRAIN_COLOUR: RGBColor = RGBColor(20, 80, 190);
const HELD_OUT_COLOUR: RGBColor = RGBColor(220, 90, 20);

/// One plot: a column of the metrics and how to title it.
struct Plot {
    value: fn(&MetricsRow) -> Option<f64>,
    title: &'static str,
}

const PLOTS: [Plot; 3] = [
    Plot { value: |row| Some(row.reconstruction), title: "Reconstruction  -log p(x|z)" },
    Plot { value: |row| Some(row.kl), title: "KL( q(z|x) || p(z) )" },
    Plot { value: |row| Some(row.negative_elbo), title: "Total: negative ELBO (upper bound on -log p(x))" },
];

/// The weighted KL plot, shown only when it differs from the KL.
const WEIGHTED: Plot = Plot { value: |row| row.weighted_kl, title: "Weighted KL (the KL term as the loss used it)" };

/// The section, or a note when `metrics` could not be read.
pub fn curves_section(metrics: Result<Vec<MetricsRow>>) -> Result<String> {
    let body = match metrics {
        Ok(rows) => plots_html(&rows)?,
        Err(error) => note(&format!("Training curves not available: {error}")),
    };
    Ok(section("curves", "Training curves", &body))
}

fn plots_html(rows: &[MetricsRow]) -> Result<String> {
    let mut plots: Vec<&Plot> = PLOTS.iter().collect();
    if weighted_kl_differs(rows) {
        plots.push(&WEIGHTED);
    }
    let held_out = held_out_split(rows);
    let mut html = legend(&[
        ("train, each step", STEP_COLOUR),
        ("train, mean per epoch", TRAIN_COLOUR),
        (&format!("{held_out}, after each epoch"), HELD_OUT_COLOUR),
    ]);
    html.push_str("<div class=\"plots\">\n");
    for plot in plots {
        let svg = line_chart(plot.title, "nats per example", &series(rows, plot.value))
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

/// Per-step training, per-epoch training and per-epoch held-out points (step, value) of `value`.
fn series(rows: &[MetricsRow], value: fn(&MetricsRow) -> Option<f64>) -> Vec<Series> {
    let curve = |kind: RowKind, split: &str, colour: RGBColor| Series {
        points: points(rows, kind, split, value),
        colour,
        per_epoch: kind == RowKind::Epoch,
    };
    vec![
        curve(RowKind::Step, "train", STEP_COLOUR),
        curve(RowKind::Epoch, "train", TRAIN_COLOUR),
        curve(RowKind::Epoch, held_out_split(rows), HELD_OUT_COLOUR),
    ]
}

/// (step, value) of the rows of `kind` and `split` that have a value, in file order.
fn points(rows: &[MetricsRow], kind: RowKind, split: &str, value: fn(&MetricsRow) -> Option<f64>) -> Vec<(f64, f64)> {
    let chosen = rows.iter().filter(|row| row.kind == kind && row.split == split);
    chosen.filter_map(|row| Some((row.step as f64, value(row)?))).collect()
}

/// The held-out split's name in the rows: `test` if any row has it, otherwise `validation`.
fn held_out_split(rows: &[MetricsRow]) -> &'static str {
    if rows.iter().any(|row| row.split == "test") {
        "test"
    } else {
        "validation"
    }
}

/// True when the steps' weighted KL differs from their KL somewhere.
fn weighted_kl_differs(rows: &[MetricsRow]) -> bool {
    let steps = rows.iter().filter(|row| row.kind == RowKind::Step);
    steps
        .filter_map(|row| Some((row.kl, row.weighted_kl?)))
        .any(|(kl, weighted)| (kl - weighted).abs() > 1e-6 * (1.0 + kl.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<MetricsRow>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        std::fs::write(&path, text).unwrap();
        crate::outputs::metrics::read_metrics(&path)
    }

    #[test]
    fn columns_are_found_by_name_wherever_they_are_and_optional_ones_may_be_missing() {
        let rows = rows(
            "split,kind,epoch,step,reconstruction,kl,weighted_kl,extra\n\
             train,step,1,1,90.5,3,1.5,x\ntrain,step,1,2,80,4,2,x\ntrain,epoch,1,2,85,3.5,1.75,\n\
             validation,epoch,1,2,86,3.6,1.8,\nvalidation,epoch,2,4,84,3.2,,\n",
        )
        .unwrap();
        let reconstruction = |row: &MetricsRow| Some(row.reconstruction);
        assert_eq!(points(&rows, RowKind::Step, "train", reconstruction), [(1.0, 90.5), (2.0, 80.0)]);
        let weighted = points(&rows, RowKind::Epoch, "validation", |row| row.weighted_kl);
        assert_eq!(weighted, [(2.0, 1.8)], "empty fields are skipped");
        assert!(weighted_kl_differs(&rows));
        assert_eq!(held_out_split(&rows), "validation");
    }

    #[test]
    fn bad_files_name_the_line_and_column() {
        let message = rows("epoch,step\n1,2\n").unwrap_err().to_string();
        assert!(message.contains("metrics.csv: header") && message.contains("`kind`"), "{message}");
        let message = rows("kind,epoch,step,split,reconstruction,kl\nstep,1,1,train,oops,1\n").unwrap_err().to_string();
        assert!(message.contains("line 2 field 5"), "{message}");
    }
}
