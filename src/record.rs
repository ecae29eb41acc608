//! The run record: every parameter, seed and model revision of a generation, written as the
//! JSON sidecar of a video, from which the run can be repeated
//! (`framepack generate --replay RUN.json`, or [`RunRecord::read`] + [`RunRecord::request`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::memory::{Dtypes, MemoryMode};
use crate::request::Request;
use crate::video::Staged;
use crate::WeightFormat;

/// The `format` of a run record.
pub const RECORD_FORMAT: &str = "framepack-rs.run";
/// The version of the run-record layout.
pub const RECORD_VERSION: u32 = 1;

/// Which weights a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// The published checkpoints.
    Framepack,
    /// Small random-weight networks of the real architectures (the demo; output is noise).
    TinyRandom,
    /// Random weights at the published sizes (benchmarks).
    FullSizeRandom,
}

impl ModelKind {
    /// The kind's name on the command line and in run records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Framepack => "framepack",
            Self::TinyRandom => "tiny-random",
            Self::FullSizeRandom => "full-size-random",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which weights made a video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsRecord {
    /// The published checkpoints or random weights.
    pub kind: ModelKind,
    /// The seed of the random weights (`tiny-random` only).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Per component (`transformer`, `vae`, ...): its revision (`OWNER/NAME@<commit>` for a
    /// Hugging Face snapshot, else `path:<folder>`).
    #[serde(default)]
    pub revisions: BTreeMap<String, String>,
}

/// Where and how a video was computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// The burn backend (`cpu`, `cuda`, `wgpu`).
    pub backend: String,
    /// The device (`cpu`, `cuda:0`, `wgpu`).
    pub device: String,
    /// Whether the device was chosen automatically ([`DeviceChoice::Auto`](crate::DeviceChoice)).
    #[serde(default)]
    pub device_auto: bool,
    /// Compute dtypes per network.
    pub dtypes: Dtypes,
    /// How the transformer blocks' weights are kept (dense, FP8, FP8 on tensor cores).
    #[serde(default)]
    pub block_weights: WeightFormat,
    /// The memory mode (resolved: resident or low-VRAM).
    pub memory: MemoryMode,
    /// How the request's LoRAs were applied.
    #[serde(default)]
    pub lora_mode: crate::LoraMode,
    /// The backends' kernel choices (tuned kernels, attention kernel, FP8 tensor cores).
    #[serde(default)]
    pub kernels: framepack_models::runtime::RuntimeOptions,
}

/// What came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The generation size, `[height, width]` in pixels.
    pub size: [u32; 2],
    /// Sections sampled.
    pub sections: u32,
    /// Latent frames of the result (the start latent included).
    pub latent_frames: u32,
    /// Pixel frames.
    pub frames: u32,
    /// Frames per second.
    pub fps: u32,
    /// Length in seconds.
    pub duration_s: f64,
    /// Transformer calls made, and how many of them a step cache answered.
    pub model_calls: u64,
    /// Calls skipped by the step cache (TeaCache or MagCache).
    pub model_calls_skipped: u64,
    /// The magnitude ratios a MagCache calibration run measured, one per call of a window
    /// (`--magcache-ratios RUN.json` reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magcache_ratios: Option<Vec<f64>>,
}

/// Wall time of each stage, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingRecord {
    /// Text encoding.
    pub text_s: f64,
    /// Image preprocessing, VAE encode and SigLIP.
    pub images_s: f64,
    /// Sampling, all sections (decodes excluded).
    pub sampling_s: f64,
    /// VAE decodes and joins.
    pub decode_s: f64,
    /// The whole `generate` call.
    pub total_s: f64,
}

/// The files a video was saved as (filled in by [`Video::save`](crate::Video::save)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputsRecord {
    /// The MP4.
    #[serde(default)]
    pub video: Option<PathBuf>,
    /// Its quantiser (see [`video`](crate::video)).
    #[serde(default)]
    pub crf: Option<u8>,
    /// The H.264 encoder.
    #[serde(default)]
    pub encoder: Option<String>,
    /// A PNG of the first frame (one-frame mode).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// The latent history (safetensors).
    #[serde(default)]
    pub latents: Option<PathBuf>,
    /// The folder of PNG frames.
    #[serde(default)]
    pub frames_dir: Option<PathBuf>,
}

/// Everything needed to repeat a generation, and what it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_FORMAT`].
    pub format: String,
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The framepack-rs version that wrote it.
    pub framepack_rs: String,
    /// The request: images (path, size and pixel hash), prompts and every option.
    pub request: Request,
    /// The weights.
    pub models: ModelsRecord,
    /// Backend, device, dtypes, memory mode.
    pub runtime: RuntimeRecord,
    /// What was generated.
    pub result: ResultRecord,
    /// Stage timings.
    pub timing: TimingRecord,
    /// Warnings raised while generating (e.g. a prompt truncated for CLIP).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The files written.
    #[serde(default)]
    pub outputs: OutputsRecord,
}

impl RunRecord {
    /// The record as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a record from JSON, checking its format and version.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadRecord {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(RECORD_FORMAT) => {}
            other => return Err(bad(format!("format is {other:?}, not `{RECORD_FORMAT}`"))),
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(RECORD_VERSION) => {}
            other => {
                return Err(bad(format!(
                    "version {other:?}, this build reads {RECORD_VERSION}"
                )))
            }
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// Reads a record written by [`Video::save`](crate::Video::save).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::BadRecord {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    /// The request, with its images read back from their files and checked against the recorded
    /// pixel hashes.
    pub fn request(&self) -> Result<Request> {
        let mut request = self.request.clone();
        request.reload_images()?;
        Ok(request)
    }

    pub(crate) fn stage(&self, path: &Path) -> Result<Staged> {
        let json = self.to_json();
        Staged::file(path, |w| {
            use std::io::Write;
            w.write_all(json.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| Error::write(path, e))
        })
    }
}
