//! From prompts to conditioning: the `cfg == 1` shortcut of the negative prompt, the
//! zero-padding to 512 with a mask, the prompt-embedding cache (hits, misses, atomic files,
//! lazy loading of the encoders), and the whole `encode_prompt_conds` path with the real
//! tokenizers in front of small random-weight towers.

mod text_common;

use burn::tensor::{DType, Tensor, TensorData};
use framepack_models::text::tokenizer::CROP_START;
use framepack_models::text::{
    encode_prompt_pair, CachedPromptEncoder, ClipTextConfig, ClipTextEncoder, ClipTokenizer,
    LazyTextEncoders, LlamaConfig, LlamaTextEncoder, LlamaTokenizer, PromptCache, PromptEmbeddings,
    PromptEncoder, PromptOverflow, TextEncoderFolders, TextEncoders,
};
use framepack_models::weights::RandomSource;
use framepack_models::LoadOptions;
use framepack_models::{CpuBackend as B, ModelError};
use text_common::{clip_tokenizer_folder, llama_tokenizer_json, reference};

/// A stand-in encoder: deterministic values per prompt, and a log of what it encoded.
struct FakeEncoder {
    revision: String,
    calls: Vec<String>,
}

impl FakeEncoder {
    fn new(revision: &str) -> Self {
        Self {
            revision: revision.into(),
            calls: Vec::new(),
        }
    }
}

fn fake_embeddings(prompt: &str) -> PromptEmbeddings<B> {
    let dev = Default::default();
    let len = prompt.len() % 7 + 1;
    let seed = prompt.bytes().map(f32::from).sum::<f32>();
    let values =
        |n: usize| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
    let llama = Tensor::<B, 3>::from_data(TensorData::new(values(len * 8), [1, len, 8]), &dev)
        .cast(DType::F16);
    let clip = Tensor::<B, 2>::from_data(TensorData::new(values(4), [1, 4]), &dev).cast(DType::F16);
    PromptEmbeddings {
        llama,
        clip_pooled: clip,
        llama_dropped: len % 2,
        clip_dropped: 3,
    }
}

impl PromptEncoder<B> for FakeEncoder {
    fn revision(&self) -> String {
        self.revision.clone()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        self.calls.push(prompt.to_string());
        Ok(fake_embeddings(prompt))
    }
}

fn same(a: &PromptEmbeddings<B>, b: &PromptEmbeddings<B>) -> bool {
    let eq3 = |x: &Tensor<B, 3>, y: &Tensor<B, 3>| {
        x.dims() == y.dims()
            && x.dtype() == y.dtype()
            && x.clone().into_data().as_bytes() == y.clone().into_data().as_bytes()
    };
    let eq2 = |x: &Tensor<B, 2>, y: &Tensor<B, 2>| {
        x.dims() == y.dims() && x.clone().into_data().as_bytes() == y.clone().into_data().as_bytes()
    };
    eq3(&a.llama, &b.llama)
        && eq2(&a.clip_pooled, &b.clip_pooled)
        && a.llama_dropped == b.llama_dropped
        && a.clip_dropped == b.clip_dropped
}

fn max_abs<const D: usize>(t: &Tensor<B, D>) -> f32 {
    t.clone().cast(DType::F32).abs().max().into_scalar()
}

#[test]
fn cfg_one_uses_zeros_and_never_encodes_the_negative_prompt() {
    let mut encoder = FakeEncoder::new("fake");
    let pair = encode_prompt_pair(&mut encoder, "a cat", "ugly, blurry", 1.0).unwrap();
    assert_eq!(encoder.calls, ["a cat"]);
    assert_eq!(pair.negative.llama.dims(), pair.positive.llama.dims());
    assert_eq!(pair.negative.llama.dtype(), DType::F16);
    assert_eq!(
        pair.negative.clip_pooled.dims(),
        pair.positive.clip_pooled.dims()
    );
    assert_eq!(max_abs(&pair.negative.llama), 0.0);
    assert_eq!(max_abs(&pair.negative.clip_pooled), 0.0);
    assert!(max_abs(&pair.positive.llama) > 0.0);
    // Same L, so the reference's negative mask has L trues.
    let (_, mask) = pair.negative.padded(512);
    let trues: Vec<bool> = mask.into_data().to_vec().unwrap();
    assert_eq!(trues.iter().filter(|&&m| m).count(), pair.positive.len());
}

#[test]
fn real_cfg_encodes_the_negative_prompt() {
    let mut encoder = FakeEncoder::new("fake");
    let pair = encode_prompt_pair(&mut encoder, "a cat", "ugly, blurry", 7.5).unwrap();
    assert_eq!(encoder.calls, ["a cat", "ugly, blurry"]);
    assert_eq!(pair.negative.len(), fake_embeddings("ugly, blurry").len());
    assert!(max_abs(&pair.negative.llama) > 0.0);
}

#[test]
fn padded_is_crop_or_pad_yield_mask() {
    let e = fake_embeddings("abc");
    let l = e.len();
    let (values, mask) = e.padded(512);
    assert_eq!(values.dims(), [1, 512, 8]);
    let mask: Vec<bool> = mask.into_data().to_vec().unwrap();
    assert_eq!(mask.len(), 512);
    assert!(mask[..l].iter().all(|&m| m) && mask[l..].iter().all(|&m| !m));
    assert_eq!(max_abs(&values.clone().narrow(1, l, 512 - l)), 0.0);
    let diff = values.narrow(1, 0, l).cast(DType::F32) - e.llama.clone().cast(DType::F32);
    assert_eq!(max_abs(&diff), 0.0);
    // Longer than the target: cropped, all true.
    let (values, mask) = e.padded(1);
    assert_eq!(values.dims(), [1, 1, 8]);
    assert_eq!(mask.into_data().to_vec::<bool>().unwrap(), [true]);
}

#[test]
fn cache_hits_skip_the_encoder_in_memory_and_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let cache = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    let mut encoder = CachedPromptEncoder::new(FakeEncoder::new("rev-a"), cache);

    let first = encoder.encode("a cat").unwrap();
    let again = encoder.encode("a cat").unwrap();
    let other = encoder.encode("a dog").unwrap();
    assert_eq!(encoder.inner().calls, ["a cat", "a dog"]);
    assert_eq!((encoder.hits(), encoder.misses()), (1, 2));
    assert!(same(&first, &again));
    assert!(!same(&first, &other));

    // A new process: empty memory, same folder. Nothing is encoded, values are bit-identical.
    let cache = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    let mut encoder = CachedPromptEncoder::new(FakeEncoder::new("rev-a"), cache);
    let pair = encode_prompt_pair(&mut encoder, "a cat", "a dog", 3.0).unwrap();
    assert!(encoder.inner().calls.is_empty());
    assert!(same(&pair.positive, &first));
    assert!(same(&pair.negative, &other));

    // Another model revision is another key.
    let cache = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    let mut encoder = CachedPromptEncoder::new(FakeEncoder::new("rev-b"), cache);
    encoder.encode("a cat").unwrap();
    assert_eq!(encoder.inner().calls, ["a cat"]);
}

#[test]
fn cache_keys_separate_prompt_and_revision() {
    let k = PromptCache::<B>::key;
    assert_eq!(k("r", "a cat"), k("r", "a cat"));
    assert_ne!(k("r", "a cat"), k("r", "a cat "));
    assert_ne!(k("r", "a cat"), k("s", "a cat"));
    // Length-prefixed fields: moving text between revision and prompt changes the key.
    assert_ne!(k("ab", "c"), k("a", "bc"));
    assert_eq!(k("r", "").len(), 64);
}

#[test]
fn cache_files_are_written_atomically_and_bad_files_are_misses() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let mut cache = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    let e = fake_embeddings("a cat");
    // A stale temporary file of a crashed writer is neither read nor in the way.
    let path = cache.path_of(&PromptCache::<B>::key("r", "a cat")).unwrap();
    let stale = dir.path().join(format!(
        ".{}.999.0.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&stale, b"partial").unwrap();
    cache.insert("r", "a cat", &e).unwrap();
    // Exactly the final file appeared: no temporary file of ours is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![
        stale.file_name().unwrap().to_string_lossy().into_owned(),
        path.file_name().unwrap().to_string_lossy().into_owned(),
    ];
    expected.sort();
    assert_eq!(names, expected);
    assert!(path.is_file());

    // The file alone (fresh memory) gives back the entry.
    let mut fresh = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    assert!(same(&fresh.get("r", "a cat").unwrap(), &e));

    // A truncated file is a miss, and inserting again repairs it.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let mut fresh = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    assert!(fresh.get("r", "a cat").is_none());
    fresh.insert("r", "a cat", &e).unwrap();
    let mut fresh = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    assert!(same(&fresh.get("r", "a cat").unwrap(), &e));

    // Another prompt's file under this key (a hash collision, a copied file) is a miss.
    let other = PromptCache::<B>::key("r", "a dog");
    std::fs::copy(&path, fresh.path_of(&other).unwrap()).unwrap();
    let mut fresh = PromptCache::<B>::on_disk(dir.path(), &dev).unwrap();
    assert!(fresh.get("r", "a dog").is_none());
}

#[test]
fn cached_prompts_never_load_the_text_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let missing = dir.path().join("no-such-checkpoint");
    let lazy = || {
        LazyTextEncoders::<B>::new(
            TextEncoderFolders::hunyuan_video(&missing),
            &dev,
            DType::F16,
            PromptOverflow::Truncate,
            "hunyuanvideo-community/HunyuanVideo@test",
        )
    };
    // Fill the cache under the lazy encoder's revision.
    let revision = lazy().revision();
    assert!(revision.contains("F16"), "{revision}");
    let mut cache = PromptCache::<B>::on_disk(dir.path().join("cache"), &dev).unwrap();
    for prompt in ["section one", "section two"] {
        cache
            .insert(&revision, prompt, &fake_embeddings(prompt))
            .unwrap();
    }

    let cache = PromptCache::<B>::on_disk(dir.path().join("cache"), &dev).unwrap();
    let mut encoder = CachedPromptEncoder::new(lazy(), cache);
    let pair = encode_prompt_pair(&mut encoder, "section two", "", 1.0).unwrap();
    assert!(same(&pair.positive, &fake_embeddings("section two")));
    encoder.encode("section one").unwrap();
    assert!(!encoder.inner().is_loaded());

    // A miss must load the weights: here that fails, naming the missing folder.
    let err = encoder.encode("a new prompt").unwrap_err().to_string();
    assert!(err.contains("no-such-checkpoint"), "{err}");
    assert!(!encoder.inner().is_loaded());
}

/// Small random towers with the real vocabularies, behind the real tokenizers.
fn random_encoders(overflow: PromptOverflow) -> TextEncoders<B> {
    let dev = Default::default();
    let llama_config = LlamaConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        ..LlamaConfig::llava_llama3_8b()
    };
    let clip_config = ClipTextConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        ..ClipTextConfig::clip_vit_large_patch14()
    };
    let mut src = RandomSource::<B>::new(&dev, 7, 0.5);
    let llama =
        LlamaTextEncoder::load(&mut src, llama_config, &LoadOptions::new(DType::F32)).unwrap();
    let clip = ClipTextEncoder::load(&mut src, clip_config, &LoadOptions::new(DType::F32)).unwrap();
    TextEncoders::new(
        llama,
        LlamaTokenizer::from_file(llama_tokenizer_json()).unwrap(),
        clip,
        ClipTokenizer::from_folder(clip_tokenizer_folder()).unwrap(),
        overflow,
        "random",
    )
}

#[test]
fn encode_prompt_crops_the_template_and_pools_at_the_eos() {
    let encoders = random_encoders(PromptOverflow::Truncate);
    let llama_tok = LlamaTokenizer::from_file(llama_tokenizer_json()).unwrap();
    let clip_tok = ClipTokenizer::from_folder(clip_tokenizer_folder()).unwrap();

    let e = encoders.encode_prompt("a cat").unwrap();
    assert_eq!(e.llama.dims(), [1, 3, 16]);
    assert_eq!(e.clip_pooled.dims(), [1, 16]);
    assert_eq!((e.llama_dropped, e.clip_dropped), (0, 0));
    // The kept features are positions 95.. of the templated sequence's hidden state.
    let ids = llama_tok
        .tokenize("a cat", PromptOverflow::Error)
        .unwrap()
        .ids;
    let full = encoders.llama().hidden_states(&ids).unwrap();
    let diff = full.narrow(1, CROP_START, 3) - e.llama.clone();
    assert_eq!(max_abs(&diff), 0.0);
    // The pooled CLIP output is the reference's (77 padded ids, pooled at the first EOS).
    let padded = clip_tok.tokenize("a cat").unwrap().padded();
    assert_eq!(padded.len(), 77);
    let reference_pooled = encoders.clip().pooled(&padded).unwrap();
    assert_eq!(max_abs(&(reference_pooled - e.clip_pooled.clone())), 0.0);

    // The empty prompt: L = 1.
    assert_eq!(encoders.encode_prompt("").unwrap().len(), 1);
}

#[test]
fn over_long_prompts_are_truncated_or_refused() {
    let (_, prompts) = reference();
    let long = prompts.iter().find(|p| p.name == "long").unwrap();

    let e = random_encoders(PromptOverflow::Truncate)
        .encode_prompt(&long.prompt)
        .unwrap();
    assert_eq!(e.len(), 256);
    assert_eq!(e.llama_dropped, long.llama_untruncated - 351);
    assert_eq!(e.clip_dropped, long.clip_untruncated - 77);

    let err = random_encoders(PromptOverflow::Error)
        .encode_prompt(&long.prompt)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                argument: "prompt",
                ..
            }
        ),
        "{err}"
    );
}
