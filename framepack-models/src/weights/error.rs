//! Errors raised while finding, opening and reading checkpoint files.

use std::path::PathBuf;

/// Everything that can go wrong between a checkpoint on disk and a tensor on a device.
///
/// Each variant names the file, key or argument at fault so that the message alone is
/// enough to fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (bad header, bad offsets, truncated data).
    #[error("{path} is not a valid safetensors file ({reason}); the download may be incomplete or corrupt")]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What the parser found wrong.
        reason: String,
    },
    /// A `*.safetensors.index.json` could not be understood.
    #[error("bad shard index {path}: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder holds no safetensors file at all.
    #[error("no .safetensors file in {path}")]
    NoWeights {
        /// The folder that was searched.
        path: PathBuf,
    },
    /// The model needs a tensor the checkpoint does not have.
    #[error("missing tensor `{key}` in {location}")]
    MissingKey {
        /// The checkpoint key (original Hugging Face name).
        key: String,
        /// The file or folder that was searched.
        location: PathBuf,
    },
    /// The checkpoint holds tensors that no module of the model uses.
    #[error("{count} unexpected tensor(s) in {location}, e.g. {}", sample.join(", "))]
    UnexpectedKeys {
        /// Total number of unused keys.
        count: usize,
        /// The first few of them, sorted.
        sample: Vec<String>,
        /// The file or folder they came from.
        location: PathBuf,
    },
    /// A tensor exists but has the wrong shape (usually: the wrong model or config).
    #[error("tensor `{key}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
        /// The file holding the tensor.
        path: PathBuf,
    },
    /// A tensor is stored in a dtype we cannot convert (e.g. an integer tensor where weights are expected).
    #[error("tensor `{key}` in {path} has unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    UnsupportedDtype {
        /// The checkpoint key.
        key: String,
        /// The stored dtype, as safetensors names it.
        dtype: String,
        /// The file holding the tensor.
        path: PathBuf,
    },
    /// A model folder could not be found locally and downloading was not possible or not allowed.
    #[error("{what} not found: {hint}")]
    NotFound {
        /// What was looked for (repository, subfolder, file).
        what: String,
        /// How to provide it.
        hint: String,
    },
    /// A `config.json` could not be read or does not describe this model.
    #[error("bad config {path}: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A LoRA could not be merged into a weight (see [`crate::lora::LoraError`]).
    #[error(transparent)]
    Lora(Box<crate::lora::LoraError>),
}

impl From<crate::lora::LoraError> for WeightError {
    fn from(e: crate::lora::LoraError) -> Self {
        Self::Lora(Box::new(e))
    }
}

impl WeightError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
