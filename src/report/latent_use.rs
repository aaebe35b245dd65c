//! The latent-usage section: the KL of each latent dimension as a bar chart (computed from the model on the held-out
//! data), with the diagnosis figures (active units, mutual information, verdict) when the run has a
//! `diagnosis.json`.

use plotters::style::RGBColor;
use serde_json::Value;

use super::html::{inline_svg, legend, note, section, table};
use super::plots::{bar_chart, Bar};
use crate::{Error, Result};

const ACTIVE_COLOUR: RGBColor = RGBColor(20, 80, 190);
const INACTIVE_COLOUR: RGBColor = RGBColor(190, 190, 190);

/// The section for per-dimension KL values `kl` (mean over `data`, a description of the examples) and the run's
/// diagnosis: `None` when there is no `diagnosis.json`, an error when it could not be read.
pub fn latent_section(kl: &[f32], data: &str, diagnosis: Option<Result<Value>>) -> Result<String> {
    let active = match &diagnosis {
        Some(Ok(value)) => active_flags(value, kl.len()),
        _ => None,
    };
    let bars: Vec<Bar> = kl
        .iter()
        .enumerate()
        .map(|(d, &v)| {
            let on = active.as_ref().is_none_or(|flags| flags[d]);
            Bar { value: f64::from(v), colour: if on { ACTIVE_COLOUR } else { INACTIVE_COLOUR } }
        })
        .collect();
    let svg =
        bar_chart("KL per latent dimension", "nats per example", &bars).map_err(|e| Error::io("report.html", e))?;
    let mut body = match active {
        Some(_) => legend(&[("active (per diagnosis.json)", ACTIVE_COLOUR), ("inactive", INACTIVE_COLOUR)]),
        None => String::new(),
    };
    body.push_str(&format!("<div class=\"plots\">{}</div>\n", inline_svg(&svg)));
    body.push_str(&note(&format!(
        "Mean KL( q(z_d|x) || p(z_d) ) of each dimension over {data}. A dimension with KL near 0 carries no \
         information about x (its posterior is the prior); the sum over dimensions is the KL term of the ELBO."
    )));
    body.push_str(&diagnosis_html(diagnosis));
    Ok(section("latent", "Latent usage", &body))
}

/// The diagnosis figures as a table, or a note saying why they are not available.
fn diagnosis_html(diagnosis: Option<Result<Value>>) -> String {
    let value = match diagnosis {
        None => {
            return note(
                "Active units, mutual information and verdict: not available (this run has no diagnosis.json).",
            )
        }
        Some(Err(error)) => {
            return note(&format!("Active units, mutual information and verdict: not available ({error})."))
        }
        Some(Ok(value)) => value,
    };
    let show = |key: &str| value.get(key).map_or("not available".to_string(), plain);
    let mut rows = vec![
        vec!["active units".to_string(), show("active_units")],
        vec!["mutual information I(x; z) (nats)".to_string(), show("mutual_information")],
        vec!["verdict".to_string(), show("verdict")],
    ];
    if let Some(Value::Array(reasons)) = value.get("reasons") {
        rows.extend(reasons.iter().map(|r| vec!["reason".to_string(), plain(r)]));
    }
    format!("<h3>Diagnosis</h3>\n{}", table(&["figure", "value"], &rows))
}

/// A JSON value as plain text: strings without quotes, numbers rounded to 4 decimals.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f:.4}")),
        other => other.to_string(),
    }
}

/// Which of `dims` dimensions the diagnosis marks active, when its `per_dimension` list says so for each.
fn active_flags(diagnosis: &Value, dims: usize) -> Option<Vec<bool>> {
    let mut flags = vec![None; dims];
    for entry in diagnosis.get("per_dimension")?.as_array()? {
        let dimension = entry.get("dimension")?.as_u64()? as usize;
        *flags.get_mut(dimension)? = Some(entry.get("active")?.as_bool()?);
    }
    flags.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnosis_figures_are_shown_and_active_dimensions_coloured() {
        let diagnosis: Value = serde_json::from_str(
            r#"{"per_dimension": [{"dimension": 0, "kl": 1.2, "active": true}, {"dimension": 1, "kl": 0.0, "active": false}],
                "active_units": 1, "mutual_information": 2.123456, "verdict": "healthy", "reasons": ["KL > 0"], "new": 3}"#,
        )
        .unwrap();
        assert_eq!(active_flags(&diagnosis, 2), Some(vec![true, false]));
        assert_eq!(active_flags(&diagnosis, 3), None, "a dimension missing from the list");
        let html = latent_section(&[1.2, 0.0], "the test set", Some(Ok(diagnosis))).unwrap();
        for text in ["<td>healthy</td>", "2.1235", "KL &gt; 0", "inactive", "<svg"] {
            assert!(html.contains(text), "{text} missing");
        }
    }

    #[test]
    fn a_missing_diagnosis_is_not_available() {
        let html = latent_section(&[0.5], "the test set", None).unwrap();
        assert!(html.contains("not available") && html.contains("<svg"));
    }
}
