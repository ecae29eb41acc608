//! MagCache as a request names it (FramePack-Studio's step cache): its settings, and the ratio
//! table a calibration run records.

use std::path::Path;

use framepack_sampling::MagCache;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// MagCache settings. Defaults are FramePack-Studio's: threshold 0.1, at most 2 skipped calls
/// in a row, the first 20 % of each window's calls always computed.
///
/// The magnitude ratios are model specific and none are shipped for the 13B model: without a
/// table ([`MagCacheSettings::calibrate`]) a job computes every call and records the ratios it
/// measured in its run record (`result.magcache_ratios`), which later jobs use
/// ([`MagCacheSettings::with_ratios`], CLI `--magcache-ratios RUN.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagCacheSettings {
    /// The accumulated-error threshold (higher skips more).
    pub threshold: f64,
    /// The most consecutive skipped calls.
    pub max_skips: usize,
    /// The fraction of leading calls of a window that are always computed.
    pub retention: f64,
    /// The calibrated ratio per call of a window; `None`: a calibration run.
    #[serde(default)]
    pub ratios: Option<Vec<f64>>,
}

impl MagCacheSettings {
    /// A calibration run with Studio's defaults.
    pub fn calibrate() -> Self {
        Self {
            threshold: 0.1,
            max_skips: 2,
            retention: 0.2,
            ratios: None,
        }
    }

    /// Studio's defaults with a calibrated ratio table.
    pub fn with_ratios(ratios: Vec<f64>) -> Self {
        Self {
            ratios: Some(ratios),
            ..Self::calibrate()
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("magcache", reason));
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return bad(format!(
                "threshold {} must be a finite number >= 0",
                self.threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.retention) {
            return bad(format!("retention {} is outside 0..=1", self.retention));
        }
        if let Some(r) = &self.ratios {
            if r.is_empty() || r.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return bad("the ratio table must hold positive finite numbers".into());
            }
        }
        Ok(())
    }

    /// The sampler's cache.
    pub(crate) fn cache(&self) -> MagCache {
        let cache = match &self.ratios {
            Some(r) => MagCache::new(r.clone()),
            None => MagCache::calibrate(),
        };
        cache
            .threshold(self.threshold)
            .max_skips(self.max_skips)
            .retention(self.retention)
    }
}

/// A ratio table from a file: a JSON array of numbers, or a run record whose
/// `result.magcache_ratios` a calibration run filled.
pub fn read_ratios(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    let bad = |reason: String| {
        Error::invalid("magcache-ratios", format!("`{}`: {reason}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let table = value
        .pointer("/result/magcache_ratios")
        .unwrap_or(&value)
        .clone();
    serde_json::from_value::<Vec<f64>>(table).map_err(|_| {
        bad("neither a JSON array of numbers nor a run record with result.magcache_ratios".into())
    })
}
