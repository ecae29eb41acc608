//! [`PipelineBuilder`]: which models, on which device, in which dtypes and memory mode.

use std::path::PathBuf;

use burn::tensor::DType;
use framepack_core::Mode;
use framepack_models::nn::WeightFormat;
use framepack_models::runtime::RuntimeOptions;
use framepack_models::text::{LlamaTokenizer, PromptOverflow};

use super::models::Settings;
use super::{Engine, Pipeline};
use crate::error::{Error, Result};
use crate::hub::{Component, ModelLocations};
use crate::lora::{LoraChoice, LoraMode};
use crate::memory::{Dtypes, MemoryMode};
use crate::request::{JobPlan, Request};
use crate::tiny::{self, Scale};
use crate::DeviceChoice;

/// Configures and builds a [`Pipeline`]. Made by [`Pipeline::builder`].
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    settings: Settings,
    device: DeviceChoice,
}

impl Default for PipelineBuilder {
    fn default() -> Self {
        Self {
            settings: Settings {
                locations: ModelLocations::default(),
                random: None,
                dtypes: None,
                memory: MemoryMode::Auto,
                block_weights: WeightFormat::Dense,
                mode: Mode::Inverted,
                prompt_cache: None,
                lora_mode: LoraMode::default(),
                loras: Vec::new(),
                runtime: RuntimeOptions::from_env(),
            },
            device: DeviceChoice::Auto,
        }
    }
}

impl PipelineBuilder {
    /// A Hugging Face hub cache holding the checkpoints (searched before the standard caches),
    /// also where [`download`](Self::download) puts missing ones.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.locations.cache_dir = Some(dir.into());
        self
    }

    /// A local copy of the inverted transformer repository (`lllyasviel/FramePackI2V_HY`).
    pub fn transformer_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.locations.transformer = Some(dir.into());
        self
    }

    /// A local copy of the F1 transformer repository.
    pub fn transformer_f1_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.locations.transformer_f1 = Some(dir.into());
        self
    }

    /// A local copy of `hunyuanvideo-community/HunyuanVideo` (text encoders, tokenizers, VAE).
    pub fn hunyuan_video_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.locations.hunyuan_video = Some(dir.into());
        self
    }

    /// A local copy of `lllyasviel/flux_redux_bfl` (SigLIP).
    pub fn flux_redux_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.locations.flux_redux = Some(dir.into());
        self
    }

    /// Downloads missing checkpoints from the Hugging Face Hub (feature `download`; about
    /// 40 GB for everything an inverted generation needs).
    pub fn download(mut self, allow: bool) -> Self {
        self.settings.locations.download = allow;
        self
    }

    /// Uses small random-weight networks of the real architectures instead of the checkpoints:
    /// the whole pipeline runs on a CPU in seconds, and **its output is noise**. Use it with an
    /// exact small [`Resolution`](crate::Resolution) (e.g. 64×64).
    pub fn tiny_random(mut self, seed: u64) -> Self {
        self.settings.random = Some((seed, Scale::Tiny));
        self
    }

    /// Uses the published architectures (13 B transformer, 8 B LLaMA, CLIP-L, SigLIP, the
    /// VAE) with random weights instead of the checkpoints: for measuring speed and memory
    /// where the checkpoints are not at hand. **Its output is noise**; the stand-in
    /// tokenizer is byte-level as for [`tiny_random`](Self::tiny_random).
    pub fn full_size_random(mut self, seed: u64) -> Self {
        self.settings.random = Some((seed, Scale::Full));
        self
    }

    /// The device the models run on (default [`DeviceChoice::Auto`]: the first CUDA GPU when
    /// built with `cuda` and one is present, else the wgpu adapter when built with `wgpu`,
    /// else the CPU).
    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// One compute dtype for every network.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.settings.dtypes = Some(Dtypes::all(dtype));
        self
    }

    /// A compute dtype per network (default: [`Dtypes::for_device`]: the reference's bf16 /
    /// fp16 where the device has bf16, else fp16, else fp32).
    pub fn dtypes(mut self, dtypes: Dtypes) -> Self {
        self.settings.dtypes = Some(dtypes);
        self
    }

    /// How the models are kept in memory.
    pub fn memory(mut self, memory: MemoryMode) -> Self {
        self.settings.memory = memory;
        self
    }

    /// How the transformer blocks' linear layers keep their weights: [`WeightFormat::Fp8`]
    /// (e4m3 codes with per-row scales) halves their memory, with a small error against the
    /// checkpoint's weights (docs/performance.md). In the low-VRAM mode it also halves the
    /// pinned host copy of the blocks and each block's transfer.
    /// [`RuntimeOptions::fp8_tensor_cores`] also runs their products on FP8 tensor cores
    /// where the GPU has them (activations rounded to e4m3 per token).
    pub fn block_weights(mut self, format: WeightFormat) -> Self {
        self.settings.block_weights = format;
        self
    }

    /// The backends' kernel choices (default [`RuntimeOptions::from_env`]: the tuned CUDA
    /// kernels unless `FRAMEPACK_PORTABLE_OPS` is set, the best attention kernel, no FP8
    /// tensor cores). They belong to this pipeline: it applies them to its own loads and
    /// jobs, whatever another pipeline in the process uses.
    pub fn runtime(mut self, options: RuntimeOptions) -> Self {
        self.settings.runtime = options;
        self
    }

    /// The mode whose transformer is loaded now (inverted by default; F1 uses another
    /// checkpoint, loaded in its place when a request needs it).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// Keeps prompt embeddings on disk in `dir`, so a prompt seen before is not encoded again.
    pub fn prompt_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.prompt_cache = Some(dir.into());
        self
    }

    /// How the LoRAs of the jobs are applied: merged into the weights (the default) or kept as
    /// switchable adapters. Adapters need resident blocks: with the low-VRAM mode `build`
    /// refuses them.
    pub fn lora_mode(mut self, mode: LoraMode) -> Self {
        self.settings.lora_mode = mode;
        self
    }

    /// The LoRAs to load with the transformer, so that a job asking for exactly these does not
    /// reload it (LoRAs belong to each [`Request`]; this only chooses the first set). The
    /// `framepack` command passes its request's LoRAs here.
    pub fn loras(mut self, loras: &[LoraChoice]) -> Self {
        self.settings.loras = loras.to_vec();
        self
    }

    /// Checks `request` against this configuration without loading any network: everything
    /// [`Request::plan`] checks, that every checkpoint folder it needs is there (unless
    /// downloading is allowed), and the length of every prompt it encodes (only the tokenizer
    /// is read). Run it before a long model load.
    pub fn check(&self, request: &Request) -> Result<JobPlan> {
        let plan = request.plan()?;
        if self.settings.random.is_none() && !self.settings.locations.download {
            for component in Component::needed_for(plan.sections.mode()) {
                self.settings.locations.find(component)?;
            }
        }
        if request.allow_prompt_truncation {
            return Ok(plan);
        }
        let max = framepack_models::text::tokenizer::MAX_PROMPT_TOKENS;
        let tokenizer = match self.settings.random {
            Some(_) => None,
            None => match self.settings.locations.find(Component::Tokenizer) {
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

    /// Loads the models on the device (resolving [`DeviceChoice::Auto`] first): every one onto
    /// the device ([`MemoryMode::Resident`]), or, in [`MemoryMode::LowVram`], the
    /// transformer's blocks into host memory and the VAE onto the device, with the text and
    /// image encoders loaded by each job that needs them.
    ///
    /// Errors: the device not built or not present, a checkpoint not found (the message lists
    /// where it looked and how to download it), a corrupt or mismatching file (naming the file
    /// and tensor), or a download failure.
    pub fn build(self) -> Result<Pipeline> {
        let device = self.device.resolve()?;
        let engine = Engine::load(self.settings, device)?;
        Ok(Pipeline {
            engine,
            place: super::job::Place {
                device,
                device_auto: self.device == DeviceChoice::Auto,
            },
        })
    }
}
