//! Streaming block weights on CUDA: pinned host memory, copies on a second stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::tensor::{backend::Backend, DType, Int, Tensor};
use cudarc::driver::{CudaEvent, PinnedHostSlice};

use super::engine::{engine, Engine};
use super::{raise, CudaBackend, CudaDevice, CudaError};
use crate::streaming::{BlockStreamer, HostBlock, HostTensor, StreamedTensor};

/// Byte alignment of each tensor inside a block's pinned buffer.
const ALIGN: usize = 256;

struct PinnedBlock {
    /// Keys, shapes and dtypes (the data itself lives in `buffer`).
    meta: HostBlock,
    buffer: PinnedHostSlice<u8>,
    /// Byte offset of each tensor in `buffer`.
    offsets: Vec<usize>,
}

struct InFlight {
    tensors: Vec<StreamedTensor<CudaBackend>>,
    done: CudaEvent,
}

/// A [`BlockStreamer`] keeping blocks in page-locked host memory and copying them to the GPU
/// on the engine's copy stream: the copy of block i+1 runs while block i computes.
pub struct CudaStreamer {
    device: CudaDevice,
    engine: Arc<Engine>,
    blocks: Vec<PinnedBlock>,
    in_flight: Mutex<HashMap<usize, InFlight>>,
}

impl CudaStreamer {
    /// A streamer for `device`, or `None` where the tuned CUDA path is unavailable.
    pub fn new(device: &CudaDevice) -> Option<Self> {
        Some(Self {
            device: device.clone(),
            engine: engine(device.index)?,
            blocks: Vec::new(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    fn start_copy(&self, index: usize) -> InFlight {
        let block = &self.blocks[index];
        // FP8 codes are `u8` integer tensors, everything else float.
        let tensors: Vec<StreamedTensor<CudaBackend>> = block
            .meta
            .tensors
            .iter()
            .map(|t| {
                let shape = [t.shape.iter().product::<usize>()];
                let options = (&self.device, t.data.dtype);
                if t.data.dtype == DType::U8 {
                    StreamedTensor::Int(Tensor::<CudaBackend, 1, Int>::empty(shape, options))
                } else {
                    StreamedTensor::Float(Tensor::empty(shape, options))
                }
            })
            .collect();
        let prims: Vec<_> = tensors
            .iter()
            .map(|t| match t {
                StreamedTensor::Float(t) => t.clone().into_primitive().tensor(),
                StreamedTensor::Int(t) => t.clone().into_primitive(),
            })
            .collect();
        let resources: Vec<_> = prims
            .iter()
            .map(|p| {
                p.client.get_resource(p.handle.clone()).unwrap_or_else(|e| {
                    raise(CudaError::Memory {
                        what: "a streamed weight",
                        reason: format!("{e:?}"),
                    })
                })
            })
            .collect();
        // The allocations come from burn's stream: make them valid before our copies.
        if let Err(e) = CudaBackend::sync(&self.device) {
            raise(CudaError::Sync {
                stream: "burn's",
                reason: format!("{e:?}"),
            });
        }
        // The raw copies below use the calling thread's current context.
        if let Err(e) = self.engine.bind() {
            raise(e);
        }
        let stream = &self.engine.copy_stream;
        let host = block
            .buffer
            .as_slice()
            .unwrap_or_else(|e| raise(CudaError::Pinned(format!("{e:?}"))));
        for ((resource, t), &offset) in resources
            .iter()
            .zip(&block.meta.tensors)
            .zip(&block.offsets)
        {
            let len = t.data.dtype.size() * t.shape.iter().product::<usize>();
            // SAFETY: the destination is a live allocation of exactly `len` bytes (held by
            // `tensors`), the source a pinned buffer that outlives the copy (we wait on `done`
            // before the block can be dropped or restaged).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    resource.resource().ptr,
                    &host[offset..offset + len],
                    stream.cu_stream(),
                )
            }
            .unwrap_or_else(|e| raise(CudaError::Launch(format!("weight copy: {e:?}"))));
        }
        let done = stream
            .record_event(None)
            .unwrap_or_else(|e| raise(CudaError::Launch(format!("copy event: {e:?}"))));
        drop(resources);
        InFlight { tensors, done }
    }
}

impl BlockStreamer<CudaBackend> for CudaStreamer {
    fn stage(&mut self, block: HostBlock) -> usize {
        let mut offsets = Vec::with_capacity(block.tensors.len());
        let mut total = 0usize;
        for t in &block.tensors {
            offsets.push(total);
            total += t.data.bytes.len().div_ceil(ALIGN) * ALIGN;
        }
        // SAFETY: every byte that is later read is written just below.
        let mut buffer = unsafe { self.engine.ctx.alloc_pinned::<u8>(total.max(1)) }
            .unwrap_or_else(|e| {
                raise(CudaError::Pinned(format!(
                    "cannot pin {total} bytes: {e:?}"
                )))
            });
        {
            let dst = buffer
                .as_mut_slice()
                .unwrap_or_else(|e| raise(CudaError::Pinned(format!("{e:?}"))));
            for (t, &offset) in block.tensors.iter().zip(&offsets) {
                dst[offset..offset + t.data.bytes.len()].copy_from_slice(&t.data.bytes);
            }
        }
        // Keep keys, shapes and dtypes only: the values now live in the pinned buffer.
        let meta = HostBlock {
            tensors: block
                .tensors
                .into_iter()
                .map(|t| HostTensor {
                    key: t.key,
                    shape: t.shape,
                    data: burn::tensor::TensorData::from_bytes_vec(Vec::new(), [0], t.data.dtype),
                })
                .collect(),
        };
        self.blocks.push(PinnedBlock {
            meta,
            buffer,
            offsets,
        });
        self.blocks.len() - 1
    }

    fn prefetch(&self, index: usize) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight
            .entry(index)
            .or_insert_with(|| self.start_copy(index));
    }

    fn fetch(&self, index: usize) -> Vec<StreamedTensor<CudaBackend>> {
        let pending = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index);
        let copy = pending.unwrap_or_else(|| self.start_copy(index));
        copy.done
            .synchronize()
            .unwrap_or_else(|e| raise(CudaError::Launch(format!("weight copy: {e:?}"))));
        copy.tensors
    }

    fn block(&self, index: usize) -> &HostBlock {
        &self.blocks[index].meta
    }

    fn host_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.buffer.len()).sum()
    }
}
