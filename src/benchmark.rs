//! Benchmarks of the hot paths, timed as a benchmark should be: the training step and the importance-weighted
//! bound, each repeat from fresh weights, after warm-up steps, reported as examples per second with the median and
//! the spread of the repeats. No speed is asserted anywhere: `elbo bench` prints these figures, and
//! `bench/compare_reference.py` sets them beside PyTorch's.

use std::time::Instant;

use candle_core::{DType, Device};

use crate::data::{binarized, Dataset, Splits};
use crate::evaluation::{evaluate_bounds, BoundsConfig};
use crate::model::{Vae, VaeConfig};
use crate::training::{step_plan, train, StepPlan, StepRecord, TrainConfig, TrainingObserver};
use crate::{Error, Result};

/// How much to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BenchConfig {
    /// Training steps run before the clock starts (first-touch page faults, caches, allocator pools).
    pub warmup_steps: usize,
    /// Training steps timed per repeat.
    pub steps: usize,
    /// Repeats of each measurement, each from fresh weights.
    pub repeats: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig { warmup_steps: 20, steps: 200, repeats: 5 }
    }
}

/// Examples per second of one measurement, one figure per repeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Throughput {
    /// Examples per second of each repeat, in the order run.
    pub runs: Vec<f64>,
}

impl Throughput {
    /// The median of the repeats (the mean of the middle two for an even count); 0 with no repeats.
    pub fn median(&self) -> f64 {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// The slowest and the fastest repeat; (0, 0) with no repeats.
    pub fn range(&self) -> (f64, f64) {
        let slowest = self.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = self.runs.iter().copied().fold(0.0, f64::max);
        (slowest.min(fastest), fastest)
    }
}

/// A timed training run: its throughput and how it was computed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainingBench {
    /// Examples per second of the timed steps, each repeat.
    pub throughput: Throughput,
    /// By hand or through candle's graph, and in how many shards.
    pub plan: StepPlan,
    /// Steps timed per repeat: `steps` of the [`BenchConfig`], or fewer when one pass over the data has fewer
    /// full batches after the warm-up.
    pub timed_steps: usize,
}

/// Training throughput of a `model` trained by `training` (its batch size, optimiser and objective) on `data`:
/// each repeat builds fresh weights, runs `bench.warmup_steps` steps, then times up to `bench.steps` steps, all
/// inside one pass over the data (so no evaluation or reshuffle falls in the timed window).
pub fn training_throughput(
    model: &VaeConfig,
    training: &TrainConfig,
    data: &Dataset,
    device: &Device,
    bench: &BenchConfig,
) -> Result<TrainingBench> {
    check_bench(bench)?;
    let full_batches = data.len() / training.batch_size.max(1);
    let timed_steps = bench.steps.min(full_batches.saturating_sub(bench.warmup_steps));
    if timed_steps == 0 {
        return Err(Error::invalid_setting(
            "warmup",
            format!(
                "{} warm-up steps leave no full batch of {} to time in one pass over {} examples: warm up less or use \
                 more data",
                bench.warmup_steps,
                training.batch_size,
                data.len()
            ),
        ));
    }
    let config = TrainConfig { epochs: 1, max_steps: Some(bench.warmup_steps + timed_steps), ..training.clone() };
    let splits = Splits {
        train: data.clone(),
        test: data.subset(&(0..data.len().min(config.eval_batch_size)).collect::<Vec<_>>()),
        test_is_validation: true,
    };
    let mut runs = Vec::with_capacity(bench.repeats);
    let mut plan = None;
    for _ in 0..bench.repeats {
        let (vae, varmap) = Vae::fresh(model, config.seed, DType::F32, device)?;
        plan = Some(step_plan(&vae, &config, device)?);
        let mut clock = StepClock { start_after: bench.warmup_steps, started_at: None, seconds: 0.0 };
        train(&vae, &varmap, &splits, &config, device, &mut [&mut clock])?;
        runs.push((timed_steps * config.batch_size) as f64 / clock.seconds.max(f64::MIN_POSITIVE));
    }
    let plan = plan.ok_or_else(|| Error::invalid_setting("repeats", "must be at least 1"))?; // checked above
    Ok(TrainingBench { throughput: Throughput { runs }, plan, timed_steps })
}

/// Throughput of the importance-weighted bound with `bounds.importance_samples` samples (the negative ELBO and the
/// averaged ELBO come with it) on `data`, binarized as `training` would, with a `model` of fresh weights (the work
/// does not depend on the weights' values). Each repeat evaluates all of `data`.
pub fn bounds_throughput(
    model: &VaeConfig,
    training: &TrainConfig,
    data: &Dataset,
    bounds: &BoundsConfig,
    device: &Device,
    repeats: usize,
) -> Result<Throughput> {
    at_least_one("repeats", repeats)?;
    let data = binarized(data, training.binarization, training.seed);
    let (vae, _varmap) = Vae::fresh(model, training.seed, DType::F32, device)?;
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let report = evaluate_bounds(&vae, &data, bounds, device, &mut |_| {})?;
        runs.push(report.examples as f64 / started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE));
    }
    Ok(Throughput { runs })
}

/// This process's peak resident memory so far, in MiB (Linux: `VmHWM` in `/proc/self/status`; `None` elsewhere).
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// The CPU's model name (Linux: `model name` in `/proc/cpuinfo`; `None` elsewhere), to print beside every speed.
pub fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// An error for a benchmark that would time nothing.
fn check_bench(bench: &BenchConfig) -> Result<()> {
    at_least_one("repeats", bench.repeats)?;
    at_least_one("steps", bench.steps)
}

/// An `InvalidSetting` error naming `name` when `value` is 0.
fn at_least_one(name: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid_setting(name, "must be at least 1"));
    }
    Ok(())
}

/// Times the steps after the first `start_after`: from the end of step `start_after` (the start of the epoch when
/// that is 0) to the end of the last step.
struct StepClock {
    start_after: usize,
    started_at: Option<Instant>,
    seconds: f64,
}

impl TrainingObserver for StepClock {
    fn on_epoch_start(&mut self, _epoch: usize, _num_batches: usize) -> Result<()> {
        if self.start_after == 0 {
            self.started_at.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    fn on_step(&mut self, record: &StepRecord) -> Result<()> {
        let now = Instant::now();
        match self.started_at {
            None if record.step == self.start_after => self.started_at = Some(now),
            Some(started) => self.seconds = (now - started).as_secs_f64(),
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::uniform;
    use crate::data::ExampleShape;

    fn small_model() -> VaeConfig {
        VaeConfig {
            input_shape: ExampleShape::flat(12),
            latent_dim: 3,
            encoder_hidden: vec![16],
            decoder_hidden: vec![16],
            ..VaeConfig::default()
        }
    }

    #[test]
    fn medians_and_ranges_of_repeats() {
        let odd = Throughput { runs: vec![3.0, 1.0, 2.0] };
        assert_eq!((odd.median(), odd.range()), (2.0, (1.0, 3.0)));
        assert_eq!(Throughput { runs: vec![4.0, 1.0, 2.0, 8.0] }.median(), 3.0);
        assert_eq!(Throughput { runs: vec![] }.median(), 0.0);
    }

    #[test]
    fn the_cpu_is_named_where_the_system_says() {
        if std::path::Path::new("/proc/cpuinfo").exists() {
            assert!(cpu_model().is_some_and(|model| !model.is_empty()));
        }
    }

    #[test]
    fn training_throughput_times_every_repeat_and_reports_the_plan() {
        let data = uniform(200, 12, 1);
        let training = TrainConfig { batch_size: 64, ..TrainConfig::default() };
        for (warmup_steps, steps, timed_steps) in [(0, 2, 2), (1, 2, 2), (1, 5, 2)] {
            let bench = BenchConfig { warmup_steps, steps, repeats: 2 };
            let result = training_throughput(&small_model(), &training, &data, &Device::Cpu, &bench).unwrap();
            assert_eq!((result.throughput.runs.len(), result.timed_steps), (2, timed_steps));
            assert!(result.throughput.runs.iter().all(|&speed| speed.is_finite() && speed > 0.0));
            assert!(result.plan.path == crate::training::StepPath::Fused && result.plan.shards >= 1);
        }
    }

    #[test]
    fn too_few_batches_or_nothing_to_time_is_an_error_naming_the_setting() {
        let data = uniform(100, 12, 1);
        let training = TrainConfig { batch_size: 64, ..TrainConfig::default() };
        let cases = [
            (BenchConfig { warmup_steps: 1, steps: 1, repeats: 1 }, "`warmup`"),
            (BenchConfig { steps: 0, ..Default::default() }, "`steps`"),
        ];
        for (bench, setting) in cases {
            let error = training_throughput(&small_model(), &training, &data, &Device::Cpu, &bench).unwrap_err();
            assert!(error.to_string().contains(setting), "{error}");
        }
        let error =
            bounds_throughput(&small_model(), &training, &data, &BoundsConfig::default(), &Device::Cpu, 0).unwrap_err();
        assert!(error.to_string().contains("`repeats`"), "{error}");
    }

    #[test]
    fn bounds_throughput_evaluates_every_repeat() {
        let data = uniform(20, 12, 2);
        let bounds = BoundsConfig { importance_samples: 5, ..BoundsConfig::default() };
        let throughput =
            bounds_throughput(&small_model(), &TrainConfig::default(), &data, &bounds, &Device::Cpu, 3).unwrap();
        assert_eq!(throughput.runs.len(), 3);
        assert!(throughput.runs.iter().all(|&speed| speed.is_finite() && speed > 0.0));
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_resident_mib().is_some_and(|mib| mib > 1.0));
        }
    }
}
