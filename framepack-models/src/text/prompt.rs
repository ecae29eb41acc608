//! From prompt strings to the transformer's text conditioning (`encode_prompt_conds` and the
//! negative-prompt handling of FramePack's `demo_gradio.py`).

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, DType, Tensor, TensorData};

use super::clip::ClipTextEncoder;
use super::llama::LlamaTextEncoder;
use super::tokenizer::{ClipTokenizer, LlamaTokenizer, PromptOverflow, CROP_START};
use crate::error::ModelError;
use crate::load::{LoadOptions, Residency};
use crate::ops::FramePackBackend;

/// The text conditioning of one prompt.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings<B: FramePackBackend> {
    /// LLaMA `hidden_states[-3]` of the prompt tokens (template cropped), `[1, L, 4096]`,
    /// `1 ≤ L ≤ 256`, in the encoder's dtype. Only the valid tokens are kept; see
    /// [`Self::padded`] for the reference's zero-padded form.
    pub llama: Tensor<B, 3>,
    /// CLIP-L pooled output `[1, 768]`.
    pub clip_pooled: Tensor<B, 2>,
    /// LLaMA prompt tokens dropped by the 256-token limit (0 when the prompt fits).
    pub llama_dropped: usize,
    /// CLIP content tokens dropped by the 77-token context.
    pub clip_dropped: usize,
}

impl<B: FramePackBackend> PromptEmbeddings<B> {
    /// `L`, the number of valid LLaMA tokens (the transformer's `text_lengths` entry).
    pub fn len(&self) -> usize {
        self.llama.dims()[1]
    }

    /// Never true: every prompt keeps at least its `<|eot_id|>`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Zeros of the same shapes (FramePack's negative conditioning when `cfg == 1`: same `L`,
    /// so its mask has `L` trues, never used by the sampler).
    pub fn zeros_like(&self) -> Self {
        Self {
            llama: self.llama.zeros_like(),
            clip_pooled: self.clip_pooled.zeros_like(),
            llama_dropped: 0,
            clip_dropped: 0,
        }
    }

    /// `crop_or_pad_yield_mask(llama, length)`: the features zero-padded (or cropped) to
    /// `[1, length, 4096]` and the mask `[1, length]`, true for the valid tokens.
    pub fn padded(&self, length: usize) -> (Tensor<B, 3>, Tensor<B, 2, Bool>) {
        let [b, l, c] = self.llama.dims();
        let device = self.llama.device();
        let keep = l.min(length);
        let mut values = self.llama.clone().narrow(1, 0, keep);
        if keep < length {
            let pad = Tensor::zeros([b, length - keep, c], (&device, self.llama.dtype()));
            values = Tensor::cat(vec![values, pad], 1);
        }
        let mask: Vec<bool> = (0..b * length).map(|i| i % length < keep).collect();
        let mask = Tensor::from_data(TensorData::new(mask, [b, length]), &device);
        (values, mask)
    }
}

/// The conditioning of one generation: prompt and negative prompt.
#[derive(Debug, Clone)]
pub struct PromptPair<B: FramePackBackend> {
    /// The prompt's conditioning.
    pub positive: PromptEmbeddings<B>,
    /// The negative prompt's conditioning; zeros when the CFG scale is 1.
    pub negative: PromptEmbeddings<B>,
}

/// Something that turns one prompt into its conditioning: the encoders themselves, a lazy
/// loader, or a cache in front of either.
pub trait PromptEncoder<B: FramePackBackend> {
    /// Identifies the weights, tokenizers and numerics behind the embeddings (checkpoint
    /// revision, dtype, …): the part of a cache key that is not the prompt. Must be known
    /// without loading any weights.
    fn revision(&self) -> String;

    /// The conditioning of `prompt`.
    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError>;
}

/// Encodes a prompt and a negative prompt as FramePack does: with `cfg == 1` (its default,
/// the distilled guidance) the negative prompt is **not encoded** and its conditioning is
/// zeros of the prompt's shapes; otherwise it goes through the same encoders.
pub fn encode_prompt_pair<B: FramePackBackend, E: PromptEncoder<B> + ?Sized>(
    encoder: &mut E,
    prompt: &str,
    negative_prompt: &str,
    cfg: f64,
) -> Result<PromptPair<B>, ModelError> {
    let positive = encoder.encode(prompt)?;
    let negative = if cfg == 1.0 {
        positive.zeros_like()
    } else {
        encoder.encode(negative_prompt)?
    };
    Ok(PromptPair { positive, negative })
}

/// The folders of the two text encoders and their tokenizers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEncoderFolders {
    /// LLaMA weights and `config.json` (`text_encoder/`).
    pub text_encoder: PathBuf,
    /// CLIP weights and `config.json` (`text_encoder_2/`).
    pub text_encoder_2: PathBuf,
    /// `tokenizer.json` of LLaMA (`tokenizer/`).
    pub tokenizer: PathBuf,
    /// `vocab.json` + `merges.txt` of CLIP (`tokenizer_2/`).
    pub tokenizer_2: PathBuf,
}

impl TextEncoderFolders {
    /// The layout of `hunyuanvideo-community/HunyuanVideo`: the four subfolders of `root`.
    pub fn hunyuan_video(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        Self {
            text_encoder: root.join("text_encoder"),
            text_encoder_2: root.join("text_encoder_2"),
            tokenizer: root.join("tokenizer"),
            tokenizer_2: root.join("tokenizer_2"),
        }
    }
}

/// Both text encoders and their tokenizers, loaded.
#[derive(Debug, Clone)]
pub struct TextEncoders<B: FramePackBackend> {
    llama: LlamaTextEncoder<B>,
    llama_tokenizer: LlamaTokenizer,
    clip: ClipTextEncoder<B>,
    clip_tokenizer: ClipTokenizer,
    overflow: PromptOverflow,
    revision: String,
}

impl<B: FramePackBackend> TextEncoders<B> {
    /// Assembles loaded parts. `revision` names the weights for caching (see
    /// [`PromptEncoder::revision`]); the dtypes are appended to it.
    pub fn new(
        llama: LlamaTextEncoder<B>,
        llama_tokenizer: LlamaTokenizer,
        clip: ClipTextEncoder<B>,
        clip_tokenizer: ClipTokenizer,
        overflow: PromptOverflow,
        revision: impl Into<String>,
    ) -> Self {
        let revision = format!(
            "{}|llama {:?}|clip {:?}",
            revision.into(),
            llama.dtype(),
            clip.dtype()
        );
        Self {
            llama,
            llama_tokenizer,
            clip,
            clip_tokenizer,
            overflow,
            revision,
        }
    }

    /// Loads both tokenizers (first, so that a missing one fails fast) and both encoders
    /// from their published folders (LLaMA layers 0..=29 only), computing in `options.dtype`
    /// (FramePack: fp16). `options.residency` is LLaMA's: streamed, its layers are read one
    /// at a time during each encode ([`LlamaTextEncoder::load`]), about 1.5 GB of the device
    /// instead of 15 GB for a re-read of the mapped layers per prompt; CLIP, small, is always
    /// resident.
    pub fn load(
        folders: &TextEncoderFolders,
        device: &B::Device,
        options: &LoadOptions,
        overflow: PromptOverflow,
        revision: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let llama_tokenizer = LlamaTokenizer::from_file(&folders.tokenizer)?;
        let clip_tokenizer = ClipTokenizer::from_folder(&folders.tokenizer_2)?;
        let llama = LlamaTextEncoder::from_folder(&folders.text_encoder, device, options)?;
        let clip_options = options.clone().residency(Residency::Resident);
        let clip = ClipTextEncoder::from_folder(&folders.text_encoder_2, device, &clip_options)?;
        Ok(Self::new(
            llama,
            llama_tokenizer,
            clip,
            clip_tokenizer,
            overflow,
            revision,
        ))
    }

    /// The LLaMA tower.
    pub fn llama(&self) -> &LlamaTextEncoder<B> {
        &self.llama
    }

    /// The CLIP tower.
    pub fn clip(&self) -> &ClipTextEncoder<B> {
        &self.clip
    }

    /// The conditioning of one prompt (FramePack's `encode_prompt_conds`).
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        let llama_tokens = self.llama_tokenizer.tokenize(prompt, self.overflow)?;
        let hidden = self.llama.hidden_states(&llama_tokens.ids)?;
        let llama = hidden.narrow(1, CROP_START, llama_tokens.len());

        let clip_tokens = self.clip_tokenizer.tokenize(prompt)?;
        let clip_pooled = self.clip.pooled(&clip_tokens.ids)?;
        Ok(PromptEmbeddings {
            llama,
            clip_pooled,
            llama_dropped: llama_tokens.dropped,
            clip_dropped: clip_tokens.dropped,
        })
    }
}

impl<B: FramePackBackend> PromptEncoder<B> for TextEncoders<B> {
    fn revision(&self) -> String {
        self.revision.clone()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        self.encode_prompt(prompt)
    }
}

/// Text encoders that load on the first prompt they must actually encode, so that a run whose
/// prompts are all cached never reads the 15 GB LLaMA checkpoint. Put a
/// [`CachedPromptEncoder`](super::CachedPromptEncoder) in front.
#[derive(Debug)]
pub struct LazyTextEncoders<B: FramePackBackend> {
    folders: TextEncoderFolders,
    device: B::Device,
    dtype: DType,
    overflow: PromptOverflow,
    revision: String,
    loaded: Option<TextEncoders<B>>,
}

impl<B: FramePackBackend> LazyTextEncoders<B> {
    /// Encoders to be loaded from `folders` when first needed. `revision` should name the
    /// checkpoint (e.g. `hunyuanvideo-community/HunyuanVideo@<commit>`); see
    /// [`default_revision`] for one derived from the folder.
    pub fn new(
        folders: TextEncoderFolders,
        device: &B::Device,
        dtype: DType,
        overflow: PromptOverflow,
        revision: impl Into<String>,
    ) -> Self {
        Self {
            folders,
            device: device.clone(),
            dtype,
            overflow,
            revision: format!("{}|llama {dtype:?}|clip {dtype:?}", revision.into()),
            loaded: None,
        }
    }

    /// Whether the weights are in memory.
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// Frees the weights (they are loaded again when next needed).
    pub fn unload(&mut self) {
        self.loaded = None;
    }

    /// The loaded encoders, loading them now if needed.
    pub fn get(&mut self) -> Result<&TextEncoders<B>, ModelError> {
        let encoders = match self.loaded.take() {
            Some(encoders) => encoders,
            None => TextEncoders::load(
                &self.folders,
                &self.device,
                &LoadOptions::new(self.dtype),
                self.overflow,
                String::new(),
            )?,
        };
        Ok(self.loaded.insert(encoders))
    }
}

impl<B: FramePackBackend> PromptEncoder<B> for LazyTextEncoders<B> {
    fn revision(&self) -> String {
        self.revision.clone()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        self.get()?.encode_prompt(prompt)
    }
}

/// A revision string for checkpoint folders without a better name: the Hugging Face snapshot
/// commit when the path lies in a hub cache (`…/snapshots/<commit>/…`), else the absolute
/// path of the LLaMA folder. Name the revision explicitly when the files can change in place.
pub fn default_revision(folders: &TextEncoderFolders) -> String {
    let path = std::fs::canonicalize(&folders.text_encoder)
        .unwrap_or_else(|_| folders.text_encoder.clone());
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(i) = parts.iter().position(|p| p == "snapshots") {
        if let (Some(repo), Some(commit)) = (i.checked_sub(1).map(|j| &parts[j]), parts.get(i + 1))
        {
            return format!("{repo}@{commit}");
        }
    }
    format!("path:{}", path.display())
}
