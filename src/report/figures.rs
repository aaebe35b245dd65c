//! The report's tables: the final figures of `summary.json` (the ELBO labelled as a bound), the linear probe of
//! `probe.json` when `elbo probe` has written one, and the configuration.

use super::html::{escape, note, section, table};
use crate::evaluation::disentanglement::MetricsReport;
use crate::latent::probe::ProbeReport;
use crate::outputs::{RunConfig, RunDir, RunFile, RunSummary};
use crate::Result;

/// The sentence that says what the ELBO is.
const BOUND: &str = "The ELBO = -(reconstruction + KL) is a lower bound on log p(x), so the negative ELBO shown is an \
                     upper bound on -log p(x) (nats per example), not the likelihood itself. Held-out figures use one \
                     Monte Carlo sample per example.";

/// The final-figures section, from `summary.json`.
pub fn summary_section(run: &RunDir) -> String {
    let body = match run.load_summary() {
        Ok(summary) => summary_html(&summary),
        Err(error) => note(&format!("Final figures not available: {error}")),
    };
    section("figures", "Final figures", &body)
}

fn summary_html(summary: &RunSummary) -> String {
    let mut html = format!("<p><strong>{}</strong></p>\n", escape(BOUND));
    match &summary.last_epoch {
        Some(e) => {
            let row = |name: String, rec: Option<f64>, kl: Option<f64>, total: Option<f64>| {
                vec![name, optional(rec), optional(kl), optional(total)]
            };
            let rows = [
                row(
                    format!("train (mean over epoch {})", e.epoch),
                    Some(e.train_reconstruction),
                    Some(e.train_kl),
                    Some(e.train_negative_elbo),
                ),
                row(
                    format!("{} (after epoch {})", summary.held_out_split, e.epoch),
                    e.held_out_reconstruction,
                    e.held_out_kl,
                    e.held_out_negative_elbo,
                ),
            ];
            let header = ["", "reconstruction -log p(x|z)", "KL", "negative ELBO (upper bound on -log p(x))"];
            html.push_str(&table(&header, &rows));
        }
        None => html.push_str(&note("No epoch was completed, so there are no final figures.")),
    }
    let facts = [
        vec!["status".into(), summary.status.clone()],
        vec!["epochs completed".into(), summary.epochs_completed.to_string()],
        vec!["optimisation steps".into(), summary.steps.to_string()],
        vec!["training examples per second".into(), format!("{:.0}", summary.train_examples_per_second)],
        vec!["seconds of optimisation".into(), format!("{:.1}", summary.train_seconds)],
    ];
    html + &table(&["", ""], &facts)
}

/// The linear-probe section, from `probe.json` when it exists.
pub fn probe_section(run: &RunDir) -> String {
    let missing = format!(
        "Not measured yet: `elbo probe --run {}` fits a linear classifier on the codes and writes probe.json.",
        run.root().display()
    );
    let body = from_json(run.read_optional(RunFile::Probe), &missing, probe_html);
    section("probe", "Representation quality: linear probe", &body)
}

/// `render` of a JSON file `read` from the run, or the note `missing` when there is no such file, or the error.
fn from_json<T>(read: Option<Result<T>>, missing: &str, render: fn(&T) -> String) -> String {
    match read {
        None => note(missing),
        Some(Ok(report)) => render(&report),
        Some(Err(error)) => note(&format!("Not available: {error}")),
    }
}

fn probe_html(report: &ProbeReport) -> String {
    let row = |name: &str, score: &crate::latent::probe::ProbeScore| {
        vec![name.to_string(), score.features.to_string(), percent(score.train_accuracy), percent(score.test_accuracy)]
    };
    let rows = [
        row("codes mu", &report.latent),
        row("raw inputs", &report.raw),
        row("random projection", &report.random_projection),
        vec!["most common class (chance)".into(), "-".into(), "-".into(), percent(report.chance)],
    ];
    let text = format!(
        "Multinomial logistic regression predicting the {} ({} classes), fitted on {} training examples and scored on \
         {} held-out examples.",
        report.target, report.classes, report.train_examples, report.test_examples
    );
    note(&text) + &table(&["features", "dimensions", "train accuracy", "held-out accuracy"], &rows)
}

/// The disentanglement section: the four metrics of `disentanglement.json`, or how to compute them.
pub fn disentanglement_section(run: &RunDir) -> String {
    let missing = format!(
        "Not measured: for a model of the sprites, `elbo metrics --run {}` computes the beta-VAE and FactorVAE scores, \
         MIG and DCI and writes {}.",
        run.root().display(),
        RunFile::Disentanglement.name()
    );
    let body = from_json(run.read_optional(RunFile::Disentanglement), &missing, disentanglement_html);
    section("disentanglement", "Disentanglement metrics", &body)
}

fn disentanglement_html(report: &MetricsReport) -> String {
    let fixed = |value: f64| format!("{value:.3}");
    let config = &report.config;
    let rows = [
        vec![
            "beta-VAE score (Higgins et al. 2017)".into(),
            percent(report.beta_vae.eval_accuracy),
            format!(
                "train {}; {} eval points of {} pairs",
                percent(report.beta_vae.train_accuracy),
                config.beta_vae.eval_points,
                config.beta_vae.batch_size
            ),
        ],
        vec![
            "FactorVAE score (Kim & Mnih 2018)".into(),
            percent(report.factor_vae.eval_accuracy),
            format!(
                "{} of {} dimensions active (std >= {})",
                report.factor_vae.num_active_dims, report.code_dim, config.factor_vae.prune_threshold
            ),
        ],
        vec![
            "MIG (Chen et al. 2018)".into(),
            fixed(report.mig.score),
            format!(
                "{} points, {} bins; gap per factor: {}",
                config.mig.points,
                config.mig.bins,
                per_factor(&report.factor_names, &report.mig.gaps)
            ),
        ],
        vec![
            "DCI disentanglement (Eastwood & Williams 2018)".into(),
            fixed(report.dci.disentanglement),
            "importance: permutation importance of a logistic regression per factor".into(),
        ],
        vec!["DCI completeness".into(), fixed(report.dci.completeness), String::new()],
        vec![
            "DCI informativeness".into(),
            percent(report.dci.informativeness_test),
            format!("held-out accuracy of predicting each factor; train {}", percent(report.dci.informativeness_train)),
        ],
    ];
    let text = format!(
        "Codes are the encoder means of sprites rendered from factors drawn uniformly ({}), seed {}.",
        report
            .factor_names
            .iter()
            .zip(&report.factor_sizes)
            .map(|(n, s)| format!("{n}: {s}"))
            .collect::<Vec<_>>()
            .join(", "),
        config.seed
    );
    note(&text) + &table(&["metric", "score", "details"], &rows)
}

/// `name value` pairs for the factors that have a value.
fn per_factor(names: &[String], values: &[Option<f64>]) -> String {
    let pairs = names.iter().zip(values).filter_map(|(name, value)| value.map(|v| format!("{name} {v:.3}")));
    pairs.collect::<Vec<_>>().join(", ")
}

/// The configuration section: the main settings, then the whole `config.json`.
pub fn config_section(run: &RunDir, config: &RunConfig) -> Result<String> {
    let model = &config.model;
    let training = &config.training;
    let shape = model.input_shape;
    let rows = [
        vec!["data".into(), readable(&config.data)],
        vec![
            "input".into(),
            format!("{} x {} x {} = {} values", shape.channels, shape.height, shape.width, shape.dim()),
        ],
        vec!["convolutions".into(), model.conv.as_ref().map_or_else(|| "none (MLP)".into(), readable)],
        vec!["encoder hidden widths".into(), readable(&model.encoder_hidden)],
        vec!["latent dimensions".into(), model.latent_dim.to_string()],
        vec!["decoder hidden widths".into(), readable(&model.decoder_hidden)],
        vec!["activation".into(), readable(&model.activation)],
        vec!["decoder likelihood p(x|z)".into(), readable(&model.likelihood)],
        vec!["epochs, batch size".into(), format!("{}, {}", training.epochs, training.batch_size)],
        vec![
            "optimiser, learning rate".into(),
            format!("{}, {}", readable(&training.optimizer), training.learning_rate),
        ],
        vec!["objective".into(), readable(&training.objective)],
        vec!["KL weighting".into(), readable(&training.kl)],
        vec!["seed, threads, device".into(), format!("{}, {}, {}", training.seed, config.threads, config.device)],
        vec!["elbo version".into(), config.elbo_version.clone()],
    ];
    let text = std::fs::read_to_string(run.config_path()).map_err(|e| crate::Error::io(run.config_path(), e))?;
    let body = format!(
        "{}<details><summary>config.json</summary><pre>{}</pre></details>\n",
        table(&["setting", "value"], &rows),
        escape(&text)
    );
    Ok(section("configuration", "Configuration", &body))
}

/// Three decimals, or a dash for a figure not measured.
fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.3}"))
}

fn percent(value: f64) -> String {
    format!("{:.1}%", 100.0 * value)
}

/// A setting as a person reads it: its JSON form with the punctuation dropped, e.g. the Adam optimiser as
/// "adam (beta1 0.9, beta2 0.999, epsilon 1e-8)" and unset options left out.
fn readable<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).map_or_else(|e| e.to_string(), |v| render(&v))
}

fn render(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(", "),
        Value::Object(fields) => {
            let kind = fields.get("kind").or_else(|| fields.get("mode")).map(render);
            let rest: Vec<String> = fields
                .iter()
                .filter(|(key, v)| !matches!(key.as_str(), "kind" | "mode") && !v.is_null())
                .map(
                    |(key, v)| {
                        if v.is_object() {
                            format!("{key}: {}", render(v))
                        } else {
                            format!("{key} {}", render(v))
                        }
                    },
                )
                .collect();
            match (kind, rest.is_empty()) {
                (Some(kind), true) => kind,
                (Some(kind), false) => format!("{kind} ({})", rest.join(", ")),
                (None, _) => rest.join(", "),
            }
        }
        other => other.to_string(),
    }
}
