//! The encoder's diagonal Gaussian posterior and seeded sampling from it.

use burn::tensor::{DType, Tensor, TensorData};

use crate::error::ModelError;
use crate::ops::FramePackBackend;

/// The latent distribution of an encode, `N(mean, exp(logvar))` per element, in fp32 and
/// **unscaled** (multiply by the scaling factor for the diffusion model, see
/// [`crate::vae::HunyuanVideoVae::scale_latents`]).
///
/// diffusers' `DiagonalGaussianDistribution`: the moments are split into mean (first half of
/// the channels) and logvar, and logvar is clamped to [−30, 20].
#[derive(Debug, Clone)]
pub struct Posterior<B: FramePackBackend> {
    /// `[batch, latent, t, h, w]`.
    pub mean: Tensor<B, 5>,
    /// `[batch, latent, t, h, w]`, clamped to [−30, 20].
    pub logvar: Tensor<B, 5>,
}

impl<B: FramePackBackend> Posterior<B> {
    /// Splits `moments` `[batch, 2·latent, t, h, w]` (the output of `quant_conv`).
    pub fn from_moments(moments: Tensor<B, 5>) -> Self {
        let moments = moments.cast(DType::F32);
        let latent = moments.dims()[1] / 2;
        Self {
            mean: moments.clone().narrow(1, 0, latent),
            logvar: moments.narrow(1, latent, latent).clamp(-30.0, 20.0),
        }
    }

    /// The mode (= the mean), the deterministic choice.
    pub fn mode(&self) -> Tensor<B, 5> {
        self.mean.clone()
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 5> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// `mean + std · ε` with `ε ~ N(0, 1)` drawn from a generator seeded with `seed`.
    ///
    /// The stream is this crate's own (xoshiro256++ seeded through SplitMix64, Box–Muller
    /// in f64, element order = row-major order of `mean`), the same on every backend and
    /// machine. It is **not** PyTorch's: FramePack calls `latent_dist.sample()` without a
    /// generator, i.e. on the unseeded global CUDA generator, so its draw is not reproducible
    /// at all. Use [`Posterior::sample_with_noise`] to bring noise from elsewhere.
    pub fn sample(&self, seed: u64) -> Tensor<B, 5> {
        let shape = self.mean.dims();
        let noise = standard_normal(seed, shape.iter().product());
        let noise = Tensor::from_data(
            TensorData::new(noise, shape),
            (&self.mean.device(), DType::F32),
        );
        self.mean.clone() + self.std() * noise
    }

    /// `mean + std · noise` for caller-provided standard-normal `noise` of the mean's shape.
    pub fn sample_with_noise(&self, noise: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        if noise.dims() != self.mean.dims() {
            return Err(ModelError::input(
                "noise",
                format!(
                    "shape {:?} does not match the posterior's {:?}",
                    noise.dims(),
                    self.mean.dims()
                ),
            ));
        }
        Ok(self.mean.clone() + self.std() * noise.cast(DType::F32))
    }
}

/// `len` standard-normal values from a generator seeded with `seed` (xoshiro256++ seeded
/// through SplitMix64; Box–Muller on 53-bit uniforms, both values of each pair used).
pub(crate) fn standard_normal(seed: u64, len: usize) -> Vec<f32> {
    let mut sm = seed;
    let mut splitmix = || {
        sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = sm;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut s = [splitmix(), splitmix(), splitmix(), splitmix()];
    let mut next = || {
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    };
    // Uniform in (0, 1]: never 0, so the logarithm is finite.
    let mut uniform = || ((next() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let radius = (-2.0 * uniform().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * uniform();
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::standard_normal;

    #[test]
    fn noise_is_seeded_and_standard_normal() {
        let a = standard_normal(7, 20001);
        assert_eq!(a.len(), 20001);
        assert_eq!(a, standard_normal(7, 20001));
        assert_ne!(a[..100], standard_normal(8, 100)[..]);
        // A prefix of a longer draw is the shorter draw.
        assert_eq!(a[..1000], standard_normal(7, 1000)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
