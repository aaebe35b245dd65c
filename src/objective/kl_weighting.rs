//! How the KL term enters the training loss: beta, a warm-up or cyclical schedule for it, free bits, or the
//! capacity objective. These are the remedies for posterior collapse; the raw KL is always reported beside the
//! weighted one, so a warm-up is visible in the curves.

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// A length of training, as a schedule gives it: in steps, in epochs, or as a part of the whole run. Epochs and
/// parts are turned into steps when training starts ([`KlWeighting::resolved`]), from the steps per epoch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    /// This many optimisation steps (`period` is how configs once named a cycle's steps).
    #[serde(alias = "period")]
    Steps(usize),
    /// This many epochs (fractions allowed): round(epochs * steps per epoch) steps, at least 1.
    Epochs(f64),
    /// One n-th of the whole run: ceil(steps per epoch * epochs / n) steps (1 is the whole run).
    RunPart(usize),
}

impl Span {
    /// The span in steps, for a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn in_steps(self, steps_per_epoch: usize, epochs: usize) -> usize {
        match self {
            Span::Steps(steps) => steps,
            Span::Epochs(count) => ((count * steps_per_epoch as f64).round() as usize).max(1),
            Span::RunPart(parts) => (steps_per_epoch * epochs).div_ceil(parts.max(1)).max(1),
        }
    }

    /// The steps of a span already resolved into steps; a span in epochs or parts of the run counts as 1 step
    /// until [`KlWeighting::resolved`] has turned it into steps (training does so before its first step).
    fn steps(self) -> usize {
        match self {
            Span::Steps(steps) => steps.max(1),
            Span::Epochs(_) | Span::RunPart(_) => 1,
        }
    }

    /// An error unless the span is at least one step long.
    fn validate(self, name: &str) -> Result<()> {
        let positive = match self {
            Span::Steps(steps) => steps > 0,
            Span::Epochs(epochs) => epochs > 0.0 && epochs.is_finite(),
            Span::RunPart(parts) => parts > 0,
        };
        match positive {
            true => Ok(()),
            false => Err(Error::invalid_setting(name, format!("needs a positive length, got {self:?}"))),
        }
    }
}

/// The weight of the KL term over training, as a multiple of beta.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum KlSchedule {
    /// beta from the first step.
    #[default]
    Constant,
    /// Linear warm-up: beta * min(1, step / steps), over `over` (written `"steps": n` or `"epochs": e`).
    Linear {
        /// How long the weight takes to reach beta.
        #[serde(flatten)]
        over: Span,
    },
    /// Cyclical annealing (Fu et al. 2019): training is cut into cycles of `period` steps; in each, the weight
    /// rises linearly from 0 to beta over the first `ratio` of the cycle, then stays at beta.
    Cyclical {
        /// The length of a cycle (`"run_part": n` for n cycles over the run).
        #[serde(flatten)]
        period: Span,
        /// Fraction of each cycle spent rising, in (0, 1].
        ratio: f64,
    },
}

impl KlSchedule {
    /// The multiple of beta at optimisation step `step` (counted from 1).
    pub fn factor(&self, step: usize) -> f64 {
        match *self {
            KlSchedule::Constant => 1.0,
            KlSchedule::Linear { over } => (step as f64 / over.steps() as f64).min(1.0),
            KlSchedule::Cyclical { period, ratio } => {
                let period = period.steps();
                let position = (step.saturating_sub(1) % period) as f64 + 1.0;
                (position / (ratio * period as f64)).min(1.0)
            }
        }
    }

    /// Checks the schedule's numbers.
    pub fn validate(&self) -> Result<()> {
        match *self {
            KlSchedule::Constant => Ok(()),
            KlSchedule::Linear { over } => over.validate("warm-up"),
            KlSchedule::Cyclical { ratio, .. } if !(ratio > 0.0 && ratio <= 1.0) => {
                Err(Error::invalid_setting("cyclical annealing", format!("needs a ratio in (0, 1], got {ratio}")))
            }
            KlSchedule::Cyclical { period, .. } => period.validate("cyclical annealing"),
        }
    }

    /// The schedule with its spans in steps.
    fn resolved(self, steps_per_epoch: usize, epochs: usize) -> Self {
        let steps = |span: Span| Span::Steps(span.in_steps(steps_per_epoch, epochs));
        match self {
            KlSchedule::Constant => KlSchedule::Constant,
            KlSchedule::Linear { over } => KlSchedule::Linear { over: steps(over) },
            KlSchedule::Cyclical { period, ratio } => KlSchedule::Cyclical { period: steps(period), ratio },
        }
    }
}

/// The capacity objective of Burgess et al. (2018): gamma * |KL - C|, with C rising linearly from 0 to `max_nats`
/// over `over`, replacing beta * KL.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// The final capacity C_max in nats.
    pub max_nats: f64,
    /// How long C takes to rise to C_max (`"steps": n`, `"epochs": e` or `"run_part": 1` for the whole run).
    #[serde(flatten)]
    pub over: Span,
    /// The weight gamma of |KL - C|.
    pub gamma: f64,
}

impl Capacity {
    /// The capacity C at step `step`.
    pub fn at(&self, step: usize) -> f64 {
        self.max_nats * (step as f64 / self.over.steps() as f64).min(1.0)
    }
}

/// All the ways the KL term can be weighted in the training loss.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlWeighting {
    /// The weight beta (1 = the ELBO; > 1 = beta-VAE).
    pub beta: f64,
    /// How the weight evolves over steps.
    #[serde(default)]
    pub schedule: KlSchedule,
    /// Free bits (Kingma et al. 2016): each latent dimension's KL, averaged over the batch, counts at least lambda
    /// nats, so the optimiser gains nothing by pushing it below lambda.
    #[serde(default)]
    pub free_bits: Option<f64>,
    /// The capacity objective, replacing beta * KL.
    #[serde(default)]
    pub capacity: Option<Capacity>,
}

impl Default for KlWeighting {
    fn default() -> Self {
        KlWeighting { beta: 1.0, schedule: KlSchedule::Constant, free_bits: None, capacity: None }
    }
}

impl KlWeighting {
    /// True when the loss is the plain ELBO (beta 1, no schedule, no free bits, no capacity).
    pub fn is_plain_elbo(&self) -> bool {
        *self == KlWeighting::default()
    }

    /// True when the weighted KL of a batch is the mean of its examples' (no free bits, no capacity, which look at
    /// the batch's mean KL), so a batch's gradient is the sum of its shards', each weighted by its share.
    pub fn is_mean_of_examples(&self) -> bool {
        self.free_bits.is_none() && self.capacity.is_none()
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::invalid_setting("beta", format!("must be a non-negative number, got {}", self.beta)));
        }
        if let Some(lambda) = self.free_bits {
            if !(lambda >= 0.0 && lambda.is_finite()) {
                return Err(Error::invalid_setting(
                    "free bits",
                    format!("must be a non-negative number of nats, got {lambda}"),
                ));
            }
        }
        if let Some(c) = self.capacity {
            if !(c.max_nats >= 0.0 && c.gamma > 0.0) {
                return Err(Error::invalid_setting("capacity", "needs C_max >= 0 and gamma > 0"));
            }
            c.over.validate("capacity")?;
        }
        self.schedule.validate()
    }

    /// The weighting with every span (warm-up, cycle, capacity) in steps, for a run of `epochs` epochs of
    /// `steps_per_epoch` steps. Training resolves its weighting so before the first step.
    pub fn resolved(&self, steps_per_epoch: usize, epochs: usize) -> KlWeighting {
        let capacity = self.capacity.map(|capacity| Capacity {
            over: Span::Steps(capacity.over.in_steps(steps_per_epoch, epochs)),
            ..capacity
        });
        KlWeighting { schedule: self.schedule.resolved(steps_per_epoch, epochs), capacity, ..*self }
    }

    /// The factor w of the batch-mean KL in the loss at `step`, where the weighted KL is w * KL (beta and its
    /// schedule); `None` for free bits and the capacity objective, which are not proportional to the KL.
    pub fn weight(&self, step: usize) -> Option<f64> {
        (self.free_bits.is_none() && self.capacity.is_none()).then(|| self.beta_at(step))
    }

    /// beta times its schedule's factor at `step`.
    fn beta_at(&self, step: usize) -> f64 {
        self.beta * self.schedule.factor(step)
    }

    /// The KL term as it enters the loss at `step`, a scalar (batch mean), from the per-dimension KL
    /// `[batch, latent_dim]`.
    pub fn weighted_kl(&self, kl_per_dimension: &Tensor, step: usize) -> Result<Tensor> {
        let kl = match self.free_bits {
            // free bits: sum_d max(lambda, mean_batch KL_d)
            Some(lambda) => kl_per_dimension.mean(0)?.maximum(lambda)?.sum_all()?,
            None => kl_per_dimension.sum(D::Minus1)?.mean_all()?,
        };
        match self.capacity {
            // gamma * |KL - C|
            Some(capacity) => Ok(((kl - capacity.at(step))?.abs()? * capacity.gamma)?),
            None => Ok((kl * self.beta_at(step))?),
        }
    }
}

impl KlWeighting {
    /// The same weighted KL from the batch means of each latent dimension's KL (`means[j]`, nats), with its
    /// derivative with respect to each mean: what the fused training step needs. Free bits: sum_j max(lambda,
    /// mean_j), no gradient below lambda; then gamma * |KL - C| for the capacity objective, else beta(step) * KL.
    pub fn weighted_kl_of_means(&self, means: &[f64], step: usize) -> (f64, Vec<f64>) {
        let (kl, mask): (f64, Vec<f64>) = match self.free_bits {
            Some(lambda) => (
                means.iter().map(|&mean| mean.max(lambda)).sum(),
                means.iter().map(|&mean| if mean > lambda { 1.0 } else { 0.0 }).collect(),
            ),
            None => (means.iter().sum(), vec![1.0; means.len()]),
        };
        let (weighted_kl, factor) = match self.capacity {
            Some(capacity) => {
                let distance = kl - capacity.at(step);
                (capacity.gamma * distance.abs(), capacity.gamma * distance.signum())
            }
            None => (self.beta_at(step) * kl, self.beta_at(step)),
        };
        (weighted_kl, mask.iter().map(|m| m * factor).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_rise_as_documented() {
        let linear = KlSchedule::Linear { over: Span::Steps(4) };
        assert_eq!([1, 2, 4, 9].map(|s| linear.factor(s)), [0.25, 0.5, 1.0, 1.0]);
        let cyclical = KlSchedule::Cyclical { period: Span::Steps(4), ratio: 0.5 };
        assert_eq!([1, 2, 3, 4, 5, 6].map(|s| cyclical.factor(s)), [0.5, 1.0, 1.0, 1.0, 0.5, 1.0]);
        assert!(KlSchedule::Cyclical { period: Span::Steps(4), ratio: 0.0 }.validate().is_err());
    }

    #[test]
    fn spans_in_epochs_and_run_parts_resolve_into_steps_and_read_as_before() {
        assert_eq!(Span::Epochs(2.5).in_steps(10, 4), 25);
        assert_eq!(Span::Epochs(0.01).in_steps(10, 4), 1);
        assert_eq!(Span::RunPart(3).in_steps(10, 4), 14, "40 steps in 3 cycles: ceil(40 / 3)");
        assert_eq!(Span::RunPart(1).in_steps(10, 4), 40);
        let weighting = KlWeighting {
            schedule: KlSchedule::Linear { over: Span::Epochs(0.5) },
            capacity: Some(Capacity { max_nats: 5.0, over: Span::RunPart(1), gamma: 2.0 }),
            ..KlWeighting::default()
        };
        let resolved = weighting.resolved(10, 4);
        assert_eq!(resolved.schedule, KlSchedule::Linear { over: Span::Steps(5) });
        assert_eq!(resolved.capacity.unwrap().over, Span::Steps(40));
        // the JSON of a schedule in steps is what configs have always held
        let text = serde_json::to_string(&KlSchedule::Linear { over: Span::Steps(7) }).unwrap();
        assert_eq!(text, r#"{"kind":"linear","steps":7}"#);
        let read: KlSchedule = serde_json::from_str(r#"{"kind":"cyclical","period":6,"ratio":0.5}"#).unwrap();
        assert_eq!(read, KlSchedule::Cyclical { period: Span::Steps(6), ratio: 0.5 });
        let capacity: Capacity = serde_json::from_str(r#"{"max_nats":5.0,"steps":10,"gamma":2.0}"#).unwrap();
        assert_eq!(capacity.over, Span::Steps(10));
    }

    fn kl_rows() -> Tensor {
        // two examples, two dimensions: dimension 0 carries 2 nats on average, dimension 1 carries 0.1
        Tensor::new(&[[1.0f32, 0.0], [3.0, 0.2]], &Device::Cpu).unwrap()
    }

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn beta_and_warm_up_scale_the_batch_mean_kl() {
        let weighting =
            KlWeighting { beta: 2.0, schedule: KlSchedule::Linear { over: Span::Steps(10) }, ..KlWeighting::default() };
        assert!((scalar(weighting.weighted_kl(&kl_rows(), 5).unwrap()) - 2.0 * 0.5 * 2.1).abs() < 1e-6);
    }

    #[test]
    fn free_bits_floor_each_dimension_and_stop_its_gradient() {
        let weighting = KlWeighting { free_bits: Some(0.5), ..KlWeighting::default() };
        let var = candle_core::Var::from_tensor(&kl_rows()).unwrap();
        let loss = weighting.weighted_kl(var.as_tensor(), 1).unwrap();
        assert!((scalar(loss.clone()) - (2.0 + 0.5)).abs() < 1e-6);
        let grad = loss.backward().unwrap().get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(grad, vec![vec![0.5, 0.0], vec![0.5, 0.0]], "no gradient pushes a dimension below lambda");
    }

    #[test]
    fn capacity_penalises_distance_from_the_target() {
        let capacity = Capacity { max_nats: 10.0, over: Span::Steps(100), gamma: 3.0 };
        let weighting = KlWeighting { capacity: Some(capacity), ..KlWeighting::default() };
        assert!((scalar(weighting.weighted_kl(&kl_rows(), 50).unwrap()) - 3.0 * (5.0 - 2.1)).abs() < 1e-5);
    }

    #[test]
    fn the_weighted_kl_of_batch_means_matches_the_tensor_form_and_its_gradient() {
        let capacity = Capacity { max_nats: 10.0, over: Span::Steps(100), gamma: 3.0 };
        let weightings = [
            KlWeighting { beta: 2.0, schedule: KlSchedule::Linear { over: Span::Steps(10) }, ..KlWeighting::default() },
            KlWeighting { beta: 1.5, free_bits: Some(0.5), ..KlWeighting::default() },
            KlWeighting { capacity: Some(capacity), ..KlWeighting::default() },
            KlWeighting { free_bits: Some(0.5), capacity: Some(capacity), ..KlWeighting::default() },
        ];
        for weighting in weightings {
            let var = candle_core::Var::from_tensor(&kl_rows()).unwrap();
            let loss = weighting.weighted_kl(var.as_tensor(), 5).unwrap();
            let grad = loss.backward().unwrap().get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            // dL/dKL_nj = (dL/dmean_j) / batch, the same for both rows
            let (weighted, derivatives) = weighting.weighted_kl_of_means(&[2.0, 0.1], 5);
            assert!((weighted - f64::from(scalar(loss))).abs() < 1e-5, "{weighting:?}");
            for (j, derivative) in derivatives.iter().enumerate() {
                assert!((derivative / 2.0 - f64::from(grad[0][j])).abs() < 1e-6, "{weighting:?}, dimension {j}");
            }
        }
    }
}
