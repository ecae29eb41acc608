//! Streaming transformer blocks from host memory: the low-VRAM mode.
//!
//! In this mode the weights of the 60 transformer blocks stay in host memory and each block is
//! copied to the device just before it runs, while the previous block computes. Only two blocks
//! occupy the device at a time (about 1.4 GB in bf16 instead of 25 GB).
//!
//! The model code is unchanged: a block is built by its ordinary `load`, once against a
//! [`HostCapture`] (which keeps every parameter as host data, in request order, and hands back
//! placeholders), and again before every use against a [`ReplaySource`] (which hands back the
//! device copies in the same order). How host data gets to the device is the backend's
//! [`BlockStreamer`]: the portable one uploads synchronously; the CUDA one keeps the blocks in
//! pinned memory and copies them on a second stream, overlapped with compute.

use std::sync::Mutex;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::weights::{TensorSource, WeightError};

/// One parameter kept off the device.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Its checkpoint key.
    pub key: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, already in the compute dtype.
    pub data: TensorData,
}

/// A block's parameters on the host, in the order the block's `load` asks for them.
#[derive(Debug, Clone, Default)]
pub struct HostBlock {
    /// The parameters.
    pub tensors: Vec<HostTensor>,
}

impl HostBlock {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.bytes.len()).sum()
    }
}

/// A [`TensorSource`] that reads each parameter from `inner` as host data, records it, and
/// returns a zero-stride placeholder of the right shape (no device memory).
pub struct HostCapture<'a, B: Backend, S: TensorSource<B>> {
    inner: &'a mut S,
    block: HostBlock,
    _backend: std::marker::PhantomData<B>,
}

impl<'a, B: Backend, S: TensorSource<B>> HostCapture<'a, B, S> {
    /// Captures from `inner`.
    pub fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            block: HostBlock::default(),
            _backend: std::marker::PhantomData,
        }
    }

    /// The captured parameters.
    pub fn into_block(self) -> HostBlock {
        self.block
    }
}

impl<B: Backend, S: TensorSource<B>> TensorSource<B> for HostCapture<'_, B, S> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let data = self.inner.host_data(key, &shape, dtype)?;
        self.block.tensors.push(HostTensor {
            key: key.to_string(),
            shape: shape.to_vec(),
            data,
        });
        Ok(Tensor::<B, D>::zeros([1; D], (self.inner.device(), dtype)).expand(shape))
    }

    fn device(&self) -> &B::Device {
        self.inner.device()
    }
}

/// A [`TensorSource`] that hands back a block's device tensors (flat, in capture order),
/// checking each request against what was captured.
pub struct ReplaySource<B: Backend> {
    keys: Vec<String>,
    tensors: std::vec::IntoIter<Tensor<B, 1>>,
    next: usize,
    device: B::Device,
}

impl<B: Backend> ReplaySource<B> {
    /// Replays `tensors` (flat, in the order of `block`).
    pub fn new(block: &HostBlock, tensors: Vec<Tensor<B, 1>>, device: &B::Device) -> Self {
        Self {
            keys: block.tensors.iter().map(|t| t.key.clone()).collect(),
            tensors: tensors.into_iter(),
            next: 0,
            device: device.clone(),
        }
    }
}

impl<B: Backend> TensorSource<B> for ReplaySource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let expected = self.keys.get(self.next).cloned().unwrap_or_default();
        let tensor = self
            .tensors
            .next()
            .filter(|_| expected == key)
            .ok_or_else(|| WeightError::MissingKey {
                key: key.to_string(),
                location: format!("streamed block (expected `{expected}` next)").into(),
            })?;
        self.next += 1;
        let numel: usize = shape.iter().product();
        if tensor.dims()[0] != numel {
            return Err(WeightError::ShapeMismatch {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
                path: "streamed block".into(),
            });
        }
        Ok(tensor.reshape(shape).cast(dtype))
    }

    fn device(&self) -> &B::Device {
        &self.device
    }
}

/// Moves captured blocks between host and device. Blocks are staged once, then fetched by
/// index before each use; `prefetch` lets a backend start the copy early.
pub trait BlockStreamer<B: Backend>: Send + Sync {
    /// Takes ownership of a block's host weights; returns its index.
    fn stage(&mut self, block: HostBlock) -> usize;

    /// Starts copying block `index` to the device (a no-op where copies are synchronous).
    fn prefetch(&self, index: usize);

    /// The device tensors of block `index`, flat, in capture order (waits for its copy).
    fn fetch(&self, index: usize) -> Vec<Tensor<B, 1>>;

    /// The captured block `index` (keys and shapes).
    fn block(&self, index: usize) -> &HostBlock;

    /// Host bytes held.
    fn host_bytes(&self) -> usize;
}

/// The portable streamer: blocks in ordinary host memory, uploaded synchronously on use.
pub struct PortableStreamer<B: Backend> {
    blocks: Vec<HostBlock>,
    device: B::Device,
    // `prefetch` has nothing to do; the lock keeps the type `Sync` for any backend device.
    _lock: Mutex<()>,
}

impl<B: Backend> PortableStreamer<B> {
    /// A streamer uploading to `device`.
    pub fn new(device: &B::Device) -> Self {
        Self {
            blocks: Vec::new(),
            device: device.clone(),
            _lock: Mutex::new(()),
        }
    }
}

impl<B: Backend> BlockStreamer<B> for PortableStreamer<B>
where
    B::Device: Send + Sync,
{
    fn stage(&mut self, block: HostBlock) -> usize {
        self.blocks.push(block);
        self.blocks.len() - 1
    }

    fn prefetch(&self, _index: usize) {}

    fn fetch(&self, index: usize) -> Vec<Tensor<B, 1>> {
        self.blocks[index]
            .tensors
            .iter()
            .map(|t| {
                let numel: usize = t.shape.iter().product();
                let data = TensorData::from_bytes_vec(t.data.bytes.to_vec(), [numel], t.data.dtype);
                Tensor::from_data(data, (&self.device, t.data.dtype))
            })
            .collect()
    }

    fn block(&self, index: usize) -> &HostBlock {
        &self.blocks[index]
    }

    fn host_bytes(&self) -> usize {
        self.blocks.iter().map(HostBlock::bytes).sum()
    }
}
