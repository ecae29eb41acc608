//! The published checkpoints FramePack uses (spec §9), where to find them, how to download them,
//! and a check of a local copy that reads only the file headers.
//!
//! | component | repository | subfolder |
//! |---|---|---|
//! | transformer (inverted, one-frame) | `lllyasviel/FramePackI2V_HY` | |
//! | transformer (F1) | `lllyasviel/FramePack_F1_I2V_HY_20250503` | |
//! | LLaMA text encoder, CLIP-L, their tokenizers, VAE | `hunyuanvideo-community/HunyuanVideo` | `text_encoder`, `text_encoder_2`, `tokenizer`, `tokenizer_2`, `vae` |
//! | SigLIP image encoder and processor | `lllyasviel/flux_redux_bfl` | `image_encoder`, `feature_extractor` |
//!
//! A folder is found, in order: under an explicit repository folder given to
//! [`ModelLocations`]; in its `cache_dir` (a Hugging Face hub cache, i.e. the folder holding
//! `models--OWNER--NAME`); in the standard caches (`$HF_HUB_CACHE`, `$HF_HOME/hub`,
//! `~/.cache/huggingface/hub`, FramePack's own `./hf_download/hub`). With downloading allowed
//! (feature `download`), a missing folder is fetched into `cache_dir` (or the standard cache).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor};
use framepack_core::Mode;
use framepack_models::text::{
    ClipTextConfig, ClipTextEncoder, ClipTokenizer, LlamaConfig, LlamaTokenizer,
};
use framepack_models::transformer::{FramePackTransformer, TransformerConfig};
use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
use framepack_models::vision::{SiglipImageProcessor, SiglipVisionConfig, SiglipVisionEncoder};
use framepack_models::weights::hub::{self, RepoFolder};
use framepack_models::weights::{CheckpointFiles, Rerooted, TensorSource, WeightError};
use framepack_models::{FramePackBackend, LoadOptions};

use crate::error::{Error, Result};

/// The inverted (anti-drifting) transformer checkpoint.
pub const FRAMEPACK_REPO: &str = "lllyasviel/FramePackI2V_HY";
/// The F1 (forward) transformer checkpoint.
pub const FRAMEPACK_F1_REPO: &str = "lllyasviel/FramePack_F1_I2V_HY_20250503";
/// Text encoders, tokenizers and VAE.
pub const HUNYUAN_VIDEO_REPO: &str = "hunyuanvideo-community/HunyuanVideo";
/// SigLIP image encoder and its processor config.
pub const FLUX_REDUX_REPO: &str = "lllyasviel/flux_redux_bfl";

/// One folder of a published checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The packed transformer for inverted and one-frame generation.
    Transformer,
    /// The packed transformer for F1 generation.
    TransformerF1,
    /// LLaMA-3 (llava-llama-3-8b) text encoder.
    TextEncoder,
    /// CLIP-L text encoder.
    TextEncoder2,
    /// LLaMA tokenizer.
    Tokenizer,
    /// CLIP tokenizer.
    Tokenizer2,
    /// The causal 3D VAE.
    Vae,
    /// SigLIP preprocessing config.
    FeatureExtractor,
    /// SigLIP vision tower.
    ImageEncoder,
}

impl Component {
    /// Every component.
    pub const ALL: [Component; 9] = [
        Self::Transformer,
        Self::TransformerF1,
        Self::TextEncoder,
        Self::TextEncoder2,
        Self::Tokenizer,
        Self::Tokenizer2,
        Self::Vae,
        Self::FeatureExtractor,
        Self::ImageEncoder,
    ];

    /// What a generation in `mode` needs (the transformer of the mode, everything else).
    pub fn needed_for(mode: Mode) -> Vec<Component> {
        let transformer = match mode {
            Mode::F1 => Self::TransformerF1,
            Mode::Inverted | Mode::OneFrame => Self::Transformer,
        };
        let mut v = vec![transformer];
        v.extend(Self::ALL[2..].iter().copied());
        v
    }

    /// A short name (`transformer`, `text_encoder`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Transformer => "transformer",
            Self::TransformerF1 => "transformer_f1",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
            Self::Tokenizer => "tokenizer",
            Self::Tokenizer2 => "tokenizer_2",
            Self::Vae => "vae",
            Self::FeatureExtractor => "feature_extractor",
            Self::ImageEncoder => "image_encoder",
        }
    }

    /// Its repository and subfolder on the Hugging Face Hub.
    pub fn folder(&self) -> RepoFolder {
        match self {
            Self::Transformer => RepoFolder::new(FRAMEPACK_REPO),
            Self::TransformerF1 => RepoFolder::new(FRAMEPACK_F1_REPO),
            Self::TextEncoder
            | Self::TextEncoder2
            | Self::Tokenizer
            | Self::Tokenizer2
            | Self::Vae => RepoFolder::new(HUNYUAN_VIDEO_REPO).subfolder(self.name()),
            Self::FeatureExtractor | Self::ImageEncoder => {
                RepoFolder::new(FLUX_REDUX_REPO).subfolder(self.name())
            }
        }
    }
}

/// A component found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Which component.
    pub component: Component,
    /// Its folder.
    pub path: PathBuf,
    /// `OWNER/NAME@<commit>` for a Hugging Face snapshot, else `path:<absolute path>`.
    pub revision: String,
}

/// Where to look for (and download) the checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelLocations {
    /// A Hugging Face hub cache searched first, and the download destination.
    pub cache_dir: Option<PathBuf>,
    /// A local copy of `lllyasviel/FramePackI2V_HY` (its root folder).
    pub transformer: Option<PathBuf>,
    /// A local copy of `lllyasviel/FramePack_F1_I2V_HY_20250503`.
    pub transformer_f1: Option<PathBuf>,
    /// A local copy of `hunyuanvideo-community/HunyuanVideo` (the root holding `vae/`,
    /// `text_encoder/`, ...).
    pub hunyuan_video: Option<PathBuf>,
    /// A local copy of `lllyasviel/flux_redux_bfl` (the root holding `image_encoder/`, ...).
    pub flux_redux: Option<PathBuf>,
    /// Whether a component found nowhere is downloaded.
    pub download: bool,
}

/// The revision string of a folder: the snapshot commit when it lies in a Hugging Face cache.
pub fn revision_of(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let parts: Vec<String> = abs
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(i) = parts.iter().position(|p| p == "snapshots") {
        if let (Some(repo), Some(commit)) = (i.checked_sub(1).map(|j| &parts[j]), parts.get(i + 1))
        {
            let repo = repo
                .strip_prefix("models--")
                .unwrap_or(repo)
                .replacen("--", "/", 1);
            return format!("{repo}@{commit}");
        }
    }
    format!("path:{}", abs.display())
}

impl ModelLocations {
    fn explicit(&self, component: Component) -> Option<PathBuf> {
        let root = match component {
            Component::Transformer => self.transformer.as_ref(),
            Component::TransformerF1 => self.transformer_f1.as_ref(),
            Component::TextEncoder
            | Component::TextEncoder2
            | Component::Tokenizer
            | Component::Tokenizer2
            | Component::Vae => self.hunyuan_video.as_ref(),
            Component::FeatureExtractor | Component::ImageEncoder => self.flux_redux.as_ref(),
        }?;
        Some(match component.folder().subfolder {
            Some(sub) => root.join(sub),
            None => root.clone(),
        })
    }

    /// Finds `component` on disk (without downloading).
    pub fn find(&self, component: Component) -> Result<Located> {
        let folder = component.folder();
        let path = if let Some(path) = self.explicit(component) {
            hub::locate(&folder, Some(&path))?
        } else if let Some(found) = self
            .cache_dir
            .as_deref()
            .and_then(|dir| hub::find_in_cache(dir, &folder))
        {
            found
        } else {
            match hub::locate(&folder, None) {
                Ok(p) => p,
                Err(WeightError::NotFound { what, hint }) if self.cache_dir.is_some() => {
                    return Err(WeightError::NotFound {
                        what,
                        hint: format!(
                            "not in {} either; {hint}",
                            self.cache_dir.as_deref().unwrap_or(Path::new("")).display()
                        ),
                    }
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Located {
            component,
            revision: revision_of(&path),
            path,
        })
    }

    /// Finds `component`, downloading it when it is missing and downloading is allowed.
    pub fn locate(&self, component: Component) -> Result<Located> {
        match self.find(component) {
            Ok(found) => Ok(found),
            Err(Error::Model(framepack_models::ModelError::Weights(WeightError::NotFound {
                ..
            }))) if self.download && self.explicit(component).is_none() => self.download(component),
            Err(e) => Err(e),
        }
    }

    /// Downloads `component` into `cache_dir` (or the standard cache) and returns it.
    #[cfg(feature = "download")]
    pub fn download(&self, component: Component) -> Result<Located> {
        let path = hub::download_into(&component.folder(), self.cache_dir.as_deref())?;
        Ok(Located {
            component,
            revision: revision_of(&path),
            path,
        })
    }

    /// Downloading needs the `download` feature.
    #[cfg(not(feature = "download"))]
    pub fn download(&self, component: Component) -> Result<Located> {
        Err(Error::invalid(
            "download",
            format!(
                "cannot fetch {}: this build has no download support (feature `download`)",
                component.folder().display_name()
            ),
        ))
    }
}

/// The result of [`check`]: what a component folder holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// Tensors stored.
    pub tensors: usize,
    /// Bytes of weight files on disk.
    pub bytes: u64,
}

/// A [`TensorSource`] that checks keys and shapes against the checkpoint headers and hands back
/// zero-stride placeholders, so building a model against it reads no weights.
struct HeaderSource<'a, B: Backend> {
    files: &'a CheckpointFiles,
    device: B::Device,
    prefix: String,
    used: HashSet<String>,
}

impl<B: Backend> TensorSource<B> for HeaderSource<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> std::result::Result<Tensor<B, D>, WeightError> {
        let key = format!("{}{key}", self.prefix);
        let stored = self.files.stored_shape(&key)?;
        if stored != shape {
            return Err(WeightError::ShapeMismatch {
                path: self
                    .files
                    .file_of(&key)
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                key,
                expected: shape.to_vec(),
                found: stored,
            });
        }
        self.used.insert(key);
        Ok(Tensor::<B, D>::zeros([1; D], (&self.device, dtype)).expand(shape))
    }

    fn device(&self) -> &B::Device {
        &self.device
    }
}

impl<B: Backend> HeaderSource<'_, B> {
    fn finish(self, ignore: impl Fn(&str) -> bool) -> std::result::Result<(), WeightError> {
        let mut unused: Vec<String> = self
            .files
            .keys()
            .into_iter()
            .filter(|k| !self.used.contains(k))
            .filter(|k| !ignore(k.strip_prefix(&self.prefix).unwrap_or(k)))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let count = unused.len();
        unused.truncate(8);
        Err(WeightError::UnexpectedKeys {
            count,
            sample: unused,
            location: self.files.location().to_path_buf(),
        })
    }
}

fn weight_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checks a component folder without reading its weights: the config parses, the tokenizer
/// loads, every safetensors header parses and matches its file size, and building the network
/// against the headers finds every key at the expected shape and no unexpected key. Nothing
/// is computed: the networks are built on the host backend of this build.
pub fn check(component: Component, path: &Path) -> Result<CheckReport> {
    #[cfg(feature = "cpu")]
    type Host = framepack_models::CpuBackend;
    #[cfg(all(not(feature = "cpu"), feature = "cuda"))]
    type Host = framepack_models::cuda::CudaBackend;
    #[cfg(all(not(feature = "cpu"), not(feature = "cuda"), feature = "wgpu"))]
    type Host = burn::backend::Wgpu;
    check_on::<Host>(component, path, &Default::default())
}

fn check_on<B: FramePackBackend>(
    component: Component,
    path: &Path,
    device: &B::Device,
) -> Result<CheckReport> {
    let none = CheckReport {
        tensors: 0,
        bytes: 0,
    };
    match component {
        Component::Tokenizer => {
            LlamaTokenizer::from_file(path)?;
            return Ok(none);
        }
        Component::Tokenizer2 => {
            ClipTokenizer::from_folder(path)?;
            return Ok(none);
        }
        Component::FeatureExtractor => {
            SiglipImageProcessor::from_file(path.join("preprocessor_config.json"))?;
            return Ok(none);
        }
        _ => {}
    }
    let files = CheckpointFiles::open(path)?;
    let mut src = HeaderSource::<B> {
        files: &files,
        device: device.clone(),
        prefix: String::new(),
        used: HashSet::new(),
    };
    let options = LoadOptions::new(DType::F32);
    match component {
        Component::Transformer | Component::TransformerF1 => {
            let config_path = path.join("config.json");
            let config = if config_path.is_file() {
                TransformerConfig::from_file(&config_path)?
            } else {
                TransformerConfig::framepack()
            };
            drop(FramePackTransformer::load(&mut src, config, &options)?);
            src.finish(|_| false)?;
        }
        Component::Vae => {
            let config = VaeConfig::from_file(path.join("config.json"))?;
            drop(HunyuanVideoVae::load(&mut src, config, &options)?);
            src.finish(|_| false)?;
        }
        Component::TextEncoder => {
            let config = LlamaConfig::from_file(path.join("config.json"))?;
            if !files.contains("embed_tokens.weight") && files.contains("model.embed_tokens.weight")
            {
                src.prefix = "model.".into();
            }
            let unused = config.clone();
            drop(framepack_models::text::LlamaTextEncoder::load(
                &mut src, config, &options,
            )?);
            src.finish(|k| unused.is_unused_key(k))?;
        }
        Component::TextEncoder2 => {
            let config = ClipTextConfig::from_file(path.join("config.json"))?;
            let rerooted = Rerooted::detect(&mut src, &files, ClipTextEncoder::<B>::KEY_ROOT);
            drop(ClipTextEncoder::load(rerooted, config, &options)?);
            src.finish(ClipTextConfig::is_unused_key)?;
        }
        Component::ImageEncoder => {
            let config = SiglipVisionConfig::from_file(path.join("config.json"))?;
            let rerooted = Rerooted::detect(&mut src, &files, SiglipVisionEncoder::<B>::KEY_ROOT);
            drop(SiglipVisionEncoder::load(rerooted, config, &options)?);
            src.finish(SiglipVisionConfig::is_unused_key)?;
        }
        Component::Tokenizer | Component::Tokenizer2 | Component::FeatureExtractor => {}
    }
    Ok(CheckReport {
        tensors: files.keys().len(),
        bytes: weight_bytes(path),
    })
}
