//! Random-weight models: demos that run anywhere, and full-size benchmarks without downloads.

use burn::tensor::{backend::Backend, DType, Distribution, Slice, Tensor, TensorData};

use super::{SharedSource, TensorSource, WeightError};

/// A [`TensorSource`] that draws every parameter from a normal distribution.
///
/// Weights are `N(0, std)`; one-dimensional parameters named like norm weights
/// (`*norm*.weight`) are drawn around 1 so that normalisations keep their scale. The tensors
/// are created directly on the device, so a 13 B-parameter model can be built on a GPU without
/// a host copy ([`new`](Self::new)); or on the host ([`host`](Self::host)), so that every
/// backend gets the same weights.
pub struct RandomSource<B: Backend> {
    device: B::Device,
    std: f64,
    /// `Some(seed)`: drawn on the host, keyed by seed and tensor name.
    host_seed: Option<u64>,
}

impl<B: Backend> Clone for RandomSource<B> {
    /// The same draws: host-drawn weights are keyed by name, so a clone draws the same
    /// values; device-drawn ones continue the backend's generator.
    fn clone(&self) -> Self {
        Self {
            device: self.device.clone(),
            std: self.std,
            host_seed: self.host_seed,
        }
    }
}

impl<B: Backend> RandomSource<B> {
    /// A source drawing from `N(0, std)` with the backend's generator on `device`, seeded
    /// with `seed`: fast for any size, but each backend draws other values.
    pub fn new(device: &B::Device, seed: u64, std: f64) -> Self {
        B::seed(device, seed);
        Self {
            device: device.clone(),
            std,
            host_seed: None,
        }
    }

    /// A source drawing from `N(0, std)` on the host, each tensor from a generator keyed by
    /// `seed` and the tensor's name: the same weights on every backend and in any loading
    /// order (so a CPU result can check a GPU one). For small models: every value passes
    /// through host memory.
    pub fn host(device: &B::Device, seed: u64, std: f64) -> Self {
        Self {
            device: device.clone(),
            std,
            host_seed: Some(seed),
        }
    }
}

/// SplitMix64 with Box-Muller normals: a small portable generator for host-drawn weights.
struct HostNormals(u64);

impl HostNormals {
    /// Keyed by `seed` and `key` (FNV-1a of the name).
    fn new(seed: u64, key: &str) -> Self {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(seed ^ hash)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Device draws above this many values are made in slices of rows, each drawn in fp32 and
/// written into the `dtype` tensor: a large tensor (LLaMA's 525M-value embedding) then never
/// has a transient fp32 copy, and the device holds what a checkpoint's load would.
const DEVICE_SLICE: usize = 1 << 24;

impl<B: Backend> RandomSource<B> {
    fn sliced_draw<const D: usize>(
        &self,
        shape: [usize; D],
        distribution: Distribution,
        dtype: DType,
    ) -> Tensor<B, D> {
        let row: usize = shape[1..].iter().product();
        let rows_per_slice = (DEVICE_SLICE / row.max(1)).max(1);
        let mut out = Tensor::<B, D>::zeros(shape, (&self.device, dtype));
        for start in (0..shape[0]).step_by(rows_per_slice) {
            let end = (start + rows_per_slice).min(shape[0]);
            let mut slice_shape = shape;
            slice_shape[0] = end - start;
            let values =
                Tensor::<B, D>::random(slice_shape, distribution, &self.device).cast(dtype);
            let ranges: [Slice; D] = std::array::from_fn(|i| {
                if i == 0 {
                    Slice::new(start as isize, Some(end as isize), 1)
                } else {
                    Slice::full()
                }
            });
            out = out.slice_assign(ranges, values);
        }
        out
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
        let t = match self.host_seed {
            None if D > 1 && shape.iter().product::<usize>() > DEVICE_SLICE => {
                return Ok(self.sliced_draw(shape, Distribution::Normal(mean, std), dtype));
            }
            None => Tensor::<B, D>::random(shape, Distribution::Normal(mean, std), &self.device),
            Some(seed) => {
                let mut normals = HostNormals::new(seed, key);
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| (mean + std * normals.normal()) as f32)
                    .collect();
                Tensor::from_data(TensorData::new(values, shape), &self.device)
            }
        };
        Ok(t.cast(dtype))
    }

    fn device(&self) -> &B::Device {
        &self.device
    }

    fn shared(&self) -> Option<SharedSource<B>> {
        Some(SharedSource::random(self.clone()))
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    type B = crate::CpuBackend;

    fn draw(src: &mut RandomSource<B>, key: &str) -> Vec<f32> {
        src.tensor::<2>(key, [64, 32], DType::F32)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    /// A draw above the slice size is made slice by slice: every row is drawn (none left at
    /// the zeros the slices are written into) and the values are N(0, std).
    #[test]
    fn large_device_draws_fill_every_row() {
        let device = Default::default();
        let mut src = RandomSource::<B>::new(&device, 3, 0.5);
        let shape = [4099, 4097]; // 16.8M values: two slices, the second one short.
        assert!(shape[0] * shape[1] > DEVICE_SLICE);
        let t = src.tensor::<2>("big.weight", shape, DType::F32).unwrap();
        assert_eq!(t.dims(), shape);
        let row_std = t.clone().var(1).sqrt().into_data().to_vec::<f32>().unwrap();
        let thinnest = row_std.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(thinnest > 0.4, "a row with std {thinnest} was not drawn");
        let values = t.into_data().to_vec::<f32>().unwrap();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 2e-3, "std {}", var.sqrt());
    }

    #[test]
    fn host_draws_depend_on_seed_and_name_only() {
        let device = Default::default();
        let mut a = RandomSource::<B>::host(&device, 5, 0.5);
        let mut b = RandomSource::<B>::host(&device, 5, 0.5);
        // Another loading order gives the same tensors.
        let (a1, a2) = (draw(&mut a, "x.weight"), draw(&mut a, "y.weight"));
        let (b2, b1) = (draw(&mut b, "y.weight"), draw(&mut b, "x.weight"));
        assert_eq!(a1, b1);
        assert_eq!(a2, b2);
        assert_ne!(a1, a2);
        assert_ne!(
            a1,
            draw(&mut RandomSource::host(&device, 6, 0.5), "x.weight")
        );
        // N(0, 0.5) over 2,048 values.
        let n = a1.len() as f64;
        let mean = a1.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (a1
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((std - 0.5).abs() < 0.03, "std {std}");
    }
}
