//! One loading protocol for the five networks: a [`LoadOptions`] value for every choice, and
//! two constructors per network.
//!
//! | network | `load(src, config, &options)` | `from_folder(path, device, &options)` |
//! |---|---|---|
//! | [`FramePackTransformer`](crate::transformer::FramePackTransformer) | every option | `transformer/` |
//! | [`LlamaTextEncoder`](crate::text::LlamaTextEncoder) | dtype, residency | `text_encoder/` |
//! | [`ClipTextEncoder`](crate::text::ClipTextEncoder) | dtype | `text_encoder_2/` |
//! | [`SiglipVisionEncoder`](crate::vision::SiglipVisionEncoder) | dtype | `image_encoder/` |
//! | [`HunyuanVideoVae`](crate::vae::HunyuanVideoVae) | dtype | `vae/` |
//!
//! `load` builds the network from any [`TensorSource`] (a checkpoint, random weights, a
//! manifest recorder; `&mut source` works too, to keep using the source after); `from_folder`
//! reads a checkpoint folder as published (`config.json` and the safetensors) and checks that
//! every stored tensor was used. An option a network cannot honour is an error
//! ([`ModelError::UnsupportedOption`]), never silently ignored.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::DType;
use serde::de::DeserializeOwned;

use crate::error::ModelError;
use crate::lora::LoraSet;
use crate::nn::WeightFormat;
use crate::weights::{Rerooted, SafetensorsSource, WeightError};

/// Where the weights of a network's repeated layers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residency {
    /// On the device: the fastest.
    #[default]
    Resident,
    /// Off the device, each layer brought to the device just before it runs and dropped
    /// after (the low-VRAM mode). The transformer keeps its 60 blocks in host memory (two
    /// blocks on the device at a time, about 1.4 GB in bf16; on CUDA the copy of the next
    /// block overlaps the compute of the current one). LLaMA keeps only its token embedding on
    /// the device and reads each decoder layer from its source during each call (one layer,
    /// 436 MB in fp16, on the device at a time; the source must be one that can be read
    /// again: a checkpoint or random weights, see
    /// [`TensorSource::shared`](crate::weights::TensorSource::shared)).
    Streamed,
}

/// Everything a network's `load` / `from_folder` can be told.
///
/// ```
/// use burn::tensor::DType;
/// use framepack_models::load::{LoadOptions, Residency};
/// use framepack_models::lora::LoraSet;
/// use framepack_models::nn::WeightFormat;
/// let options = LoadOptions::new(DType::BF16)
///     .residency(Residency::Streamed)
///     .block_weights(WeightFormat::Fp8)
///     .loras(LoraSet::new());
/// assert_eq!(options.dtype, DType::BF16);
/// ```
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The compute dtype (the transformer's `proj_out` always computes in fp32, as the
    /// reference).
    pub dtype: DType,
    /// Where the repeated layers live: the transformer's blocks and LLaMA's decoder layers
    /// can stream; the other networks are always resident.
    pub residency: Residency,
    /// The format of the transformer blocks' linear weights (dense or FP8); the other
    /// networks take dense weights only.
    pub block_weights: WeightFormat,
    /// LoRAs merged into the transformer's weights as they load (`W + m · up·down ·
    /// alpha/rank`, then any FP8 rounding, as FramePack-eichi orders them). Empty: none. The
    /// other networks take none.
    pub loras: LoraSet,
}

impl LoadOptions {
    /// Resident dense weights in `dtype`, no LoRA: what every network supports.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            residency: Residency::Resident,
            block_weights: WeightFormat::Dense,
            loras: LoraSet::new(),
        }
    }

    /// Where the repeated layers live.
    pub fn residency(mut self, residency: Residency) -> Self {
        self.residency = residency;
        self
    }

    /// The transformer blocks' weight format.
    pub fn block_weights(mut self, format: WeightFormat) -> Self {
        self.block_weights = format;
        self
    }

    /// LoRAs to merge into the transformer while loading.
    pub fn loras(mut self, loras: LoraSet) -> Self {
        self.loras = loras;
        self
    }

    /// Fails with [`ModelError::UnsupportedOption`] on the first option `network` cannot
    /// honour: streamed residency unless it `streams`, FP8 block weights, LoRAs.
    pub(crate) fn check(&self, network: &'static str, streams: bool) -> Result<(), ModelError> {
        let unsupported = |option: String| Err(ModelError::UnsupportedOption { network, option });
        if self.residency == Residency::Streamed && !streams {
            return unsupported(
                "`residency: Streamed` (only the transformer's blocks and LLaMA's layers stream)"
                    .into(),
            );
        }
        if self.block_weights != WeightFormat::Dense {
            return unsupported(format!(
                "`block_weights: {:?}` (only the transformer's blocks take other formats)",
                self.block_weights
            ));
        }
        if !self.loras.is_empty() {
            return unsupported(format!(
                "{} LoRA(s) (LoRAs merge into the transformer only)",
                self.loras.iter().count()
            ));
        }
        Ok(())
    }
}

/// Reads a network's `config.json` at `path`: the JSON object, or the object under `nested`
/// when it has one (a full `CLIPConfig` holds the text tower's under `text_config`),
/// deserialized, then `check`ed (adjusted and validated). Every failure is a
/// [`WeightError::BadConfig`] naming the file.
pub(crate) fn read_config<C: DeserializeOwned>(
    path: &Path,
    nested: Option<&str>,
    check: impl FnOnce(&mut C) -> Result<(), String>,
) -> Result<C, WeightError> {
    let text = std::fs::read_to_string(path).map_err(|e| WeightError::io(path, e))?;
    let bad = |reason: String| WeightError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    let mut config: C = match nested {
        None => serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?,
        Some(nested) => {
            let mut json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if let Some(inner) = json.get_mut(nested) {
                json = inner.take();
            }
            serde_json::from_value(json).map_err(|e| bad(e.to_string()))?
        }
    };
    check(&mut config).map_err(bad)?;
    Ok(config)
}

/// Where a network's published keys sit, for checkpoints saved from another root: the root
/// (`text_model.`) and a key under it that every checkpoint stores, to tell which root a
/// checkpoint uses ([`Rerooted::detect`]).
pub type KeyRoot = (&'static str, &'static str);

/// `from_folder` of every network: reads the configuration with `config` (given the folder,
/// or a checkpoint file in it), opens the safetensors, builds the network with `load` (from the
/// files, read from under the root they store the published keys under when `root` is given)
/// and checks that every stored tensor was used, except those `unused` accepts.
pub(crate) fn load_folder<B: Backend, C, N>(
    path: &Path,
    device: &B::Device,
    config: impl FnOnce(&Path) -> Result<C, WeightError>,
    root: Option<KeyRoot>,
    load: impl FnOnce(Rerooted<&mut SafetensorsSource<B>>, C) -> Result<N, ModelError>,
    unused: impl Fn(&str) -> bool,
) -> Result<N, ModelError> {
    let config = config(path)?;
    let mut src = SafetensorsSource::open(path, device)?;
    let files = src.files_shared();
    let src_for_load = match root {
        Some(root) => Rerooted::detect(&mut src, &files, root),
        None => Rerooted::new(&mut src, "", ""),
    };
    let network = load(src_for_load, config)?;
    src.finish(unused)?;
    Ok(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_a_network_cannot_honour_are_errors_naming_it_and_the_option() {
        let plain = LoadOptions::new(DType::F16);
        assert!(plain.check("VAE", false).is_ok());
        assert!(plain
            .clone()
            .residency(Residency::Streamed)
            .check("LLaMA", true)
            .is_ok());

        let message = |options: LoadOptions| match options.check("VAE", false) {
            Err(e @ ModelError::UnsupportedOption { network: "VAE", .. }) => e.to_string(),
            other => panic!("expected an unsupported option, got {other:?}"),
        };
        let streamed = message(plain.clone().residency(Residency::Streamed));
        assert!(
            streamed.contains("VAE") && streamed.contains("Streamed"),
            "{streamed}"
        );
        let fp8 = message(plain.clone().block_weights(WeightFormat::Fp8));
        assert!(fp8.contains("VAE") && fp8.contains("Fp8"), "{fp8}");
    }
}
