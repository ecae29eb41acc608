//! The `tiny-random` model family: every network of FramePack with its real architecture but a
//! few thousand parameters of random weights, so the whole pipeline (text and image encoders,
//! VAE encode, all sections of the sampler, VAE decode, MP4) runs on any CPU in seconds.
//! **Its output is noise**: it exists to demonstrate and test the plumbing, not to make videos.
//!
//! The text encoders use a byte-level stand-in tokenizer (the real ones need the 15 GB
//! checkpoint's vocabulary): LLaMA ids are `[BOS] + UTF-8 bytes + [EOT]`, with the same
//! 256-token limit on the prompt tokens as the real template; CLIP ids are
//! `[BOS] + at most 75 bytes + [EOS]`.

use burn::tensor::DType;
use framepack_models::text::tokenizer::MAX_PROMPT_TOKENS;
use framepack_models::text::{
    ClipTextConfig, ClipTextEncoder, LlamaConfig, LlamaTextEncoder, PromptEmbeddings, PromptEncoder,
};
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
use framepack_models::vision::{SiglipVisionConfig, SiglipVisionEncoder};
use framepack_models::weights::RandomSource;
use framepack_models::{FramePackBackend, ModelError, Residency};

/// Standard deviation of the random weights (small enough that activations stay finite).
const WEIGHT_STD: f64 = 0.05;
/// Feature width shared by the tiny encoders and the tiny transformer's projections.
const WIDTH: usize = 32;
const LLAMA_BOS: u32 = 256;
const LLAMA_EOT: u32 = 257;
const CLIP_BOS: u32 = 510;
const CLIP_EOS: u32 = 511;
const CLIP_CONTENT: usize = 75;

/// The size of the random-weight networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    /// A few thousand parameters per network: runs anywhere in seconds.
    Tiny,
    /// The published architectures (13 B transformer, 8 B LLaMA, …) with random weights:
    /// benchmarks of speed and memory without the checkpoints.
    Full,
}

impl Scale {
    fn weight_std(self) -> f64 {
        match self {
            Self::Tiny => WEIGHT_STD,
            // Wide layers: a smaller spread keeps fp16/bf16 activations finite.
            Self::Full => 0.02,
        }
    }
}

/// The tiny transformer: `TransformerConfig::tiny()` with its text/image feature widths matched
/// to the tiny encoders.
pub(crate) fn transformer_config() -> TransformerConfig {
    TransformerConfig {
        text_embed_dim: WIDTH,
        pooled_projection_dim: WIDTH,
        image_proj_dim: WIDTH,
        ..TransformerConfig::tiny()
    }
}

fn llama_config(scale: Scale) -> LlamaConfig {
    match scale {
        Scale::Tiny => LlamaConfig {
            hidden_size: WIDTH,
            intermediate_size: 2 * WIDTH,
            num_hidden_layers: 4,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            vocab_size: 260,
            max_position_embeddings: 512,
            ..LlamaConfig::tiny()
        },
        Scale::Full => LlamaConfig::llava_llama3_8b(),
    }
}

fn clip_config(scale: Scale) -> ClipTextConfig {
    match scale {
        Scale::Tiny => ClipTextConfig {
            hidden_size: WIDTH,
            intermediate_size: 2 * WIDTH,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            vocab_size: 512,
            ..ClipTextConfig::tiny()
        },
        Scale::Full => ClipTextConfig::clip_vit_large_patch14(),
    }
}

/// Each network draws from its own seed, so that one can be rebuilt alone (the low-VRAM
/// mode loads the encoders on demand) and still get the same weights. Tiny weights are drawn
/// on the host, the same on every backend (a GPU run can be checked against the CPU); the
/// full-size ones on the device, where 13 B values are drawn in moments.
fn source<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    network: u64,
    scale: Scale,
) -> RandomSource<B> {
    let seed = seed.wrapping_mul(0x9e37_79b9).wrapping_add(network);
    match scale {
        Scale::Tiny => RandomSource::host(device, seed, scale.weight_std()),
        Scale::Full => RandomSource::new(device, seed, scale.weight_std()),
    }
}

/// The random transformer of `seed` (also used when a pipeline switches between the inverted and
/// F1 "checkpoints", which are one model here).
pub(crate) fn transformer<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    scale: Scale,
    options: &LoadOptions,
) -> Result<FramePackTransformer<B>, ModelError> {
    let config = match scale {
        Scale::Tiny => transformer_config(),
        Scale::Full => TransformerConfig::framepack(),
    };
    let src = source::<B>(device, seed, 0, scale);
    Ok(FramePackTransformer::load(src, config, options)?.0)
}

/// The random VAE of `seed`.
pub(crate) fn vae<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    scale: Scale,
    dtype: DType,
) -> Result<HunyuanVideoVae<B>, ModelError> {
    let config = match scale {
        Scale::Tiny => VaeConfig::tiny(),
        Scale::Full => VaeConfig::hunyuan_video(),
    };
    HunyuanVideoVae::load(
        &mut source::<B>(device, seed, 1, scale),
        config,
        &LoadOptions::new(dtype),
    )
}

/// The random LLaMA and CLIP towers of `seed`.
///
/// `layerwise`: LLaMA's layers are drawn anew, one at a time, during each encode (the
/// low-VRAM mode's behaviour; at full size the weights then differ between calls, which a
/// benchmark of memory and speed does not mind; tiny ones are drawn the same each time).
pub(crate) fn text_encoders<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    scale: Scale,
    dtype: DType,
    layerwise: bool,
) -> Result<TinyTextEncoders<B>, ModelError> {
    let llama = llama_config(scale);
    let clip = clip_config(scale);
    let ids = match scale {
        Scale::Tiny => StandInIds {
            llama_bos: LLAMA_BOS,
            llama_eot: LLAMA_EOT,
            clip_bos: CLIP_BOS,
            clip_eos: CLIP_EOS,
        },
        // The real vocabularies' special tokens (`<|begin_of_text|>`, `<|eot_id|>`,
        // `<|startoftext|>`, `<|endoftext|>`).
        Scale::Full => StandInIds {
            llama_bos: 128_000,
            llama_eot: 128_009,
            clip_bos: 49_406,
            clip_eos: 49_407,
        },
    };
    Ok(TinyTextEncoders {
        llama: LlamaTextEncoder::load(
            source::<B>(device, seed, 2, scale),
            llama,
            &LoadOptions::new(dtype).residency(if layerwise {
                Residency::Streamed
            } else {
                Residency::Resident
            }),
        )?,
        clip: ClipTextEncoder::load(
            &mut source::<B>(device, seed, 3, scale),
            clip,
            &LoadOptions::new(dtype),
        )?,
        ids,
        revision: format!("random {scale:?} seed {seed} ({dtype:?})"),
    })
}

/// The random SigLIP tower of `seed`.
pub(crate) fn siglip<B: FramePackBackend>(
    device: &B::Device,
    seed: u64,
    scale: Scale,
    dtype: DType,
) -> Result<SiglipVisionEncoder<B>, ModelError> {
    let config = match scale {
        Scale::Tiny => SiglipVisionConfig::tiny(),
        Scale::Full => SiglipVisionConfig::so400m_patch14_384(),
    };
    SiglipVisionEncoder::load(
        &mut source::<B>(device, seed, 4, scale),
        config,
        &LoadOptions::new(dtype),
    )
}

/// Special token ids of the byte-level stand-in tokenizer.
struct StandInIds {
    llama_bos: u32,
    llama_eot: u32,
    clip_bos: u32,
    clip_eos: u32,
}

/// LLaMA prompt tokens of `prompt` under the byte-level stand-in tokenizer (bytes + `<EOT>`),
/// before the 256-token limit.
pub(crate) fn prompt_tokens(prompt: &str) -> usize {
    prompt.len() + 1
}

/// The tiny LLaMA and CLIP towers with the byte-level stand-in tokenizer.
pub(crate) struct TinyTextEncoders<B: FramePackBackend> {
    llama: LlamaTextEncoder<B>,
    clip: ClipTextEncoder<B>,
    ids: StandInIds,
    revision: String,
}

impl<B: FramePackBackend> PromptEncoder<B> for TinyTextEncoders<B> {
    fn revision(&self) -> String {
        self.revision.clone()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        let bytes = prompt.as_bytes();
        // LLaMA: [BOS] + bytes + [EOT], the prompt part limited like the real template's.
        let mut prompt_ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
        prompt_ids.push(self.ids.llama_eot);
        let dropped = prompt_ids.len().saturating_sub(MAX_PROMPT_TOKENS);
        prompt_ids.truncate(MAX_PROMPT_TOKENS);
        let mut ids = vec![self.ids.llama_bos];
        ids.extend(&prompt_ids);
        let hidden = self.llama.hidden_states(&ids)?;
        let llama = hidden.narrow(1, 1, prompt_ids.len());

        let content = bytes.len().min(CLIP_CONTENT);
        let mut clip_ids = vec![self.ids.clip_bos];
        clip_ids.extend(bytes[..content].iter().map(|&b| u32::from(b)));
        clip_ids.push(self.ids.clip_eos);
        let clip_pooled = self.clip.pooled(&clip_ids)?;
        Ok(PromptEmbeddings {
            llama,
            clip_pooled,
            llama_dropped: dropped,
            clip_dropped: bytes.len() - content,
        })
    }
}
