//! Training: the settings, the optimisers, and the loop that minimises reconstruction + beta * KL.

pub mod config;
pub mod kernels;
mod mlp_step;
pub mod optimizer;
pub mod trainer;

pub use config::{Objective, TrainConfig};
pub use optimizer::{Optimizer, OptimizerConfig, UpdatePath};
pub use trainer::{train, EpochRecord, StepRecord, TrainOutcome, TrainingObserver};
