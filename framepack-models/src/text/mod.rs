//! The text conditioning: LLaMA-3 and CLIP-L text encoders, their tokenizers, and a cache of
//! prompt embeddings (see `docs/encoders.md`).
//!
//! Data flow of one prompt (FramePack's `encode_prompt_conds`):
//! 1. LLaMA: BOS + HunyuanVideo's template around the prompt, at most 256 prompt tokens
//!    ([`LlamaTokenizer`]); 30 of the 32 decoder layers; `hidden_states[-3]` without the final
//!    norm; the first 95 (template) positions cropped → `[1, L, 4096]` ([`LlamaTextEncoder`]).
//! 2. CLIP-L: the raw prompt, 77 tokens ([`ClipTokenizer`]); the final-LN state at the EOS
//!    → `[1, 768]` ([`ClipTextEncoder`]).
//! 3. The negative prompt is encoded only when the CFG scale is not 1 ([`encode_prompt_pair`]).
//! 4. [`CachedPromptEncoder`] + [`LazyTextEncoders`]: cached prompts never load the weights.

mod cache;
pub mod clip;
pub mod llama;
mod prompt;
pub mod tokenizer;

pub use cache::{CachedPromptEncoder, PromptCache, CACHE_FORMAT};
pub use clip::{ClipTextConfig, ClipTextEncoder, ClipTextOutput};
pub use llama::{LlamaConfig, LlamaTextEncoder};
pub use prompt::{
    default_revision, encode_prompt_pair, LazyTextEncoders, PromptEmbeddings, PromptEncoder,
    PromptPair, TextEncoderFolders, TextEncoders,
};
pub use tokenizer::{
    ClipPromptTokens, ClipTokenizer, LlamaPromptTokens, LlamaTokenizer, PromptOverflow,
};
