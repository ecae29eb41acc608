//! Failures inside backend operations, as typed errors.
//!
//! burn's tensor operations cannot return errors: a kernel that fails (ours or burn's own)
//! unwinds the calling thread. [`catch`] turns that unwinding back into a [`BackendError`] at
//! the boundary of a job, so that a server or GUI thread sees a failed job with a message
//! instead of a dead thread. The tuned CUDA path raises its failures with [`raise`], which
//! keeps the typed error for [`catch`]; anything else (burn's panics) arrives as its message.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A backend operation failed while a job ran.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A tuned CUDA operation failed (a kernel, cuBLASLt, a copy, the context).
    #[cfg(feature = "cuda")]
    #[error("CUDA: {0}")]
    Cuda(#[from] crate::cuda::CudaError),
    /// The backend panicked (burn's own kernels, an allocation that failed, ...): its message.
    #[error("the backend failed: {0}")]
    Panicked(String),
}

thread_local! {
    /// The typed error of the unwinding in progress on this thread, set by [`raise`].
    static RAISED: RefCell<Option<BackendError>> = const { RefCell::new(None) };
}

/// Unwinds the calling thread with `error`; [`catch`] on this thread returns it as is.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn raise(error: BackendError) -> ! {
    let message = error.to_string();
    RAISED.with(|r| *r.borrow_mut() = Some(error));
    panic!("framepack {message}");
}

/// Runs `work`; a failure inside a backend operation comes back as `Err` instead of unwinding
/// further. The state `work` touched may be partly updated: callers use this at the boundary
/// of a job, whose inputs they do not reuse.
pub fn catch<R>(work: impl FnOnce() -> R) -> Result<R, BackendError> {
    RAISED.with(|r| r.borrow_mut().take());
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        if let Some(error) = RAISED.with(|r| r.borrow_mut().take()) {
            return error;
        }
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        BackendError::Panicked(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_errors_come_back_typed_and_panics_as_their_message() {
        let raised = catch(|| -> u32 { raise(BackendError::Panicked("kernel x".into())) });
        assert!(matches!(raised, Err(BackendError::Panicked(m)) if m == "kernel x"));
        let panicked = catch(|| -> u32 { panic!("out of memory: {}", 3) });
        assert!(matches!(panicked, Err(BackendError::Panicked(m)) if m == "out of memory: 3"));
        assert_eq!(catch(|| 7).unwrap(), 7);
        // A raised error is not left behind for the next, unrelated panic.
        let next = catch(|| -> u32 { panic!("later") });
        assert!(matches!(next, Err(BackendError::Panicked(m)) if m == "later"));
    }
}
