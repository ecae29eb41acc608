//! Reading published safetensors checkpoints: one file, or shards with an index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{backend::Backend, bf16, f16, DType, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{tensor::Metadata, Dtype, SafeTensors};

use super::{ManifestEntry, SharedSource, TensorSource, WeightError};
use crate::fp8::Fp8Host;

/// Shape and storage dtype of one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// The stored shape.
    pub shape: Vec<usize>,
    /// The stored dtype as safetensors names it (`BF16`, `F16`, `F32`, ...).
    pub dtype: String,
}

/// One memory-mapped safetensors file and its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self, WeightError> {
        let file = File::open(path).map_err(|e| WeightError::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while we read it is
        // outside what any loader can defend against (the same contract as PyTorch's mmap).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| WeightError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| WeightError::Corrupt {
                path: path.to_path_buf(),
                reason: describe_safetensors_error(&e),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }

    /// Drops the pages of `key`'s bytes from this process's memory once they have been
    /// converted: the weights then exist once (on the device, or in the converted copy), never
    /// twice, and the resident set stays small while a 26 GB checkpoint streams through.
    /// Pages are read back from the file if the tensor is ever read again.
    fn release(&self, key: &str) {
        #[cfg(unix)]
        if let Some(info) = self.metadata.info(key) {
            let start = 8 + self.header_len + info.data_offsets.0;
            let len = info.data_offsets.1 - info.data_offsets.0;
            // SAFETY: the map is private and read-only, and no reference into this range is
            // alive (the bytes were copied out); MADV_DONTNEED only drops clean pages.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        #[cfg(not(unix))]
        let _ = key;
    }

    /// The raw bytes of `key`, or `None` if the file does not hold it.
    fn bytes(&self, key: &str) -> Option<(&[u8], Dtype, &[usize])> {
        let info = self.metadata.info(key)?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        Some((&self.mmap[start..end], info.dtype, &info.shape))
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the data section does not match the header: the file is truncated".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "the header is cut short".into(),
        other => format!("{other:?}"),
    }
}

/// The files of one checkpoint: a single `.safetensors`, or the shards named by an index.
///
/// Files are memory-mapped, so opening a 26 GB checkpoint reads only the headers; tensor data
/// is paged in when a tensor is converted.
pub struct CheckpointFiles {
    location: PathBuf,
    files: Vec<MappedFile>,
    /// Key -> position in `files`.
    index: HashMap<String, usize>,
}

impl CheckpointFiles {
    /// Opens a checkpoint from a `.safetensors` file, an `*.index.json`, or a folder holding
    /// either (an index wins over loose files; a folder with several files and no index is
    /// read as the union of its files).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| WeightError::io(path, e))?;
        let files = if meta.is_dir() {
            Self::files_in_folder(path)?
        } else if path.to_string_lossy().ends_with(".index.json") {
            Self::files_from_index(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut mapped = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let m = MappedFile::open(file)?;
            for key in m.metadata.tensors().keys() {
                index.insert(key.clone(), i);
            }
            mapped.push(m);
        }
        Ok(Self {
            location: path.to_path_buf(),
            files: mapped,
            index,
        })
    }

    fn files_in_folder(dir: &Path) -> Result<Vec<PathBuf>, WeightError> {
        let mut safetensors = Vec::new();
        let mut indices = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| WeightError::io(dir, e))? {
            let entry = entry.map_err(|e| WeightError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indices.push(entry.path());
            } else if name.ends_with(".safetensors") {
                safetensors.push(entry.path());
            }
        }
        indices.sort();
        safetensors.sort();
        if let Some(index) = indices.first() {
            return Self::files_from_index(index);
        }
        if safetensors.is_empty() {
            return Err(WeightError::NoWeights {
                path: dir.to_path_buf(),
            });
        }
        Ok(safetensors)
    }

    fn files_from_index(index_path: &Path) -> Result<Vec<PathBuf>, WeightError> {
        let text =
            std::fs::read_to_string(index_path).map_err(|e| WeightError::io(index_path, e))?;
        let bad = |reason: String| WeightError::BadIndex {
            path: index_path.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        for (key, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("entry `{key}` is not a file name")))?;
            let path = dir.join(file);
            if !shards.contains(&path) {
                shards.push(path);
            }
        }
        for shard in &shards {
            if !shard.is_file() {
                return Err(bad(format!(
                    "shard {} is listed but missing; download it again",
                    shard.display()
                )));
            }
        }
        shards.sort();
        Ok(shards)
    }

    /// Where the checkpoint was opened from (file, index or folder).
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// All stored keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.index.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Whether the checkpoint stores `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The key prefix this checkpoint stores `probe` under: `alternative` when it holds
    /// `{alternative}{probe}` and not `{published}{probe}`, else `published`. For exports
    /// that name a network's modules from another root (`model.` for LLaMA saved from
    /// `LlamaForCausalLM`; no `text_model.` for CLIP saved by transformers ≥ 5).
    pub fn prefix_of<'a>(&self, probe: &str, published: &'a str, alternative: &'a str) -> &'a str {
        let stored = |prefix: &str| self.contains(&format!("{prefix}{probe}"));
        if !stored(published) && stored(alternative) {
            alternative
        } else {
            published
        }
    }

    /// Shape and dtype of every stored tensor, sorted by key.
    pub fn manifest(&self) -> BTreeMap<String, TensorMeta> {
        self.index
            .iter()
            .filter_map(|(key, &i)| {
                let info = self.files[i].metadata.info(key)?;
                Some((
                    key.clone(),
                    TensorMeta {
                        shape: info.shape.clone(),
                        dtype: format!("{:?}", info.dtype),
                    },
                ))
            })
            .collect()
    }

    /// Checks, without reading any tensor data, that the checkpoint holds every `expected`
    /// key (after `prefix`) with its shape, and nothing else that `ignore` does not accept
    /// (keys given to `ignore` without the prefix): the checks a full load and
    /// [`SafetensorsSource::finish`] make, for models that load their weights later.
    pub fn check(
        &self,
        expected: &[ManifestEntry],
        prefix: &str,
        ignore: impl Fn(&str) -> bool,
    ) -> Result<(), WeightError> {
        let mut wanted = HashSet::new();
        for entry in expected {
            let key = format!("{prefix}{}", entry.key);
            let found = self.stored_shape(&key)?;
            if found != entry.shape {
                return Err(WeightError::ShapeMismatch {
                    path: self
                        .file_of(&key)
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    key,
                    expected: entry.shape.clone(),
                    found,
                });
            }
            wanted.insert(key);
        }
        let mut unused: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| !wanted.contains(k))
            .filter(|k| !ignore(k.strip_prefix(prefix).unwrap_or(k)))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let count = unused.len();
        unused.truncate(8);
        Err(WeightError::UnexpectedKeys {
            count,
            sample: unused,
            location: self.location.clone(),
        })
    }

    /// The file holding `key`.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.index.get(key).map(|&i| self.files[i].path.as_path())
    }

    /// Reads `key` as a tensor of `dtype`, checking that it has `shape`.
    pub fn read<B: Backend, const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, WeightError> {
        let data = self.read_data(key, &shape, dtype)?;
        Ok(Tensor::from_data(data, (device, dtype)))
    }

    /// Reads `key` as a tensor of `dtype` with whatever shape is stored (of rank `D`).
    pub fn read_stored<B: Backend, const D: usize>(
        &self,
        key: &str,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, WeightError> {
        let shape = self.stored_shape(key)?;
        let shape: [usize; D] =
            shape
                .clone()
                .try_into()
                .map_err(|_| WeightError::ShapeMismatch {
                    key: key.to_string(),
                    expected: vec![0; D],
                    found: shape,
                    path: self.file_of(key).map(Path::to_path_buf).unwrap_or_default(),
                })?;
        self.read(key, shape, dtype, device)
    }

    /// The stored shape of `key`.
    pub fn stored_shape(&self, key: &str) -> Result<Vec<usize>, WeightError> {
        let missing = || WeightError::MissingKey {
            key: key.to_string(),
            location: self.location.clone(),
        };
        let &i = self.index.get(key).ok_or_else(missing)?;
        Ok(self.files[i]
            .metadata
            .info(key)
            .ok_or_else(missing)?
            .shape
            .clone())
    }

    /// The stored bytes and dtype of `key` and the file holding it, checking that the tensor
    /// has `shape`.
    fn stored(&self, key: &str, shape: &[usize]) -> Result<StoredTensor<'_>, WeightError> {
        let &file_index = self.index.get(key).ok_or_else(|| WeightError::MissingKey {
            key: key.to_string(),
            location: self.location.clone(),
        })?;
        let file = &self.files[file_index];
        let (bytes, dtype, stored_shape) =
            file.bytes(key).ok_or_else(|| WeightError::MissingKey {
                key: key.to_string(),
                location: file.path.clone(),
            })?;
        if stored_shape != shape {
            return Err(WeightError::ShapeMismatch {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: stored_shape.to_vec(),
                path: file.path.clone(),
            });
        }
        Ok(StoredTensor { file, bytes, dtype })
    }

    /// Reads `key` into host memory as `dtype`, checking that it has `shape`.
    pub fn read_data(
        &self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        let t = self.stored(key, shape)?;
        let data = decode(t.bytes, t.dtype, shape, dtype).ok_or_else(|| {
            WeightError::UnsupportedDtype {
                key: key.to_string(),
                dtype: format!("{:?}", t.dtype),
                path: t.file.path.clone(),
            }
        })?;
        t.file.release(key);
        Ok(data)
    }

    /// The e4m3 codes of `key` if the checkpoint stores it as `F8_E4M3` (checking `shape`),
    /// or `None` for any other stored dtype.
    pub fn read_e4m3(&self, key: &str, shape: &[usize]) -> Result<Option<Vec<u8>>, WeightError> {
        let t = self.stored(key, shape)?;
        if t.dtype != Dtype::F8_E4M3 {
            return Ok(None);
        }
        let codes = t.bytes.to_vec();
        t.file.release(key);
        Ok(Some(codes))
    }
}

/// One tensor's place in a mapped file.
struct StoredTensor<'a> {
    file: &'a MappedFile,
    bytes: &'a [u8],
    dtype: Dtype,
}

/// Converts little-endian stored values into a `TensorData` of the requested float dtype.
fn decode(bytes: &[u8], stored: Dtype, shape: &[usize], dtype: DType) -> Option<TensorData> {
    let shape = shape.to_vec();
    // Same dtype: a straight copy (bytemuck copes with the mmap's arbitrary alignment).
    match (stored, dtype) {
        (Dtype::BF16, DType::BF16) => {
            return Some(TensorData::new(
                bytemuck::pod_collect_to_vec::<u8, bf16>(bytes),
                shape,
            ))
        }
        (Dtype::F16, DType::F16) => {
            return Some(TensorData::new(
                bytemuck::pod_collect_to_vec::<u8, f16>(bytes),
                shape,
            ))
        }
        (Dtype::F32, DType::F32) => {
            return Some(TensorData::new(
                bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
                shape,
            ))
        }
        _ => {}
    }
    let values: Vec<f32> = match stored {
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
        Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(bytes)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        // FP8 checkpoints (`float8_e4m3fn`, unscaled) load into any float dtype.
        Dtype::F8_E4M3 => {
            let table = crate::fp8::e4m3_table();
            bytes.iter().map(|c| table[*c as usize]).collect()
        }
        _ => return None,
    };
    match dtype {
        DType::F32 => Some(TensorData::new(values, shape)),
        DType::BF16 => Some(TensorData::new(
            values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
            shape,
        )),
        DType::F16 => Some(TensorData::new(
            values.into_iter().map(f16::from_f32).collect::<Vec<_>>(),
            shape,
        )),
        _ => None,
    }
}

/// A [`TensorSource`] reading a published checkpoint, with bookkeeping of which keys were used.
///
/// Call [`SafetensorsSource::finish`] after building a model: it fails if the checkpoint holds
/// tensors the model never asked for, which catches loading the wrong checkpoint or a
/// mis-mapped key early.
pub struct SafetensorsSource<B: Backend> {
    files: Arc<CheckpointFiles>,
    device: B::Device,
    prefix: String,
    used: HashSet<String>,
}

impl<B: Backend> SafetensorsSource<B> {
    /// Opens a checkpoint (file, index or folder) for loading onto `device`.
    pub fn open(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, WeightError> {
        Ok(Self::new(CheckpointFiles::open(path)?, device))
    }

    /// Wraps already opened checkpoint files.
    pub fn new(files: CheckpointFiles, device: &B::Device) -> Self {
        Self {
            files: Arc::new(files),
            device: device.clone(),
            prefix: String::new(),
            used: HashSet::new(),
        }
    }

    /// Another source over the same mapped files and prefix, with its own record of the keys
    /// used.
    pub(super) fn reader(&self) -> Self {
        Self {
            files: Arc::clone(&self.files),
            device: self.device.clone(),
            prefix: self.prefix.clone(),
            used: HashSet::new(),
        }
    }

    /// Prepends `prefix` to every requested key (e.g. `model.` for checkpoints saved from a
    /// wrapper class).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The underlying files.
    pub fn files(&self) -> &CheckpointFiles {
        &self.files
    }

    /// The underlying files, shared.
    pub(crate) fn files_shared(&self) -> Arc<CheckpointFiles> {
        Arc::clone(&self.files)
    }

    /// Checks that every stored tensor was used, except those `ignore` accepts
    /// (keys are given without the prefix).
    pub fn finish(self, ignore: impl Fn(&str) -> bool) -> Result<(), WeightError> {
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
            location: self.files.location.clone(),
        })
    }
}

impl<B: Backend> TensorSource<B> for SafetensorsSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let key = format!("{}{key}", self.prefix);
        let tensor = self.files.read(&key, shape, dtype, &self.device)?;
        self.used.insert(key);
        Ok(tensor)
    }

    fn device(&self) -> &B::Device {
        &self.device
    }

    fn host_data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        let key = format!("{}{key}", self.prefix);
        let data = self.files.read_data(&key, shape, dtype)?;
        self.used.insert(key);
        Ok(data)
    }

    fn fp8_host(&mut self, key: &str, shape: [usize; 2]) -> Result<Fp8Host, WeightError> {
        let full = format!("{}{key}", self.prefix);
        let fp8 = match self.files.read_e4m3(&full, &shape)? {
            Some(codes) => Fp8Host::from_codes(codes, shape),
            None => {
                let data = self.files.read_data(&full, &shape, DType::F32)?;
                let values: Vec<f32> =
                    data.into_vec().map_err(|e| WeightError::UnsupportedDtype {
                        key: full.clone(),
                        dtype: format!("{e:?}"),
                        path: self.files.location.clone(),
                    })?;
                Fp8Host::quantize(&values, shape)
            }
        };
        self.used.insert(full);
        Ok(fp8)
    }

    fn shared(&self) -> Option<SharedSource<B>> {
        Some(SharedSource::files(self.reader()))
    }
}
