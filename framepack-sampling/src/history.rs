//! The latent history of a job: the buffer the section loops read context from and write new
//! latents into (spec §2.3, §2.4), and its safetensors file format.
//!
//! It starts as 19 zero latents (the context of the first window), plus the start latent in F1.
//! Inverted windows **prepend** their latents (generation runs backwards in time), F1 windows
//! **append**; the valid part (`real_history_latents`) is the `generated` frames at the growing
//! end, and the zeros at the other end are never decoded. Which slots feed which context group is
//! framepack-core's business ([`HistorySlice`]); this type only applies it to a tensor.
//!
//! A saved history keeps the whole buffer and the generation parameters, so a video can be
//! extended (continue an F1 job, or sample earlier content for an inverted one) or joined later.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use framepack_core::packing::{Growth, HistoryPlan, HistorySlice};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SamplingError};
use crate::guidance::host_values;

/// The `format` value of a saved history.
pub const HISTORY_FORMAT: &str = "framepack-rs.latent-history";
/// The version of the saved-history layout.
pub const HISTORY_VERSION: u32 = 1;
const TENSOR_KEY: &str = "history";

/// The parameters a history was generated with, stored next to it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GenerationParams {
    /// `inverted`, `F1` or `one-frame`.
    pub mode: String,
    /// The job's seed.
    pub seed: u64,
    /// Sampler steps per window.
    pub steps: usize,
    /// Latent frames per window.
    pub window: u32,
    /// Windows in the plan.
    pub sections: u32,
    /// Windows completed (fewer than `sections` for a cancelled job).
    pub completed_sections: u32,
    /// Distilled guidance `gs`.
    pub distilled_guidance: f64,
    /// Real CFG scale.
    pub cfg: f64,
    /// Guidance rescale.
    pub guidance_rescale: f64,
    /// The fixed shift, or `None` for the reference's automatic one.
    pub shift: Option<f64>,
    /// Anything else the caller wants to keep (prompt, model, cache, ...).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// The latent history of a job.
#[derive(Debug, Clone)]
pub struct History<B: Backend> {
    latents: Tensor<B, 5>,
    generated: u32,
    plan: HistoryPlan,
}

fn check_5d(t: &Tensor<impl Backend, 5>, what: &'static str, frames: Option<usize>) -> Result<()> {
    let [b, c, f, h, w] = t.dims();
    if b == 0 || c == 0 || h == 0 || w == 0 {
        return Err(SamplingError::invalid(
            what,
            format!("empty shape {:?}", t.dims()),
        ));
    }
    if let Some(want) = frames {
        if f != want {
            return Err(SamplingError::invalid(
                what,
                format!("{f} latent frames, expected {want}"),
            ));
        }
    }
    Ok(())
}

impl<B: Backend> History<B> {
    /// A fresh history for `plan`: `zero_frames` zero latents shaped like `start_latent`
    /// (`[batch, channels, 1, h, w]`), followed by the start latent in F1.
    pub fn new(plan: HistoryPlan, start_latent: &Tensor<B, 5>) -> Result<Self> {
        check_5d(start_latent, "start latent", Some(1))?;
        let [b, c, _, h, w] = start_latent.dims();
        let device = start_latent.device();
        let zeros = Tensor::<B, 5>::zeros(
            [b, c, plan.zero_frames as usize, h, w],
            (&device, DType::F32),
        );
        let latents = if plan.starts_with_start_latent {
            Tensor::cat(vec![zeros, start_latent.clone().cast(DType::F32)], 2)
        } else {
            zeros
        };
        Ok(Self {
            latents,
            generated: plan.initial_generated(),
            plan,
        })
    }

    /// A history made of existing latents: `latents` is the whole buffer, of which `generated`
    /// frames at the growing end are valid (e.g. to join a clip, or continue one loaded from
    /// another tool).
    pub fn from_latents(plan: HistoryPlan, latents: Tensor<B, 5>, generated: u32) -> Result<Self> {
        check_5d(&latents, "history latents", None)?;
        let len = latents.dims()[2];
        if generated as usize > len {
            return Err(SamplingError::invalid(
                "generated",
                format!("{generated} valid frames in a history of {len}"),
            ));
        }
        Ok(Self {
            latents: latents.cast(DType::F32),
            generated,
            plan,
        })
    }

    /// Frames in the buffer.
    pub fn len(&self) -> u32 {
        self.latents.dims()[2] as u32
    }

    /// Whether the buffer is empty (never for a history made by [`new`](Self::new)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `total_generated_latent_frames`: valid frames at the growing end.
    pub fn generated(&self) -> u32 {
        self.generated
    }

    /// How the history grows.
    pub fn plan(&self) -> HistoryPlan {
        self.plan
    }

    /// The whole buffer `[batch, channels, frames, h, w]`.
    pub fn latents(&self) -> &Tensor<B, 5> {
        &self.latents
    }

    /// The valid latents (`real_history_latents`), in video time order: what the VAE decodes.
    pub fn valid(&self) -> Tensor<B, 5> {
        let r = self.plan.valid_range(self.len(), self.generated);
        self.latents
            .clone()
            .narrow(2, r.start as usize, (r.end - r.start) as usize)
    }

    /// The frames `slice` names (a context group's source).
    pub fn slice(&self, slice: HistorySlice) -> Result<Tensor<B, 5>> {
        let r = slice.range(self.len()).ok_or_else(|| {
            SamplingError::invalid(
                "history",
                format!("{slice:?} does not fit a history of {} frames", self.len()),
            )
        })?;
        Ok(self
            .latents
            .clone()
            .narrow(2, r.start as usize, (r.end - r.start) as usize))
    }

    fn check_frames(&self, latents: &Tensor<B, 5>, what: &'static str) -> Result<()> {
        let [b, c, _, h, w] = self.latents.dims();
        let [lb, lc, _, lh, lw] = latents.dims();
        if (b, c, h, w) != (lb, lc, lh, lw) {
            return Err(SamplingError::invalid(
                what,
                format!(
                    "shape {:?} does not match the history {:?}",
                    latents.dims(),
                    self.latents.dims()
                ),
            ));
        }
        Ok(())
    }

    /// Overwrites `history[:, :, 0]` (eichi's end frame, written before the first inverted
    /// window so that it feeds the `post` slot and later the 2x/4x context).
    pub fn set_front(&mut self, latent: Tensor<B, 5>) -> Result<()> {
        check_5d(&latent, "end frame latent", Some(1))?;
        self.check_frames(&latent, "end frame latent")?;
        let len = self.len() as usize;
        let rest = self.latents.clone().narrow(2, 1, len - 1);
        self.latents = Tensor::cat(vec![latent.cast(DType::F32), rest], 2);
        Ok(())
    }

    /// Adds a window's latents at the growing end; they count as generated.
    pub fn push(&mut self, latents: Tensor<B, 5>) -> Result<()> {
        self.check_frames(&latents, "window latents")?;
        let added = latents.dims()[2] as u32;
        let latents = latents.cast(DType::F32);
        self.latents = match self.plan.growth {
            Growth::Prepend => Tensor::cat(vec![latents, self.latents.clone()], 2),
            Growth::Append => Tensor::cat(vec![self.latents.clone(), latents], 2),
        };
        self.generated += added;
        Ok(())
    }

    /// The history copied to host memory (what a finished job hands back, and what is saved).
    pub fn to_host(&self) -> Result<LatentHistory> {
        Ok(LatentHistory {
            values: host_values(self.latents.clone(), "history")?,
            shape: self.latents.dims(),
            generated: self.generated,
            plan: self.plan,
        })
    }

    /// A history on `device` from host latents.
    pub fn from_host(host: &LatentHistory, device: &B::Device) -> Result<Self> {
        let latents = Tensor::<B, 5>::from_data(
            TensorData::new(host.values.clone(), host.shape),
            (device, DType::F32),
        );
        Self::from_latents(host.plan, latents, host.generated)
    }

    /// Writes the history and `params` to a safetensors file ([`LatentHistory::save`]).
    pub fn save(&self, path: impl AsRef<Path>, params: &GenerationParams) -> Result<()> {
        self.to_host()?.save(path, params)
    }

    /// Reads a history written by [`save`](Self::save) onto `device`.
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<(Self, GenerationParams)> {
        let (host, params) = LatentHistory::load(&path)?;
        let history =
            Self::from_host(&host, device).map_err(|e| SamplingError::BadHistoryFile {
                path: path.as_ref().to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok((history, params))
    }
}

/// A latent history in host memory: the whole buffer as `f32` values, which frames are valid,
/// and how it grows. It names no backend: a finished job hands it back whatever device the job
/// ran on, and it is what the safetensors file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentHistory {
    values: Vec<f32>,
    shape: [usize; 5],
    generated: u32,
    plan: HistoryPlan,
}

impl LatentHistory {
    /// `[batch, channels, frames, h, w]` of the whole buffer.
    pub fn shape(&self) -> [usize; 5] {
        self.shape
    }

    /// The whole buffer's values, row-major in [`shape`](Self::shape).
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// `total_generated_latent_frames`: valid frames at the growing end.
    pub fn generated(&self) -> u32 {
        self.generated
    }

    /// How the history grows.
    pub fn plan(&self) -> HistoryPlan {
        self.plan
    }

    /// Writes the history and `params` to a safetensors file (`history` tensor, `f32`, and the
    /// bookkeeping plus the parameters as JSON in `__metadata__`).
    pub fn save(&self, path: impl AsRef<Path>, params: &GenerationParams) -> Result<()> {
        let path = path.as_ref();
        let shape = self.shape.to_vec();
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
            .map_err(|e| SamplingError::BadHistoryFile {
                path: path.to_path_buf(),
                reason: format!("{e:?}"),
            })?;
        let params_json =
            serde_json::to_string(params).map_err(|e| SamplingError::BadHistoryFile {
                path: path.to_path_buf(),
                reason: format!("parameters: {e}"),
            })?;
        let growth = match self.plan.growth {
            Growth::Prepend => "prepend",
            Growth::Append => "append",
        };
        let metadata: HashMap<String, String> = [
            ("format", HISTORY_FORMAT.to_string()),
            ("version", HISTORY_VERSION.to_string()),
            ("generated", self.generated.to_string()),
            ("zero_frames", self.plan.zero_frames.to_string()),
            (
                "starts_with_start_latent",
                self.plan.starts_with_start_latent.to_string(),
            ),
            ("growth", growth.to_string()),
            ("parameters", params_json),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize_to_file([(TENSOR_KEY, view)], Some(metadata), path).map_err(|e| {
            match e {
                safetensors::SafeTensorError::IoError(source) => SamplingError::Io {
                    path: path.to_path_buf(),
                    source,
                },
                other => SamplingError::BadHistoryFile {
                    path: path.to_path_buf(),
                    reason: format!("{other:?}"),
                },
            }
        })
    }

    /// Reads a history written by [`save`](Self::save), checking its bookkeeping.
    pub fn load(path: impl AsRef<Path>) -> Result<(Self, GenerationParams)> {
        let path = path.as_ref();
        let bad = |reason: String| SamplingError::BadHistoryFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| SamplingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("header: {e:?}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| bad("no __metadata__".into()))?;
        let get = |key: &str| {
            meta.get(key)
                .cloned()
                .ok_or_else(|| bad(format!("metadata has no `{key}`")))
        };
        if get("format")? != HISTORY_FORMAT {
            return Err(bad(format!("format is not `{HISTORY_FORMAT}`")));
        }
        let version: u32 = get("version")?
            .parse()
            .map_err(|_| bad("version is not a number".into()))?;
        if version != HISTORY_VERSION {
            return Err(bad(format!(
                "version {version}, this build reads {HISTORY_VERSION}"
            )));
        }
        let number = |key: &str| -> Result<u32> {
            get(key)?
                .parse()
                .map_err(|_| bad(format!("`{key}` is not a number")))
        };
        let generated = number("generated")?;
        let zero_frames = number("zero_frames")?;
        let starts_with_start_latent = match get("starts_with_start_latent")?.as_str() {
            "true" => true,
            "false" => false,
            other => return Err(bad(format!("starts_with_start_latent = `{other}`"))),
        };
        let growth = match get("growth")?.as_str() {
            "prepend" => Growth::Prepend,
            "append" => Growth::Append,
            other => return Err(bad(format!("growth = `{other}`"))),
        };
        let params: GenerationParams = serde_json::from_str(&get("parameters")?)
            .map_err(|e| bad(format!("parameters: {e}")))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("data: {e:?}")))?;
        let view = tensors
            .tensor(TENSOR_KEY)
            .map_err(|_| bad(format!("no `{TENSOR_KEY}` tensor")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "`{TENSOR_KEY}` is {:?}, not F32",
                view.dtype()
            )));
        }
        let shape: [usize; 5] = view.shape().try_into().map_err(|_| {
            bad(format!(
                "`{TENSOR_KEY}` has shape {:?}, not 5-D",
                view.shape()
            ))
        })?;
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if shape.contains(&0) {
            return Err(bad(format!("`{TENSOR_KEY}` has an empty shape {shape:?}")));
        }
        if generated as usize > shape[2] {
            return Err(bad(format!(
                "{generated} valid frames in a history of {}",
                shape[2]
            )));
        }
        let plan = HistoryPlan {
            zero_frames,
            starts_with_start_latent,
            growth,
        };
        Ok((
            Self {
                values,
                shape,
                generated,
                plan,
            },
            params,
        ))
    }
}
