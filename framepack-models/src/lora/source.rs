//! Merging LoRAs into the weights while they load.

use std::collections::HashSet;

use burn::tensor::{DType, Tensor};

use super::{LoraReport, LoraSet};
use crate::ops::FramePackBackend;
use crate::weights::{TensorSource, WeightError};

/// A [`TensorSource`] that merges a [`LoraSet`] into the weights of another source as the model
/// asks for them: `W' = W + Σ m_i · (up_i @ down_i) · alpha_i / rank_i`.
///
/// Each patched weight is read from the inner source in fp32, the product of the stacked
/// factors is added in fp32 on the source's device, and the sum is cast to the dtype the model
/// asked for. Nothing else is kept: the peak extra memory is one fp32 weight, its delta and the
/// factors of that module (the LoRA file itself stays memory-mapped), never a second copy of
/// the model. Unpatched keys pass straight through.
///
/// Sources compose by wrapping, and the order of wrappers is the order of operations: a
/// quantising source (FP8) wrapped *around* this one sees merged weights, which is how
/// FramePack-eichi orders them (merge, then quantise; `lora_utils.py` hands its merge hook to
/// `optimize_state_dict_with_fp8`).
pub struct LoraSource<'a, S> {
    inner: S,
    set: &'a LoraSet,
    /// Patched modules the model asked for.
    present: HashSet<String>,
    /// Those actually changed (multiplier not 0).
    applied: HashSet<String>,
}

impl<'a, S> LoraSource<'a, S> {
    /// Wraps `inner`, merging `set` into it.
    pub fn new(inner: S, set: &'a LoraSet) -> Self {
        Self {
            inner,
            set,
            present: HashSet::new(),
            applied: HashSet::new(),
        }
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Ends the load: gives back the inner source (e.g. to check with
    /// [`SafetensorsSource::finish`] that every checkpoint tensor was used) and the report of
    /// what was merged and what matched nothing. A non-empty `unmatched` list is also printed
    /// as a warning on stderr.
    pub fn finish(self) -> (S, LoraReport) {
        let report = self.set.report(&self.present, &self.applied);
        report.warn();
        (self.inner, report)
    }
}

impl<B: FramePackBackend, S: TensorSource<B>> TensorSource<B> for LoraSource<'_, S> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let module = match key.strip_suffix(".weight") {
            Some(module) if D >= 2 && self.set.patches(module) => module,
            _ => return self.inner.tensor(key, shape, dtype),
        };
        self.present.insert(module.to_string());
        let device = self.inner.device().clone();
        let Some(factors) = self.set.factors::<B>(module, &shape, &device)? else {
            return self.inner.tensor(key, shape, dtype);
        };
        let weight = self.inner.tensor(key, shape, DType::F32)?;
        // up @ down as `dense(up, downᵀ)`: the backend's GEMM (cuBLASLt on CUDA, where burn's
        // own fp32 matmul would autotune and compile kernels for every new shape).
        let delta = B::dense(factors.up, factors.down.transpose(), None);
        let delta: Tensor<B, D> = delta.reshape(shape);
        self.applied.insert(module.to_string());
        Ok((weight + delta).cast(dtype))
    }

    fn device(&self) -> &B::Device {
        self.inner.device()
    }
}
