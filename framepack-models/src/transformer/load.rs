//! How a transformer is loaded: one value for every choice, instead of a constructor per
//! combination.

use std::path::Path;

use burn::tensor::DType;

use super::model::{BlockResidency, FramePackTransformer};
use super::TransformerConfig;
use crate::error::ModelError;
use crate::lora::{LoraReport, LoraSet, LoraSource};
use crate::nn::WeightFormat;
use crate::ops::FramePackBackend;
use crate::weights::{SafetensorsSource, TensorSource};

/// Everything [`FramePackTransformer::load_options`] can be told.
///
/// ```
/// use burn::tensor::DType;
/// use framepack_models::lora::LoraSet;
/// use framepack_models::nn::WeightFormat;
/// use framepack_models::transformer::{BlockResidency, LoadOptions};
/// let options = LoadOptions::new(DType::BF16)
///     .residency(BlockResidency::Streamed)
///     .block_weights(WeightFormat::Fp8)
///     .loras(LoraSet::new());
/// assert_eq!(options.dtype, DType::BF16);
/// ```
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The compute dtype (`proj_out` always computes in fp32, as the reference).
    pub dtype: DType,
    /// Where the 60 blocks live: on the device, or streamed from host memory.
    pub residency: BlockResidency,
    /// The format of the blocks' linear weights (dense, FP8, FP8 on tensor cores).
    pub block_weights: WeightFormat,
    /// LoRAs merged into the weights as they load (`W + m · up·down · alpha/rank`, then any
    /// FP8 rounding, as FramePack-eichi orders them). Empty: none.
    pub loras: LoraSet,
}

impl LoadOptions {
    /// Resident dense blocks in `dtype`, no LoRA.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            residency: BlockResidency::Resident,
            block_weights: WeightFormat::Dense,
            loras: LoraSet::new(),
        }
    }

    /// Where the blocks live.
    pub fn residency(mut self, residency: BlockResidency) -> Self {
        self.residency = residency;
        self
    }

    /// The blocks' weight format.
    pub fn block_weights(mut self, format: WeightFormat) -> Self {
        self.block_weights = format;
        self
    }

    /// LoRAs to merge while loading.
    pub fn loras(mut self, loras: LoraSet) -> Self {
        self.loras = loras;
        self
    }
}

impl<B: FramePackBackend> FramePackTransformer<B> {
    /// Builds the model from `src` as `options` say. Returns the model, the source (to check
    /// with e.g. [`SafetensorsSource::finish`] that every tensor was used) and the report of
    /// the LoRA modules merged and the LoRA keys that matched nothing (also printed as a
    /// warning).
    pub fn load_options<S: TensorSource<B>>(
        src: S,
        config: TransformerConfig,
        options: &LoadOptions,
    ) -> Result<(Self, S, LoraReport), ModelError> {
        let mut src = LoraSource::new(src, &options.loras);
        let model = Self::load_with(
            &mut src,
            config,
            options.dtype,
            options.residency,
            options.block_weights,
        )?;
        let (inner, report) = src.finish();
        Ok((model, inner, report))
    }

    /// [`FramePackTransformer::load_options`] from a checkpoint folder as published (or a
    /// single `.safetensors` file with an optional `config.json` beside it), checking that every
    /// stored tensor was used.
    pub fn from_folder_options(
        path: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(Self, LoraReport), ModelError> {
        let path = path.as_ref();
        let config = Self::folder_config(path)?;
        let src = SafetensorsSource::open(path, device)?;
        let (model, src, report) = Self::load_options(src, config, options)?;
        src.finish(|_| false)?;
        Ok((model, report))
    }
}
