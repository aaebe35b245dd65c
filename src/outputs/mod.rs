//! Outputs: the run directory, the metrics log and checkpoints, a model in diffusers' layout, and image grids (with a
//! tiny font for labels).

pub use crate::atomic::{read_json, write_atomic, write_json};

pub mod autoencoder_log;
pub mod checkpoint_file;
pub mod diffusers;
pub mod font;
pub mod grid;
pub mod metrics;
pub mod pictures;
pub mod run_dir;

pub use checkpoint_file::{load_checkpoint, save_checkpoint};
pub use metrics::RunLogger;
pub use run_dir::{EpochSummary, Existing, RunConfig, RunDir, RunFile, RunSummary, BOUND_NOTE};
