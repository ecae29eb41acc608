//! LoRAs kept as low-rank adapters beside unchanged base weights.

use std::collections::HashSet;

use burn::tensor::{backend::Backend, DType, Tensor};

use super::{LoraError, LoraReport, LoraSet};
use crate::ops::FramePackBackend;
use crate::transformer::FramePackTransformer;

/// The low-rank update of one linear layer, resident on its device:
/// `y += (x · downᵀ) · upᵀ`, where `up` already carries `multiplier · alpha / rank`.
///
/// Several LoRAs on the same layer are stacked along the rank, so the update is always two
/// thin GEMMs however many LoRAs there are.
#[derive(Debug, Clone)]
pub struct LowRankAdapter<B: Backend> {
    /// `[rank, in]`.
    down: Tensor<B, 2>,
    /// `[out, rank]`, scaled.
    up: Tensor<B, 2>,
}

impl<B: FramePackBackend> LowRankAdapter<B> {
    /// `(x · downᵀ) · upᵀ` over the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = B::dense(x, self.down.clone(), None);
        B::dense(h, self.up.clone(), None)
    }

    /// The stacked rank (the sum of the ranks of the LoRAs on this layer).
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }
}

impl LoraSet {
    /// The adapter `set` gives a layer stored as `shape`, in `dtype` on `device`, or `None`.
    pub(crate) fn adapter<B: Backend>(
        &self,
        module: &str,
        shape: &[usize],
        dtype: DType,
        device: &B::Device,
    ) -> Result<Option<LowRankAdapter<B>>, LoraError> {
        Ok(self
            .factors::<B>(module, shape, device)?
            .map(|f| LowRankAdapter {
                down: f.down.cast(dtype),
                up: f.up.cast(dtype),
            }))
    }
}

impl<B: FramePackBackend> FramePackTransformer<B> {
    /// Keeps `loras` as low-rank adapters on the linear layers they patch, replacing any
    /// adapters set before; the base weights are not touched, so switching LoRA sets between
    /// jobs costs only the factors' upload. An empty set removes all adapters.
    ///
    /// The factors are stored in each layer's dtype (fp32 for `proj_out`). All adapters are
    /// built before any is set: on error the model keeps its previous adapters. Returns the
    /// report of what was attached and what matched no layer (also printed as a warning).
    pub fn set_lora_adapters(&mut self, loras: &LoraSet) -> Result<LoraReport, LoraError> {
        if self.residency() == crate::transformer::BlockResidency::Streamed {
            return Err(LoraError::StreamedBlocks);
        }
        let mut linears = self.lora_linears_mut();
        let mut adapters = Vec::with_capacity(linears.len());
        let (mut present, mut applied) = (HashSet::new(), HashSet::new());
        for linear in &linears {
            if loras.patches(linear.key()) {
                present.insert(linear.key().to_string());
            }
            let adapter = loras.adapter::<B>(
                linear.key(),
                linear.shape(),
                linear.dtype(),
                &linear.device(),
            )?;
            if adapter.is_some() {
                applied.insert(linear.key().to_string());
            }
            adapters.push(adapter);
        }
        for (linear, adapter) in linears.iter_mut().zip(adapters) {
            linear.set_adapter(adapter);
        }
        let report = loras.report(&present, &applied);
        report.warn();
        Ok(report)
    }

    /// Removes every adapter: the forward is the base model's again.
    pub fn clear_lora_adapters(&mut self) {
        for mut linear in self.lora_linears_mut() {
            linear.set_adapter(None);
        }
    }
}
