//! A cache of prompt embeddings, so that repeated runs and per-section prompts never load the
//! 15 GB LLaMA encoder again.
//!
//! One entry per prompt, keyed by the SHA-256 of (cache format, encoder revision, prompt): a
//! prompt and a negative prompt are two entries, and a negative prompt that is never encoded
//! (`cfg == 1`) never enters a key. Entries live in memory and, optionally, as one small
//! safetensors file each in a folder (`<key>.safetensors`: the LLaMA features `[1, L, 4096]`
//! and the CLIP pooled vector in the encoder's dtype, the prompt and revision in the metadata).
//! Files are written to a temporary name and renamed into place, so a reader never sees a
//! partial entry; an unreadable or mismatching file is treated as a miss and rewritten.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::prompt::{PromptEmbeddings, PromptEncoder};
use crate::error::ModelError;
use crate::ops::FramePackBackend;

/// Version of the entry layout; part of every key.
pub const CACHE_FORMAT: &str = "framepack-prompt-cache/1";

/// Prompt embeddings kept in memory and, optionally, on disk.
#[derive(Debug)]
pub struct PromptCache<B: FramePackBackend> {
    dir: Option<PathBuf>,
    memory: HashMap<String, PromptEmbeddings<B>>,
    device: B::Device,
}

impl<B: FramePackBackend> PromptCache<B> {
    /// A cache that lives as long as the process.
    pub fn in_memory(device: &B::Device) -> Self {
        Self {
            dir: None,
            memory: HashMap::new(),
            device: device.clone(),
        }
    }

    /// A cache backed by the folder `dir` (created if missing), shared across runs.
    pub fn on_disk(dir: impl Into<PathBuf>, device: &B::Device) -> Result<Self, ModelError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            ModelError::input("cache_dir", format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(Self {
            dir: Some(dir),
            memory: HashMap::new(),
            device: device.clone(),
        })
    }

    /// The cache key of `prompt` under `revision`: 64 hex digits.
    pub fn key(revision: &str, prompt: &str) -> String {
        let mut hash = Sha256::new();
        for field in [CACHE_FORMAT, revision, prompt] {
            // Length-prefixed, so that no two (revision, prompt) pairs share an encoding.
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where the entry of `key` is stored, for an on-disk cache.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{key}.safetensors")))
    }

    /// Entries held in memory.
    pub fn len_in_memory(&self) -> usize {
        self.memory.len()
    }

    /// Forgets the in-memory entries (the files stay).
    pub fn clear_memory(&mut self) {
        self.memory.clear();
    }

    /// The cached embeddings of `prompt`, from memory or disk. A missing, unreadable or
    /// mismatching file is a miss.
    pub fn get(&mut self, revision: &str, prompt: &str) -> Option<PromptEmbeddings<B>> {
        let key = Self::key(revision, prompt);
        if let Some(hit) = self.memory.get(&key) {
            return Some(hit.clone());
        }
        let path = self.path_of(&key)?;
        let bytes = std::fs::read(&path).ok()?;
        let entry = read_entry::<B>(&bytes, revision, prompt, &self.device)?;
        self.memory.insert(key, entry.clone());
        Some(entry)
    }

    /// Stores `embeddings` for `prompt` in memory and, for an on-disk cache, atomically in
    /// its file.
    pub fn insert(
        &mut self,
        revision: &str,
        prompt: &str,
        embeddings: &PromptEmbeddings<B>,
    ) -> Result<(), ModelError> {
        let key = Self::key(revision, prompt);
        if let Some(path) = self.path_of(&key) {
            let bytes = write_entry(embeddings, revision, prompt)?;
            write_atomically(&path, &bytes).map_err(|e| {
                ModelError::input("cache_dir", format!("cannot write {}: {e}", path.display()))
            })?;
        }
        self.memory.insert(key, embeddings.clone());
        Ok(())
    }
}

fn storage_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

fn burn_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

fn write_entry<B: FramePackBackend>(
    e: &PromptEmbeddings<B>,
    revision: &str,
    prompt: &str,
) -> Result<Vec<u8>, ModelError> {
    let llama = e.llama.clone().into_data();
    let clip = e.clip_pooled.clone().into_data();
    fn view<'a>(name: &'static str, data: &'a TensorData) -> Result<TensorView<'a>, ModelError> {
        let dtype = storage_dtype(data.dtype).ok_or_else(|| {
            ModelError::input(name, format!("dtype {:?} cannot be cached", data.dtype))
        })?;
        TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
            .map_err(|err| ModelError::input(name, format!("{err}")))
    }
    let tensors = vec![
        ("llama", view("llama", &llama)?),
        ("clip_pooled", view("clip_pooled", &clip)?),
    ];
    let metadata: HashMap<String, String> = [
        ("format", CACHE_FORMAT.to_string()),
        ("revision", revision.to_string()),
        ("prompt", prompt.to_string()),
        ("llama_dropped", e.llama_dropped.to_string()),
        ("clip_dropped", e.clip_dropped.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|err| ModelError::input("embeddings", format!("cannot serialise: {err}")))
}

fn read_entry<B: FramePackBackend>(
    bytes: &[u8],
    revision: &str,
    prompt: &str,
    device: &B::Device,
) -> Option<PromptEmbeddings<B>> {
    let (_, header) = SafeTensors::read_metadata(bytes).ok()?;
    let meta = header.metadata().as_ref()?;
    let field = |k: &str| meta.get(k).map(String::as_str);
    // A hash collision or a hand-edited file must not hand back another prompt's features.
    if field("format") != Some(CACHE_FORMAT)
        || field("revision") != Some(revision)
        || field("prompt") != Some(prompt)
    {
        return None;
    }
    let tensors = SafeTensors::deserialize(bytes).ok()?;
    let load = |name: &str| -> Option<TensorData> {
        let view = tensors.tensor(name).ok()?;
        let dtype = burn_dtype(view.dtype())?;
        Some(TensorData::from_bytes_vec(
            view.data().to_vec(),
            view.shape().to_vec(),
            dtype,
        ))
    };
    let llama = load("llama")?;
    let clip = load("clip_pooled")?;
    if llama.shape.len() != 3 || clip.shape.len() != 2 {
        return None;
    }
    Some(PromptEmbeddings {
        llama: Tensor::from_data(llama.clone(), (device, llama.dtype)),
        clip_pooled: Tensor::from_data(clip.clone(), (device, clip.dtype)),
        llama_dropped: field("llama_dropped")?.parse().ok()?,
        clip_dropped: field("clip_dropped")?.parse().ok()?,
    })
}

/// Writes `bytes` to a unique temporary file next to `path`, flushes it, and renames it over
/// `path` (atomic on POSIX file systems and on NTFS).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A [`PromptEncoder`] that answers from a [`PromptCache`] and asks `inner` only on a miss
/// (with [`LazyTextEncoders`](super::LazyTextEncoders) inside, the weights are loaded only
/// then).
#[derive(Debug)]
pub struct CachedPromptEncoder<B: FramePackBackend, E: PromptEncoder<B>> {
    inner: E,
    cache: PromptCache<B>,
    hits: usize,
    misses: usize,
}

impl<B: FramePackBackend, E: PromptEncoder<B>> CachedPromptEncoder<B, E> {
    /// Puts `cache` in front of `inner`.
    pub fn new(inner: E, cache: PromptCache<B>) -> Self {
        Self {
            inner,
            cache,
            hits: 0,
            misses: 0,
        }
    }

    /// The wrapped encoder.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The wrapped encoder, mutably (e.g. to unload its weights).
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &PromptCache<B> {
        &self.cache
    }

    /// Prompts answered from the cache so far.
    pub fn hits(&self) -> usize {
        self.hits
    }

    /// Prompts that had to be encoded so far.
    pub fn misses(&self) -> usize {
        self.misses
    }
}

impl<B: FramePackBackend, E: PromptEncoder<B>> PromptEncoder<B> for CachedPromptEncoder<B, E> {
    fn revision(&self) -> String {
        self.inner.revision()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        let revision = self.inner.revision();
        if let Some(hit) = self.cache.get(&revision, prompt) {
            self.hits += 1;
            return Ok(hit);
        }
        self.misses += 1;
        let embeddings = self.inner.encode(prompt)?;
        self.cache.insert(&revision, prompt, &embeddings)?;
        Ok(embeddings)
    }
}
