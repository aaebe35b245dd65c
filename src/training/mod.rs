//! Training: the settings, the optimisers, the loop that minimises reconstruction + beta * KL, and that loop's step
//! worked out by hand for MLP VAEs with a Bernoulli decoder on the CPU.

pub mod config;
pub mod kernels;
mod mlp_step;
pub mod optimizer;
pub mod trainer;

pub use config::{Objective, TrainConfig};
pub use optimizer::{Optimizer, OptimizerConfig, UpdatePath};
pub use trainer::{step_plan, train, EpochRecord, StepPlan, StepRecord, TrainOutcome, TrainingObserver};
