//! Evaluation: figures of a trained model on held-out data, labelled for what they are (bounds, not likelihoods).

pub mod bounds;
pub mod compression;
pub mod curves;
pub mod diagnosis;
pub mod disentanglement;
pub mod elbo;
pub mod image_quality;
pub mod mutual_information;
pub mod posterior_stats;
pub mod sprite_codes;
pub mod statistics;

pub use bounds::{evaluate_bounds, BoundsConfig, BoundsReport, DEFAULT_MAX_ROWS};
pub use compression::{evaluate_compression, CompressionReport};
pub use curves::{CurveReading, Curves};
pub use diagnosis::{diagnose, Diagnosis, LatentUse, Verdict};
pub use elbo::{evaluate_negative_elbo, ElboEstimate};
pub use posterior_stats::DimensionStats;
pub use statistics::Figure;
