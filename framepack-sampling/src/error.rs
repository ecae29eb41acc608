//! The crate's error type.

use std::path::PathBuf;

/// Errors of `framepack-sampling`. Each variant names the argument, input or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// An argument is out of range or inconsistent with another.
    #[error("invalid argument `{argument}`: {reason}")]
    InvalidArgument {
        /// The argument at fault.
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The plan asks for an input that was not given (a keyframe latent, the end frame, a
    /// section prompt, the negative prompt for real CFG, ...).
    #[error("missing input `{input}`: {reason}")]
    MissingInput {
        /// The input.
        input: String,
        /// Why it is needed.
        reason: String,
    },
    /// The model call failed.
    #[error("model call failed: {0}")]
    Model(#[from] framepack_models::ModelError),
    /// The section plan is invalid.
    #[error(transparent)]
    Plan(#[from] framepack_core::Error),
    /// Reading or writing a file failed.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A latent-history file is malformed.
    #[error("`{path}` is not a usable latent history: {reason}")]
    BadHistoryFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Tensor data could not be read back from the device.
    #[error("tensor data of `{what}`: {reason}")]
    TensorData {
        /// The tensor.
        what: &'static str,
        /// The backend's message.
        reason: String,
    },
}

impl SamplingError {
    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::MissingInput {
            input: input.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`SamplingError`].
pub type Result<T, E = SamplingError> = std::result::Result<T, E>;
