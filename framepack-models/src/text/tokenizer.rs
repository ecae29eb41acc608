//! The two tokenizers, reproducing what FramePack's reference (transformers 4.46.2) feeds its
//! encoders.
//!
//! - [`LlamaTokenizer`]: the checkpoint's `tokenizer/tokenizer.json` (`LlamaTokenizerFast`),
//!   the prompt inside HunyuanVideo's template, BOS first, at most 256 prompt tokens, and the
//!   first 95 template tokens cropped off.
//! - [`ClipTokenizer`]: `tokenizer_2/` (`vocab.json` + `merges.txt`, read by the reference's
//!   *slow* `CLIPTokenizer`), `<|startoftext|> … <|endoftext|>` with at most 75 content tokens.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{BertNormalizer, Lowercase, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, ModelWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::ModelError;
use crate::weights::WeightError;

/// HunyuanVideo's `DEFAULT_PROMPT_TEMPLATE` (diffusers), `{}` standing for the prompt. The
/// numbered items really are joined without spaces.
pub const PROMPT_TEMPLATE: &str = "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: 1. The main content and theme of the video.2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.4. background environment, light, style and atmosphere.5. camera angles, movements, and transitions used in the video:<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>";

/// Tokens before the prompt: BOS, the system block and the user header (`crop_start`).
pub const CROP_START: usize = 95;

/// The most LLaMA tokens FramePack keeps per prompt, the closing `<|eot_id|>` included.
pub const MAX_PROMPT_TOKENS: usize = 256;

/// `<|begin_of_text|>`.
pub const LLAMA_BOS: u32 = 128_000;

/// The last four template tokens: `<|start_header_id|>`, `user`, `<|end_header_id|>`, `\n\n`.
pub const TEMPLATE_TAIL: [u32; 4] = [128_006, 882, 128_007, 271];

/// CLIP's context: BOS, at most 75 content tokens, EOS.
pub const CLIP_MAX_LENGTH: usize = 77;

/// What to do with a prompt longer than [`MAX_PROMPT_TOKENS`] LLaMA tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptOverflow {
    /// Keep the first 256 tokens, as the reference does (the closing `<|eot_id|>` and the
    /// end of the prompt are lost); the number of dropped tokens is reported.
    #[default]
    Truncate,
    /// Refuse the prompt with an error that says how many tokens are too many.
    Error,
}

fn tokenizer_error(path: &Path, reason: impl std::fmt::Display) -> WeightError {
    WeightError::BadConfig {
        path: path.to_path_buf(),
        reason: format!("tokenizer: {reason}"),
    }
}

/// The LLaMA prompt tokens of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaPromptTokens {
    /// BOS, template and prompt: what the reference runs through the encoder (at most
    /// `95 + 256 = 351` ids).
    pub ids: Vec<u32>,
    /// Prompt tokens the 256-token limit dropped (0 when the prompt fits).
    pub dropped: usize,
}

impl LlamaPromptTokens {
    /// The kept prompt tokens `ids[95..]`, closing `<|eot_id|>` included unless truncated.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.ids[CROP_START.min(self.ids.len())..]
    }

    /// `L`, the number of LLaMA feature vectors the prompt yields (1..=256).
    pub fn len(&self) -> usize {
        self.prompt_ids().len()
    }

    /// Never true for a tokenized prompt (even the empty prompt keeps `<|eot_id|>`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The LLaMA-3 tokenizer with HunyuanVideo's prompt template.
#[derive(Clone)]
pub struct LlamaTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for LlamaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl LlamaTokenizer {
    /// Reads `tokenizer.json`, or the one in a folder (`…/tokenizer/`), and checks that it
    /// reproduces the template prefix FramePack's crop relies on.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        if !path.is_file() {
            return Err(WeightError::NotFound {
                what: format!("LLaMA tokenizer {}", path.display()),
                hint:
                    "expected the `tokenizer/tokenizer.json` of hunyuanvideo-community/HunyuanVideo"
                        .into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| tokenizer_error(&path, e))?;
        let this = Self { tokenizer, path };
        this.check_template()?;
        Ok(this)
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokenizes `BOS + template(prompt)` as the reference does (`add_special_tokens`, the
    /// special tokens written in the template recognised, no padding).
    pub fn encode_templated(&self, prompt: &str) -> Result<Vec<u32>, WeightError> {
        let text = PROMPT_TEMPLATE.replacen("{}", prompt, 1);
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| tokenizer_error(&self.path, e))?;
        let mut ids = encoding.get_ids().to_vec();
        // LlamaTokenizerFast always adds BOS; a tokenizer.json whose post-processor does not
        // must not shift the crop.
        if ids.first() != Some(&LLAMA_BOS) {
            ids.insert(0, LLAMA_BOS);
        }
        Ok(ids)
    }

    fn check_template(&self) -> Result<(), WeightError> {
        let ids = self.encode_templated("")?;
        let tail = ids.get(CROP_START - TEMPLATE_TAIL.len()..CROP_START);
        if tail != Some(&TEMPLATE_TAIL[..]) {
            return Err(tokenizer_error(
                &self.path,
                format!(
                    "the prompt template does not tokenize as HunyuanVideo's (expected ids \
                     {TEMPLATE_TAIL:?} at positions 91..95, got {tail:?} in {} ids): this is \
                     not the LLaMA-3 tokenizer of the FramePack text encoder",
                    ids.len()
                ),
            ));
        }
        Ok(())
    }

    /// The LLaMA tokens of `prompt`: at most 256 after the 95-token template prefix.
    ///
    /// Longer prompts are truncated like the reference (`overflow = Truncate`, with the count
    /// in [`LlamaPromptTokens::dropped`]) or refused (`overflow = Error`). A prompt that starts
    /// with a line break merges it into the template's `\n\n` token, which the fixed crop then
    /// drops; the reference behaves the same.
    pub fn tokenize(
        &self,
        prompt: &str,
        overflow: PromptOverflow,
    ) -> Result<LlamaPromptTokens, ModelError> {
        let mut ids = self.encode_templated(prompt)?;
        let header = &TEMPLATE_TAIL[..3];
        if ids.get(CROP_START - 4..CROP_START - 1) != Some(header) {
            return Err(ModelError::input(
                "prompt",
                "the prompt changed how the template prefix tokenizes; FramePack's fixed \
                 95-token crop would cut it in the wrong place",
            ));
        }
        let limit = CROP_START + MAX_PROMPT_TOKENS;
        let dropped = ids.len().saturating_sub(limit);
        if dropped > 0 {
            if overflow == PromptOverflow::Error {
                return Err(ModelError::input(
                    "prompt",
                    format!(
                        "{} LLaMA tokens (with the closing <|eot_id|>), the text encoder reads \
                         at most {MAX_PROMPT_TOKENS}: shorten it by {dropped} token(s), or \
                         allow truncation to keep the first {MAX_PROMPT_TOKENS} as FramePack does",
                        ids.len() - CROP_START
                    ),
                ));
            }
            ids.truncate(limit);
        }
        Ok(LlamaPromptTokens { ids, dropped })
    }
}

/// The CLIP tokens of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipPromptTokens {
    /// `<|startoftext|>`, at most 75 content tokens, `<|endoftext|>` (not padded).
    pub ids: Vec<u32>,
    /// Content tokens the 77-token context dropped.
    pub dropped: usize,
}

impl ClipPromptTokens {
    /// The ids padded to 77 with `<|endoftext|>`, exactly the reference's `input_ids`.
    pub fn padded(&self) -> Vec<u32> {
        let eos = self.ids.last().copied().unwrap_or(0);
        let mut ids = self.ids.clone();
        ids.resize(CLIP_MAX_LENGTH, eos);
        ids
    }
}

/// The CLIP BPE tokenizer, behaving like transformers' slow `CLIPTokenizer` without `ftfy`
/// (FramePack's environment): text cleaned BERT-style (control characters removed, whitespace
/// unified, spaces put around CJK ideographs), NFC, lower-cased, split by CLIP's regex,
/// byte-level BPE with `</w>` word ends.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .finish()
    }
}

/// CLIP's word regex (the slow tokenizer's, minus the special tokens handled as added tokens).
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";

impl ClipTokenizer {
    /// Reads a tokenizer folder (`…/tokenizer_2/`): `vocab.json` + `merges.txt` when present
    /// (what the reference reads), else `tokenizer.json` (its BPE; the normaliser and splitter
    /// are replaced by the reference's, see [`ClipTokenizer`]).
    pub fn from_folder(folder: impl AsRef<Path>) -> Result<Self, WeightError> {
        let folder = folder.as_ref();
        let (vocab, merges) = (folder.join("vocab.json"), folder.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_and_merges(&vocab, &merges);
        }
        let json = folder.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        Err(WeightError::NotFound {
            what: format!("CLIP tokenizer in {}", folder.display()),
            hint: "expected `vocab.json` and `merges.txt` (or `tokenizer.json`), the \
                   `tokenizer_2` folder of hunyuanvideo-community/HunyuanVideo"
                .into(),
        })
    }

    /// Builds the tokenizer from `vocab.json` and `merges.txt`.
    pub fn from_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<Self, WeightError> {
        let as_str = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| tokenizer_error(p, "the path is not valid UTF-8"))
        };
        let bpe = BPE::from_file(&as_str(vocab)?, &as_str(merges)?)
            .end_of_word_suffix("</w>".into())
            .unk_token(CLIP_EOS.into())
            .build()
            .map_err(|e| tokenizer_error(merges, e))?;
        Self::with_reference_pipeline(Tokenizer::new(bpe), vocab)
    }

    /// Builds the tokenizer from the BPE model of a `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, WeightError> {
        let file = Tokenizer::from_file(path).map_err(|e| tokenizer_error(path, e))?;
        let ModelWrapper::BPE(bpe) = file.get_model().clone() else {
            return Err(tokenizer_error(path, "the model is not BPE"));
        };
        Self::with_reference_pipeline(Tokenizer::new(bpe), path)
    }

    fn with_reference_pipeline(
        mut tokenizer: Tokenizer,
        source: &Path,
    ) -> Result<Self, WeightError> {
        let err = |e| tokenizer_error(source, e);
        let normalizer = NormalizerSequence::new(vec![
            BertNormalizer::new(true, true, Some(false), false).into(),
            NFC.into(),
            Lowercase.into(),
        ]);
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(err)?;
        let pre_tokenizer = PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ]);
        tokenizer
            .with_normalizer(Some(normalizer))
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(None::<tokenizers::DecoderWrapper>);
        tokenizer.add_special_tokens(&[
            AddedToken::from(CLIP_BOS, true),
            AddedToken::from(CLIP_EOS, true),
        ]);
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| tokenizer_error(source, format!("no `{token}` in the vocabulary")))
        };
        let (bos, eos) = (id(CLIP_BOS)?, id(CLIP_EOS)?);
        Ok(Self {
            tokenizer,
            bos,
            eos,
            source: source.to_path_buf(),
        })
    }

    /// `<|startoftext|>`'s id (49406).
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// `<|endoftext|>`'s id (49407), also the padding.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The CLIP tokens of `prompt`: content truncated to 75 tokens like the reference
    /// (CLIP's 77-token context is far shorter than LLaMA's; long prompts always lose their
    /// tail here, in FramePack too).
    pub fn tokenize(&self, prompt: &str) -> Result<ClipPromptTokens, ModelError> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| tokenizer_error(&self.source, e))?;
        let content = encoding.get_ids();
        let keep = content.len().min(CLIP_MAX_LENGTH - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.bos);
        ids.extend_from_slice(&content[..keep]);
        ids.push(self.eos);
        Ok(ClipPromptTokens {
            ids,
            dropped: content.len() - keep,
        })
    }
}
