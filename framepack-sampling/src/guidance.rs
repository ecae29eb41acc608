//! Distilled guidance, real classifier-free guidance and guidance rescale (spec §4.5).
//!
//! FramePack's transformer is guidance-distilled: the `gs` knob (default 10) is only an
//! embedding input (`bf16(gs·1000)`), not a second model call. Real CFG (`cfg`, default 1) runs
//! the model a second time with the negative prompt, and only when `cfg != 1`: with `cfg == 1`
//! the reference sets the negative prediction to zeros, and `0 + 1·(v − 0)` is `v` exactly, so
//! skipping the call changes nothing. Rescale (`rs`, default 0) pulls the CFG result's standard
//! deviation back towards the positive prediction's (Lin et al. 2023, "Common Diffusion Noise
//! Schedules and Sample Steps are Flawed").

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::error::{Result, SamplingError};

/// The guidance settings of a job.
///
/// ```
/// use framepack_sampling::Guidance;
/// let g = Guidance::default();
/// assert_eq!((g.distilled_scale(), g.cfg_scale(), g.rescale_factor()), (10.0, 1.0, 0.0));
/// assert!(!g.uses_negative_prompt());
/// assert!(Guidance::default().cfg(3.0).uses_negative_prompt());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    distilled: f64,
    cfg: f64,
    rescale: f64,
}

impl Default for Guidance {
    /// The demo's values: `gs = 10`, `cfg = 1`, `rs = 0`.
    fn default() -> Self {
        Self {
            distilled: 10.0,
            cfg: 1.0,
            rescale: 0.0,
        }
    }
}

impl Guidance {
    /// The distilled guidance scale `gs` (the UI offers 1 to 32).
    pub fn distilled(mut self, gs: f64) -> Self {
        self.distilled = gs;
        self
    }

    /// The real CFG scale (1 = off: one model call per step).
    pub fn cfg(mut self, scale: f64) -> Self {
        self.cfg = scale;
        self
    }

    /// The guidance rescale factor `rs` in `0..=1` (0 = off).
    pub fn rescale(mut self, rs: f64) -> Self {
        self.rescale = rs;
        self
    }

    /// `rs`.
    pub fn rescale_factor(&self) -> f64 {
        self.rescale
    }

    /// `gs`.
    pub fn distilled_scale(&self) -> f64 {
        self.distilled
    }

    /// The real CFG scale.
    pub fn cfg_scale(&self) -> f64 {
        self.cfg
    }

    /// Whether each step makes a second, negative-prompt model call.
    pub fn uses_negative_prompt(&self) -> bool {
        self.cfg != 1.0
    }

    /// Checks that every value is finite and `rs` lies in `0..=1`.
    pub fn validate(&self) -> Result<()> {
        for (argument, v) in [("distilled guidance", self.distilled), ("cfg", self.cfg)] {
            if !v.is_finite() {
                return Err(SamplingError::invalid(
                    argument,
                    format!("{v} is not finite"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.rescale) {
            return Err(SamplingError::invalid(
                "guidance rescale",
                format!("{} must lie in 0..=1", self.rescale),
            ));
        }
        Ok(())
    }
}

/// `v_neg + cfg·(v_pos − v_neg)`, in `f32` as the reference.
pub fn classifier_free<B: Backend>(
    positive: Tensor<B, 5>,
    negative: Tensor<B, 5>,
    cfg: f64,
) -> Tensor<B, 5> {
    negative.clone() + (positive - negative).mul_scalar(cfg as f32)
}

pub(crate) fn host_values<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    what: &'static str,
) -> Result<Vec<f32>> {
    t.cast(burn::tensor::DType::F32)
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| SamplingError::TensorData {
            what,
            reason: format!("{e:?}"),
        })
}

/// Unbiased standard deviation of each batch element over all other dimensions, accumulated in
/// `f64` (PyTorch's CPU `std` accumulates float inputs in double) and rounded to `f32`.
fn std_per_sample(values: &[f32], batch: usize) -> Vec<f32> {
    let n = values.len() / batch.max(1);
    values
        .chunks(n.max(1))
        .map(|v| {
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
            let ss: f64 = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum();
            (ss / (v.len() as f64 - 1.0)).sqrt() as f32
        })
        .collect()
}

/// Guidance rescale (`rescale_noise_cfg`): `rs·(v_cfg·σ_pos/σ_cfg) + (1 − rs)·v_cfg`, with the
/// unbiased standard deviations of each batch element. `rs == 0` returns `v_cfg` untouched.
pub fn rescale_guidance<B: Backend>(
    v_cfg: Tensor<B, 5>,
    positive: &Tensor<B, 5>,
    rs: f64,
) -> Result<Tensor<B, 5>> {
    if rs == 0.0 {
        return Ok(v_cfg);
    }
    let batch = v_cfg.dims()[0];
    let std_pos = std_per_sample(&host_values(positive.clone(), "positive velocity")?, batch);
    let std_cfg = std_per_sample(&host_values(v_cfg.clone(), "CFG velocity")?, batch);
    let factor: Vec<f32> = std_pos.iter().zip(&std_cfg).map(|(p, c)| p / c).collect();
    let device = v_cfg.device();
    let factor = Tensor::<B, 5>::from_data(
        TensorData::new(factor, [batch, 1, 1, 1, 1]),
        (&device, burn::tensor::DType::F32),
    );
    let rescaled = v_cfg.clone() * factor;
    Ok(rescaled.mul_scalar(rs as f32) + v_cfg.mul_scalar((1.0 - rs) as f32))
}
