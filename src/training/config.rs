//! The training settings: everything besides the data and the architecture that decides a run.

use super::checkpoint::CheckpointEvery;
use super::step::StepChoice;
use crate::data::Binarization;
use crate::objective::KlWeighting;
use crate::optimizer::OptimizerConfig;
use crate::{Error, Result};

/// The bound that training maximises.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objective {
    /// The ELBO (one sample for the reconstruction, exact KL), with the KL weighted as `kl` says.
    #[default]
    Elbo,
    /// The importance-weighted bound with `samples` draws per example (Burda et al. 2016).
    Iwae {
        /// Number of importance samples k.
        samples: usize,
    },
    /// beta-TCVAE (Chen et al. 2018): reconstruction + MI + `tc_beta` * total correlation + dimension-wise KL,
    /// estimated by minibatch-weighted sampling (see [`crate::objective::tcvae`]).
    Tcvae {
        /// The weight beta of the total correlation (6 in the paper's dSprites runs; 1 gives the ELBO in
        /// expectation).
        tc_beta: f64,
    },
}

/// Settings of a training run. Saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimisation step.
    pub batch_size: usize,
    /// The optimiser's learning rate.
    pub learning_rate: f64,
    /// Adam or SGD with momentum.
    pub optimizer: OptimizerConfig,
    /// The bound that is maximised.
    #[serde(default)]
    pub objective: Objective,
    /// How the KL enters the ELBO loss: loss = reconstruction + beta * KL by default (beta 1 is the ELBO).
    #[serde(default)]
    pub kl: KlWeighting,
    /// Seeds the initial weights, the shuffling, the noise eps and dynamic binarization.
    pub seed: u64,
    /// Binarization of the inputs.
    pub binarization: Binarization,
    /// Batch size for evaluation passes (no gradients, so it can be larger).
    pub eval_batch_size: usize,
    /// Stop after this many optimisation steps, whichever comes first with `epochs`; the last epoch is then
    /// partial, evaluated and saved like a whole one.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Which training step computes the gradients: the fused CPU step where it covers the run, or candle's graph.
    #[serde(default)]
    pub step: StepChoice,
    /// A checkpoint every this many steps or minutes, besides the one at the end of each epoch (which is always
    /// written). Checkpoints change no number of the run.
    #[serde(default)]
    pub checkpoint_every: Option<CheckpointEvery>,
}

impl Default for TrainConfig {
    /// The reference setup: Adam 1e-3, batch 128, 10 epochs, beta 1, seed 1, grey inputs.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            learning_rate: 1e-3,
            optimizer: OptimizerConfig::default(),
            objective: Objective::Elbo,
            kl: KlWeighting::default(),
            seed: 1,
            binarization: Binarization::None,
            eval_batch_size: 1000,
            max_steps: None,
            step: StepChoice::Auto,
            checkpoint_every: None,
        }
    }
}

impl TrainConfig {
    /// True when the loss is a mean of per-example terms, so a batch's gradient is the sum of its shards' (each
    /// weighted by its share): the ELBO with a KL weight that does not look at the batch (no free bits, no
    /// capacity), and the IWAE bound. beta-TCVAE's estimator pairs up the examples of a batch, so it is not.
    pub fn loss_is_mean_of_examples(&self) -> bool {
        match self.objective {
            Objective::Elbo => self.kl.is_mean_of_examples(),
            Objective::Iwae { .. } => true,
            Objective::Tcvae { .. } => false,
        }
    }

    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid_setting("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(Error::invalid_setting("batch size", "must be at least 1"));
        }
        crate::optimizer::validate(&self.optimizer, self.learning_rate)?;
        self.kl.validate()?;
        if let Objective::Iwae { samples } = self.objective {
            if samples == 0 {
                return Err(Error::invalid_setting("iw-samples", "the IWAE objective needs at least 1 sample"));
            }
            if !self.kl.is_plain_elbo() {
                return Err(Error::invalid_setting(
                    "objective",
                    "the IWAE objective takes no beta, warm-up, free bits or capacity",
                ));
            }
        }
        if let Some(every) = self.checkpoint_every {
            every.validate()?;
        }
        if self.max_steps == Some(0) {
            return Err(Error::invalid_setting("max-steps", "must be at least 1"));
        }
        if let Objective::Tcvae { tc_beta } = self.objective {
            self.validate_tcvae(tc_beta)?;
        }
        if let Binarization::Static { threshold } = self.binarization {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(Error::invalid_setting("threshold", format!("must be in [0, 1], got {threshold}")));
            }
        }
        Ok(())
    }

    fn validate_tcvae(&self, tc_beta: f64) -> Result<()> {
        if !(tc_beta.is_finite() && tc_beta >= 0.0) {
            return Err(Error::invalid_setting("tc-beta", format!("must be a finite number >= 0, got {tc_beta}")));
        }
        if self.batch_size < 2 {
            return Err(Error::invalid_setting("batch size", "beta-TCVAE estimates q(z) from the batch: use >= 2"));
        }
        if !self.kl.is_plain_elbo() {
            let problem = "the beta-TCVAE objective weights the total correlation with --tc-beta; it takes no beta, \
                           warm-up, free bits or capacity";
            return Err(Error::invalid_setting("objective", problem));
        }
        Ok(())
    }
}
