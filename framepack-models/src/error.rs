//! The crate's error type.

use crate::lora::LoraError;
use crate::weights::WeightError;

/// Errors of `framepack-models`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Loading weights failed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// A LoRA file could not be read or applied.
    #[error(transparent)]
    Lora(Box<LoraError>),
    /// A forward call got inputs that do not fit the model or each other.
    #[error("invalid input `{argument}`: {reason}")]
    Input {
        /// The argument at fault.
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A load option the network cannot honour ([`crate::load::LoadOptions`]).
    #[error("the {network} cannot load with {option}")]
    UnsupportedOption {
        /// The network being loaded.
        network: &'static str,
        /// The option, and which networks take it.
        option: String,
    },
}

impl From<LoraError> for ModelError {
    fn from(e: LoraError) -> Self {
        Self::Lora(Box::new(e))
    }
}

impl ModelError {
    pub(crate) fn input(argument: &'static str, reason: impl Into<String>) -> Self {
        Self::Input {
            argument,
            reason: reason.into(),
        }
    }
}

/// `Ok` when `ok`, else the [`ModelError::Input`] error of `argument` with `reason`: the input
/// checks of the networks' forward calls.
pub(crate) fn check(
    ok: bool,
    argument: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ModelError> {
    if ok {
        Ok(())
    } else {
        Err(ModelError::input(argument, reason()))
    }
}
