//! Random-weight models: demos that run anywhere, and full-size benchmarks without downloads.

use burn::tensor::{backend::Backend, DType, Distribution, Tensor};

use super::{TensorSource, WeightError};

/// A [`TensorSource`] that draws every parameter from a normal distribution.
///
/// Weights are `N(0, std)`; one-dimensional parameters named like norm weights
/// (`*norm*.weight`) are drawn around 1 so that normalisations keep their scale. The tensors
/// are created directly on the device, so a 13 B-parameter model can be built on a GPU without
/// a host copy.
pub struct RandomSource<B: Backend> {
    device: B::Device,
    std: f64,
}

impl<B: Backend> RandomSource<B> {
    /// A source drawing from `N(0, std)` on `device`, seeded with `seed`.
    pub fn new(device: &B::Device, seed: u64, std: f64) -> Self {
        B::seed(device, seed);
        Self {
            device: device.clone(),
            std,
        }
    }
}

impl<B: Backend> TensorSource<B> for RandomSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let is_norm_weight = D == 1 && key.contains("norm") && key.ends_with(".weight");
        let (mean, std) = if is_norm_weight {
            (1.0, self.std)
        } else {
            (0.0, self.std)
        };
        let t = Tensor::<B, D>::random(shape, Distribution::Normal(mean, std), &self.device);
        Ok(t.cast(dtype))
    }

    fn device(&self) -> &B::Device {
        &self.device
    }
}
