//! The facade's one error type: every failure a user can cause or meet, each naming the file,
//! argument or device at fault, so that its message alone (one line) says what to fix.

use std::path::PathBuf;

/// Everything that can go wrong in [`Pipeline`](crate::Pipeline), [`Request`](crate::Request)
/// and the output writers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input image does not exist.
    #[error("image `{path}` does not exist")]
    ImageNotFound {
        /// The path given.
        path: PathBuf,
    },
    /// An input image exists but cannot be read (permissions, a folder, an I/O error).
    #[error("cannot read image `{path}`: {source}")]
    ImageUnreadable {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An input image is not in a supported format, or is corrupt.
    #[error("image `{path}` is not a supported image ({reason}); use PNG, JPEG or WebP")]
    ImageFormat {
        /// The path given.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// An image is unusable for another reason (wrong buffer size, changed since a run, ...).
    #[error("{image}: {reason}")]
    InvalidImage {
        /// Which image (`the start image`, `image path/to.png`, ...).
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request is not a valid generation: length, window, padding, end-frame strength,
    /// option outside its mode, keyframe past the last section, images of different buckets,
    /// ... (the message names the argument and value).
    #[error("{0}")]
    Plan(#[from] framepack_core::Error),
    /// The server's job queue could not be read or written.
    #[error("job queue `{path}`: {reason}")]
    Queue {
        /// The queue's database file.
        path: PathBuf,
        /// What SQLite reported.
        reason: String,
    },
    /// The server could not start or stopped (address in use, ...).
    #[error("server: {0}")]
    Serve(String),
    /// An argument is out of range.
    #[error("invalid `{argument}`: {reason}")]
    InvalidArgument {
        /// The argument at fault, as the builder or CLI names it.
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A prompt has more tokens than the text encoder reads, and truncation was not allowed.
    #[error(
        "{which} is too long: {tokens} text-encoder tokens, at most {max} are read; shorten it \
         by {excess} token(s), or allow truncation (`--allow-prompt-truncation`) to keep the \
         first {max} as FramePack does"
    )]
    PromptTooLong {
        /// `the prompt`, `the negative prompt` or `the prompt of section N`.
        which: String,
        /// Its length in LLaMA tokens (with the closing `<|eot_id|>`).
        tokens: usize,
        /// The limit (256).
        max: usize,
        /// `tokens - max`.
        excess: usize,
    },
    /// A network's compute dtype is one the device cannot compute in (bf16 on wgpu).
    #[error(
        "the {network} cannot run in {dtype} on {device}: the device does not support it; \
         choose another dtype (`--dtype f32` always works)"
    )]
    UnsupportedDtype {
        /// `transformer`, `vae`, `text` or `image`.
        network: &'static str,
        /// The dtype asked for.
        dtype: String,
        /// The backend and device.
        device: String,
    },

    /// The requested device or backend is not available.
    #[error("device `{device}` is not available: {reason}")]
    DeviceUnavailable {
        /// The device as requested (`cuda`, `cuda:1`, `wgpu`).
        device: String,
        /// Why.
        reason: String,
    },
    /// Loading or running a network failed (missing checkpoint, bad file, shape mismatch, ...).
    #[error(transparent)]
    Model(#[from] framepack_models::ModelError),
    /// The sampler failed.
    #[error(transparent)]
    Sampling(#[from] framepack_sampling::SamplingError),
    /// A backend operation failed while models loaded or a job ran (a CUDA kernel, cuBLASLt,
    /// an allocation, burn's own kernels). The job is abandoned; the pipeline stays usable if
    /// the device is.
    #[error(transparent)]
    Backend(#[from] framepack_models::BackendError),
    /// Tensor data could not be read back from the device.
    #[error("reading `{what}` back from the device: {reason}")]
    TensorData {
        /// The tensor.
        what: &'static str,
        /// The backend's message.
        reason: String,
    },
    /// Writing an output failed. Nothing is left at `path` (outputs are written to a temporary
    /// file and renamed into place).
    #[error("cannot write `{path}`: {reason}")]
    Write {
        /// The output that could not be written.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A run record (JSON sidecar) cannot be read.
    #[error("`{path}` is not a usable framepack-rs run record: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The job was cancelled (a [`CancelToken`](crate::CancelToken), Ctrl-C). Nothing was
    /// written.
    #[error("cancelled in section {section} after {steps_done} step(s); nothing was written")]
    Cancelled {
        /// The section (sampling order) that was interrupted.
        section: u32,
        /// Its steps that had run.
        steps_done: usize,
    },
}

impl Error {
    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Write {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<framepack_models::weights::WeightError> for Error {
    fn from(e: framepack_models::weights::WeightError) -> Self {
        Self::Model(e.into())
    }
}
