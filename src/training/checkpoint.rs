//! What a run carries from one step to the next, so that a checkpoint resumes it exactly: where the run stands
//! (epoch, batch, step), the positions of its random streams, the running sums of the epoch in progress, and the
//! optimiser's state. The weights travel beside it; the KL schedule's position is the step count.

use std::str::FromStr;

use super::trainer::{EpochRecord, StepRecord};
use crate::evaluation::ElboEstimate;
use crate::optimizer::OptimizerState;
use crate::{Error, Result};

/// Where a run stands. Stored as JSON in the checkpoint.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainingProgress {
    /// The epoch in progress, from 1 (the next one to start when `batches_done` is 0).
    pub epoch: usize,
    /// Batches of `epoch` already taken.
    pub batches_done: usize,
    /// Optimisation steps taken (the KL schedule's position).
    pub step: usize,
    /// The positions of the random streams.
    pub streams: StreamPositions,
    /// Running sums over the steps of `epoch` so far.
    pub totals: EpochTotals,
    /// Seconds spent in optimisation steps so far, across resumes (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples processed so far, across resumes.
    pub examples_seen: usize,
    /// Seconds of training so far, across resumes (the `wall_seconds` of the rows logged next count from here).
    pub wall_seconds: f64,
    /// The last epoch evaluated.
    pub last_epoch: Option<EpochRecord>,
}

/// Word positions of the run's ChaCha streams: with the seed, they give each stream's next draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StreamPositions {
    /// The shuffling stream at the start of the epoch in progress (its order is drawn again on resume).
    pub shuffle_at_epoch_start: u128,
    /// The noise stream eps ~ N(0, I).
    pub noise: u128,
    /// The dynamic binarization's stream.
    pub binarize: u128,
}

/// Sums over the steps of an epoch, for the epoch's means.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct EpochTotals {
    /// Running means of the reconstruction and KL terms, weighted by the batches' sizes.
    pub estimate: ElboEstimate,
    /// Sum of the steps' weighted KL (`None` for the IWAE objective).
    pub weighted_kl_sum: Option<f64>,
    /// Sum of the steps' losses.
    pub loss_sum: f64,
    /// Steps summed.
    pub steps: usize,
    /// Seconds spent in the epoch's optimisation steps.
    pub seconds: f64,
}

impl EpochTotals {
    /// Adds one step of `rows` examples.
    pub fn add(&mut self, record: &StepRecord, rows: usize) {
        self.estimate.accumulate(rows, record.reconstruction * rows as f64, record.kl * rows as f64);
        self.weighted_kl_sum = record.weighted_kl.map(|w| self.weighted_kl_sum.unwrap_or(0.0) + w);
        self.loss_sum += record.loss;
        self.steps += 1;
    }

    /// Mean of the steps' weighted KL.
    pub fn weighted_kl(&self) -> Option<f64> {
        self.weighted_kl_sum.map(|sum| sum / self.steps.max(1) as f64)
    }

    /// Mean of the steps' losses.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.steps.max(1) as f64
    }
}

/// Everything besides the weights that a resumed run needs.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where the run stands.
    pub progress: TrainingProgress,
    /// The optimiser's moments, step count and learning rate.
    pub optimizer: OptimizerState,
}

/// How often a checkpoint is written besides at the end of each epoch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointEvery {
    /// Every this many optimisation steps.
    Steps(usize),
    /// Whenever this many minutes have passed since the last checkpoint.
    Minutes(f64),
}

impl CheckpointEvery {
    /// An error unless the interval is positive.
    pub fn validate(&self) -> Result<()> {
        match *self {
            CheckpointEvery::Steps(steps) if steps > 0 => Ok(()),
            CheckpointEvery::Minutes(minutes) if minutes > 0.0 && minutes.is_finite() => Ok(()),
            _ => Err(Error::invalid_setting("checkpoint-every", "must be a positive number of steps or minutes")),
        }
    }
}

impl FromStr for CheckpointEvery {
    type Err = String;

    /// `N` (steps), `Nsteps`, or `Nm` / `Nmin` (minutes, fractions allowed).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let expected = || format!("expected N (steps), Nsteps or Nm / Nmin (minutes), got `{text}`");
        let every = if let Some(minutes) = text.strip_suffix("min").or_else(|| text.strip_suffix('m')) {
            CheckpointEvery::Minutes(minutes.trim().parse().map_err(|_| expected())?)
        } else {
            let steps = text.strip_suffix("steps").unwrap_or(text);
            CheckpointEvery::Steps(steps.trim().parse().map_err(|_| expected())?)
        };
        every.validate().map_err(|_| expected())?;
        Ok(every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_in_steps_or_minutes_and_must_be_positive() {
        assert_eq!("500".parse(), Ok(CheckpointEvery::Steps(500)));
        assert_eq!("20steps".parse(), Ok(CheckpointEvery::Steps(20)));
        assert_eq!("10m".parse(), Ok(CheckpointEvery::Minutes(10.0)));
        assert_eq!("0.5min".parse(), Ok(CheckpointEvery::Minutes(0.5)));
        for bad in ["0", "-3", "0m", "abc", "5h", "", "infm"] {
            assert!(bad.parse::<CheckpointEvery>().is_err(), "{bad}");
        }
    }

    #[test]
    fn progress_survives_json_bit_for_bit() {
        let progress = TrainingProgress {
            epoch: 3,
            batches_done: 7,
            step: 1234,
            streams: StreamPositions { shuffle_at_epoch_start: u128::from(u64::MAX) + 5, noise: 99, binarize: 1 },
            totals: EpochTotals {
                estimate: ElboEstimate { examples: 896, reconstruction: 0.1 + 0.2, kl: 1.0 / 3.0 },
                weighted_kl_sum: Some(std::f64::consts::PI * 1e-7),
                loss_sum: 123.456_789_012_345_67,
                steps: 7,
                seconds: 2.0f64.sqrt(),
            },
            train_seconds: 1e-300,
            examples_seen: 5,
            wall_seconds: f64::MAX,
            last_epoch: None,
        };
        let text = serde_json::to_string(&progress).unwrap();
        assert_eq!(serde_json::from_str::<TrainingProgress>(&text).unwrap(), progress);
    }
}
