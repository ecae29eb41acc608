//! Several LoRAs with one multiplier each, and the low-rank factors they give one module.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::file::{LoraFile, Patch, Unmatched};
use super::{LoraError, LoraReport, UnmatchedReason};

/// The LoRAs of one job, each with its multiplier (FramePack-eichi's "LoRA scale").
///
/// Files are held behind [`Arc`], so sets that share a LoRA share its parse and its mapping.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    loras: Vec<(Arc<LoraFile>, f32)>,
}

/// The combined low-rank factors of one module: `delta = up @ down` (fp32 on the device).
///
/// `down` `[R, in]` stacks every LoRA's `down` (flattened to a matrix), `up` `[out, R]` their
/// `up` rows, each already scaled by `multiplier · alpha / rank`; so one product gives
/// `Σ m_i · (up_i @ down_i) · alpha_i / rank_i`.
pub(crate) struct Factors<B: Backend> {
    pub down: Tensor<B, 2>,
    pub up: Tensor<B, 2>,
}

impl LoraSet {
    /// An empty set (no LoRA).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens and parses each `(path, multiplier)`.
    pub fn open<P: AsRef<Path>>(
        loras: impl IntoIterator<Item = (P, f32)>,
    ) -> Result<Self, LoraError> {
        let mut set = Self::new();
        for (path, multiplier) in loras {
            set.push(LoraFile::open(path)?, multiplier);
        }
        Ok(set)
    }

    /// Adds a LoRA with its multiplier.
    pub fn push(&mut self, lora: impl Into<Arc<LoraFile>>, multiplier: f32) {
        self.loras.push((lora.into(), multiplier));
    }

    /// Builder form of [`LoraSet::push`].
    pub fn with(mut self, lora: impl Into<Arc<LoraFile>>, multiplier: f32) -> Self {
        self.push(lora, multiplier);
        self
    }

    /// Whether the set has no LoRA.
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    /// The LoRAs and their multipliers.
    pub fn iter(&self) -> impl Iterator<Item = (&LoraFile, f32)> {
        self.loras.iter().map(|(l, m)| (l.as_ref(), *m))
    }

    /// Whether some LoRA of the set patches `module` (a checkpoint key without `.weight`).
    pub fn patches(&self, module: &str) -> bool {
        self.loras.iter().any(|(l, _)| l.patches(module))
    }

    /// The fp32 factors of `module` for a weight stored as `shape` (`[out, in]`, or a conv
    /// kernel `[out, in, k...]`), or `None` when no LoRA with a non-zero multiplier patches it.
    pub(crate) fn factors<B: Backend>(
        &self,
        module: &str,
        shape: &[usize],
        device: &B::Device,
    ) -> Result<Option<Factors<B>>, LoraError> {
        let out = shape[0];
        let inner: usize = shape[1..].iter().product();
        let target = format!("{module}.weight");
        // (scaled up rows [out, r], r) of each patch, and the stacked downs [R, inner].
        let mut ups: Vec<(Vec<f32>, usize)> = Vec::new();
        let mut down = Vec::new();
        for (lora, multiplier) in self.iter() {
            if multiplier == 0.0 {
                continue;
            }
            for patch in lora.patches_of(module) {
                check_patch(lora, patch, shape, &target)?;
                let rank = patch.rank();
                down.extend(lora.read_f32(&patch.down_key, &patch.down_shape)?);
                let up_all = lora.read_f32(&patch.up_key, &patch.up_shape)?;
                let scale = multiplier * patch.alpha / rank as f32;
                let mut up = Vec::with_capacity(out * rank);
                for range in &patch.rows {
                    up.extend(
                        up_all[range.start * rank..range.end * rank]
                            .iter()
                            .map(|v| v * scale),
                    );
                }
                ups.push((up, rank));
            }
        }
        if ups.is_empty() {
            return Ok(None);
        }
        let total: usize = ups.iter().map(|(_, r)| r).sum();
        // Interleave the row blocks: up[o, :] = [up_1[o, :] | up_2[o, :] | ...].
        let mut up = Vec::with_capacity(out * total);
        for o in 0..out {
            for (part, rank) in &ups {
                up.extend_from_slice(&part[o * rank..(o + 1) * rank]);
            }
        }
        let f32_on = (device, DType::F32);
        Ok(Some(Factors {
            down: Tensor::from_data(TensorData::new(down, [total, inner]), f32_on),
            up: Tensor::from_data(TensorData::new(up, [out, total]), f32_on),
        }))
    }

    /// The report of a load or attach: the modules in `applied` (patched), and everything of
    /// the set that patched nothing: the keys found unusable while parsing, and the modules not
    /// in `present` (the patched modules the model has, including those whose multiplier is 0).
    pub(crate) fn report(
        &self,
        present: &HashSet<String>,
        applied: &HashSet<String>,
    ) -> LoraReport {
        let mut unmatched: Vec<Unmatched> = Vec::new();
        let mut seen = HashSet::new();
        for (lora, _) in self.iter() {
            unmatched.extend(lora.unmatched().iter().cloned());
            for (module, patch) in lora.all_patches() {
                if !present.contains(module) && seen.insert((lora.path(), module)) {
                    unmatched.push(Unmatched {
                        file: lora.path().to_path_buf(),
                        key: patch.down_key.clone(),
                        reason: UnmatchedReason::NotInModel {
                            module: module.to_string(),
                        },
                    });
                }
            }
        }
        let mut applied: Vec<String> = applied.iter().cloned().collect();
        applied.sort();
        LoraReport { applied, unmatched }
    }
}

/// `down` must read the weight's input (`[r, in]`, `[r, in, 1...]` for a linear, `[r, in, k...]`
/// for a conv kernel); the rows of `up` must be the weight's output rows.
fn check_patch(
    lora: &LoraFile,
    patch: &Patch,
    shape: &[usize],
    target: &str,
) -> Result<(), LoraError> {
    let rank = patch.rank();
    let down = &patch.down_shape;
    let down_ok = down[1..] == shape[1..]
        || (shape.len() == 2 && down[1] == shape[1] && down[2..].iter().all(|&d| d == 1));
    if !down_ok {
        let mut expected = vec![rank];
        expected.extend_from_slice(&shape[1..]);
        return Err(LoraError::ShapeMismatch {
            path: lora.path().to_path_buf(),
            key: patch.down_key.clone(),
            target: target.to_string(),
            expected,
            found: down.clone(),
        });
    }
    if patch.out_rows() != shape[0] {
        return Err(LoraError::ShapeMismatch {
            path: lora.path().to_path_buf(),
            key: patch.up_label(),
            target: target.to_string(),
            expected: vec![shape[0], rank],
            found: vec![patch.out_rows(), rank],
        });
    }
    Ok(())
}
