//! The `elbo` binary end to end: train on the built-in sprites, regenerate the grids, and fail clearly on bad input.

use std::path::Path;
use std::process::{Command, Output};

fn elbo(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elbo")).args(args).current_dir(dir).output().expect("elbo runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A clear failure: non-zero exit, the expected words in the message, and no panic.
fn assert_fails_with(output: &Output, words: &[&str]) {
    let message = text(output);
    assert!(!output.status.success(), "expected failure, got: {message}");
    assert!(!message.contains("panicked"), "panic instead of an error: {message}");
    for word in words {
        assert!(message.contains(word), "`{word}` missing from: {message}");
    }
}

fn train_tiny(dir: &Path, out: &str) -> Output {
    train_tiny_with(dir, out, &[])
}

/// A tiny run on small sprites, with `extra` flags added.
fn train_tiny_with(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let tiny = ["train", "--sprite-count", "300", "--sprite-size", "16", "--epochs", "2", "--hidden", "32"];
    let rest = ["--latent-dim", "4", "--threads", "1", "--quiet", "--out", out];
    let args: Vec<&str> = tiny.iter().chain(&rest).chain(extra).copied().collect();
    elbo(&args, dir)
}

#[test]
fn train_then_sample_and_reconstruct() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny(dir.path(), "run");
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    assert!(printed.contains("epoch   2") && printed.contains("rec ") && printed.contains("KL "), "{printed}");
    assert!(printed.contains("upper bound"), "the ELBO is labelled as a bound: {printed}");
    let run = dir.path().join("run");
    for file in
        ["config.json", "model.safetensors", "metrics.csv", "summary.json", "samples.png", "reconstructions.png"]
    {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let sample = elbo(&["sample", "--run", "run", "--n", "10", "--temperature", "0.5", "--out", "s.png"], dir.path());
    assert!(sample.status.success(), "{}", text(&sample));
    assert!(image::open(dir.path().join("s.png")).is_ok());
    let reconstruct = elbo(&["reconstruct", "--run", "run", "--n", "16", "--out", "r.png"], dir.path());
    assert!(reconstruct.status.success(), "{}", text(&reconstruct));
    let image = image::open(dir.path().join("r.png")).unwrap();
    assert_eq!(image.height(), 2 * 2 * 17 + 1, "2 rows of inputs + 2 rows of reconstructions, 16 px + border");
}

#[test]
fn the_same_command_twice_gives_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train_tiny(dir.path(), "a").status.success());
    assert!(train_tiny(dir.path(), "b").status.success());
    let a = std::fs::read(dir.path().join("a/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("b/model.safetensors")).unwrap();
    assert_eq!(a, b, "same seed and threads must give the same bytes");
}

#[test]
fn convolutional_training_gives_the_same_weights_twice_on_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    for step in ["fused", "graph"] {
        let run = |out: &str| {
            let sprites = ["train", "--sprite-count", "300", "--sprite-size", "16", "--epochs", "2", "--quiet"];
            let conv = ["--architecture", "conv", "--conv-channels", "4,8", "--batch-size", "64", "--threads", "2"];
            let args = [&sprites[..], &conv[..], &["--latent-dim", "4", "--step", step, "--out", out]].concat();
            let output = elbo(&args, dir.path());
            assert!(output.status.success(), "{}", text(&output));
            std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap()
        };
        let (first, second) = (run(&format!("{step}-a")), run(&format!("{step}-b")));
        assert_eq!(first, second, "{step} step: same seed and threads must give the same bytes");
    }
}

#[test]
fn bad_data_files_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.npy"), b"not numpy at all").unwrap();
    std::fs::write(dir.path().join("ragged.csv"), "1,2,3\n4,5\n").unwrap();
    assert_fails_with(&elbo(&["train", "--data", "missing.npy"], dir.path()), &["missing.npy"]);
    assert_fails_with(&elbo(&["train", "--data", "bad.npy"], dir.path()), &["bad.npy", "magic"]);
    assert_fails_with(&elbo(&["train", "--data", "ragged.csv"], dir.path()), &["ragged.csv", "line 2"]);
    std::fs::write(
        dir.path().join("big.csv"),
        "0.5,2.0\n0.1,0.2\n0.3,0.4\n0.5,0.6\n0.1,0.9\n0.2,0.2\n0.3,0.1\n0.7,0.1\n0.2,0.5\n0.3,0.3\n",
    )
    .unwrap();
    assert_fails_with(&elbo(&["train", "--data", "big.csv", "--quiet"], dir.path()), &["big.csv", "[0, 1]"]);
}

#[test]
fn bad_settings_and_mismatched_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails_with(&elbo(&["train", "--epochs", "0"], dir.path()), &["epochs"]);
    assert_fails_with(&elbo(&["train", "--sprite-size", "8"], dir.path()), &["size"]);
    assert_fails_with(&elbo(&["sample", "--run", "nowhere"], dir.path()), &["nowhere", "config.json"]);
    assert_fails_with(&elbo(&["train", "--kl-cycles", "0"], dir.path()), &["--kl-cycles", "0 is not in 1.."]);
    assert_fails_with(&elbo(&["train", "--threads", "100000"], dir.path()), &["--threads", "at most", "100000"]);
    let negative_rate = elbo(&["train", "--lr", "-1", "--out", "negative"], dir.path());
    assert_fails_with(&negative_rate, &["learning rate", "positive", "-1"]);
    assert!(!dir.path().join("negative").exists(), "settings are checked before the run directory is made");
    assert!(train_tiny(dir.path(), "run").status.success());
    let rows: String =
        (0..40).map(|i| format!("{}\n", vec![format!("{}", (i % 10) as f32 / 10.0); 256].join(","))).collect();
    std::fs::write(dir.path().join("flat.csv"), rows).unwrap();
    let flat = elbo(&["train", "--data", "flat.csv", "--epochs", "1", "--quiet", "--out", "flat"], dir.path());
    assert!(flat.status.success(), "{}", text(&flat));
    assert_fails_with(&elbo(&["metrics", "--run", "flat"], dir.path()), &["flat", "not on the sprites"]);
    let huge_grid = elbo(&["sample", "--run", "run", "--n", "100000000"], dir.path());
    assert_fails_with(&huge_grid, &["`n`", "at most 4096", "100000000"]);
    let rows: String = (0..12).map(|_| "0.1,0.2,0.3\n").collect();
    std::fs::write(dir.path().join("small.csv"), rows).unwrap();
    let mismatch = elbo(&["reconstruct", "--run", "run", "--data", "small.csv"], dir.path());
    assert_fails_with(&mismatch, &["small.csv", "3 values", "256"]);
}

#[test]
fn eval_labels_bounds_and_diagnose_writes_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let trained = train_tiny(dir.path(), "run");
    assert!(text(&trained).contains("verdict:"), "training ends with the diagnosis: {}", text(&trained));
    let table = elbo(&["eval", "--run", "run", "--iw-samples", "20"], dir.path());
    let printed = text(&table);
    assert!(table.status.success(), "{printed}");
    assert!(
        printed.contains("a lower bound on log p(x)")
            && printed.contains("IWAE K = 20")
            && printed.contains("bits/dim"),
        "{printed}"
    );
    let json = elbo(&["eval", "--run", "run", "--iw-samples", "20", "--json"], dir.path());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let (elbo_nats, iwae_nats) =
        (value["negative_elbo"]["nats"].as_f64().unwrap(), value["negative_iwae"]["nats"].as_f64().unwrap());
    assert!(iwae_nats < elbo_nats, "the IWAE bound is tighter: {iwae_nats} vs {elbo_nats}");
    assert!(value["negative_iwae"]["standard_error"].as_f64().unwrap() > 0.0);
    let diagnosis = elbo(&["diagnose", "--run", "run", "--json"], dir.path());
    let value: serde_json::Value = serde_json::from_slice(&diagnosis.stdout).unwrap();
    assert!(
        value["verdict"].is_string()
            && value["active_units"].is_u64()
            && value["per_dimension"].as_array().unwrap().len() == 4
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/diagnosis.json")).unwrap()).unwrap();
    assert_eq!(saved["verdict"], value["verdict"]);
}

#[test]
fn remedies_are_flags_and_conflicting_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_tiny_with(dir.path(), "warm", &["--warmup-epochs", "1", "--free-bits", "0.1"]);
    assert!(output.status.success(), "{}", text(&output));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("warm/config.json")).unwrap()).unwrap();
    assert_eq!(config["training"]["kl"]["schedule"]["kind"], "linear");
    assert_eq!(config["training"]["kl"]["free_bits"], 0.1);
    assert_fails_with(
        &elbo(&["train", "--objective", "iwae", "--beta", "4"], dir.path()),
        &["IWAE objective takes no beta"],
    );
    assert_fails_with(
        &elbo(&["train", "--warmup-epochs", "2", "--kl-cycles", "3"], dir.path()),
        &["cannot be used with"],
    );
}

#[test]
fn latent_commands_write_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train_tiny(dir.path(), "run").status.success());
    let run = |args: &[&str]| {
        let output = elbo(args, dir.path());
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        text(&output)
    };
    let printed = run(&["encode", "--run", "run", "--out", "codes.npy", "--log-var", "--sample"]);
    assert!(printed.contains("compression") && printed.contains("wrote codes_labels.npy"), "{printed}");
    for file in ["codes.npy", "codes_log_var.npy", "codes_sample.npy", "codes_labels.npy"] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let printed = run(&["encode", "--run", "run", "--split", "train", "--out", "codes.csv"]);
    assert!(printed.contains("encoded 300 examples"), "{printed}");
    let csv = std::fs::read_to_string(dir.path().join("codes.csv")).unwrap();
    assert!(csv.starts_with("mu_0,mu_1,mu_2,mu_3,label\n") && csv.lines().count() == 301);
    let printed = run(&["decode", "--run", "run", "--latents", "codes_sample.npy", "--out", "decoded"]);
    assert!(printed.contains("compression 16.0x") && printed.contains("30 PNG images"), "{printed}");
    run(&["decode", "--run", "run", "--latents", "codes.npy", "--out", "decoded.png"]);
    assert_eq!(image::open(dir.path().join("decoded.png")).unwrap().width(), 8 * 17 + 1);
    run(&["interpolate", "--run", "run", "--from", "0", "--to", "3", "--steps", "6", "--spherical"]);
    let printed = run(&["traverse", "--run", "run", "--dims", "3,1", "--range", "2"]);
    assert!(printed.contains("z3") && printed.contains("z1") && !printed.contains("z0 "), "{printed}");
    let printed = run(&["arithmetic", "--run", "run", "--from-label", "square", "--to-label", "2", "--n", "4"]);
    assert!(printed.contains("mean(mu | heart) - mean(mu | square)"), "{printed}");
    for (file, rows) in [("run/interpolation.png", 1), ("run/traversal.png", 2), ("run/arithmetic.png", 3)] {
        assert_eq!(image::open(dir.path().join(file)).unwrap().height(), rows * 17 + 1, "{file}");
    }
    let printed = run(&["probe", "--run", "run", "--factor", "x", "--steps", "50"]);
    assert!(printed.contains("codes mu") && printed.contains("random projection") && printed.contains("chance"));
    let printed = run(&["report", "--run", "run"]);
    let html = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(printed.contains("report.html") && html.contains("codes mu"), "the probe shows in the rebuilt report");
}

#[test]
fn latent_commands_fail_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train_tiny(dir.path(), "run").status.success());
    let codes = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    codes("codes.txt", "1,2\n");
    let decode = |file: &str| elbo(&["decode", "--run", "run", "--latents", file, "--out", "o.png"], dir.path());
    assert_fails_with(&decode("codes.txt"), &["codes.txt", ".npy"]);
    assert_fails_with(&decode("none.npy"), &["none.npy"]);
    assert!(elbo(&["encode", "--run", "run", "--out", "wide.npy", "--split", "train"], dir.path()).status.success());
    assert_fails_with(&decode("wide_labels.npy"), &["wide_labels.npy", "descr"]);
    assert!(elbo(&["decode", "--run", "run", "--latents", "wide.npy", "--out", "images"], dir.path()).status.success());
    assert_fails_with(&decode("images/decoded.npy"), &["decoded.npy", "N x 4", "16 x 16"]);
    assert_fails_with(
        &elbo(&["encode", "--run", "run", "--out", "codes.json"], dir.path()),
        &["codes.json", ".npy or .csv"],
    );
    let far = elbo(&["interpolate", "--run", "run", "--from", "0", "--to", "999"], dir.path());
    assert_fails_with(&far, &["to", "999", "30 examples"]);
    assert_fails_with(&elbo(&["traverse", "--run", "run", "--dims", "9"], dir.path()), &["dims", "dimension 9"]);
    let star = elbo(&["arithmetic", "--run", "run", "--from-label", "star", "--to-label", "heart"], dir.path());
    assert_fails_with(&star, &["star", "square, ellipse, heart"]);
    let factor = elbo(&["probe", "--run", "run", "--factor", "colour"], dir.path());
    assert_fails_with(&factor, &["colour", "shape, scale, rotation, x, y"]);
    let rows: String = (0..12).map(|i| format!("0.{i},0.5\n")).collect();
    codes("flat.csv", &rows);
    assert_fails_with(
        &elbo(&["probe", "--run", "run", "--data", "flat.csv"], dir.path()),
        &["flat.csv", "2 values", "256"],
    );
    assert_fails_with(&elbo(&["report", "--run", "nowhere"], dir.path()), &["nowhere", "config.json"]);
}

#[test]
fn bench_reports_each_batch_size_and_the_bound_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--synthetic-examples",
        "300",
        "--synthetic-dim",
        "20",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--batch-sizes",
        "32,64",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--repeats",
        "2",
        "--iw-samples",
        "4",
        "--eval-examples",
        "10",
        "--threads",
        "1",
        "--json",
    ];
    let output = elbo(&args, dir.path());
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (result, batch_size) in results.iter().zip([32, 64]) {
        assert_eq!((result["batch_size"].as_u64(), result["timed_steps"].as_u64()), (Some(batch_size), Some(3)));
        assert_eq!(result["plan"]["path"], "fused");
    }
    assert_eq!(results[2]["importance_samples"], 4);
    for result in results {
        let runs = result["examples_per_second_runs"].as_array().unwrap();
        assert!(runs.len() == 2 && runs.iter().all(|speed| speed.as_f64().is_some_and(|s| s > 0.0)), "{result}");
    }
    assert!(report["setup"]["model"].as_str().unwrap().starts_with("20-[8]-2 MLP"));
    assert!(["avx512", "avx2", "scalar"].contains(&report["setup"]["simd"].as_str().unwrap()));
    assert!(!report["setup"]["cpu"].as_str().unwrap().is_empty());
}

#[test]
fn bench_refuses_what_it_cannot_time() {
    let dir = tempfile::tempdir().unwrap();
    let tiny =
        ["bench", "--synthetic-examples", "50", "--synthetic-dim", "20", "--batch-sizes", "64", "--threads", "1"];
    assert_fails_with(&elbo(&tiny, dir.path()), &["batch size 64", "`warmup`", "50 examples"]);
    let zero_batch = ["bench", "--synthetic-examples", "50", "--batch-sizes", "32,0", "--threads", "1"];
    assert_fails_with(&elbo(&zero_batch, dir.path()), &["--batch-sizes", "at least 1"]);
    let no_bound_data = ["bench", "--synthetic-examples", "50", "--eval-examples", "0", "--threads", "1"];
    assert_fails_with(&elbo(&no_bound_data, dir.path()), &["--eval-examples", "--iw-samples 0"]);
    let missing = ["bench", "--data", "no-such-file.npy", "--threads", "1"];
    assert_fails_with(&elbo(&missing, dir.path()), &["no-such-file.npy"]);
}

#[test]
fn the_training_step_and_simd_level_are_chosen_once_printed_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let fused = train_tiny(dir.path(), "fused");
    assert!(text(&fused).contains("step: fused CPU step: MLP, bernoulli decoder, the ELBO"), "{}", text(&fused));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("fused/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["step"]["path"], "fused");
    let graph = train_tiny_with(dir.path(), "graph", &["--step", "graph"]);
    assert!(text(&graph).contains("step: candle's graph, as asked"), "{}", text(&graph));
    let conv = train_tiny_with(dir.path(), "conv", &["--architecture", "conv", "--conv-channels", "4,4"]);
    assert!(text(&conv).contains("step: fused CPU step: convolutional, bernoulli decoder"), "{}", text(&conv));
    let silu = train_tiny_with(dir.path(), "silu", &["--activation", "silu", "--step", "fused"]);
    assert!(text(&silu).contains("step: fused CPU step: MLP, bernoulli decoder, the ELBO"), "{}", text(&silu));
    let tcvae = train_tiny_with(dir.path(), "tcvae", &["--objective", "tcvae"]);
    assert!(text(&tcvae).contains("step: fused CPU step: MLP, bernoulli decoder, beta-TCVAE"), "{}", text(&tcvae));
    let simd = |value: &str, out: &str| {
        let tiny = ["train", "--sprite-count", "300", "--sprite-size", "16", "--epochs", "1", "--hidden", "8"];
        let args: Vec<&str> = tiny.iter().chain(&["--threads", "1", "--quiet", "--out", out]).copied().collect();
        Command::new(env!("CARGO_BIN_EXE_elbo"))
            .args(&args)
            .current_dir(dir.path())
            .env("ELBO_SIMD", value)
            .output()
            .unwrap()
    };
    assert_fails_with(&simd("avx9", "bad"), &["ELBO_SIMD", "avx512, avx2 or scalar", "avx9"]);
    assert!(simd("scalar", "scalar").status.success());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scalar/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["simd"], "scalar");
}

/// Starts a long training, waits for its first logged step, sends it `signal` with the system's `kill`, and returns
/// its exit code.
fn interrupted_with(signal: &str, dir: &Path, out: &str) -> Option<i32> {
    let args = ["train", "--sprite-count", "2000", "--sprite-size", "16", "--epochs", "500", "--hidden", "32"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_elbo"))
        .args(args.iter().chain(&["--threads", "1", "--quiet", "--out", out]))
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.join(out).join("metrics.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |text| text.lines().count() < 3) {
        assert!(started.elapsed().as_secs() < 120, "training never logged a step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    child.wait().unwrap().code()
}

#[test]
fn sigint_and_sigterm_stop_cleanly_with_the_shells_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        let out = format!("run{signal}");
        assert_eq!(interrupted_with(signal, dir.path(), &out), Some(code), "{signal}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(&out).join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["status"], "interrupted", "{signal}");
        let sample = elbo(&["sample", "--run", &out, "--n", "4", "--out", "s.png"], dir.path());
        assert!(sample.status.success(), "the interrupted run's model loads: {}", text(&sample));
    }
    assert!(train_tiny(dir.path(), "completed").status.code() == Some(0), "only a completed run exits 0");
}

#[cfg(unix)]
#[test]
fn a_symbolic_link_loop_in_an_image_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("cats")).unwrap();
    std::os::unix::fs::symlink(&images, images.join("cats").join("again")).unwrap();
    let output = elbo(&["train", "--data", "images", "--epochs", "1", "--quiet"], dir.path());
    assert_fails_with(&output, &["images", "symbolic link loop"]);
}

#[test]
fn a_run_directory_has_one_writer_and_is_not_reused_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train_tiny(dir.path(), "run").status.success());
    std::fs::write(dir.path().join("run/probe.json"), "{\"stale\": true}").unwrap();
    assert_fails_with(&train_tiny(dir.path(), "run"), &["run", "not empty", "--overwrite"]);
    assert!(train_tiny_with(dir.path(), "run", &["--overwrite"]).status.success());
    assert!(!dir.path().join("run/probe.json").exists(), "--overwrite removes the old model's scores");
    // a second writer while the first one trains is refused, naming the first one's process
    let args = ["train", "--sprite-count", "2000", "--sprite-size", "16", "--epochs", "500", "--hidden", "32"];
    let command: Vec<&str> = args.iter().chain(&["--threads", "1", "--quiet", "--out", "busy"]).copied().collect();
    let mut first = spawn_until(&command, dir.path(), "busy/config.json");
    let second = train_tiny_with(dir.path(), "busy", &["--overwrite"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_fails_with(&second, &["busy", &format!("process {}", first.id()), "one writer"]);
}

/// Starts `elbo` with `args` in `dir` and waits until the file `waits_for` (relative to `dir`) appears.
fn spawn_until(args: &[&str], dir: &Path, waits_for: &str) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_elbo"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.join(waits_for).exists() {
        assert!(started.elapsed().as_secs() < 120, "{waits_for} never appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child
}

/// The step numbers of the step rows of a run's `metrics.csv`.
fn logged_steps(run: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .filter(|line| line.starts_with("step,"))
        .map(|line| line.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_weights_of_one_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["train", "--sprite-count", "20000", "--sprite-size", "16", "--epochs", "2", "--hidden", "32"];
    let rest = ["--latent-dim", "4", "--threads", "2", "--quiet", "--checkpoint-every", "5"];
    let command: Vec<&str> = args.iter().chain(&rest).copied().collect();
    let straight = elbo(&[command.as_slice(), &["--out", "straight"]].concat(), dir.path());
    assert!(straight.status.success(), "{}", text(&straight));
    let mut child =
        spawn_until(&[command.as_slice(), &["--out", "killed"]].concat(), dir.path(), "killed/checkpoint.safetensors");
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is saved on the way out
    child.wait().unwrap();
    assert_fails_with(&elbo(&["train", "--resume", "killed", "--lr", "0.1"], dir.path()), &["--lr", "--resume"]);
    let resumed = elbo(&["train", "--resume", "killed", "--quiet"], dir.path());
    assert!(resumed.status.success(), "{}", text(&resumed));
    let weights = |run: &str| std::fs::read(dir.path().join(run).join("model.safetensors")).unwrap();
    assert!(weights("straight") == weights("killed"), "the resumed run's weights differ from the straight run's");
    let steps = logged_steps(&dir.path().join("killed"));
    assert_eq!(steps, (1..=steps.len()).collect::<Vec<_>>(), "metrics.csv logs each step once, in order");
    assert_eq!(steps, logged_steps(&dir.path().join("straight")));
    // a finished run goes on with more epochs in all
    let output = elbo(&["train", "--resume", "killed", "--quiet"], dir.path());
    assert_fails_with(&output, &["completed 2 epochs", "--epochs"]);
    let longer = elbo(&["train", "--resume", "killed", "--epochs", "3", "--quiet"], dir.path());
    assert!(longer.status.success(), "{}", text(&longer));
    assert!(std::fs::read_to_string(dir.path().join("killed/metrics.csv")).unwrap().contains("\nepoch,3,"));
}

#[test]
fn a_config_file_repeats_its_run_and_given_flags_change_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    assert!(train_tiny(dir.path(), "first").status.success());
    let again = elbo(&["train", "--config", "first/config.json", "--out", "again", "--quiet"], dir.path());
    assert!(again.status.success(), "{}", text(&again));
    let weights = |run: &str| std::fs::read(dir.path().join(run).join("model.safetensors")).unwrap();
    assert!(weights("first") == weights("again"), "the same config gives the same weights");
    let other =
        elbo(&["train", "--config", "first/config.json", "--seed", "2", "--out", "other", "--quiet"], dir.path());
    assert!(other.status.success(), "{}", text(&other));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("other/config.json")).unwrap()).unwrap();
    assert_eq!((config["training"]["seed"].as_u64(), config["model"]["latent_dim"].as_u64()), (Some(2), Some(4)));
    assert!(weights("first") != weights("other"));
    let refused = elbo(&["train", "--config", "first/config.json", "--hidden", "8", "--out", "x"], dir.path());
    assert_fails_with(&refused, &["--hidden", "model.encoder_hidden", "config.json"]);
    let missing = elbo(&["train", "--config", "nothing.json", "--out", "y"], dir.path());
    assert_fails_with(&missing, &["nothing.json"]);
}

/// Two 48 x 56 photos (gradients with a square) in `dir/photos`.
fn write_two_photos(dir: &Path) {
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    for (index, name) in ["one.png", "two.jpg"].iter().enumerate() {
        let image = image::RgbImage::from_fn(56, 48, |x, y| {
            let inside = (10..30).contains(&(x + 5 * index as u32)) && (12..28).contains(&y);
            image::Rgb(if inside { [240, 200, 30] } else { [(x * 4) as u8, (y * 5) as u8, 90] })
        });
        image.save(folder.join(name)).unwrap();
    }
}

#[test]
fn a_kl_autoencoder_trains_on_photos_evaluates_resumes_and_plots_its_rate_distortion() {
    let dir = tempfile::tempdir().unwrap();
    write_two_photos(dir.path());
    let tiny = [
        "train",
        "--architecture",
        "autoencoder-kl",
        "--data",
        "photos",
        "--block-out-channels",
        "8,16",
        "--norm-groups",
        "4",
        "--latent-channels",
        "2",
        "--batch-size",
        "2",
        "--held-out-crops",
        "2",
        "--eval-every",
        "2",
        "--threads",
        "1",
        "--quiet",
    ];
    let train = |out: &str, extra: &[&str]| {
        let args: Vec<&str> = tiny.iter().chain(&["--out", out]).chain(extra).copied().collect();
        elbo(&args, dir.path())
    };
    let output = train("kl", &["--random-crop", "24", "--max-steps", "2", "--discriminator-start", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("held-out crops: PSNR"), "{}", text(&output));
    for file in ["diffusers/config.json", "diffusers/diffusion_pytorch_model.safetensors", "report.html"] {
        assert!(dir.path().join("kl").join(file).is_file(), "{file}");
    }
    let resumed = elbo(&["train", "--resume", "kl", "--max-steps", "4", "--quiet"], dir.path());
    assert!(resumed.status.success(), "{}", text(&resumed));
    // the run works wherever a diffusers model does: its diffusers/ folder
    let encoded =
        elbo(&["encode", "--run", "kl", "--data", "photos", "--image-size", "24", "--out", "z.npy"], dir.path());
    assert!(encoded.status.success() && dir.path().join("z.npy").is_file(), "{}", text(&encoded));
    let eval = elbo(&["eval", "--run", "kl"], dir.path());
    assert!(text(&eval).contains("bits per pixel") && text(&eval).contains("PSNR"), "{}", text(&eval));
    let other =
        train("kl-beta", &["--random-crop", "24", "--max-steps", "2", "--beta", "0.01", "--likelihood", "gaussian"]);
    assert!(other.status.success(), "{}", text(&other));
    let curve = elbo(&["rate-distortion", "kl", "kl-beta", "--out", "rd.svg"], dir.path());
    assert!(curve.status.success(), "{}", text(&curve));
    assert!(std::fs::read_to_string(dir.path().join("rd.svg")).unwrap().contains("<svg"));
    // refused clearly: no photos given, a crop the model cannot halve, laplace outside the autoencoder
    assert_fails_with(&elbo(&["train", "--architecture", "autoencoder-kl"], dir.path()), &["--data"]);
    assert_fails_with(&train("bad", &["--random-crop", "15"]), &["random-crop", "15"]);
    assert_fails_with(&train("bad", &["--random-crop", "16", "--discriminator-start", "0"]), &["at least 24"]);
    assert_fails_with(&elbo(&["train", "--likelihood", "laplace"], dir.path()), &["autoencoder-kl"]);
    // LPIPS: a file that is not an LPIPS network, or the term beside a likelihood, refused before any run directory
    let not_lpips = ["--random-crop", "24", "--lpips", "kl/model.safetensors"];
    assert_fails_with(&train("bad-lpips", &not_lpips), &["kl/model.safetensors", "net.slice1.0.weight"]);
    let beside = ["--random-crop", "24", "--lpips", "kl/model.safetensors", "--likelihood", "bernoulli"];
    assert_fails_with(&train("bad-lpips", &beside), &["lpips", "laplace"]);
    assert!(!dir.path().join("bad-lpips").exists());
    assert_fails_with(&elbo(&["eval", "--run", "kl", "--lpips", "missing.safetensors"], dir.path()), &["missing"]);
}
