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

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::fp8::Fp8Weight;

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

/// A streamed parameter on the device: float weights, or the `u8` codes of an FP8 weight.
#[derive(Debug, Clone)]
pub enum StreamedTensor<B: Backend> {
    /// A float tensor, flat.
    Float(Tensor<B, 1>),
    /// An integer (`u8`) tensor, flat.
    Int(Tensor<B, 1, Int>),
}

impl<B: Backend> StreamedTensor<B> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            Self::Float(t) => t.dims()[0],
            Self::Int(t) => t.dims()[0],
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key under which a streamed FP8 weight's scales follow its codes.
fn scales_key(key: &str) -> String {
    format!("{key}:fp8_scales")
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

    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        let host = self.inner.fp8_host(key, shape)?;
        self.block.tensors.push(HostTensor {
            key: key.to_string(),
            shape: shape.to_vec(),
            data: TensorData::new(host.codes, shape),
        });
        self.block.tensors.push(HostTensor {
            key: scales_key(key),
            shape: vec![shape[0]],
            data: TensorData::new(host.scales, [shape[0]]),
        });
        let device = self.inner.device();
        Ok(Fp8Weight {
            codes: Tensor::<B, 2, Int>::zeros([1, 1], (device, DType::U8)).expand(shape),
            scales: Tensor::<B, 1>::zeros([1], (device, DType::F32)).expand([shape[0]]),
            dtype,
        })
    }
}

/// A [`TensorSource`] that hands back a block's device tensors (flat, in capture order),
/// checking each request against what was captured.
pub struct ReplaySource<B: Backend> {
    keys: Vec<String>,
    tensors: std::vec::IntoIter<StreamedTensor<B>>,
    next: usize,
    device: B::Device,
}

impl<B: Backend> ReplaySource<B> {
    /// Replays `tensors` (flat, in the order of `block`).
    pub fn new(block: &HostBlock, tensors: Vec<StreamedTensor<B>>, device: &B::Device) -> Self {
        Self {
            keys: block.tensors.iter().map(|t| t.key.clone()).collect(),
            tensors: tensors.into_iter(),
            next: 0,
            device: device.clone(),
        }
    }

    /// The next captured tensor, which must be `key` with `numel` elements.
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<StreamedTensor<B>, WeightError> {
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
        if tensor.len() != shape.iter().product::<usize>() {
            return Err(WeightError::ShapeMismatch {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: vec![tensor.len()],
                path: "streamed block".into(),
            });
        }
        Ok(tensor)
    }

    fn kind_error(key: &str, what: &str) -> WeightError {
        WeightError::UnsupportedDtype {
            key: key.to_string(),
            dtype: format!("{what} in the streamed block"),
            path: "streamed block".into(),
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
        match self.take(key, &shape)? {
            StreamedTensor::Float(t) => Ok(t.reshape(shape).cast(dtype)),
            StreamedTensor::Int(_) => Err(Self::kind_error(key, "FP8 codes")),
        }
    }

    fn device(&self) -> &B::Device {
        &self.device
    }

    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        let StreamedTensor::Int(codes) = self.take(key, &shape)? else {
            return Err(Self::kind_error(key, "a dense weight"));
        };
        let StreamedTensor::Float(scales) = self.take(&scales_key(key), &[shape[0]])? else {
            return Err(Self::kind_error(key, "FP8 codes for scales"));
        };
        Ok(Fp8Weight {
            codes: codes.reshape(shape),
            scales,
            dtype,
        })
    }
}

/// Captures a block into host memory by running `load` (the block's ordinary loader) against
/// a [`HostCapture`] of `src`, and stages it with `streamer`; returns its staged index.
pub fn stage_block<B: Backend, S: TensorSource<B>, T>(
    streamer: &mut dyn BlockStreamer<B>,
    src: &mut S,
    load: impl FnOnce(&mut HostCapture<'_, B, S>) -> Result<T, WeightError>,
) -> Result<usize, WeightError> {
    let mut capture = HostCapture::new(src);
    load(&mut capture)?;
    Ok(streamer.stage(capture.into_block()))
}

/// Rebuilds staged block `index` on `device`: runs `load` (the loader that captured it)
/// against a [`ReplaySource`] of its device copy. The one way every streamed block is
/// fetched, whatever its type.
pub fn fetch_block<B: Backend, T>(
    streamer: &dyn BlockStreamer<B>,
    device: &B::Device,
    index: usize,
    load: impl FnOnce(&mut ReplaySource<B>) -> Result<T, WeightError>,
) -> Result<T, WeightError> {
    let mut replay = ReplaySource::new(streamer.block(index), streamer.fetch(index), device);
    load(&mut replay)
}

/// Moves captured blocks between host and device. Blocks are staged once, then fetched by
/// index before each use; `prefetch` lets a backend start the copy early.
pub trait BlockStreamer<B: Backend>: Send + Sync {
    /// Takes ownership of a block's host weights; returns its index.
    fn stage(&mut self, block: HostBlock) -> usize;

    /// Starts copying block `index` to the device (a no-op where copies are synchronous).
    fn prefetch(&self, index: usize);

    /// The device tensors of block `index`, flat, in capture order (waits for its copy).
    fn fetch(&self, index: usize) -> Vec<StreamedTensor<B>>;

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

    fn fetch(&self, index: usize) -> Vec<StreamedTensor<B>> {
        self.blocks[index]
            .tensors
            .iter()
            .map(|t| {
                let numel: usize = t.shape.iter().product();
                let dtype = t.data.dtype;
                let data = TensorData::from_bytes_vec(t.data.bytes.to_vec(), [numel], dtype);
                if dtype == DType::U8 {
                    StreamedTensor::Int(Tensor::from_data(data, (&self.device, dtype)))
                } else {
                    StreamedTensor::Float(Tensor::from_data(data, (&self.device, dtype)))
                }
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
