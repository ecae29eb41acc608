//! Where model parameters come from.
//!
//! Every network is built by asking a [`TensorSource`] for its parameters by their original
//! Hugging Face key names and shapes. The same construction code therefore serves three
//! purposes: loading a published checkpoint ([`SafetensorsSource`]), building a random-weight
//! model of any size for demos and benchmarks ([`RandomSource`]), and listing what a
//! full-size model expects without allocating it ([`ManifestRecorder`]). Sources compose by
//! wrapping ([`Rerooted`], [`crate::lora::LoraSource`]), and `&mut source` is a source too.

mod error;
pub mod hub;
mod manifest;
mod random;
mod safetensors;
mod shared;

pub use error::WeightError;
pub use manifest::{ManifestEntry, ManifestRecorder};
pub use random::RandomSource;
pub use safetensors::{CheckpointFiles, SafetensorsSource, TensorMeta};
pub use shared::{Rerooted, SharedSource};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::fp8::{Fp8Host, Fp8Weight};

/// A provider of named parameters.
///
/// `key` is the checkpoint's own name (e.g. `transformer_blocks.0.attn.to_q.weight`), `shape`
/// the shape the model needs, `dtype` the dtype the model computes in for this parameter.
pub trait TensorSource<B: Backend> {
    /// Returns the tensor stored under `key`, checked against `shape` and converted to `dtype`.
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError>;

    /// The device the tensors are created on.
    fn device(&self) -> &B::Device;

    /// The tensor stored under `key` as host data, checked against `shape` and converted to
    /// `dtype`: what the low-VRAM mode keeps in host memory and streams to the device. The
    /// default goes through the device; sources backed by files read it directly.
    fn host_data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        let data = match *shape {
            [a] => self.tensor(key, [a], dtype)?.into_data(),
            [a, b] => self.tensor(key, [a, b], dtype)?.into_data(),
            [a, b, c] => self.tensor(key, [a, b, c], dtype)?.into_data(),
            [a, b, c, d] => self.tensor(key, [a, b, c, d], dtype)?.into_data(),
            [a, b, c, d, e] => self.tensor(key, [a, b, c, d, e], dtype)?.into_data(),
            _ => {
                return Err(WeightError::ShapeMismatch {
                    key: key.to_string(),
                    expected: shape.to_vec(),
                    found: shape.to_vec(),
                    path: Default::default(),
                })
            }
        };
        Ok(data)
    }

    /// The `[out, in]` weight under `key` as FP8 codes with per-row scales, on the host
    /// ([`crate::fp8`]). The default quantises the values read in fp32; a checkpoint that
    /// stores e4m3 codes hands them over as they are.
    fn fp8_host(&mut self, key: &str, shape: [usize; 2]) -> Result<Fp8Host, WeightError> {
        let data = self.host_data(key, &shape, DType::F32)?;
        let values = data
            .to_vec::<f32>()
            .map_err(|e| WeightError::UnsupportedDtype {
                key: key.to_string(),
                dtype: format!("{e:?}"),
                path: Default::default(),
            })?;
        Ok(Fp8Host::quantize(&values, shape))
    }

    /// [`TensorSource::fp8_host`] on the device, expanding to `dtype` at every use. Streamed
    /// blocks capture and replay it as two tensors (codes, scales).
    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        Ok(self.fp8_host(key, shape)?.upload(self.device(), dtype))
    }

    /// An owned handle that reads this source's tensors again at any later time, or `None`
    /// (the default) where the source cannot be read twice. Checkpoints
    /// ([`SafetensorsSource`]: the mapped files) and random weights ([`RandomSource`]) can:
    /// LLaMA streamed from them reads each decoder layer during each call.
    fn shared(&self) -> Option<SharedSource<B>> {
        None
    }
}

/// A borrowed source is a source: `load(&mut src, …)` builds a network and leaves `src` to
/// the caller (to [`SafetensorsSource::finish`], or to load the next network from).
impl<B: Backend, S: TensorSource<B>> TensorSource<B> for &mut S {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        (**self).tensor(key, shape, dtype)
    }

    fn device(&self) -> &B::Device {
        (**self).device()
    }

    fn host_data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        (**self).host_data(key, shape, dtype)
    }

    fn fp8_host(&mut self, key: &str, shape: [usize; 2]) -> Result<Fp8Host, WeightError> {
        (**self).fp8_host(key, shape)
    }

    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        (**self).fp8_weight(key, shape, dtype)
    }

    fn shared(&self) -> Option<SharedSource<B>> {
        (**self).shared()
    }
}

/// Joins a module prefix and a parameter name with a dot, skipping an empty prefix.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
