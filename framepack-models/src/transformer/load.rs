//! The transformer's two constructors ([`crate::load`]): from any source, and from the
//! published checkpoint folder.

use std::path::Path;

use super::model::FramePackTransformer;
use super::TransformerConfig;
use crate::error::ModelError;
use crate::load::{load_folder, LoadOptions};
use crate::lora::{LoraReport, LoraSource};
use crate::ops::FramePackBackend;
use crate::weights::{TensorSource, WeightError};

impl<B: FramePackBackend> FramePackTransformer<B> {
    /// Builds the model from `src` as `options` say: computing in `options.dtype` (`proj_out`
    /// is kept in fp32, as the reference's `high_quality_fp32_output_for_inference`), the 60
    /// blocks resident or streamed from host memory (`options.residency`), their linear
    /// weights dense or FP8 (`options.block_weights`: [`WeightFormat::Fp8`] halves the
    /// blocks' memory, e4m3 codes with per-row scales, [`crate::fp8`]; streamed, the host copy
    /// and every block's transfer are halved too), `options.loras` merged into the weights as
    /// they load.
    ///
    /// Returns the model, the source (to check with e.g.
    /// [`SafetensorsSource::finish`](crate::weights::SafetensorsSource::finish) that every
    /// tensor was used; or pass `&mut src`) and the report of the LoRA modules merged and the
    /// LoRA keys that matched nothing (also printed as a warning; empty without LoRAs).
    ///
    /// [`WeightFormat::Fp8`]: crate::nn::WeightFormat::Fp8
    pub fn load<S: TensorSource<B>>(
        mut src: S,
        config: TransformerConfig,
        options: &LoadOptions,
    ) -> Result<(Self, S, LoraReport), ModelError> {
        if options.loras.is_empty() {
            // Straight from `src`, with its own host and FP8 reads.
            let model = Self::build(&mut src, config, options)?;
            return Ok((model, src, LoraReport::default()));
        }
        let mut src = LoraSource::new(src, &options.loras);
        let model = Self::build(&mut src, config, options)?;
        let (inner, report) = src.finish();
        Ok((model, inner, report))
    }

    /// [`FramePackTransformer::load`] from a checkpoint folder as published (`config.json`
    /// plus one `.safetensors` or shards with their index), or a single `.safetensors` file
    /// with an optional `config.json` beside it, checking that every stored tensor was used.
    /// Streamed blocks are read from the mapped files straight into host memory. An FP8
    /// checkpoint (weights stored as `F8_E4M3`) loads with either block weight format: its
    /// codes are kept as they are for FP8 (without LoRAs), and expanded for dense.
    pub fn from_folder(
        path: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<(Self, LoraReport), ModelError> {
        load_folder(
            path.as_ref(),
            device,
            folder_config,
            None,
            |src, config| {
                let (model, _, report) = Self::load(src, config, options)?;
                Ok((model, report))
            },
            |_| false,
        )
    }
}

/// The `config.json` beside `path` (a folder or a file in it), or the published
/// configuration when there is none.
fn folder_config(path: &Path) -> Result<TransformerConfig, WeightError> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let config_path = dir.join("config.json");
    if config_path.is_file() {
        TransformerConfig::from_file(&config_path)
    } else {
        Ok(TransformerConfig::framepack())
    }
}
