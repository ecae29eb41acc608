//! Step caches: skip the transformer's block stack on steps where its output would barely
//! change, reusing the residual of the last computed step (spec §5).
//!
//! Both caches work on the transformer's split forward: the packed image stream goes in, the
//! block stack adds a residual `r = blocks(x) − x`, and a skipped call returns `x + r_last`
//! instead. They differ in how they decide to skip:
//!
//! - [`TeaCache`] (the reference's, on by default in the FramePack demo): it measures the
//!   relative L1 change of the first block's modulated input between consecutive calls, maps it
//!   through a fitted polynomial, and accumulates; a call is computed when the sum reaches the
//!   threshold (0.15), which then resets. Calls 0 and N − 1 are always computed.
//! - [`MagCache`] (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware
//!   Cache", as FramePack-Studio offers it): the ratio of consecutive residual magnitudes
//!   follows a stable per-step curve, so the error of reusing a residual can be predicted from
//!   a calibrated table of ratios; a call is skipped while the accumulated `|1 − Πratio|` stays
//!   under the threshold and no more than `max_skips` calls in a row were skipped. The first
//!   `retention` fraction of the calls are always computed. The ratio table is model specific:
//!   run one window with [`MagRatios::Calibrate`] to record it.
//!
//! Both count **model calls**, as the reference does: with real CFG (two calls per step) the
//! counter runs twice as fast as the steps and the "first and last call" rule no longer falls on
//! the first and last step. The reference never meets this because its CFG is 1.
//!
//! Neither is lossless; `docs/sampling.md` has the measured speed-up and error on the tiny
//! model.

use burn::tensor::{backend::Backend, DType, Tensor};
use framepack_models::transformer::{FramePackTransformer, PreparedInputs};
use framepack_models::FramePackBackend;

use crate::error::{Result, SamplingError};
use crate::guidance::host_values;

/// A model whose forward splits around its block stack (what a step cache needs).
pub trait BlockStack<B: Backend> {
    /// The packed inputs of one call.
    type Prepared;

    /// The image stream entering the blocks, `[batch, tokens, hidden]`.
    fn image_stream(&self, prepared: &Self::Prepared) -> Tensor<B, 3>;

    /// The signal TeaCache compares between calls (the first block's modulated input).
    fn cache_signal(&self, prepared: &Self::Prepared) -> Tensor<B, 3>;

    /// The image stream after all blocks.
    fn run_blocks(&self, prepared: &Self::Prepared) -> Tensor<B, 3>;
}

impl<B: FramePackBackend> BlockStack<B> for FramePackTransformer<B> {
    type Prepared = PreparedInputs<B>;

    fn image_stream(&self, prepared: &PreparedInputs<B>) -> Tensor<B, 3> {
        prepared.image.clone()
    }

    fn cache_signal(&self, prepared: &PreparedInputs<B>) -> Tensor<B, 3> {
        self.teacache_signal(prepared)
    }

    fn run_blocks(&self, prepared: &PreparedInputs<B>) -> Tensor<B, 3> {
        FramePackTransformer::run_blocks(self, prepared)
    }
}

/// TeaCache with the reference's polynomial.
#[derive(Debug, Clone, PartialEq)]
pub struct TeaCache {
    threshold: f64,
    coefficients: [f64; 5],
}

impl TeaCache {
    /// The reference's rescale polynomial (highest power first), fitted for HunyuanVideo.
    pub const COEFFICIENTS: [f64; 5] = [
        7.33226126e+02,
        -4.01131952e+02,
        6.75869174e+01,
        -3.14987800e+00,
        9.61237896e-02,
    ];

    /// The reference's threshold ("0.1 for 1.6x speedup, 0.15 for 2.1x speedup").
    pub const THRESHOLD: f64 = 0.15;

    /// Sets the accumulated-distance threshold (higher skips more).
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The rescale polynomial evaluated at `x` in `f64` (numpy `poly1d`, Horner's rule).
    pub fn rescale(&self, x: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |acc, c| acc * x + c)
    }
}

impl Default for TeaCache {
    fn default() -> Self {
        Self {
            threshold: Self::THRESHOLD,
            coefficients: Self::COEFFICIENTS,
        }
    }
}

/// Where MagCache's magnitude ratios come from.
#[derive(Debug, Clone, PartialEq)]
pub enum MagRatios {
    /// Compute every call and record `mean_tokens(‖r_i‖ / ‖r_{i−1}‖)` per call index
    /// (read them with [`StepCache::calibrated_ratios`]).
    Calibrate,
    /// A calibrated table, one ratio per call index of a window (resampled to nearest when the
    /// step count differs).
    Table(Vec<f64>),
}

/// MagCache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MagCache {
    threshold: f64,
    max_skips: usize,
    retention: f64,
    ratios: MagRatios,
}

impl MagCache {
    /// A cache using a calibrated ratio table, with FramePack-Studio's defaults (threshold 0.1,
    /// at most 2 consecutive skips, the first 20 % of calls always computed).
    pub fn new(ratios: Vec<f64>) -> Self {
        Self {
            threshold: 0.1,
            max_skips: 2,
            retention: 0.2,
            ratios: MagRatios::Table(ratios),
        }
    }

    /// A calibration run: nothing is skipped, the ratios are recorded.
    pub fn calibrate() -> Self {
        Self {
            ratios: MagRatios::Calibrate,
            ..Self::new(Vec::new())
        }
    }

    /// The accumulated-error threshold (higher skips more).
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The most consecutive skipped calls.
    pub fn max_skips(mut self, k: usize) -> Self {
        self.max_skips = k;
        self
    }

    /// The fraction of leading calls that are always computed.
    pub fn retention(mut self, fraction: f64) -> Self {
        self.retention = fraction;
        self
    }

    fn ratio(&self, call: usize, calls: usize) -> f64 {
        match &self.ratios {
            MagRatios::Table(t) if !t.is_empty() => {
                let i = if t.len() == calls || calls < 2 {
                    call
                } else {
                    ((call as f64) * (t.len() - 1) as f64 / (calls - 1) as f64).round() as usize
                };
                t[i.min(t.len() - 1)]
            }
            _ => 1.0,
        }
    }
}

/// Which step cache a model runs with.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CacheMode {
    /// Every call runs the whole block stack.
    #[default]
    Off,
    /// The reference's TeaCache.
    TeaCache(TeaCache),
    /// MagCache.
    MagCache(MagCache),
}

/// Counts of model calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Model calls.
    pub calls: usize,
    /// Calls that ran the block stack.
    pub computed: usize,
    /// Calls that reused the cached residual.
    pub skipped: usize,
}

/// The per-job state of a step cache.
#[derive(Debug, Clone)]
pub struct StepCache<B: Backend> {
    mode: CacheMode,
    calls_per_window: usize,
    count: usize,
    accumulated: f64,
    mag_ratio: f64,
    mag_skipped: usize,
    previous_signal: Option<Tensor<B, 3>>,
    previous_residual: Option<Tensor<B, 3>>,
    stats: CacheStats,
    window_log: Vec<bool>,
    calibration: Vec<(f64, usize)>,
}

/// Rounds a reduced value to `dtype` as a 0-dim PyTorch tensor of that dtype would hold it.
fn round_to(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

fn scalar<B: Backend>(t: Tensor<B, 1>, what: &'static str) -> Result<f32> {
    host_values(t, what)?
        .first()
        .copied()
        .ok_or_else(|| SamplingError::TensorData {
            what,
            reason: "empty reduction".into(),
        })
}

/// TeaCache's `mean|a − b| / mean|b|`, every intermediate held in the signal's dtype.
fn relative_l1<B: Backend>(current: &Tensor<B, 3>, previous: &Tensor<B, 3>) -> Result<f64> {
    let dtype = current.dtype();
    let diff = (current.clone() - previous.clone())
        .abs()
        .cast(DType::F32)
        .mean();
    let base = previous.clone().abs().cast(DType::F32).mean();
    let num = round_to(scalar(diff, "TeaCache distance")?, dtype);
    let den = round_to(scalar(base, "TeaCache norm")?, dtype);
    Ok(f64::from(round_to(num / den, dtype)))
}

/// `mean over tokens of ‖a‖ / ‖b‖` (norms over the hidden dimension).
fn magnitude_ratio<B: Backend>(a: &Tensor<B, 3>, b: &Tensor<B, 3>) -> Result<f64> {
    let norm = |t: &Tensor<B, 3>| t.clone().cast(DType::F32).powi_scalar(2).sum_dim(2).sqrt();
    let ratio = (norm(a) / norm(b)).mean();
    Ok(f64::from(scalar(ratio, "MagCache ratio")?))
}

impl<B: Backend> StepCache<B> {
    /// A fresh cache.
    pub fn new(mode: CacheMode) -> Self {
        Self {
            mode,
            calls_per_window: 0,
            count: 0,
            accumulated: 0.0,
            mag_ratio: 1.0,
            mag_skipped: 0,
            previous_signal: None,
            previous_residual: None,
            stats: CacheStats::default(),
            window_log: Vec::new(),
            calibration: Vec::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> &CacheMode {
        &self.mode
    }

    /// Resets the per-window state (the reference's `initialize_teacache` at every section).
    pub fn begin_window(&mut self, steps: usize) {
        self.calls_per_window = steps;
        self.count = 0;
        self.accumulated = 0.0;
        self.mag_ratio = 1.0;
        self.mag_skipped = 0;
        self.previous_signal = None;
        self.previous_residual = None;
        self.window_log.clear();
    }

    /// Counts over all windows so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Whether each call of the current (or last) window was computed (`true`) or skipped.
    pub fn window_log(&self) -> &[bool] {
        &self.window_log
    }

    /// The magnitude ratios recorded by a [`MagRatios::Calibrate`] run, averaged over its
    /// windows (index 0 is 1 by definition).
    pub fn calibrated_ratios(&self) -> Option<Vec<f64>> {
        if self.calibration.is_empty() {
            return None;
        }
        Some(
            self.calibration
                .iter()
                .enumerate()
                .map(|(i, &(sum, n))| {
                    if i == 0 || n == 0 {
                        1.0
                    } else {
                        sum / n as f64
                    }
                })
                .collect(),
        )
    }

    fn is_edge_call(&self) -> bool {
        self.count == 0 || self.count + 1 == self.calls_per_window
    }

    fn teacache_decision(&mut self, tea: &TeaCache, signal: &Tensor<B, 3>) -> Result<bool> {
        let compute = if self.is_edge_call() {
            self.accumulated = 0.0;
            true
        } else {
            let previous = self.previous_signal.as_ref().unwrap_or(signal);
            self.accumulated += tea.rescale(relative_l1(signal, previous)?);
            let compute = self.accumulated >= tea.threshold;
            if compute {
                self.accumulated = 0.0;
            }
            compute
        };
        Ok(compute)
    }

    fn magcache_decision(&mut self, mag: &MagCache) -> bool {
        let retained = (self.calls_per_window as f64 * mag.retention) as usize;
        if self.is_edge_call() {
            self.reset_magnitude();
            return true;
        }
        if matches!(mag.ratios, MagRatios::Calibrate) || self.count < retained {
            return true;
        }
        self.mag_ratio *= mag.ratio(self.count, self.calls_per_window);
        self.mag_skipped += 1;
        self.accumulated += (1.0 - self.mag_ratio).abs();
        if self.accumulated < mag.threshold && self.mag_skipped <= mag.max_skips {
            false
        } else {
            self.reset_magnitude();
            true
        }
    }

    fn reset_magnitude(&mut self) {
        self.accumulated = 0.0;
        self.mag_ratio = 1.0;
        self.mag_skipped = 0;
    }

    /// Runs (or skips) the block stack of one model call; returns the image stream after it.
    pub fn run<M: BlockStack<B>>(
        &mut self,
        model: &M,
        prepared: &M::Prepared,
    ) -> Result<Tensor<B, 3>> {
        let mode = self.mode.clone();
        let compute = match &mode {
            CacheMode::Off => {
                self.stats.calls += 1;
                self.stats.computed += 1;
                return Ok(model.run_blocks(prepared));
            }
            CacheMode::TeaCache(tea) => {
                let signal = model.cache_signal(prepared);
                let compute = self.teacache_decision(tea, &signal)?;
                self.previous_signal = Some(signal);
                compute
            }
            CacheMode::MagCache(mag) => self.magcache_decision(mag),
        };
        // Without a residual yet (a window shorter than the edge rule covers), compute.
        let compute = compute || self.previous_residual.is_none();
        let input = model.image_stream(prepared);
        let output = if compute {
            let output = model.run_blocks(prepared);
            let residual = output.clone() - input;
            if let CacheMode::MagCache(MagCache {
                ratios: MagRatios::Calibrate,
                ..
            }) = &mode
            {
                if self.calibration.len() <= self.count {
                    self.calibration.resize(self.count + 1, (0.0, 0));
                }
                if let Some(previous) = &self.previous_residual {
                    let r = magnitude_ratio(&residual, previous)?;
                    let slot = &mut self.calibration[self.count];
                    *slot = (slot.0 + r, slot.1 + 1);
                }
            }
            self.previous_residual = Some(residual);
            self.stats.computed += 1;
            output
        } else {
            self.stats.skipped += 1;
            match &self.previous_residual {
                Some(r) => input + r.clone(),
                None => model.run_blocks(prepared),
            }
        };
        self.stats.calls += 1;
        self.window_log.push(compute);
        self.count += 1;
        if self.count == self.calls_per_window {
            self.count = 0;
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_is_the_references() {
        let t = TeaCache::default();
        assert!((t.rescale(0.0) - 9.61237896e-02).abs() < 1e-15);
        let x = 0.05f64;
        let want = 733.226126 * x.powi(4) - 401.131952 * x.powi(3) + 67.5869174 * x.powi(2)
            - 3.14987800 * x
            + 0.0961237896;
        assert!((t.rescale(x) - want).abs() < 1e-12);
    }

    #[test]
    fn magcache_table_resamples_to_nearest() {
        let m = MagCache::new(vec![1.0, 0.9, 0.8, 0.7, 0.6]);
        assert_eq!(m.ratio(2, 5), 0.8);
        assert_eq!(m.ratio(4, 9), 0.8); // 4·4/8 = 2
        assert_eq!(m.ratio(8, 9), 0.6);
        assert_eq!(MagCache::calibrate().ratio(3, 5), 1.0);
    }
}
