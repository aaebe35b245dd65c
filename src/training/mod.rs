//! Training: the settings, the optimisers, the training step (candle's graph, or elbo's fused CPU step), and the
//! loop that minimises reconstruction + weighted KL; and the training of latent diffusion's KL autoencoder.

pub mod autoencoder;
pub mod checkpoint;
pub mod config;
pub mod step;
pub mod trainer;

pub use crate::optimizer::{Optimizer, OptimizerConfig, OptimizerState, UpdatePath};
pub use checkpoint::{Checkpoint, CheckpointEvery, TrainingProgress};
pub use config::{Objective, TrainConfig};
pub use step::{step_plan, StepChoice, StepPath, StepPlan};
pub use trainer::{train, train_from, EpochRecord, StepRecord, TrainOutcome, TrainingObserver};
