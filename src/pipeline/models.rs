//! The model set: the five networks of one backend in memory, loaded once and shared by every
//! job. It decides residency (what lives on the device, what streams or loads on demand) when it
//! is built, and switches the transformer checkpoint (inverted / F1) or its LoRAs between jobs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{DType, Tensor, TensorData};
use framepack_core::Mode;
use framepack_models::failure::catch;
use framepack_models::lora::LoraSet;
use framepack_models::nn::WeightFormat;
use framepack_models::runtime::RuntimeOptions;
use framepack_models::text::{
    CachedPromptEncoder, PromptCache, PromptEmbeddings, PromptEncoder, PromptOverflow,
    TextEncoderFolders, TextEncoders,
};
use framepack_models::transformer::{BlockResidency, FramePackTransformer, LoadOptions};
use framepack_models::vae::{HunyuanVideoVae, VaeTiling};
use framepack_models::vision::{SiglipImageProcessor, SiglipVisionEncoder};
use framepack_models::FramePackBackend;
use framepack_sampling::PromptEmbedding;

use crate::error::{Error, Result};
use crate::hub::{Component, ModelLocations};
use crate::lora::{self, LoraChoice, LoraMode};
use crate::memory::{dtype_name, Dtypes, MemoryMode};
use crate::on_demand::{Loader, OnDemand, TextSlot};
use crate::request::Request;
use crate::tiny::{self, Scale};

/// Everything a [`PipelineBuilder`](super::PipelineBuilder) decides except the device.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) locations: ModelLocations,
    pub(crate) random: Option<(u64, Scale)>,
    /// `None`: [`Dtypes::for_device`] once the device is known.
    pub(crate) dtypes: Option<Dtypes>,
    pub(crate) memory: MemoryMode,
    pub(crate) block_weights: WeightFormat,
    pub(crate) mode: Mode,
    pub(crate) prompt_cache: Option<PathBuf>,
    pub(crate) lora_mode: LoraMode,
    pub(crate) loras: Vec<LoraChoice>,
    pub(crate) runtime: RuntimeOptions,
}

/// Which weights a pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Pretrained(ModelLocations),
    /// Random weights: tiny networks (the demo) or the published sizes (benchmarks).
    Random {
        seed: u64,
        scale: Scale,
    },
}

/// The two transformer checkpoints: inverted (also used for one-frame) and F1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Inverted,
    F1,
}

impl Family {
    pub(crate) fn of(mode: Mode) -> Self {
        match mode {
            Mode::F1 => Self::F1,
            Mode::Inverted | Mode::OneFrame => Self::Inverted,
        }
    }

    fn component(self) -> Component {
        match self {
            Self::Inverted => Component::Transformer,
            Self::F1 => Component::TransformerF1,
        }
    }
}

/// A checkpoint component and the revision it was loaded from.
type Revision = (Component, String);

/// What decides how the transformer loads, fixed when the model set is built.
#[derive(Debug, Clone, Copy)]
struct TransformerSetup {
    dtype: DType,
    memory: MemoryMode,
    block_weights: WeightFormat,
    lora_mode: LoraMode,
}

impl TransformerSetup {
    /// The loading options, with `loras` merged in the merge mode.
    fn options(&self, loras: &LoraSet) -> LoadOptions {
        let residency = if self.memory.is_low_vram() {
            BlockResidency::Streamed
        } else {
            BlockResidency::Resident
        };
        let options = LoadOptions::new(self.dtype)
            .residency(residency)
            .block_weights(self.block_weights);
        match self.lora_mode {
            LoraMode::Merge => options.loras(loras.clone()),
            LoraMode::Adapters => options,
        }
    }
}

/// The networks other than the transformer.
struct Encoders<B: FramePackBackend> {
    vae: HunyuanVideoVae<B>,
    text: CachedPromptEncoder<B, TextSlot<B>>,
    siglip: OnDemand<SiglipVisionEncoder<B>>,
    processor: SiglipImageProcessor,
}

/// The networks of one backend, loaded.
pub(crate) struct ModelSet<B: FramePackBackend> {
    pub(crate) device: B::Device,
    pub(crate) dtypes: Dtypes,
    pub(crate) memory: MemoryMode,
    pub(crate) block_weights: WeightFormat,
    pub(crate) source: Source,
    family: Family,
    pub(crate) lora_mode: LoraMode,
    /// The kernel choices, applied to every load and job of this model set.
    pub(crate) runtime: RuntimeOptions,
    /// The LoRAs in the transformer (merged, or as adapters).
    loras: Vec<LoraChoice>,
    lora_hashes: lora::HashCache,
    /// `None` only after a failed switch to the other transformer checkpoint. Boxed, as are
    /// the model set and the encoders: the networks are large structs, and debug builds copy
    /// them frame after frame (a 2 MiB thread stack must be enough to build a pipeline).
    transformer: Option<Box<FramePackTransformer<B>>>,
    pub(crate) vae: HunyuanVideoVae<B>,
    text: CachedPromptEncoder<B, TextSlot<B>>,
    siglip: OnDemand<SiglipVisionEncoder<B>>,
    processor: SiglipImageProcessor,
    pub(crate) revisions: BTreeMap<String, String>,
}

/// Runs `work` with exact-size device allocations in the low-VRAM mode
/// ([`FramePackBackend::with_exact_allocations`]): its shapes repeat step after step, so the
/// device holds about the live tensors instead of pooled pages sized for the largest.
pub(crate) fn sized<B: FramePackBackend, R>(
    low_vram: bool,
    device: &B::Device,
    work: impl FnOnce() -> R,
) -> R {
    if low_vram {
        B::with_exact_allocations(device, work)
    } else {
        work()
    }
}

/// A network kept resident (loaded now) or loaded on demand (the low-VRAM mode).
fn on_demand<T>(low_vram: bool, load: Loader<T>) -> Result<OnDemand<T>> {
    Ok(if low_vram {
        OnDemand::lazy(load)
    } else {
        OnDemand::resident(load()?)
    })
}

/// Whether two LoRA lists are the same files at the same strengths.
fn same_loras(a: &[LoraChoice], b: &[LoraChoice]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.path == b.path && a.strength == b.strength)
}

impl<B: FramePackBackend> ModelSet<B> {
    /// Loads the models: every one onto the device ([`MemoryMode::Resident`]), or, in
    /// [`MemoryMode::LowVram`], the transformer's blocks into host memory and the VAE onto
    /// the device, with the text and image encoders loaded by each job that needs them.
    pub(crate) fn load(settings: Settings, device: B::Device) -> Result<Box<Self>> {
        let source = match settings.random {
            Some((seed, scale)) => Source::Random { seed, scale },
            None => Source::Pretrained(settings.locations.clone()),
        };
        let dtypes = settings
            .dtypes
            .unwrap_or_else(|| Dtypes::for_device::<B>(&device));
        for (network, dtype) in dtypes.named() {
            if !B::supports_dtype(&device, dtype) {
                return Err(Error::UnsupportedDtype {
                    network,
                    dtype: dtype_name(dtype),
                    device: format!("{} ({device:?})", B::name(&device)),
                });
            }
        }
        let memory = settings.memory.resolve(B::device_memory(&device));
        if settings.lora_mode == LoraMode::Adapters && memory.is_low_vram() {
            return Err(Error::invalid(
                "lora-mode",
                "LoRA adapters need the transformer's blocks on the device; the low-VRAM mode \
                 streams them: use the merge mode (the default) or the resident memory mode",
            ));
        }
        for lora in &settings.loras {
            lora.check()?;
        }
        let low_vram = memory.is_low_vram();
        let family = Family::of(settings.mode);
        let lora_set = lora::open_set(&settings.loras)?;
        let setup = TransformerSetup {
            dtype: dtypes.transformer,
            memory,
            block_weights: settings.block_weights,
            lora_mode: settings.lora_mode,
        };
        let mut revisions = BTreeMap::new();
        // Exact-size buffers in the low-VRAM mode: the resident parts do not pin pooled pages.
        let runtime = settings.runtime.clone();
        let loaded = catch(|| {
            runtime.scope(|| {
                sized::<B, _>(low_vram, &device, || -> Result<_> {
                    let encoders = match &source {
                        Source::Random { seed, scale } => {
                            random_encoders(&device, *seed, *scale, dtypes, low_vram)?
                        }
                        Source::Pretrained(locations) => pretrained_encoders(
                            locations,
                            settings.prompt_cache.as_deref(),
                            &device,
                            dtypes,
                            low_vram,
                            &mut revisions,
                        )?,
                    };
                    // Last: every other checkpoint was found before the largest load.
                    let (transformer, revision) =
                        source_transformer(&source, family, &device, setup, &lora_set)?;
                    Ok((transformer, revision, encoders))
                })
            })
        })??;
        let (transformer, revision, encoders) = loaded;
        let Encoders {
            mut vae,
            text,
            siglip,
            processor,
        } = *encoders;
        if let Some((component, revision)) = revision {
            revisions.insert(component.name().to_string(), revision);
        }
        if low_vram {
            vae.set_tiling(VaeTiling::low_vram())?;
            // Loading leaves conversion buffers in the pool; hand them back.
            B::memory_cleanup(&device);
        }
        Ok(Box::new(Self {
            device,
            dtypes,
            memory,
            block_weights: settings.block_weights,
            source,
            family,
            lora_mode: settings.lora_mode,
            runtime,
            loras: settings.loras,
            lora_hashes: lora::HashCache::default(),
            transformer: Some(transformer),
            vae,
            text,
            siglip,
            processor,
            revisions,
        }))
    }

    /// The transformer, once [`prepare_transformer`](Self::prepare_transformer) made it the
    /// job's.
    pub(crate) fn transformer(&self) -> Result<&FramePackTransformer<B>> {
        self.transformer
            .as_deref()
            .ok_or_else(|| Error::invalid("transformer", "not loaded"))
    }

    /// Drops the networks the low-VRAM mode loads per job and hands their memory back to the
    /// device (nothing to do when every network is resident).
    pub(crate) fn release_encoders(&mut self) {
        let text = self.text.inner_mut().encoders.release();
        let image = self.siglip.release();
        if text || image {
            B::memory_cleanup(&self.device);
        }
    }

    /// Makes the transformer the one of `family` with `loras`: nothing to do when it already
    /// is; in the adapters mode a change of LoRAs only swaps the adapters; otherwise the
    /// transformer is loaded again (the old one is dropped first, so two never share the
    /// device). Returns the LoRAs with their files' hashes, for the run record.
    pub(crate) fn prepare_transformer(
        &mut self,
        family: Family,
        loras: &[LoraChoice],
    ) -> Result<Vec<LoraChoice>> {
        let hashed = loras
            .iter()
            .map(|l| self.lora_hashes.hashed(l))
            .collect::<Result<Vec<_>>>()?;
        let same_loras = same_loras(&self.loras, loras);
        if family == self.family && self.transformer.is_some() && same_loras {
            return Ok(hashed);
        }
        let set = lora::open_set(loras)?;
        if family == self.family && self.lora_mode == LoraMode::Adapters {
            if let Some(transformer) = self.transformer.as_mut() {
                transformer
                    .set_lora_adapters(&set)
                    .map_err(framepack_models::ModelError::from)?;
                self.loras = loras.to_vec();
                return Ok(hashed);
            }
        }
        self.transformer = None;
        let setup = TransformerSetup {
            dtype: self.dtypes.transformer,
            memory: self.memory,
            block_weights: self.block_weights,
            lora_mode: self.lora_mode,
        };
        let (transformer, revision) =
            source_transformer(&self.source, family, &self.device, setup, &set)?;
        if let Some((component, revision)) = revision {
            self.revisions.remove(self.family.component().name());
            self.revisions
                .insert(component.name().to_string(), revision);
        }
        self.transformer = Some(transformer);
        self.family = family;
        self.loras = loras.to_vec();
        Ok(hashed)
    }

    /// A prompt's embeddings (from the cache when it was encoded before); `which` names it
    /// in errors and in the warnings pushed to `warnings`.
    pub(crate) fn encode_prompt(
        &mut self,
        request: &Request,
        text: &str,
        which: &str,
        warnings: &mut Vec<String>,
    ) -> Result<PromptEmbedding<B>> {
        let emb: PromptEmbeddings<B> = self.text.encode(text)?;
        if emb.llama_dropped > 0 {
            let max = framepack_models::text::tokenizer::MAX_PROMPT_TOKENS;
            if !request.allow_prompt_truncation {
                return Err(Error::PromptTooLong {
                    which: which.to_string(),
                    tokens: max + emb.llama_dropped,
                    max,
                    excess: emb.llama_dropped,
                });
            }
            warnings.push(format!(
                "{which}: the last {} LLaMA token(s) were dropped (at most {max} are read)",
                emb.llama_dropped
            ));
        }
        if emb.clip_dropped > 0 {
            warnings.push(format!(
                "{which}: CLIP reads the first 75 tokens; {} were dropped, as in FramePack",
                emb.clip_dropped
            ));
        }
        let length = emb.len();
        Ok(PromptEmbedding {
            text: emb.llama,
            length,
            pooled: emb.clip_pooled,
        })
    }

    /// A bucket-sized RGB image to its diffusion latent `[1, 16, 1, h, w]` (f32): `u8/127.5 − 1`,
    /// VAE posterior mean, × the scaling factor.
    pub(crate) fn encode_latent(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Tensor<B, 5>> {
        let plane = width * height;
        let mut values = vec![0f32; 3 * plane];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                values[c * plane + p] = f32::from(px[c]) / 127.5 - 1.0;
            }
        }
        let x = Tensor::<B, 5>::from_data(
            TensorData::new(values, [1, 3, 1, height, width]),
            (&self.device, DType::F32),
        );
        let mean = self.vae.encode(x)?;
        Ok(self.vae.scale_latents(mean.cast(DType::F32)))
    }

    /// A bucket-sized RGB image through SigLIP: the image conditioning of every section.
    pub(crate) fn encode_siglip(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Tensor<B, 3>> {
        let processor = &self.processor;
        Ok(self
            .siglip
            .get()?
            .encode_image(processor, rgb, width, height)?)
    }
}

/// The transformer of `family` (random weights, or the checkpoint with its revision) with
/// `loras` applied as `setup.lora_mode` says: merged while the weights load, or attached as
/// adapters afterwards.
fn source_transformer<B: FramePackBackend>(
    source: &Source,
    family: Family,
    device: &B::Device,
    setup: TransformerSetup,
    loras: &LoraSet,
) -> Result<(Box<FramePackTransformer<B>>, Option<Revision>)> {
    let options = setup.options(loras);
    let (mut model, revision) = match source {
        Source::Random { seed, scale } => (
            Box::new(tiny::transformer(device, *seed, *scale, &options)?),
            None,
        ),
        Source::Pretrained(locations) => {
            let component = family.component();
            let found = locations.locate(component)?;
            let (model, _report) =
                FramePackTransformer::from_folder(&found.path, device, &options)?;
            (Box::new(model), Some((component, found.revision)))
        }
    };
    if setup.lora_mode == LoraMode::Adapters && !loras.is_empty() {
        model
            .set_lora_adapters(loras)
            .map_err(framepack_models::ModelError::from)?;
    }
    Ok((model, revision))
}

/// The tiny (or full-size) random encoders.
fn random_encoders<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    scale: Scale,
    dtypes: Dtypes,
    low_vram: bool,
) -> Result<Box<Encoders<B>>> {
    let text_device = device.clone();
    let load_text: Loader<Box<dyn PromptEncoder<B> + Send>> = Box::new(move || {
        let encoders = tiny::text_encoders::<B>(
            &text_device,
            seed,
            scale,
            dtypes.text,
            low_vram && scale == Scale::Full,
        )?;
        Ok(Box::new(encoders) as Box<dyn PromptEncoder<B> + Send>)
    });
    let image_device = device.clone();
    let load_siglip: Loader<SiglipVisionEncoder<B>> =
        Box::new(move || tiny::siglip::<B>(&image_device, seed, scale, dtypes.image));
    let text = TextSlot {
        revision: format!("random {scale:?} seed {seed} ({:?})", dtypes.text),
        encoders: on_demand(low_vram, load_text)?,
    };
    Ok(Box::new(Encoders {
        vae: tiny::vae::<B>(device, seed, scale, dtypes.vae)?,
        text: CachedPromptEncoder::new(text, PromptCache::in_memory(device)),
        siglip: on_demand(low_vram, load_siglip)?,
        processor: SiglipImageProcessor::default(),
    }))
}

/// The published encoders, each located first (its revision goes into `revisions`).
fn pretrained_encoders<B: FramePackBackend>(
    locations: &ModelLocations,
    prompt_cache: Option<&std::path::Path>,
    device: &B::Device,
    dtypes: Dtypes,
    low_vram: bool,
    revisions: &mut BTreeMap<String, String>,
) -> Result<Box<Encoders<B>>> {
    let mut locate = |c: Component| {
        let found = locations.locate(c)?;
        revisions.insert(c.name().to_string(), found.revision.clone());
        Ok::<_, Error>(found.path)
    };
    let folders = TextEncoderFolders {
        text_encoder: locate(Component::TextEncoder)?,
        text_encoder_2: locate(Component::TextEncoder2)?,
        tokenizer: locate(Component::Tokenizer)?,
        tokenizer_2: locate(Component::Tokenizer2)?,
    };
    let vae_path = locate(Component::Vae)?;
    let processor_path = locate(Component::FeatureExtractor)?;
    let siglip_path = locate(Component::ImageEncoder)?;

    let processor =
        SiglipImageProcessor::from_file(processor_path.join("preprocessor_config.json"))?;
    let text_revision = format!(
        "{}|{}",
        revisions[Component::TextEncoder.name()],
        revisions[Component::Tokenizer.name()]
    );
    let text_device = device.clone();
    let revision = text_revision.clone();
    let load_text: Loader<Box<dyn PromptEncoder<B> + Send>> = Box::new(move || {
        let residency = if low_vram {
            BlockResidency::Streamed
        } else {
            BlockResidency::Resident
        };
        let encoders = TextEncoders::load(
            &folders,
            &text_device,
            &LoadOptions::new(dtypes.text).residency(residency),
            PromptOverflow::Truncate,
            revision.clone(),
        )?;
        Ok(Box::new(encoders) as Box<dyn PromptEncoder<B> + Send>)
    });
    let cache = match prompt_cache {
        Some(dir) => PromptCache::on_disk(dir, device)?,
        None => PromptCache::in_memory(device),
    };
    let text = TextSlot {
        revision: format!("{text_revision}|llama {0:?}|clip {0:?}", dtypes.text),
        encoders: on_demand(low_vram, load_text)?,
    };
    let image_device = device.clone();
    let load_siglip: Loader<SiglipVisionEncoder<B>> = Box::new(move || {
        SiglipVisionEncoder::from_folder(
            &siglip_path,
            &image_device,
            &LoadOptions::new(dtypes.image),
        )
    });
    Ok(Box::new(Encoders {
        vae: HunyuanVideoVae::from_folder(&vae_path, device, &LoadOptions::new(dtypes.vae))?,
        text: CachedPromptEncoder::new(text, cache),
        siglip: on_demand(low_vram, load_siglip)?,
        processor,
    }))
}
