//! The tuned CUDA path's failures, typed.

/// A failure of a tuned CUDA operation. It reaches callers as
/// [`BackendError::Cuda`](crate::BackendError::Cuda) through [`crate::failure::catch`] (the
/// pipeline's job boundary), since burn's operations cannot return errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// The engine's context could not be made current on the calling thread.
    #[error("binding the CUDA context of device {device} to this thread: {reason}")]
    Context {
        /// The CUDA device index.
        device: usize,
        /// The driver's error.
        reason: String,
    },
    /// A tensor's (or streamed weight's) device memory could not be resolved to an address.
    #[error("device memory of {what} not addressable: {reason}")]
    Memory {
        /// Which memory (`an operand`, `a streamed weight`, ...).
        what: &'static str,
        /// burn's error.
        reason: String,
    },
    /// Waiting for a stream failed (a kernel queued on it failed earlier).
    #[error("waiting for {stream} stream: {reason}")]
    Sync {
        /// `burn's` or `the tuned path's`.
        stream: &'static str,
        /// The driver's error.
        reason: String,
    },
    /// A kernel launch, a cuBLASLt call or a copy failed.
    #[error("{0}")]
    Launch(String),
    /// Host memory for streamed weights could not be pinned or read.
    #[error("pinned host memory: {0}")]
    Pinned(String),
}
