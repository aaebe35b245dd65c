//! The training display: a progress bar per epoch with live reconstruction and KL, a summary line per epoch,
//! and the handling of Ctrl-C (SIGINT) and SIGTERM: the first stops training cleanly at the next step (weights,
//! logs and summary are kept), a second of the same kind ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use candle_nn::VarMap;
use elbo::training::autoencoder::{AutoencoderObserver, AutoencoderStepRecord, EvalRecord};
use elbo::training::{EpochRecord, StepPlan, StepRecord, TrainingObserver};
use elbo::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// Shows progress on the terminal and watches for SIGINT and SIGTERM.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    held_out_split: &'static str,
    /// The signal that asked training to stop (0: none yet).
    signal: Arc<AtomicUsize>,
}

impl Progress {
    /// A display; with `quiet`, only the per-epoch lines are printed. Installs the signal handlers.
    pub fn new(quiet: bool, held_out_is_validation: bool) -> anyhow::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        let asked = Arc::new(AtomicBool::new(false));
        for number in [SIGINT, SIGTERM] {
            // a second signal ends the process with the shell's code for it; the first one only asks
            signal_hook::flag::register_conditional_shutdown(number, 128 + number, asked.clone())?;
            signal_hook::flag::register(number, asked.clone())?;
            signal_hook::flag::register_usize(number, signal.clone(), number as usize)?;
        }
        Ok(Progress {
            bar: None,
            quiet,
            held_out_split: if held_out_is_validation { "validation" } else { "test" },
            signal,
        })
    }

    /// The signal that stopped training (SIGINT or SIGTERM), if one did.
    pub fn interrupted_by(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            number => i32::try_from(number).ok(),
        }
    }
}

impl TrainingObserver for Progress {
    fn on_start(&mut self, plan: &StepPlan) -> Result<()> {
        println!("step: {} ({}; SIMD {})", plan.reason, shards_text(plan.shards), elbo::runtime::simd_level());
        Ok(())
    }

    fn on_epoch_start(&mut self, epoch: usize, num_batches: usize) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        let bar = ProgressBar::new(num_batches as u64);
        let template = "epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}";
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_prefix(epoch.to_string());
        self.bar = Some(bar);
        Ok(())
    }

    fn on_step(&mut self, record: &StepRecord) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if record.step.is_multiple_of(10) {
                bar.set_message(format!("rec {:.2} kl {:.2}", record.reconstruction, record.kl));
            }
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, r: &EpochRecord, _varmap: &VarMap) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let terms = |e: &elbo::evaluation::ElboEstimate| {
            format!("-ELBO {:.3} (rec {:.3} + KL {:.3})", e.negative_elbo(), e.reconstruction, e.kl)
        };
        let held_out =
            r.held_out.as_ref().map_or(String::new(), |e| format!("  {}: {}", self.held_out_split, terms(e)));
        println!("epoch {:>3}  train: {}{held_out}  {:.0} ex/s", r.epoch, terms(&r.train), r.examples_per_second);
        Ok(())
    }

    fn should_stop(&self) -> bool {
        self.interrupted_by().is_some()
    }
}

impl Progress {
    /// Starts a bar over the `total` steps of a KL autoencoder's run, `done` of them already taken.
    pub fn start_steps(&mut self, total: usize, done: usize) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total as u64);
        let template = "step [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}";
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    /// Prints `line` above the bar (or plainly without one).
    fn print_line(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }
}

impl AutoencoderObserver for Progress {
    fn on_step(&mut self, record: &AutoencoderStepRecord) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_position(record.step as u64);
            let figures = &record.figures;
            let adversarial = figures.discriminator_loss.map_or(String::new(), |d| format!(" d {d:.3}"));
            bar.set_message(format!("rec {:.1} kl {:.1}{adversarial}", figures.reconstruction, figures.kl));
        }
        Ok(())
    }

    fn on_eval(&mut self, record: &EvalRecord) -> Result<()> {
        let report = &record.report;
        self.print_line(format!(
            "step {:>6}  held-out: PSNR {:.2} dB  SSIM {:.4}  rate {:.4} bits/pixel  ({:.2} crops/s)",
            record.step, report.psnr, report.ssim, report.bits_per_pixel, record.images_per_second
        ));
        Ok(())
    }

    fn should_stop(&self) -> bool {
        self.interrupted_by().is_some()
    }
}

/// "whole batch" or "batch in N shards".
pub fn shards_text(shards: usize) -> String {
    match shards {
        1 => "whole batch".to_string(),
        shards => format!("batch in {shards} shards"),
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
