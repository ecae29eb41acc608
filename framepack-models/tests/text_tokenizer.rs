//! Tokenization against the reference (transformers 4.46.2 as FramePack pins it) on the real
//! LLaMA-3 and CLIP vocabularies: ASCII, Japanese, Chinese, emoji, accents, whitespace,
//! special-token text, the empty prompt, and prompts at and over the 256-token limit
//! (fixtures from `tools/reference/tokenizer_fixture.py`).

mod text_common;

use framepack_models::text::tokenizer::{
    ClipTokenizer, LlamaTokenizer, PromptOverflow, CLIP_MAX_LENGTH, CROP_START, MAX_PROMPT_TOKENS,
    PROMPT_TEMPLATE, TEMPLATE_TAIL,
};
use text_common::{clip_tokenizer_folder, llama_tokenizer_json, reference};

fn llama() -> LlamaTokenizer {
    LlamaTokenizer::from_file(llama_tokenizer_json()).unwrap()
}

fn clip() -> ClipTokenizer {
    ClipTokenizer::from_folder(clip_tokenizer_folder()).unwrap()
}

#[test]
fn template_and_constants_match_the_reference() {
    let (json, prompts) = reference();
    assert_eq!(json["template"].as_str().unwrap(), PROMPT_TEMPLATE);
    assert_eq!(json["crop_start"], CROP_START);
    assert_eq!(json["max_prompt_tokens"], MAX_PROMPT_TOKENS);
    assert!(prompts.len() >= 15);
}

#[test]
fn llama_ids_match_the_reference_on_every_prompt() {
    let tokenizer = llama();
    let (_, prompts) = reference();
    let mut mismatches = Vec::new();
    for p in &prompts {
        let tokens = tokenizer
            .tokenize(&p.prompt, PromptOverflow::Truncate)
            .unwrap();
        if tokens.ids != p.llama_ids {
            mismatches.push(p.name.clone());
            continue;
        }
        // The runtime checks of the crop hold for every prompt not starting with a line break.
        assert_eq!(tokens.ids[0], 128_000, "{}", p.name);
        if !p.prompt.starts_with('\n') {
            assert_eq!(tokens.ids[91..95], TEMPLATE_TAIL, "{}", p.name);
        }
        assert_eq!(
            tokens.prompt_ids(),
            &p.llama_ids[CROP_START..],
            "{}",
            p.name
        );
        assert_eq!(
            tokens.dropped,
            p.llama_untruncated
                .saturating_sub(CROP_START + MAX_PROMPT_TOKENS),
            "{}",
            p.name
        );
        assert!(!tokens.is_empty() && tokens.len() <= MAX_PROMPT_TOKENS);
    }
    println!(
        "LLaMA: {} of {} prompts match the reference ids",
        prompts.len() - mismatches.len(),
        prompts.len()
    );
    assert!(mismatches.is_empty(), "LLaMA ids differ for {mismatches:?}");
}

#[test]
fn llama_crop_keeps_the_prompt_and_its_eot() {
    let tokenizer = llama();
    // The spec's worked example: "a cat" gives 98 ids, L = 3.
    let cat = tokenizer.tokenize("a cat", PromptOverflow::Error).unwrap();
    assert_eq!(cat.ids.len(), 98);
    assert_eq!(cat.prompt_ids(), &[64, 8415, 128_009]);
    // The empty prompt keeps only <|eot_id|>: L = 1.
    let empty = tokenizer.tokenize("", PromptOverflow::Error).unwrap();
    assert_eq!(empty.prompt_ids(), &[128_009]);
    assert_eq!(empty.dropped, 0);
}

#[test]
fn llama_limit_truncates_like_the_reference_or_refuses() {
    let tokenizer = llama();
    let (_, prompts) = reference();
    let get = |name: &str| prompts.iter().find(|p| p.name == name).unwrap();

    // 255 tokens + <|eot_id|> = 256: fits, under both policies.
    let exact = tokenizer
        .tokenize(&get("limit_exact").prompt, PromptOverflow::Error)
        .unwrap();
    assert_eq!(exact.len(), MAX_PROMPT_TOKENS);
    assert_eq!(exact.prompt_ids().last(), Some(&128_009));

    // 256 content tokens: the reference keeps 256 and loses the <|eot_id|>.
    let over = tokenizer
        .tokenize(&get("limit_plus_one").prompt, PromptOverflow::Truncate)
        .unwrap();
    assert_eq!(over.len(), MAX_PROMPT_TOKENS);
    assert_eq!(over.dropped, 1);
    assert_ne!(over.prompt_ids().last(), Some(&128_009));

    // The 316-token prompt: 60 tokens dropped, or a clear error.
    let long = get("long");
    let truncated = tokenizer
        .tokenize(&long.prompt, PromptOverflow::Truncate)
        .unwrap();
    assert_eq!(truncated.ids.len(), CROP_START + MAX_PROMPT_TOKENS);
    assert_eq!(truncated.dropped, long.llama_untruncated - 351);
    assert!(truncated.dropped > 40);
    let err = tokenizer
        .tokenize(&long.prompt, PromptOverflow::Error)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`prompt`"), "{err}");
    assert!(err.contains("256"), "{err}");
    assert!(
        err.contains(&format!("shorten it by {}", truncated.dropped)),
        "{err}"
    );
}

#[test]
fn clip_ids_match_the_slow_reference_tokenizer_on_every_prompt() {
    let tokenizer = clip();
    assert_eq!((tokenizer.bos(), tokenizer.eos()), (49_406, 49_407));
    let (_, prompts) = reference();
    let mut mismatches = Vec::new();
    for p in &prompts {
        let tokens = tokenizer.tokenize(&p.prompt).unwrap();
        assert!(tokens.ids.len() <= CLIP_MAX_LENGTH);
        if tokens.padded() != p.clip_ids {
            println!(
                "CLIP mismatch on {}:\n  ours {:?}\n  ref  {:?}",
                p.name,
                tokens.padded(),
                p.clip_ids
            );
            mismatches.push(p.name.clone());
            continue;
        }
        assert_eq!(
            tokens.dropped,
            p.clip_untruncated.saturating_sub(CLIP_MAX_LENGTH),
            "{}",
            p.name
        );
    }
    println!(
        "CLIP: {} of {} prompts match the reference ids",
        prompts.len() - mismatches.len(),
        prompts.len()
    );
    assert!(mismatches.is_empty(), "CLIP ids differ for {mismatches:?}");
}

#[test]
fn clip_truncation_keeps_the_eos_last() {
    let tokenizer = clip();
    let (_, prompts) = reference();
    let exact = prompts.iter().find(|p| p.name == "clip_exact").unwrap();
    let over = prompts.iter().find(|p| p.name == "clip_plus_one").unwrap();
    let a = tokenizer.tokenize(&exact.prompt).unwrap();
    assert_eq!((a.ids.len(), a.dropped), (77, 0));
    let b = tokenizer.tokenize(&over.prompt).unwrap();
    assert_eq!((b.ids.len(), b.dropped), (77, 1));
    assert_eq!(b.ids.last(), Some(&49_407));
}

#[test]
fn a_tokenizer_that_breaks_the_template_crop_is_refused() {
    // The LLaMA-3 skeleton with only the 256 byte tokens and no merges: the template no longer
    // tokenizes to 95 ids ending in the user header, so the fixed crop would be wrong.
    let dir = tempfile::tempdir().unwrap();
    let full: serde_json::Value =
        serde_json::from_slice(&std::fs::read(llama_tokenizer_json()).unwrap()).unwrap();
    let mut json = full.clone();
    let vocab: serde_json::Map<String, serde_json::Value> = full["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, id)| id.as_u64().unwrap() < 256)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json["model"]["vocab"] = serde_json::Value::Object(vocab);
    json["model"]["merges"] = serde_json::json!([]);
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = LlamaTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("template"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Not a tokenizer at all, and no file: errors that name the path.
    std::fs::write(&path, b"{ not json").unwrap();
    let err = LlamaTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    let err = ClipTokenizer::from_folder(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab.json"), "{err}");
}

#[test]
fn clip_from_a_fast_tokenizer_json_still_tokenizes_like_the_slow_reference() {
    // A folder with only a fast-style tokenizer.json (CLIPConverter's normaliser: NFC +
    // lowercase, no CJK spacing). Its BPE is used; normaliser and splitter are the reference's.
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{Lowercase, Sequence, NFC};
    let folder = clip_tokenizer_folder();
    let bpe = BPE::from_file(
        folder.join("vocab.json").to_str().unwrap(),
        folder.join("merges.txt").to_str().unwrap(),
    )
    .end_of_word_suffix("</w>".into())
    .unk_token("<|endoftext|>".into())
    .build()
    .unwrap();
    let mut fast = tokenizers::Tokenizer::new(bpe);
    fast.with_normalizer(Some(Sequence::new(vec![NFC.into(), Lowercase.into()])));
    let dir = tempfile::tempdir().unwrap();
    fast.save(dir.path().join("tokenizer.json"), false).unwrap();

    let tokenizer = ClipTokenizer::from_folder(dir.path()).unwrap();
    let (_, prompts) = reference();
    for p in &prompts {
        assert_eq!(
            tokenizer.tokenize(&p.prompt).unwrap().padded(),
            p.clip_ids,
            "{}",
            p.name
        );
    }
}
