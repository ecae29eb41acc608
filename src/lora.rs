//! LoRAs as a request names them: a file and a strength, recorded with the file's hash so that
//! a replay runs with the same weights.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use framepack_models::lora::{LoraFile, LoraSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The strength of a LoRA given without one (`--lora FILE`), as FramePack-eichi's default
/// "LoRA scale".
pub const DEFAULT_LORA_STRENGTH: f64 = 1.0;

/// A LoRA file applied to the transformer with a strength (the multiplier of its
/// `up·down·alpha/rank`, FramePack-eichi's "LoRA scale"). Files in kohya/musubi, diffusers /
/// diffusion-pipe and HunyuanVideo key styles are read (see `docs/lora.md`).
///
/// ```
/// use framepack::LoraChoice;
/// let lora: LoraChoice = "style.safetensors:0.8".parse()?;
/// assert_eq!((lora.path.to_str(), lora.strength), (Some("style.safetensors"), 0.8));
/// assert_eq!("plain.safetensors".parse::<LoraChoice>()?.strength, 1.0);
/// # Ok::<(), framepack::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraChoice {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// Its multiplier.
    pub strength: f64,
    /// SHA-256 of the file: filled in when a job runs, checked when a run record is replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl LoraChoice {
    /// `path` at `strength`.
    pub fn new(path: impl Into<PathBuf>, strength: f64) -> Self {
        Self {
            path: path.into(),
            strength,
            sha256: None,
        }
    }

    /// Checks what can be checked without reading the file: the strength is finite and the
    /// file exists.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.strength.is_finite() {
            return Err(Error::invalid(
                "lora",
                format!(
                    "{}: strength {} is not a finite number",
                    self.path.display(),
                    self.strength
                ),
            ));
        }
        if !self.path.is_file() {
            return Err(Error::invalid(
                "lora",
                format!("`{}` does not exist or is not a file", self.path.display()),
            ));
        }
        Ok(())
    }

    /// The file's SHA-256; a recorded hash must match it (the file changed since the run).
    #[cfg(test)]
    fn hash(&self) -> Result<String> {
        self.verify(file_sha256(&self.path)?)
    }

    /// `hash` (the file's SHA-256) if it matches the recorded one, if any.
    fn verify(&self, hash: String) -> Result<String> {
        match &self.sha256 {
            Some(recorded) if *recorded != hash => Err(Error::invalid(
                "lora",
                format!(
                    "`{}` changed since the run was recorded (SHA-256 {hash}, recorded {recorded})",
                    self.path.display()
                ),
            )),
            _ => Ok(hash),
        }
    }
}

impl fmt::Display for LoraChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.strength)
    }
}

impl FromStr for LoraChoice {
    type Err = Error;

    /// `PATH` or `PATH:STRENGTH` (the strength after the last colon, when it is a number, so
    /// that Windows paths such as `C:\loras\a.safetensors` read as paths).
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(Error::invalid(
                "lora",
                "empty (expected PATH or PATH:STRENGTH)",
            ));
        }
        if let Some((path, strength)) = s.rsplit_once(':') {
            if let Ok(strength) = strength.trim().parse::<f64>() {
                if path.is_empty() {
                    return Err(Error::invalid("lora", format!("`{s}` has no file")));
                }
                return Ok(Self::new(path, strength));
            }
        }
        Ok(Self::new(s, DEFAULT_LORA_STRENGTH))
    }
}

/// SHA-256s of LoRA files, kept by path with the size and modification time they had: a
/// pipeline that runs job after job with the same LoRA reads the file once, not per job.
#[derive(Debug, Default)]
pub(crate) struct HashCache(HashMap<PathBuf, (u64, Option<SystemTime>, String)>);

impl HashCache {
    /// `lora` with its file's SHA-256 filled in (checked against a recorded one).
    pub(crate) fn hashed(&mut self, lora: &LoraChoice) -> Result<LoraChoice> {
        let meta = std::fs::metadata(&lora.path).map_err(|e| {
            Error::invalid(
                "lora",
                format!("cannot read `{}`: {e}", lora.path.display()),
            )
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        let hash = match self.0.get(&lora.path) {
            Some((len, modified, hash)) if (*len, *modified) == stamp => hash.clone(),
            _ => {
                let hash = file_sha256(&lora.path)?;
                self.0
                    .insert(lora.path.clone(), (stamp.0, stamp.1, hash.clone()));
                hash
            }
        };
        Ok(LoraChoice {
            sha256: Some(lora.verify(hash)?),
            ..lora.clone()
        })
    }
}

/// The parsed files of `loras` with their strengths.
pub(crate) fn open_set(loras: &[LoraChoice]) -> Result<LoraSet> {
    let mut set = LoraSet::new();
    for lora in loras {
        let file = LoraFile::open(&lora.path).map_err(framepack_models::ModelError::from)?;
        set.push(file, lora.strength as f32);
    }
    Ok(set)
}

/// The SHA-256 of a file, as lowercase hex.
fn file_sha256(path: &Path) -> Result<String> {
    let unreadable = |e: std::io::Error| {
        Error::invalid("lora", format!("cannot read `{}`: {e}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// How a pipeline applies the LoRAs of its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraMode {
    /// Merged into the weights as the transformer loads (works with FP8 blocks and the
    /// low-VRAM mode; no cost per step). A job asking for other LoRAs than the loaded ones
    /// reloads the transformer.
    #[default]
    Merge,
    /// Kept beside the unchanged weights as low-rank adapters (`x·Wᵀ + (x·downᵀ)·upᵀ`):
    /// switching LoRAs or strengths between jobs costs only the factors' upload, each step
    /// pays the small extra products. Needs resident blocks (not the low-VRAM mode).
    Adapters,
}

impl LoraMode {
    /// The mode's name on the command line and in run records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Merge => "merge",
            Self::Adapters => "adapters",
        }
    }
}

impl fmt::Display for LoraMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LoraMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "merge" => Ok(Self::Merge),
            "adapters" | "adapter" => Ok(Self::Adapters),
            _ => Err(Error::invalid(
                "lora-mode",
                format!("`{s}`: expected merge or adapters"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_arguments_parse_with_and_without_strength() {
        let a: LoraChoice = "a.safetensors:0.5".parse().unwrap();
        assert_eq!((a.path, a.strength), (PathBuf::from("a.safetensors"), 0.5));
        let b: LoraChoice = "dir:with:colons/b.safetensors".parse().unwrap();
        assert_eq!(b.path, PathBuf::from("dir:with:colons/b.safetensors"));
        assert_eq!(b.strength, DEFAULT_LORA_STRENGTH);
        let c: LoraChoice = "c.safetensors:-1.25".parse().unwrap();
        assert_eq!(c.strength, -1.25);
        assert!(":0.5".parse::<LoraChoice>().is_err());
        assert!("".parse::<LoraChoice>().is_err());
        assert_eq!(a_roundtrip("x.safetensors:0.25"), "x.safetensors:0.25");
        for mode in [LoraMode::Merge, LoraMode::Adapters] {
            assert_eq!(mode.to_string().parse::<LoraMode>().unwrap(), mode);
        }
        assert!("blend".parse::<LoraMode>().is_err());
    }

    fn a_roundtrip(s: &str) -> String {
        s.parse::<LoraChoice>().unwrap().to_string()
    }

    #[test]
    fn hashes_are_checked_against_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.safetensors");
        std::fs::write(&path, b"abc").unwrap();
        let mut lora = LoraChoice::new(&path, 1.0);
        let hash = lora.hash().unwrap();
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        lora.sha256 = Some(hash);
        assert!(lora.hash().is_ok());
        std::fs::write(&path, b"abd").unwrap();
        let err = lora.hash().unwrap_err().to_string();
        assert!(err.contains("changed since the run was recorded"), "{err}");
        assert!(LoraChoice::new(dir.path().join("missing"), 1.0)
            .check()
            .is_err());
        assert!(LoraChoice::new(&path, f64::NAN).check().is_err());
        // The cache reads a file again when it changed, and checks the recorded hash.
        let mut cache = HashCache::default();
        let fresh = LoraChoice::new(&path, 1.0);
        let first = cache.hashed(&fresh).unwrap().sha256.unwrap();
        assert_eq!(cache.hashed(&fresh).unwrap().sha256.unwrap(), first);
        std::fs::write(&path, b"a longer file").unwrap();
        assert_ne!(cache.hashed(&fresh).unwrap().sha256.unwrap(), first);
        assert!(
            cache.hashed(&lora).is_err(),
            "the recorded hash no longer matches"
        );
    }
}
