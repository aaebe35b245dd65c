//! Reading the training curves as the seed says: the two terms separately. A KL near zero early in training
//! warns of posterior collapse; a reconstruction that does not fall means the decoder is failing to use the
//! latent; both shrinking is healthy.

/// Below this mean KL (nats per example) the KL counts as near zero: over the first tenth of the steps (collapse
/// risk) or at the end (the decoder fits x without z).
pub const EARLY_KL_NEAR_ZERO: f64 = 0.1;
/// A reconstruction term that fell by less than this fraction from the first epoch to the last is stuck.
pub const STUCK_FRACTION: f64 = 0.01;

/// What the curves of `metrics.csv` say.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurveReading {
    /// Mean raw KL over the first tenth of the steps.
    pub early_kl: f64,
    /// The KL was near zero early: posterior-collapse risk.
    pub kl_near_zero_early: bool,
    /// The training reconstruction term barely fell: the decoder is failing to use the latent.
    pub reconstruction_stuck: bool,
    /// Both terms fell over the last half of the epochs: healthy.
    pub both_shrinking: bool,
    /// One sentence per finding.
    pub notes: Vec<String>,
}

/// The per-step and per-epoch training values of the two terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// (reconstruction, raw KL) of each step, in order.
    pub steps: Vec<(f64, f64)>,
    /// (reconstruction, raw KL) of each epoch's training means, in order.
    pub epochs: Vec<(f64, f64)>,
}

impl Curves {
    /// Reads the curves (needs at least one step).
    pub fn read(&self) -> Option<CurveReading> {
        let early = &self.steps[..self.steps.len().div_ceil(10)];
        if early.is_empty() {
            return None;
        }
        let early_kl = mean(early).1;
        // with one epoch, its start and end are the first and last tenth of its steps
        let (first, last) = match self.epochs.len() {
            0 => return None,
            1 => (mean(early), mean(&self.steps[self.steps.len() - early.len()..])),
            _ => (*self.epochs.first()?, *self.epochs.last()?),
        };
        let (first, last) = (&first, &last);
        let reconstruction_stuck = self.steps.len() > 1 && first.0 - last.0 < STUCK_FRACTION * first.0.abs();
        let half = &self.epochs[self.epochs.len() / 2..];
        let both_shrinking =
            half.len() > 1 && half.windows(2).all(|w| w[1].0 <= w[0].0) && half.last()?.1 < half.first()?.1;
        let mut reading = CurveReading {
            early_kl,
            kl_near_zero_early: early_kl < EARLY_KL_NEAR_ZERO,
            reconstruction_stuck,
            both_shrinking,
            notes: vec![],
        };
        reading.notes = reading.describe(first, half.first()?, last);
        Some(reading)
    }
}

/// The mean (reconstruction, KL) of some steps (at least one).
fn mean(steps: &[(f64, f64)]) -> (f64, f64) {
    let (reconstruction, kl) = steps.iter().fold((0.0, 0.0), |(r, k), s| (r + s.0, k + s.1));
    (reconstruction / steps.len() as f64, kl / steps.len() as f64)
}

impl CurveReading {
    /// Sentences from the first epoch, the first epoch of the last half, and the last epoch.
    fn describe(&self, first: &(f64, f64), middle: &(f64, f64), last: &(f64, f64)) -> Vec<String> {
        let mut notes = Vec::new();
        if self.kl_near_zero_early {
            notes.push(format!("KL near zero early in training ({:.3} nats over the first tenth of the steps): posterior-collapse risk", self.early_kl));
        }
        if self.reconstruction_stuck {
            notes.push(format!(
                "reconstruction stuck ({:.3} -> {:.3} nats): the decoder is failing to use the latent",
                first.0, last.0
            ));
        }
        if self.both_shrinking {
            notes.push(format!("both terms shrinking over the last half of training (reconstruction {:.3} -> {:.3}, KL {:.3} -> {:.3}): healthy", middle.0, last.0, middle.1, last.1));
        } else if !self.reconstruction_stuck && last.1 < EARLY_KL_NEAR_ZERO {
            notes.push(format!("reconstruction falling ({:.3} -> {:.3} nats) while the KL stays near zero ({:.3}): the decoder is fitting x without z", first.0, last.0, last.1));
        } else if !self.reconstruction_stuck {
            notes.push(format!("reconstruction falling ({:.3} -> {:.3} nats) while the KL settles at {:.3}: the encoder is putting information into z", first.0, last.0, last.1));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves(steps: Vec<(f64, f64)>, epochs: Vec<(f64, f64)>) -> CurveReading {
        Curves { steps, epochs }.read().unwrap()
    }

    #[test]
    fn a_kl_near_zero_early_is_a_collapse_risk() {
        let reading = curves(vec![(100.0, 0.01); 20], vec![(100.0, 0.01), (90.0, 0.02)]);
        assert!(reading.kl_near_zero_early && !reading.reconstruction_stuck);
        assert!(reading.notes[0].contains("posterior-collapse risk"));
    }

    #[test]
    fn a_flat_reconstruction_is_stuck() {
        let reading = curves(vec![(100.0, 5.0); 20], vec![(100.0, 5.0), (99.9, 4.0), (99.8, 3.0)]);
        assert!(reading.reconstruction_stuck && !reading.kl_near_zero_early);
        assert!(reading.notes.iter().any(|n| n.contains("failing to use the latent")));
    }

    #[test]
    fn both_terms_falling_is_healthy() {
        let epochs = vec![(150.0, 10.0), (110.0, 20.0), (100.0, 18.0), (95.0, 17.0)];
        let reading = curves(vec![(150.0, 10.0); 40], epochs);
        assert!(reading.both_shrinking && !reading.reconstruction_stuck && !reading.kl_near_zero_early);
        assert!(reading.notes.iter().any(|n| n.contains("100.000 -> 95.000") && n.contains("healthy")));
    }
}
