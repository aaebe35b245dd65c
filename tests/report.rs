//! The run report: written by a training run, self-contained, with every section; diagnosis figures and the weighted
//! KL appear when the run has them, and "not available" when it has not.

use candle_core::Device;
use elbo::data::sprites::SpriteConfig;
use elbo::data::{self, DataSpec};
use elbo::model::VaeConfig;
use elbo::outputs::{RunConfig, RunDir};
use elbo::report::write_report;
use elbo::run::{train_run, FinishedRun};
use elbo::training::{TrainConfig, TrainingObserver};

struct Quiet;
impl TrainingObserver for Quiet {}

fn train(run: &RunDir) -> (FinishedRun, elbo::data::Splits) {
    let spec = DataSpec::Sprites(SpriteConfig { size: 16, count: 300, seed: 2, full_grid: false });
    let splits = data::load(&spec, 0.1, 1).unwrap();
    let config = RunConfig {
        elbo_version: "test".into(),
        data: spec,
        validation_fraction: 0.1,
        model: VaeConfig {
            input_shape: splits.train.shape,
            latent_dim: 4,
            encoder_hidden: vec![32],
            decoder_hidden: vec![32],
            ..VaeConfig::default()
        },
        training: TrainConfig { epochs: 2, batch_size: 32, ..TrainConfig::default() },
        threads: 1,
        device: "cpu".into(),
    };
    (train_run(&config, &splits, run, &Device::Cpu, &mut Quiet).unwrap(), splits)
}

/// The `src` and `href` targets of the page, and any text that looks like an address outside it.
fn external_references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["src=\"", "href=\"", "url("] {
        for (at, _) in html.match_indices(marker) {
            let target = &html[at + marker.len()..];
            if !(target.starts_with("data:") || target.starts_with('#')) {
                found.push(target.chars().take(40).collect());
            }
        }
    }
    found.extend(
        ["http://", "https://", "ftp://", "<link", "<script", "@import"]
            .iter()
            .filter(|m| html.contains(**m))
            .map(|m| m.to_string()),
    );
    found
}

#[test]
fn training_writes_a_self_contained_report_with_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let (finished, splits) = train(&run);
    let html = std::fs::read_to_string(run.path(elbo::outputs::RunFile::Report)).expect("train_run writes report.html");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(external_references(&html), Vec::<String>::new(), "the page must not reach outside itself");
    for id in ["figures", "curves", "latent", "pictures", "probe", "configuration"] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "section {id} missing");
    }
    assert!(html.contains("lower bound on log p(x)") && html.contains("upper bound on -log p(x)"));
    assert!(html.matches("<svg").count() >= 4, "three training curves and the KL bar chart");
    assert!(html.matches("data:image/png;base64,").count() >= 5, "samples, reconstructions, traversal, 2 paths");
    assert!(html.contains("<h3>Diagnosis</h3>") && html.contains("<td>verdict</td>"), "train_run's diagnosis is shown");
    assert!(!html.contains("Weighted KL"), "beta 1 without warm-up has no separate weighted KL");
    let held_out = format!("{:.3}", finished.summary.last_epoch.unwrap().held_out_negative_elbo.unwrap());
    assert!(html.contains(&held_out), "the final held-out figure {held_out} is shown");

    std::fs::remove_file(run.path(elbo::outputs::RunFile::Diagnosis)).unwrap();
    write_report(&run, &finished.vae, &splits, &Device::Cpu).unwrap();
    let html = std::fs::read_to_string(run.path(elbo::outputs::RunFile::Report)).unwrap();
    assert!(html.contains("not available (this run has no diagnosis.json)"));

    let diagnosis = r#"{"per_dimension": [{"dimension": 0, "kl": 1.0, "activity": 0.5, "active": true},
        {"dimension": 1, "kl": 0.0, "activity": 0.0, "active": false}, {"dimension": 2, "kl": 0.2, "activity": 0.1, "active": true},
        {"dimension": 3, "kl": 0.0, "activity": 0.0, "active": false}], "active_units": 2, "mutual_information": 1.75,
        "verdict": "partial collapse", "reasons": ["2 of 4 dimensions inactive"], "extra": {"ignored": true}}"#;
    std::fs::write(run.path(elbo::outputs::RunFile::Diagnosis), diagnosis).unwrap();
    add_weighted_kl(&run);
    write_report(&run, &finished.vae, &splits, &Device::Cpu).unwrap();
    let html = std::fs::read_to_string(run.path(elbo::outputs::RunFile::Report)).unwrap();
    for text in [
        "<td>partial collapse</td>",
        "1.7500",
        "2 of 4 dimensions inactive",
        "active (per diagnosis.json)",
        "Weighted KL",
    ] {
        assert!(html.contains(text), "{text} missing after the diagnosis and warm-up");
    }
    let leftovers = std::fs::read_dir(run.root())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"));
    assert_eq!(leftovers.count(), 0, "written atomically, no temporary file left");
}

/// Sets the `weighted_kl` column to half the KL wherever it has a value, as a warm-up would.
fn add_weighted_kl(run: &RunDir) {
    let text = std::fs::read_to_string(run.metrics_path()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let columns: Vec<&str> = header.split(',').collect();
    let at = |name: &str| columns.iter().position(|c| *c == name).unwrap();
    let (kl, weighted) = (at("kl"), at("weighted_kl"));
    let mut out = format!("{header}\n");
    for line in lines {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        if !fields[weighted].is_empty() {
            fields[weighted] = (fields[kl].parse::<f64>().unwrap() * 0.5).to_string();
        }
        out.push_str(&(fields.join(",") + "\n"));
    }
    std::fs::write(run.metrics_path(), out).unwrap();
}

#[test]
fn a_missing_or_broken_run_file_is_reported_in_the_page_or_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let (finished, splits) = train(&run);
    std::fs::write(run.path(elbo::outputs::RunFile::Diagnosis), "{not json").unwrap();
    std::fs::write(run.metrics_path(), "epoch,split\n").unwrap();
    std::fs::remove_file(run.path(elbo::outputs::RunFile::Samples)).unwrap();
    write_report(&run, &finished.vae, &splits, &Device::Cpu).unwrap();
    let html = std::fs::read_to_string(run.path(elbo::outputs::RunFile::Report)).unwrap();
    assert!(html.contains("diagnosis.json: line 1 column 2"), "the broken diagnosis is named");
    assert!(html.contains("metrics.csv: header") && html.contains("`kind`"), "the broken metrics are named");
    assert!(html.contains("samples.png is missing"));
    std::fs::remove_file(run.config_path()).unwrap();
    let message = write_report(&run, &finished.vae, &splits, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("config.json"), "{message}");
}
