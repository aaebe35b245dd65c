//! The library's error type: every failure names what was being read or done, and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong inside the `elbo` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
    /// A file was read but its content is not what was expected.
    #[error("{path}: {field}: {problem}")]
    BadInput {
        /// The file involved.
        path: PathBuf,
        /// The part of the file (header field, row, value) that is wrong.
        field: String,
        /// What was found and what was expected.
        problem: String,
    },
    /// A setting (command-line flag, config field) has a value that cannot work.
    #[error("invalid setting `{name}`: {problem}")]
    InvalidSetting {
        /// The setting's name as the user wrote it.
        name: String,
        /// What is wrong and what would be accepted.
        problem: String,
    },
    /// Data does not fit the model it is given to.
    #[error("data does not fit the model: {0}")]
    ShapeMismatch(String),
    /// A loss term became NaN or infinite during training.
    #[error("non-finite {term} at step {step} (epoch {epoch}): {value}")]
    NonFinite {
        /// The global optimisation step (1-based) at which it happened.
        step: usize,
        /// The epoch (1-based).
        epoch: usize,
        /// Which term: "reconstruction", "KL" or "loss".
        term: String,
        /// The offending value.
        value: f64,
    },
    /// Training was interrupted by the user.
    #[error("interrupted")]
    Interrupted,
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A `BadInput` error for `path`, naming the `field` and the `problem`.
    pub fn bad_input(path: impl Into<PathBuf>, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::BadInput { path: path.into(), field: field.into(), problem: problem.into() }
    }

    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }

    /// An `InvalidSetting` error.
    pub fn invalid_setting(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidSetting { name: name.into(), problem: problem.into() }
    }
}
