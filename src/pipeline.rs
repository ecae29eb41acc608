//! The pipeline: models in memory, and [`Pipeline::generate`], which runs one [`Request`] from
//! the input image to decoded frames (spec §1–§2.5, §7):
//!
//! 1. the request is validated and planned ([`Request::plan`]): bucket, crop, sections;
//! 2. the prompts (main, negative when `cfg != 1`, per section) go through LLaMA and CLIP;
//! 3. the start image (and end frame, keyframes) is resized to the bucket with Pillow's LANCZOS,
//!    VAE-encoded (posterior mean × 0.476986), and SigLIP-encoded;
//! 4. the sections are sampled (UniPC, TeaCache, inverted/F1/one-frame loop); after each
//!    section its latents are VAE-decoded and cross-faded into the clip in fp16;
//! 5. the clip is converted to 8-bit frames; the [`Video`] holds them, the latent history and
//!    the [`RunRecord`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use framepack_core::blend::LatentSpan;
use framepack_core::Mode;
use framepack_models::lora::LoraSet;
use framepack_models::text::{
    CachedPromptEncoder, LlamaTokenizer, PromptCache, PromptEmbeddings, PromptEncoder,
    PromptOverflow, TextEncoderFolders, TextEncoders,
};
use framepack_models::transformer::{BlockResidency, FramePackTransformer, LoadOptions};
use framepack_models::vae::{HunyuanVideoVae, VaeTiling};
use framepack_models::vision::{SiglipImageProcessor, SiglipVisionEncoder};
use framepack_models::FramePackBackend;

use framepack_models::failure::catch;
pub use framepack_models::nn::WeightFormat;
use framepack_sampling::{
    CacheMode, CancelToken, Completion, Conditions, Event, FlowDenoiser, FramePackModel,
    GenerationParams, History, PromptEmbedding, SectionEvent, SectionInputs, SectionSampler, Shift,
    TeaCache,
};
use half::f16;
use image::RgbImage;

use crate::error::{Error, Result};
use crate::frames::{latent_preview, Clip, Frames};
use crate::hub::{Component, ModelLocations};
use crate::input::InputImage;
use crate::kisekae;
use crate::lora::{self, LoraChoice, LoraMode};
use crate::memory::{dtype_name, Dtypes, MemoryMode};
use crate::on_demand::{Loader, OnDemand, TextSlot};
use crate::record::{
    ModelKind, ModelsRecord, OutputsRecord, ResultRecord, RunRecord, RuntimeRecord, TimingRecord,
    RECORD_FORMAT, RECORD_VERSION,
};
use crate::request::{JobPlan, PromptRole, Request};
use crate::tiny::{self, Scale};
use crate::video::{self, Staged, DEFAULT_CRF, FPS};

/// The backend used when none is named: the CPU (burn-flex) with feature `cpu`, else CUDA, else
/// wgpu.
#[cfg(feature = "cpu")]
pub type DefaultBackend = framepack_models::CpuBackend;
/// The backend used when none is named.
#[cfg(all(not(feature = "cpu"), feature = "cuda"))]
pub type DefaultBackend = framepack_models::cuda::CudaBackend;
/// The backend used when none is named.
#[cfg(all(not(feature = "cpu"), not(feature = "cuda"), feature = "wgpu"))]
pub type DefaultBackend = burn::backend::Wgpu;
#[cfg(not(any(feature = "cpu", feature = "cuda", feature = "wgpu")))]
compile_error!("enable at least one backend feature of `framepack`: cpu, cuda or wgpu");

/// Which weights a pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Pretrained(ModelLocations),
    /// Random weights: tiny networks (the demo) or the published sizes (benchmarks).
    Random {
        seed: u64,
        scale: Scale,
    },
}

/// Configures and builds a [`Pipeline`]. Made by [`Pipeline::builder`].
#[derive(Debug, Clone)]
pub struct PipelineBuilder<B: FramePackBackend> {
    locations: ModelLocations,
    random: Option<(u64, Scale)>,
    device: B::Device,
    /// `None`: [`Dtypes::for_device`] when the pipeline is built.
    dtypes: Option<Dtypes>,
    memory: MemoryMode,
    block_weights: WeightFormat,
    mode: Mode,
    prompt_cache: Option<PathBuf>,
    lora_mode: LoraMode,
    loras: Vec<LoraChoice>,
}

impl<B: FramePackBackend> PipelineBuilder<B> {
    /// A Hugging Face hub cache holding the checkpoints (searched before the standard caches),
    /// also where [`download`](Self::download) puts missing ones.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.locations.cache_dir = Some(dir.into());
        self
    }

    /// A local copy of the inverted transformer repository (`lllyasviel/FramePackI2V_HY`).
    pub fn transformer_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.locations.transformer = Some(dir.into());
        self
    }

    /// A local copy of the F1 transformer repository.
    pub fn transformer_f1_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.locations.transformer_f1 = Some(dir.into());
        self
    }

    /// A local copy of `hunyuanvideo-community/HunyuanVideo` (text encoders, tokenizers, VAE).
    pub fn hunyuan_video_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.locations.hunyuan_video = Some(dir.into());
        self
    }

    /// A local copy of `lllyasviel/flux_redux_bfl` (SigLIP).
    pub fn flux_redux_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.locations.flux_redux = Some(dir.into());
        self
    }

    /// Downloads missing checkpoints from the Hugging Face Hub (feature `download`; about
    /// 40 GB for everything an inverted generation needs).
    pub fn download(mut self, allow: bool) -> Self {
        self.locations.download = allow;
        self
    }

    /// Uses small random-weight networks of the real architectures instead of the checkpoints:
    /// the whole pipeline runs on a CPU in seconds, and **its output is noise**. Use it with an
    /// exact small [`Resolution`](crate::Resolution) (e.g. 64×64).
    pub fn tiny_random(mut self, seed: u64) -> Self {
        self.random = Some((seed, Scale::Tiny));
        self
    }

    /// Uses the published architectures (13 B transformer, 8 B LLaMA, CLIP-L, SigLIP, the
    /// VAE) with random weights instead of the checkpoints: for measuring speed and memory
    /// where the checkpoints are not at hand. **Its output is noise**; the stand-in
    /// tokenizer is byte-level as for [`tiny_random`](Self::tiny_random).
    pub fn full_size_random(mut self, seed: u64) -> Self {
        self.random = Some((seed, Scale::Full));
        self
    }

    /// The device the models run on.
    pub fn device(mut self, device: B::Device) -> Self {
        self.device = device;
        self
    }

    /// One compute dtype for every network.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtypes = Some(Dtypes::all(dtype));
        self
    }

    /// A compute dtype per network (default: [`Dtypes::for_device`]: the reference's bf16 /
    /// fp16 where the device has bf16, else fp16, else fp32).
    pub fn dtypes(mut self, dtypes: Dtypes) -> Self {
        self.dtypes = Some(dtypes);
        self
    }

    /// How the models are kept in memory.
    pub fn memory(mut self, memory: MemoryMode) -> Self {
        self.memory = memory;
        self
    }

    /// How the transformer blocks' linear layers keep their weights: [`WeightFormat::Fp8`]
    /// (e4m3 codes with per-row scales) halves their memory, with a small error against the
    /// checkpoint's weights (docs/performance.md). In the low-VRAM mode it also halves the
    /// pinned host copy of the blocks and each block's transfer.
    /// [`WeightFormat::Fp8TensorCores`] also runs their products on FP8 tensor cores where
    /// the GPU has them (activations rounded to e4m3 per token).
    pub fn block_weights(mut self, format: WeightFormat) -> Self {
        self.block_weights = format;
        self
    }

    /// The mode whose transformer is loaded now (inverted by default; F1 uses another
    /// checkpoint, loaded in its place when a request needs it).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Keeps prompt embeddings on disk in `dir`, so a prompt seen before is not encoded again.
    pub fn prompt_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.prompt_cache = Some(dir.into());
        self
    }

    /// How the LoRAs of the jobs are applied: merged into the weights (the default) or kept as
    /// switchable adapters. Adapters need resident blocks: with the low-VRAM mode `build`
    /// refuses them.
    pub fn lora_mode(mut self, mode: LoraMode) -> Self {
        self.lora_mode = mode;
        self
    }

    /// The LoRAs to load with the transformer, so that a job asking for exactly these does not
    /// reload it (LoRAs belong to each [`Request`]; this only chooses the first set). The
    /// `framepack` command passes its request's LoRAs here.
    pub fn loras(mut self, loras: &[LoraChoice]) -> Self {
        self.loras = loras.to_vec();
        self
    }

    /// Checks `request` against this configuration without loading any network: everything
    /// [`Request::plan`] checks, that every checkpoint folder it needs is there (unless
    /// downloading is allowed), and the length of every prompt it encodes (only the tokenizer
    /// is read). Run it before a long model load.
    pub fn check(&self, request: &Request) -> Result<JobPlan> {
        let plan = request.plan()?;
        if self.random.is_none() && !self.locations.download {
            for component in Component::needed_for(plan.sections.mode()) {
                self.locations.find(component)?;
            }
        }
        if request.allow_prompt_truncation {
            return Ok(plan);
        }
        let max = framepack_models::text::tokenizer::MAX_PROMPT_TOKENS;
        let tokenizer = match self.random {
            Some(_) => None,
            None => match self.locations.find(Component::Tokenizer) {
                Ok(found) => Some(LlamaTokenizer::from_file(&found.path)?),
                Err(_) => return Ok(plan),
            },
        };
        for (role, text) in request.prompts_to_encode(&plan) {
            let tokens = match &tokenizer {
                None => tiny::prompt_tokens(text),
                Some(t) => {
                    let ids = t.tokenize(text, PromptOverflow::Truncate)?;
                    ids.len() + ids.dropped
                }
            };
            if tokens > max {
                return Err(Error::PromptTooLong {
                    which: role.to_string(),
                    tokens,
                    max,
                    excess: tokens - max,
                });
            }
        }
        Ok(plan)
    }

    /// Loads the models: every one onto the device ([`MemoryMode::Resident`]), or, in
    /// [`MemoryMode::LowVram`], the transformer's blocks into host memory and the VAE onto
    /// the device, with the text and image encoders loaded by each job that needs them.
    ///
    /// Errors: a checkpoint not found (the message lists where it looked and how to download
    /// it), a corrupt or mismatching file (naming the file and tensor), or a download failure.
    pub fn build(self) -> Result<Pipeline<B>> {
        let source = match self.random {
            Some((seed, scale)) => Source::Random { seed, scale },
            None => Source::Pretrained(self.locations.clone()),
        };
        let device = self.device;
        let dtypes = self
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
        let memory = self.memory.resolve(B::device_memory(&device));
        if self.lora_mode == LoraMode::Adapters && memory.is_low_vram() {
            return Err(Error::invalid(
                "lora-mode",
                "LoRA adapters need the transformer's blocks on the device; the low-VRAM mode \
                 streams them: use the merge mode (the default) or the resident memory mode",
            ));
        }
        for lora in &self.loras {
            lora.check()?;
        }
        let low_vram = memory.is_low_vram();
        let family = family(self.mode);
        let lora_set = lora::open_set(&self.loras)?;
        let setup = TransformerSetup {
            dtype: dtypes.transformer,
            memory,
            block_weights: self.block_weights,
            lora_mode: self.lora_mode,
        };
        let mut revisions = BTreeMap::new();
        // Exact-size buffers in the low-VRAM mode: the resident parts do not pin pooled pages.
        let loaded = catch(|| {
            sized::<B, _>(low_vram, &device, || -> Result<_> {
                Ok(match &source {
                    Source::Random { seed, scale } => {
                        let (seed, scale) = (*seed, *scale);
                        let text_device = device.clone();
                        let load_text: Loader<Box<dyn PromptEncoder<B> + Send>> =
                            Box::new(move || {
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
                        let load_siglip: Loader<SiglipVisionEncoder<B>> = Box::new(move || {
                            tiny::siglip::<B>(&image_device, seed, scale, dtypes.image)
                        });
                        let text = TextSlot {
                            revision: format!("random {scale:?} seed {seed} ({:?})", dtypes.text),
                            encoders: on_demand(low_vram, load_text)?,
                        };
                        (
                            tiny::vae::<B>(&device, seed, scale, dtypes.vae)?,
                            CachedPromptEncoder::new(text, PromptCache::in_memory(&device)),
                            on_demand(low_vram, load_siglip)?,
                            SiglipImageProcessor::default(),
                        )
                    }
                    Source::Pretrained(locations) => {
                        let loc = |c: Component, revisions: &mut BTreeMap<String, String>| {
                            let found = locations.locate(c)?;
                            revisions.insert(c.name().to_string(), found.revision.clone());
                            Ok::<_, Error>(found.path)
                        };
                        let folders = TextEncoderFolders {
                            text_encoder: loc(Component::TextEncoder, &mut revisions)?,
                            text_encoder_2: loc(Component::TextEncoder2, &mut revisions)?,
                            tokenizer: loc(Component::Tokenizer, &mut revisions)?,
                            tokenizer_2: loc(Component::Tokenizer2, &mut revisions)?,
                        };
                        let vae_path = loc(Component::Vae, &mut revisions)?;
                        let processor_path = loc(Component::FeatureExtractor, &mut revisions)?;
                        let siglip_path = loc(Component::ImageEncoder, &mut revisions)?;

                        let processor = SiglipImageProcessor::from_file(
                            processor_path.join("preprocessor_config.json"),
                        )?;
                        let text_revision = format!(
                            "{}|{}",
                            revisions[Component::TextEncoder.name()],
                            revisions[Component::Tokenizer.name()]
                        );
                        let text_device = device.clone();
                        let revision = text_revision.clone();
                        let load_text: Loader<Box<dyn PromptEncoder<B> + Send>> =
                            Box::new(move || {
                                let load = if low_vram {
                                    TextEncoders::load_layerwise
                                } else {
                                    TextEncoders::load
                                };
                                let encoders = load(
                                    &folders,
                                    &text_device,
                                    dtypes.text,
                                    PromptOverflow::Truncate,
                                    revision.clone(),
                                )?;
                                Ok(Box::new(encoders) as Box<dyn PromptEncoder<B> + Send>)
                            });
                        let cache = match &self.prompt_cache {
                            Some(dir) => PromptCache::on_disk(dir, &device)?,
                            None => PromptCache::in_memory(&device),
                        };
                        let text = TextSlot {
                            revision: format!(
                                "{text_revision}|llama {0:?}|clip {0:?}",
                                dtypes.text
                            ),
                            encoders: on_demand(low_vram, load_text)?,
                        };
                        let image_device = device.clone();
                        let load_siglip: Loader<SiglipVisionEncoder<B>> = Box::new(move || {
                            SiglipVisionEncoder::from_folder(
                                &siglip_path,
                                &image_device,
                                dtypes.image,
                            )
                        });
                        let vae = HunyuanVideoVae::from_folder(&vae_path, &device, dtypes.vae)?;
                        (
                            vae,
                            CachedPromptEncoder::new(text, cache),
                            on_demand(low_vram, load_siglip)?,
                            processor,
                        )
                    }
                })
                .and_then(|networks| {
                    // Last: every other checkpoint was found before the largest load.
                    let (transformer, revision) =
                        source.transformer::<B>(family, &device, setup, &lora_set)?;
                    Ok((transformer, revision, networks))
                })
            })
        })??;
        let (transformer, revision, (mut vae, text, siglip, processor)) = loaded;
        if let Some((component, revision)) = revision {
            revisions.insert(component.name().to_string(), revision);
        }
        if low_vram {
            vae.set_tiling(VaeTiling::low_vram())?;
            // Loading leaves conversion buffers in the pool; hand them back.
            B::memory_cleanup(&device);
        }
        Ok(Pipeline {
            device,
            dtypes,
            memory,
            block_weights: self.block_weights,
            source,
            family,
            lora_mode: self.lora_mode,
            loras: self.loras,
            lora_hashes: lora::HashCache::default(),
            transformer: Some(transformer),
            vae,
            text,
            siglip,
            processor,
            revisions,
        })
    }
}

/// Runs `work` with exact-size device allocations in the low-VRAM mode
/// ([`FramePackBackend::with_exact_allocations`]): its shapes repeat step after step, so the
/// device holds about the live tensors instead of pooled pages sized for the largest.
fn sized<B: FramePackBackend, R>(
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

/// A checkpoint component and the revision it was loaded from.
type Revision = (Component, String);

/// Whether two LoRA lists are the same files at the same strengths.
fn same_loras(a: &[LoraChoice], b: &[LoraChoice]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.path == b.path && a.strength == b.strength)
}

impl Source {
    /// The transformer of `family` (random weights, or the checkpoint with its revision) with
    /// `loras` applied as `setup.lora_mode` says: merged while the weights load, or attached as
    /// adapters afterwards.
    fn transformer<B: FramePackBackend>(
        &self,
        family: Family,
        device: &B::Device,
        setup: TransformerSetup,
        loras: &LoraSet,
    ) -> Result<(FramePackTransformer<B>, Option<Revision>)> {
        let options = LoadOptions::new(setup.dtype)
            .residency(residency_for(setup.memory))
            .block_weights(setup.block_weights);
        let options = match setup.lora_mode {
            LoraMode::Merge => options.loras(loras.clone()),
            LoraMode::Adapters => options,
        };
        let (mut model, revision) = match self {
            Source::Random { seed, scale } => {
                (tiny::transformer(device, *seed, *scale, &options)?, None)
            }
            Source::Pretrained(locations) => {
                let component = transformer_component(family);
                let found = locations.locate(component)?;
                let (model, _report) =
                    FramePackTransformer::from_folder_options(&found.path, device, &options)?;
                (model, Some((component, found.revision)))
            }
        };
        if setup.lora_mode == LoraMode::Adapters && !loras.is_empty() {
            model
                .set_lora_adapters(loras)
                .map_err(framepack_models::ModelError::from)?;
        }
        Ok((model, revision))
    }
}

/// Where the transformer's blocks live in a memory mode (decided here only).
fn residency_for(memory: MemoryMode) -> BlockResidency {
    if memory.is_low_vram() {
        BlockResidency::Streamed
    } else {
        BlockResidency::Resident
    }
}

/// What decides how the transformer loads, fixed when the pipeline is built.
#[derive(Debug, Clone, Copy)]
struct TransformerSetup {
    dtype: DType,
    memory: MemoryMode,
    block_weights: WeightFormat,
    lora_mode: LoraMode,
}

/// The two transformer checkpoints: inverted (also used for one-frame) and F1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Inverted,
    F1,
}

fn family(mode: Mode) -> Family {
    match mode {
        Mode::F1 => Family::F1,
        Mode::Inverted | Mode::OneFrame => Family::Inverted,
    }
}

fn transformer_component(family: Family) -> Component {
    match family {
        Family::Inverted => Component::Transformer,
        Family::F1 => Component::TransformerF1,
    }
}

/// FramePack image-to-video with every model in memory.
///
/// Generic over the burn backend (with FramePack's hot operations): the CPU by default,
/// `framepack_models::cuda::CudaBackend` with feature `cuda`.
///
/// ```
/// use framepack::{InputImage, Outputs, Pipeline, Progress, Request, Resolution};
///
/// // The tiny random-weight model runs anywhere; its output is noise.
/// let mut pipeline: Pipeline = Pipeline::builder()
///     .tiny_random(0)
///     .dtype(framepack::DType::F32)
///     .build()?;
/// let image = InputImage::from_rgb8(96, 64, vec![200; 96 * 64 * 3])?;
/// let request = Request::new(image, "a red ball bounces")
///     .resolution(Resolution::Exact { height: 32, width: 32 })
///     .seconds(1.0)
///     .steps(2);
/// let video = pipeline.generate(&request, |progress| {
///     if let Progress::Section(s) = progress {
///         println!("section {} of {}: {} frames so far", s.section + 1, s.sections, s.frames);
///     }
/// })?;
/// assert_eq!(video.frames.len(), 37); // one section of 9 latents + the start frame
/// assert_eq!((video.frames.width(), video.frames.height()), (32, 32));
///
/// let dir = tempfile::tempdir()?;
/// let record = video.save(&Outputs::beside(dir.path().join("ball.mp4")))?;
/// assert!(dir.path().join("ball.mp4").is_file());
/// assert_eq!(record.result.frames, 37);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline<B: FramePackBackend = DefaultBackend> {
    device: B::Device,
    dtypes: Dtypes,
    memory: MemoryMode,
    block_weights: WeightFormat,
    source: Source,
    family: Family,
    lora_mode: LoraMode,
    /// The LoRAs in the transformer (merged, or as adapters).
    loras: Vec<LoraChoice>,
    lora_hashes: lora::HashCache,
    /// `None` only after a failed switch to the other transformer checkpoint.
    transformer: Option<FramePackTransformer<B>>,
    vae: HunyuanVideoVae<B>,
    text: CachedPromptEncoder<B, TextSlot<B>>,
    siglip: OnDemand<SiglipVisionEncoder<B>>,
    processor: SiglipImageProcessor,
    revisions: BTreeMap<String, String>,
}

impl<B: FramePackBackend> std::fmt::Debug for Pipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("device", &self.device)
            .field("dtypes", &self.dtypes)
            .field("memory", &self.memory)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a generation is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Encoding the prompts.
    Text,
    /// Resizing, VAE-encoding and SigLIP-encoding the images.
    Images,
    /// Sampling the sections (decoding each one as it finishes).
    Sampling {
        /// Sections to sample.
        sections: u32,
        /// Steps per section.
        steps: usize,
    },
}

/// A progress report from [`Pipeline::generate`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a, B: Backend> {
    /// A stage begins.
    Stage(Stage),
    /// A sampler step finished.
    Step(StepProgress<'a, B>),
    /// A section finished and was decoded into the clip.
    Section(SectionProgress<'a>),
    /// Something the user should know (a prompt truncated for CLIP, ...).
    Warning(&'a str),
}

/// After every sampler step.
#[derive(Debug)]
pub struct StepProgress<'a, B: Backend> {
    /// The section (sampling order).
    pub section: u32,
    /// Sections in the job.
    pub sections: u32,
    /// The step (0-based).
    pub step: usize,
    /// Steps per section.
    pub steps: usize,
    /// Time of this step.
    pub step_time: Duration,
    /// Time since sampling began.
    pub elapsed: Duration,
    x0: &'a Tensor<B, 5>,
}

impl<B: Backend> StepProgress<'_, B> {
    /// FramePack's live preview: the step's x0 estimate through the latent-to-RGB projection
    /// (spec §7), the section's frames side by side at latent resolution (1/8 of the video).
    pub fn preview(&self) -> Result<RgbImage> {
        let dims = self.x0.dims();
        let values = self
            .x0
            .clone()
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| Error::TensorData {
                what: "preview latents",
                reason: format!("{e:?}"),
            })?;
        latent_preview(&values, dims)
    }
}

/// After every section, once it is decoded and joined to the clip.
#[derive(Debug)]
pub struct SectionProgress<'a> {
    /// The section (sampling order).
    pub section: u32,
    /// Sections in the job.
    pub sections: u32,
    /// Frames of the clip so far.
    pub frames: usize,
    /// Time of this section (sampling and decoding).
    pub section_time: Duration,
    /// Time since sampling began.
    pub elapsed: Duration,
    clip: &'a Clip,
}

impl SectionProgress<'_> {
    /// Four frames evenly spaced over the clip so far, side by side.
    pub fn preview(&self) -> RgbImage {
        self.clip.strip(4)
    }

    /// Frame `i` of the clip so far (`i < frames`).
    pub fn frame(&self, i: usize) -> Option<RgbImage> {
        (i < self.clip.len()).then(|| self.clip.image(i))
    }
}

/// A finished generation.
#[derive(Debug)]
pub struct Video<B: Backend> {
    /// The frames, 8-bit RGB, 30 fps.
    pub frames: Frames,
    /// The latent history (what was decoded; can be saved, loaded and extended).
    pub latents: History<B>,
    /// Every parameter, the model revisions, timings.
    pub record: RunRecord,
}

/// Where [`Video::save`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// The MP4.
    pub video: Option<PathBuf>,
    /// The MP4 quantiser (see [`video`](crate::video)); FramePack's default is 16.
    pub crf: u8,
    /// A PNG of the first frame (the result of one-frame inference).
    pub image: Option<PathBuf>,
    /// The JSON run record.
    pub record: Option<PathBuf>,
    /// The latent history (safetensors, loadable with `History::load`).
    pub latents: Option<PathBuf>,
    /// A new folder of PNG frames.
    pub frames_dir: Option<PathBuf>,
}

impl Outputs {
    /// `NAME.mp4` (or `NAME.png` for a path ending in `.png`), with the record `NAME.json` and
    /// the latents `NAME.latents.safetensors` beside it.
    pub fn beside(main: impl Into<PathBuf>) -> Self {
        let main = main.into();
        let stem = main.with_extension("");
        let with = |suffix: &str| {
            let mut s = stem.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        let is_png = main
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        Self {
            video: (!is_png).then(|| main.clone()),
            crf: DEFAULT_CRF,
            image: is_png.then(|| main.clone()),
            record: Some(with(".json")),
            latents: Some(with(".latents.safetensors")),
            frames_dir: None,
        }
    }

    /// Every path that would be written.
    pub fn paths(&self) -> Vec<&Path> {
        [
            &self.video,
            &self.image,
            &self.record,
            &self.latents,
            &self.frames_dir,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect()
    }
}

impl<B: Backend> Video<B> {
    /// Frames per second.
    pub fn fps(&self) -> u32 {
        FPS
    }

    /// Writes the outputs. Everything is written to temporary files first and renamed into
    /// place only when all of them are complete; on error nothing new is left behind. Returns
    /// the record as written (with its `outputs` filled in).
    pub fn save(&self, outputs: &Outputs) -> Result<RunRecord> {
        if outputs.crf > video::MAX_CRF {
            return Err(Error::invalid(
                "crf",
                format!("{} is outside 0..={}", outputs.crf, video::MAX_CRF),
            ));
        }
        let mut record = self.record.clone();
        record.outputs = OutputsRecord::default();
        let mut staged: Vec<Staged> = Vec::new();
        if let Some(path) = &outputs.video {
            staged.push(video::stage_mp4(path, &self.frames, FPS, outputs.crf)?);
            record.outputs.video = Some(path.clone());
            record.outputs.crf = Some(outputs.crf);
            record.outputs.encoder = Some(format!(
                "OpenH264 (openh264 crate {}), fixed QP, Baseline",
                OPENH264_CRATE
            ));
        }
        if let Some(path) = &outputs.image {
            staged.push(video::stage_png(path, &self.frames.image(0))?);
            record.outputs.image = Some(path.clone());
        }
        if let Some(dir) = &outputs.frames_dir {
            staged.push(video::stage_png_frames(dir, &self.frames)?);
            record.outputs.frames_dir = Some(dir.clone());
        }
        if let Some(path) = &outputs.latents {
            let stage = Staged::new(path)?;
            self.latents
                .save(stage.path(), &self.params())
                .map_err(|e| Error::write(path, e))?;
            std::fs::File::open(stage.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::write(path, e))?;
            staged.push(stage);
            record.outputs.latents = Some(path.clone());
        }
        if let Some(path) = &outputs.record {
            staged.push(record.stage(path)?);
        }
        // All complete: move them into place.
        for s in staged {
            let target = s.target().to_path_buf();
            s.commit().map_err(|e| Error::write(target, e))?;
        }
        Ok(record)
    }

    /// The parameters stored in the latent file.
    fn params(&self) -> GenerationParams {
        let r = &self.record.request;
        let mut extra = BTreeMap::new();
        extra.insert("prompt".to_string(), r.prompt.clone());
        extra.insert("models".to_string(), self.record.models.kind.to_string());
        extra.insert("framepack_rs".to_string(), self.record.framepack_rs.clone());
        extra.insert("flavor".to_string(), r.flavor.to_string());
        GenerationParams {
            mode: r.mode.to_string(),
            seed: r.seed,
            steps: r.steps,
            // Latent frames sampled per window (5 for eichi's 0.5 s sections).
            window: if r.mode == Mode::OneFrame {
                1
            } else {
                r.window.latents()
            },
            sections: self.record.result.sections,
            completed_sections: self.record.result.sections,
            distilled_guidance: r.gs,
            cfg: r.cfg,
            guidance_rescale: r.rs,
            shift: r.shift,
            extra,
        }
    }
}

/// The version of the openh264 crate (for records).
const OPENH264_CRATE: &str = "0.9";

impl Pipeline {
    /// A builder for a pipeline on the default backend (the CPU with feature `cpu`).
    pub fn builder() -> PipelineBuilder<DefaultBackend> {
        Pipeline::<DefaultBackend>::builder_for()
    }
}

impl<B: FramePackBackend> Pipeline<B> {
    /// A builder for a pipeline on backend `B`, on its default device, with the dtypes of
    /// [`Dtypes::for_device`], the memory mode chosen from the device's free memory, and the published checkpoints from the standard caches.
    pub fn builder_for() -> PipelineBuilder<B> {
        PipelineBuilder {
            locations: ModelLocations::default(),
            random: None,
            device: B::Device::default(),
            dtypes: None,
            memory: MemoryMode::Auto,
            block_weights: WeightFormat::Dense,
            mode: Mode::Inverted,
            prompt_cache: None,
            lora_mode: LoraMode::default(),
            loras: Vec::new(),
        }
    }

    /// The device the models live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The compute dtypes.
    pub fn dtypes(&self) -> Dtypes {
        self.dtypes
    }

    /// Runs a generation; see [`generate_cancellable`](Self::generate_cancellable).
    pub fn generate<F>(&mut self, request: &Request, on_progress: F) -> Result<Video<B>>
    where
        F: FnMut(Progress<'_, B>),
    {
        self.generate_cancellable(request, &CancelToken::new(), on_progress)
    }

    /// Runs a generation, reporting progress to `on_progress` and stopping at the next step
    /// boundary once `cancel` is cancelled ([`Error::Cancelled`]; nothing is written, since
    /// writing is [`Video::save`]'s job).
    pub fn generate_cancellable<F>(
        &mut self,
        request: &Request,
        cancel: &CancelToken,
        on_progress: F,
    ) -> Result<Video<B>>
    where
        F: FnMut(Progress<'_, B>),
    {
        let device = self.device.clone();
        // burn's operations cannot return errors: a failing kernel unwinds, and is turned back
        // into `Error::Backend` here, so that a worker thread sees a failed job, not a panic.
        catch(|| {
            sized::<B, _>(self.memory.is_low_vram(), &device, || {
                self.run_job(request, cancel, on_progress)
            })
        })?
    }

    /// [`Pipeline::generate_cancellable`]'s work.
    fn run_job<F>(
        &mut self,
        request: &Request,
        cancel: &CancelToken,
        mut on_progress: F,
    ) -> Result<Video<B>>
    where
        F: FnMut(Progress<'_, B>),
    {
        let started = Instant::now();
        let plan = request.plan()?;
        let cancelled = || Error::Cancelled {
            section: 0,
            steps_done: 0,
        };
        let loras = self.prepare_transformer(family(plan.sections.mode()), &request.loras)?;
        let mut warnings = Vec::new();
        let mut timing = TimingRecord::default();

        // Text.
        on_progress(Progress::Stage(Stage::Text));
        let t = Instant::now();
        let guidance = request.guidance();
        let mut positive = None;
        let mut negative = None;
        let mut section_prompts = BTreeMap::new();
        for (role, text) in request.prompts_to_encode(&plan) {
            let which = role.to_string();
            let embedding = self.encode_prompt(request, text, &which, &mut warnings)?;
            match role {
                PromptRole::Main => positive = Some(embedding),
                PromptRole::Negative => negative = Some(embedding),
                PromptRole::Section(s) => {
                    section_prompts.insert(s, embedding);
                }
            }
        }
        let positive = positive.ok_or_else(|| Error::invalid("prompt", "not encoded"))?;
        for w in &warnings {
            on_progress(Progress::Warning(w));
        }
        self.release_encoders();
        timing.text_s = t.elapsed().as_secs_f64();
        if cancel.is_cancelled() {
            return Err(cancelled());
        }

        // Images.
        on_progress(Progress::Stage(Stage::Images));
        let t = Instant::now();
        let bucket = plan.bucket;
        let (bw, bh) = (bucket.width as usize, bucket.height as usize);
        let start_rgb = request.image.to_bucket(bucket)?;
        let start_latent = self.encode_latent(&start_rgb, bw, bh)?;
        let siglip = self
            .siglip
            .get()?
            .encode_image(&self.processor, &start_rgb, bw, bh)?;
        let mut inputs = SectionInputs::new(start_latent);
        if let Some(end) = &request.end_frame {
            let rgb = end.image.to_bucket(bucket)?;
            inputs = inputs.end_frame(self.encode_latent(&rgb, bw, bh)?);
        }
        for (&section, image) in &request.keyframes {
            let rgb = image.to_bucket(bucket)?;
            inputs = inputs.keyframe(section, self.encode_latent(&rgb, bw, bh)?);
        }
        if let Some(k) = &request.kisekae {
            let rgb = k.image.to_bucket(bucket)?;
            inputs = inputs.reference(self.encode_latent(&rgb, bw, bh)?);
            let latent = [bh / 8, bw / 8];
            let mask = |m: &Option<InputImage>| {
                m.as_ref()
                    .map(|m| kisekae::mask_tensor::<B>(m, latent, &self.device))
                    .transpose()
            };
            inputs = inputs.masks(mask(&k.input_mask)?, mask(&k.reference_mask)?);
        }
        self.release_encoders();
        timing.images_s = t.elapsed().as_secs_f64();
        if cancel.is_cancelled() {
            return Err(cancelled());
        }

        // Sampling, with each section decoded as it finishes.
        let sections = plan.sections.sections();
        on_progress(Progress::Stage(Stage::Sampling {
            sections,
            steps: request.steps,
        }));
        let t = Instant::now();
        let mut conditions = Conditions::new(positive, siglip);
        for (s, emb) in section_prompts {
            conditions = conditions.section_prompt(s, emb);
        }
        if let Some(n) = negative {
            conditions = conditions.negative(n);
        }
        let cache = match (request.teacache, &request.magcache) {
            (Some(threshold), _) => CacheMode::TeaCache(TeaCache::default().threshold(threshold)),
            (None, Some(m)) => CacheMode::MagCache(m.cache()),
            (None, None) => CacheMode::Off,
        };
        let transformer = self
            .transformer
            .as_ref()
            .ok_or_else(|| Error::invalid("transformer", "not loaded"))?;
        let model = FramePackModel::new(transformer, conditions).cache(cache);
        let mut denoiser = FlowDenoiser::new(model, guidance);
        let shift = request.shift.map_or(Shift::Auto, Shift::Fixed);
        let sampler = SectionSampler::new(&plan.sections)
            .steps(request.steps)
            .seed(request.seed)
            .shift(shift);
        let job_cancel = CancelToken::new();
        let vae = &self.vae;
        let (low_vram, device) = (self.memory.is_low_vram(), self.device.clone());
        // Resident mode decodes untiled, as the reference's high-VRAM mode, unless the free
        // memory is short of the decode's estimate: then with spatial tiles (same weights).
        let tiled_vae = if vae.tiling().use_tiling {
            None
        } else {
            let mut tiled = vae.clone();
            tiled.set_tiling(VaeTiling {
                use_tiling: true,
                ..vae.tiling().clone()
            })?;
            Some(tiled)
        };
        let mut clip = Clip::default();
        let mut failure: Option<Error> = None;
        let mut decode_time = Duration::ZERO;
        let output = sampler.run(&mut denoiser, &inputs, &job_cancel, |event| {
            if cancel.is_cancelled() {
                job_cancel.cancel();
            }
            match event {
                Event::Step(s) => on_progress(Progress::Step(StepProgress {
                    section: s.section,
                    sections: s.sections,
                    step: s.step,
                    steps: s.steps,
                    step_time: s.step_time,
                    elapsed: s.elapsed,
                    x0: s.x0,
                })),
                Event::Section(s) => {
                    if failure.is_some() {
                        return;
                    }
                    let t = Instant::now();
                    // The sampler's buffers (streamed blocks, activations) go back before the
                    // decode's own.
                    B::memory_cleanup(&device);
                    if let Err(e) = decode_section(vae, tiled_vae.as_ref(), &device, &s, &mut clip)
                    {
                        failure = Some(e);
                        job_cancel.cancel();
                        return;
                    }
                    decode_time += t.elapsed();
                    if low_vram {
                        // The decode's buffers have this section's sizes: return them.
                        B::memory_cleanup(&device);
                    }
                    on_progress(Progress::Section(SectionProgress {
                        section: s.window.index,
                        sections: s.sections,
                        frames: clip.len(),
                        section_time: s.section_time + t.elapsed(),
                        elapsed: s.elapsed + t.elapsed(),
                        clip: &clip,
                    }));
                    if cancel.is_cancelled() {
                        job_cancel.cancel();
                    }
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if let Completion::Cancelled {
            section,
            steps_done,
        } = output.completion
        {
            return Err(Error::Cancelled {
                section,
                steps_done,
            });
        }
        timing.decode_s = decode_time.as_secs_f64();
        timing.sampling_s = (t.elapsed() - decode_time).as_secs_f64();
        let stats = denoiser.model().stats();
        let magcache_ratios = denoiser.model().step_cache().calibrated_ratios();

        let frames = clip.to_frames();
        if frames.len() != plan.frames() as usize {
            return Err(Error::TensorData {
                what: "decoded video",
                reason: format!(
                    "{} frames decoded, the plan has {}",
                    frames.len(),
                    plan.frames()
                ),
            });
        }
        timing.total_s = started.elapsed().as_secs_f64();
        let mut recorded = request.clone();
        recorded.loras = loras;
        let mut record = self.record(&recorded, &plan, &output.history, stats, timing, warnings);
        record.result.magcache_ratios = magcache_ratios;
        Ok(Video {
            frames,
            latents: output.history,
            record,
        })
    }

    fn record(
        &self,
        request: &Request,
        plan: &JobPlan,
        history: &History<B>,
        stats: framepack_sampling::CacheStats,
        timing: TimingRecord,
        warnings: Vec<String>,
    ) -> RunRecord {
        let models = match &self.source {
            Source::Random { seed, scale } => ModelsRecord {
                kind: match scale {
                    Scale::Tiny => ModelKind::TinyRandom,
                    Scale::Full => ModelKind::FullSizeRandom,
                },
                seed: Some(*seed),
                revisions: BTreeMap::new(),
            },
            Source::Pretrained(_) => ModelsRecord {
                kind: ModelKind::Framepack,
                seed: None,
                revisions: self.revisions.clone(),
            },
        };
        RunRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            framepack_rs: env!("CARGO_PKG_VERSION").into(),
            request: request.clone(),
            models,
            runtime: RuntimeRecord {
                backend: B::name(&self.device),
                device: format!("{:?}", self.device),
                dtypes: self.dtypes,
                block_weights: self.block_weights,
                memory: self.memory,
                lora_mode: self.lora_mode,
            },
            result: ResultRecord {
                size: [plan.bucket.height, plan.bucket.width],
                sections: plan.sections.sections(),
                latent_frames: history.generated(),
                frames: plan.frames(),
                fps: FPS,
                duration_s: plan.duration(),
                model_calls: stats.calls as u64,
                model_calls_skipped: stats.skipped as u64,
                magcache_ratios: None,
            },
            timing,
            warnings,
            outputs: OutputsRecord::default(),
        }
    }

    /// Where the transformer's blocks live in this pipeline's memory mode.
    /// The memory mode in use (never [`MemoryMode::Auto`]: that is resolved when the pipeline
    /// is built).
    pub fn memory(&self) -> MemoryMode {
        self.memory
    }

    /// Drops the networks the low-VRAM mode loads per job and hands their memory back to the
    /// device (nothing to do when every network is resident).
    fn release_encoders(&mut self) {
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
    fn prepare_transformer(
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
            self.source
                .transformer::<B>(family, &self.device, setup, &set)?;
        if let Some((component, revision)) = revision {
            self.revisions
                .remove(transformer_component(self.family).name());
            self.revisions
                .insert(component.name().to_string(), revision);
        }
        self.transformer = Some(transformer);
        self.family = family;
        self.loras = loras.to_vec();
        Ok(hashed)
    }

    fn encode_prompt(
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
    fn encode_latent(&self, rgb: &[u8], width: usize, height: usize) -> Result<Tensor<B, 5>> {
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
}

/// Decodes the latents a finished section names (spec §2.5) and joins them to the clip; with
/// `tiled` (the VAE with spatial tiling) when the device's free memory is below `vae`'s
/// estimate for an untiled decode.
fn decode_section<B: FramePackBackend>(
    vae: &HunyuanVideoVae<B>,
    tiled: Option<&HunyuanVideoVae<B>>,
    device: &B::Device,
    event: &SectionEvent<'_, B>,
    clip: &mut Clip,
) -> Result<()> {
    let d = event.window.decode;
    let valid = event.history.valid();
    let total = valid.dims()[2];
    let n = d.latents as usize;
    if n > total {
        return Err(Error::TensorData {
            what: "section latents",
            reason: format!("the section decodes {n} latents, the history has {total}"),
        });
    }
    let latents = match d.span {
        LatentSpan::All => valid,
        LatentSpan::Front(_) => valid.narrow(2, 0, n),
        LatentSpan::Back(_) => valid.narrow(2, total - n, n),
    };
    let vae = match (tiled, B::device_memory(device)) {
        (Some(tiled), Some(memory)) if memory.free < vae.untiled_decode_bytes(latents.dims()) => {
            tiled
        }
        _ => vae,
    };
    let pixels = vae.decode(vae.unscale_latents(latents))?;
    let dims = pixels.dims();
    let values: Vec<f16> = if pixels.dtype() == DType::F16 {
        pixels.into_data().into_vec::<f16>()
    } else {
        pixels
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map(|v| v.into_iter().map(f16::from_f32).collect())
    }
    .map_err(|e| Error::TensorData {
        what: "decoded pixels",
        reason: format!("{e:?}"),
    })?;
    let current = Clip::from_decoded(values, dims)?;
    if current.len() != d.decoded_frames as usize {
        return Err(Error::TensorData {
            what: "decoded pixels",
            reason: format!(
                "{} frames decoded from {n} latents, expected {}",
                current.len(),
                d.decoded_frames
            ),
        });
    }
    clip.join(current, d.join, d.overlap as usize)
}
