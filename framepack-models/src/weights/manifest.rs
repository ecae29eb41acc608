//! Listing the parameters a model expects, without allocating them.

use burn::tensor::{backend::Backend, DType, Tensor};

use super::{TensorSource, WeightError};

/// One expected parameter: its checkpoint key and shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestEntry {
    /// The checkpoint key.
    pub key: String,
    /// The expected shape.
    pub shape: Vec<usize>,
}

/// A [`TensorSource`] that records every request and hands back a placeholder.
///
/// The placeholder is one zero broadcast to the requested shape (a zero-stride view on
/// backends that support it), so building a full-size model against the recorder lists all
/// keys and shapes it would load (the 1,274 tensors of the FramePack transformer) without
/// allocating the weights. The model it builds is only good for being dropped.
pub struct ManifestRecorder<B: Backend> {
    device: B::Device,
    entries: Vec<ManifestEntry>,
}

impl<B: Backend> ManifestRecorder<B> {
    /// A recorder whose placeholders live on `device`.
    pub fn new(device: &B::Device) -> Self {
        Self {
            device: device.clone(),
            entries: Vec::new(),
        }
    }

    /// The recorded entries, sorted by key.
    pub fn into_entries(mut self) -> Vec<ManifestEntry> {
        self.entries.sort();
        self.entries
    }
}

impl<B: Backend> TensorSource<B> for ManifestRecorder<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        self.entries.push(ManifestEntry {
            key: key.to_string(),
            shape: shape.to_vec(),
        });
        Ok(Tensor::<B, D>::zeros([1; D], (&self.device, dtype)).expand(shape))
    }

    fn device(&self) -> &B::Device {
        &self.device
    }
}
