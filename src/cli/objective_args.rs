//! Command-line flags for the training objective and the remedies for posterior collapse.

use clap::{Args, ValueEnum};
use elbo::objective::{Capacity, KlSchedule, KlWeighting, Span};
use elbo::training::Objective;

/// Objective flags.
#[derive(Args, Debug, Clone)]
pub struct ObjectiveArgs {
    /// The objective: the ELBO, the importance-weighted bound with --train-iw-samples draws, or beta-TCVAE with
    /// --tc-beta.
    #[arg(long, value_enum, default_value_t = ObjectiveKind::Elbo)]
    objective: ObjectiveKind,
    /// IWAE objective: importance samples k per example.
    #[arg(long, default_value_t = 5)]
    train_iw_samples: usize,
    /// beta-TCVAE objective: the weight of the total correlation (Chen et al. use 6 on dSprites).
    #[arg(long, default_value_t = 6.0, allow_negative_numbers = true)]
    tc_beta: f64,
    /// Weight of the KL term (1 = the ELBO; > 1 = beta-VAE).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    beta: f64,
    /// KL warm-up: the weight rises linearly from 0 to beta over this many epochs.
    #[arg(long, conflicts_with_all = ["warmup_steps", "kl_cycles"])]
    warmup_epochs: Option<f64>,
    /// KL warm-up over this many steps.
    #[arg(long, conflicts_with = "kl_cycles")]
    warmup_steps: Option<usize>,
    /// Cyclical KL annealing: this many cycles over the whole run (at least 1).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    kl_cycles: Option<usize>,
    /// Cyclical KL annealing: fraction of each cycle spent rising.
    #[arg(long, default_value_t = 0.5)]
    cycle_ratio: f64,
    /// Free bits: each latent dimension's batch-mean KL counts at least this many nats.
    #[arg(long)]
    free_bits: Option<f64>,
    /// Capacity objective gamma * |KL - C|: the final capacity C_max in nats.
    #[arg(long)]
    capacity_max: Option<f64>,
    /// Capacity objective: epochs over which C rises to C_max (default: the whole run).
    #[arg(long)]
    capacity_epochs: Option<f64>,
    /// Capacity objective: gamma.
    #[arg(long, default_value_t = 100.0)]
    capacity_gamma: f64,
}

/// Objective choices.
#[derive(ValueEnum, Debug, Clone, Copy)]
enum ObjectiveKind {
    /// The evidence lower bound.
    Elbo,
    /// The importance-weighted bound (Burda et al.).
    Iwae,
    /// beta-TCVAE: the ELBO with the KL's total-correlation part weighted by --tc-beta (Chen et al.).
    Tcvae,
}

impl ObjectiveArgs {
    /// The weight of the KL term (--beta).
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The free bits per latent dimension (--free-bits).
    pub fn free_bits(&self) -> Option<f64> {
        self.free_bits
    }

    /// The bound to maximise.
    pub fn objective(&self) -> Objective {
        match self.objective {
            ObjectiveKind::Elbo => Objective::Elbo,
            ObjectiveKind::Iwae => Objective::Iwae { samples: self.train_iw_samples },
            ObjectiveKind::Tcvae => Objective::Tcvae { tc_beta: self.tc_beta },
        }
    }

    /// The KL weighting; epochs and cycles stay as given, the library turns them into steps.
    pub fn kl_weighting(&self) -> KlWeighting {
        let schedule = match (self.warmup_epochs, self.warmup_steps, self.kl_cycles) {
            (Some(epochs), _, _) => KlSchedule::Linear { over: Span::Epochs(epochs) },
            (_, Some(steps), _) => KlSchedule::Linear { over: Span::Steps(steps) },
            (_, _, Some(cycles)) => KlSchedule::Cyclical { period: Span::RunPart(cycles), ratio: self.cycle_ratio },
            _ => KlSchedule::Constant,
        };
        let capacity = self.capacity_max.map(|max_nats| Capacity {
            max_nats,
            over: self.capacity_epochs.map_or(Span::RunPart(1), Span::Epochs),
            gamma: self.capacity_gamma,
        });
        KlWeighting { beta: self.beta, schedule, free_bits: self.free_bits, capacity }
    }
}
