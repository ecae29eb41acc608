//! Shared by the text tests: the real LLaMA-3 and CLIP tokenizers, rebuilt from the compact
//! fixtures of `tools/reference/tokenizer_fixture.py`, and the reference token ids.
//!
//! The LLaMA-3 `tokenizer.json` is 17 MB (2.5 MB gzip), most of it merges that follow from the
//! BPE ranks. We commit the ranks (`tokenizer.model`, 1.0 MB gzip) and the converted file minus
//! its vocabulary and merges (`tokenizer_skeleton.json`), and derive vocabulary and merges here
//! exactly as transformers' `TikTokenConverter` does; the digests of both, recorded by the
//! generator, prove the rebuilt file equals transformers' conversion. The production loader
//! (`LlamaTokenizer::from_file`) then reads the rebuilt file like a checkpoint's.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

pub fn gunzip(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// GPT-2's byte → printable character map used by byte-level BPE.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        map[b as usize] = char::from_u32(c).unwrap();
    }
    map
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 character {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn sha256_lines(lines: impl Iterator<Item = String>) -> String {
    let mut hash = Sha256::new();
    for line in lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Rebuilds the LLaMA-3 `tokenizer.json` into `dir`; returns its path.
fn build_llama3_tokenizer(dir: &Path) -> PathBuf {
    let ranks_text =
        String::from_utf8(gunzip(&fixture("tokenizer_llama3/tokenizer.model.gz"))).unwrap();
    let mut tokens: Vec<(Vec<u8>, u32)> = ranks_text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (b64, rank) = l.split_once(' ').unwrap();
            (base64_decode(b64), rank.parse().unwrap())
        })
        .collect();
    tokens.sort_by_key(|(_, r)| *r);
    let ranks: HashMap<&[u8], u32> = tokens.iter().map(|(t, r)| (t.as_slice(), *r)).collect();
    let to_unicode = bytes_to_unicode();
    let name = |b: &[u8]| -> String { b.iter().map(|&x| to_unicode[x as usize]).collect() };

    // TikTokenConverter.extract_vocab_merges_from_model: every split of every token into two
    // tokens is a merge, ordered by the token's rank, then the ranks of the two halves.
    // (rank of the token, ranks of the halves, the halves)
    type Merge<'a> = (u32, u32, u32, &'a [u8], &'a [u8]);
    let mut merges: Vec<Merge> = Vec::new();
    for (token, rank) in &tokens {
        for i in 1..token.len() {
            let (l, r) = token.split_at(i);
            if let (Some(&rl), Some(&rr)) = (ranks.get(l), ranks.get(r)) {
                merges.push((*rank, rl, rr, l, r));
            }
        }
    }
    merges.sort_by_key(|m| (m.0, m.1, m.2));

    let skeleton_text =
        std::fs::read_to_string(fixture("tokenizer_llama3/tokenizer_skeleton.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&skeleton_text).unwrap();
    let expected = json
        .as_object_mut()
        .unwrap()
        .remove("framepack_fixture")
        .unwrap();
    let vocab_digest = sha256_lines(tokens.iter().map(|(t, r)| format!("{}\t{r}", name(t))));
    let merges_digest = sha256_lines(
        merges
            .iter()
            .map(|m| format!("{} {}", name(m.3), name(m.4))),
    );
    assert_eq!(expected["vocab_size"], tokens.len());
    assert_eq!(expected["merges"], merges.len());
    assert_eq!(
        expected["vocab_sha256"], vocab_digest,
        "vocabulary differs from transformers' conversion"
    );
    assert_eq!(
        expected["merges_sha256"], merges_digest,
        "merges differ from transformers' conversion"
    );

    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .map(|(t, r)| (name(t), serde_json::Value::from(*r)))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| serde_json::json!([name(m.3), name(m.4)]))
        .collect();
    json["model"]["vocab"] = serde_json::Value::Object(vocab);
    json["model"]["merges"] = serde_json::Value::Array(merges);
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

struct TokenizerFiles {
    _dir: tempfile::TempDir,
    llama: PathBuf,
    clip: PathBuf,
}

fn files() -> &'static TokenizerFiles {
    static FILES: OnceLock<TokenizerFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let llama_dir = dir.path().join("tokenizer");
        std::fs::create_dir(&llama_dir).unwrap();
        let llama = build_llama3_tokenizer(&llama_dir);
        let clip = dir.path().join("tokenizer_2");
        std::fs::create_dir(&clip).unwrap();
        for name in ["vocab.json", "merges.txt"] {
            let bytes = gunzip(&fixture(&format!("tokenizer_clip/{name}.gz")));
            std::fs::write(clip.join(name), bytes).unwrap();
        }
        TokenizerFiles {
            _dir: dir,
            llama,
            clip,
        }
    })
}

/// The rebuilt LLaMA-3 `tokenizer.json` (a `tokenizer/` folder holds it).
pub fn llama_tokenizer_json() -> &'static Path {
    &files().llama
}

/// A `tokenizer_2/` folder with CLIP's `vocab.json` and `merges.txt`.
pub fn clip_tokenizer_folder() -> &'static Path {
    &files().clip
}

/// One prompt of `tokenizer_reference.json` with the reference's ids.
pub struct ReferencePrompt {
    pub name: String,
    pub prompt: String,
    /// LLaMA: the attention-masked ids (BOS + template + prompt, ≤ 351).
    pub llama_ids: Vec<u32>,
    pub llama_untruncated: usize,
    /// CLIP: the 77 padded ids.
    pub clip_ids: Vec<u32>,
    pub clip_untruncated: usize,
}

pub fn reference() -> (serde_json::Value, Vec<ReferencePrompt>) {
    let text = std::fs::read_to_string(fixture("tokenizer_reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts = json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ReferencePrompt {
            name: p["name"].as_str().unwrap().to_string(),
            prompt: p["prompt"].as_str().unwrap().to_string(),
            llama_ids: ids(&p["llama"]["ids"]),
            llama_untruncated: p["llama"]["untruncated_len"].as_u64().unwrap() as usize,
            clip_ids: ids(&p["clip"]["ids"]),
            clip_untruncated: p["clip"]["untruncated_len"].as_u64().unwrap() as usize,
        })
        .collect();
    (json, prompts)
}
