//! Initial noise that reproduces PyTorch's CPU `torch.randn` for a seed (spec §4.1).
//!
//! The reference creates one `torch.Generator("cpu").manual_seed(seed)` per job and draws every
//! section's noise from it in turn, so a seed only reproduces the reference video if the noise
//! generator is the same algorithm, bit for bit:
//!
//! - the engine is MT19937 seeded with the low 32 bits of the seed (`init_genrand`);
//! - a float tensor of `n >= 16` elements is first filled with one 24-bit uniform per element,
//!   `u = (r & 0xFFFFFF)·2⁻²⁴`, then transformed in place by Box–Muller in blocks of 16:
//!   for `j < 8`, `d[j] = r·cos θ` and `d[j+8] = r·sin θ` with `r = sqrt(−2 ln(1 − d[j]))` and
//!   `θ = 2π·d[j+8]`; if `n % 16 != 0` the **last 16 slots are redrawn** with fresh uniforms and
//!   transformed again (so they overlap the last full block);
//! - fewer than 16 elements take a different path: one double-precision normal per element from
//!   53-bit uniforms (two engine outputs each), Box–Muller on `(u1, u2)` with the sine half kept
//!   in the generator for the next draw.
//!
//! FramePack's latents have 16 channels, so every draw it makes takes the first path with
//! `n % 16 == 0`; the other paths are here so that any shape matches `torch.randn`.
//!
//! PyTorch's x86-64 builds evaluate the block transform with AVX2 code: `θ = (float)2π · u2` in
//! `f32`, and `log`/`sincos` from Cephes-derived vector functions rather than libm, which round
//! differently in about one value in six. The private `mathfun` module transcribes those
//! functions, so the values are bit-identical to `torch.randn` (checked against values recorded
//! from PyTorch 2.15 in `tests/reference.rs`). PyTorch builds without the AVX2 kernel (other
//! architectures) use libm and may differ from this generator in the last bit.

/// The Mersenne Twister MT19937 (32-bit), as `at::mt19937`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    fn new(seed: u32) -> Self {
        let mut state = [0u32; Self::N];
        state[0] = seed;
        for j in 1..Self::N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            index: Self::N,
        }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..Self::N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % Self::N] & LOWER);
            let mut v = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A seeded noise generator equivalent to `torch.Generator("cpu").manual_seed(seed)` followed by
/// `torch.randn(shape, generator=...)` calls.
///
/// Keep one per job and draw every section from it in order: the second section's noise is the
/// continuation of the first's stream, exactly as in the reference.
///
/// ```
/// use framepack_sampling::NoiseGenerator;
/// let mut a = NoiseGenerator::new(31337);
/// let mut b = NoiseGenerator::new(31337);
/// assert_eq!(a.randn(32), b.randn(32));
/// assert_ne!(a.randn(32), NoiseGenerator::new(31337).randn(32)); // the stream moved on
/// ```
#[derive(Clone)]
pub struct NoiseGenerator {
    seed: u64,
    engine: Mt19937,
    /// `next_double_normal_sample`: the sine half of the last double Box–Muller pair.
    cached_normal: Option<f64>,
}

impl core::fmt::Debug for NoiseGenerator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NoiseGenerator")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl NoiseGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`. PyTorch seeds MT19937 with the low 32 bits.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            engine: Mt19937::new(seed as u32),
            cached_normal: None,
        }
    }

    /// The seed the generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled by 2⁻²⁴.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 bits of `random64()` (two engine outputs,
    /// the first in the high word) scaled by 2⁻⁵³.
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        let x = (hi << 32) | lo;
        (x & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)` with the generator's cached second sample.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * core::f64::consts::PI * u1;
        // `value·std + mean` with std = 1, mean = 0.
        self.cached_normal = Some(r * theta.sin() + 0.0);
        r * theta.cos() + 0.0
    }

    /// The vectorised `normal_fill_16`: Box–Muller on one block of 16 uniforms, in `f32`.
    fn box_muller_16(block: &mut [f32]) {
        let two_pi = (2.0 * core::f64::consts::PI) as f32;
        for j in 0..8 {
            let u1 = 1.0 - block[j];
            let u2 = block[j + 8];
            let radius = (-2.0 * mathfun::log(u1)).sqrt();
            let (sin, cos) = mathfun::sincos(two_pi * u2);
            // `fmadd(n, std = 1, mean = 0)`: exact, except that −0 becomes +0.
            block[j] = radius * cos + 0.0;
            block[j + 8] = radius * sin + 0.0;
        }
    }

    /// `n` standard normal `f32` values: `torch.randn(n)` (or any shape with `n` elements; the
    /// values are in row-major order).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            Self::box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            Self::box_muller_16(tail);
        }
        data
    }

    /// `torch.randn(shape)` as a tensor on `device`.
    pub fn randn_tensor<B: burn::tensor::backend::Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        device: &B::Device,
    ) -> burn::tensor::Tensor<B, D> {
        let n = shape.iter().product();
        let data = burn::tensor::TensorData::new(self.randn(n), shape);
        burn::tensor::Tensor::from_data(data, (device, burn::tensor::DType::F32))
    }
}

// The constants are written as published (Cephes / avx_mathfun) so that they can be checked
// against the source; each rounds to the same f32 as a shorter literal would.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
mod mathfun {
    //! `f32` logarithm and sine/cosine computed exactly as PyTorch's CPU noise kernel does.
    //!
    //! `torch.randn` on x86-64 transforms its uniforms with `log256_ps` and `sincos256_ps` from
    //! `aten/src/ATen/native/cpu/avx_mathfun.h` (Giovanni Garberoglio's AVX port of Julien
    //! Pommier's `sse_mathfun`, itself a rewrite of Stephen Moshier's Cephes `logf`/`sinf`;
    //! zlib licence). These are Cephes' range reductions and polynomials in plain `f32`
    //! arithmetic, and the compiler PyTorch is built with (GCC, `-mfma`, contraction on) fuses
    //! each multiply that feeds an add into one FMA. This module transcribes the algorithms with
    //! the same fusions; libm or SLEEF functions would differ in the last bit for about one value
    //! in six. Only the noise generator's domain is needed: `log` on `(0, 1]`, `sincos` on
    //! `[0, 2π)` (both functions accept any finite positive argument of that kernel).

    const SQRT_HALF: f32 = 0.707_106_781_186_547_524_f64 as f32;
    const LOG_P: [f32; 9] = [
        7.037_683_629_2e-2,
        -1.151_461_031_0e-1,
        1.167_699_874_0e-1,
        -1.242_014_084_6e-1,
        1.424_932_278_7e-1,
        -1.666_805_766_5e-1,
        2.000_071_476_5e-1,
        -2.499_999_399_3e-1,
        3.333_333_117_4e-1,
    ];
    const LOG_Q1: f32 = -2.121_944_40e-4;
    const LOG_Q2: f32 = 0.693_359_375;

    /// `log256_ps` for a positive finite `x`.
    pub fn log(x: f32) -> f32 {
        let x = x.max(f32::MIN_POSITIVE);
        let bits = x.to_bits();
        // The mantissa as a value in [0.5, 1), and the matching exponent.
        let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
        let small = m < SQRT_HALF;
        let tmp = if small { m } else { 0.0 };
        m -= 1.0;
        e -= if small { 1.0 } else { 0.0 };
        m += tmp;
        let z = m * m;
        let mut y = LOG_P[0];
        for &p in &LOG_P[1..] {
            y = y.mul_add(m, p);
        }
        y *= m;
        y = y.mul_add(z, e * LOG_Q1);
        y -= z * 0.5;
        e.mul_add(LOG_Q2, m + y)
    }

    const FOUR_OVER_PI: f32 = 1.273_239_544_735_16_f64 as f32;
    const DP1: f32 = -0.785_156_25;
    const DP2: f32 = -2.418_756_484_985_351_562_5e-4;
    const DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
    const COS_P: [f32; 3] = [
        2.443_315_711_809_948e-5_f64 as f32,
        -1.388_731_625_493_765e-3_f64 as f32,
        4.166_664_568_298_827e-2_f64 as f32,
    ];
    const SIN_P: [f32; 3] = [-1.951_529_589_1e-4, 8.332_160_873_6e-3, -1.666_665_461_1e-1];

    /// `sincos256_ps`: `(sin x, cos x)` for a finite `|x| < 2²⁴`.
    pub fn sincos(x: f32) -> (f32, f32) {
        let negative = x.is_sign_negative();
        let mut x = x.abs();
        // The octant, rounded up to even (Cephes' `j = (j + 1) & ~1`).
        let j = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
        let y = j as f32;
        let sin_negative = negative ^ (j & 4 != 0);
        let cos_negative = (j - 2) & 4 == 0;
        let sine_polynomial_is_sin = j & 2 == 0;
        // Extended-precision reduction x − y·π/4 in three parts.
        x = y.mul_add(DP1, x);
        x = y.mul_add(DP2, x);
        x = y.mul_add(DP3, x);
        let z = x * x;
        let mut c = COS_P[0].mul_add(z, COS_P[1]).mul_add(z, COS_P[2]);
        c *= z;
        c = c.mul_add(z, -(z * 0.5));
        c += 1.0;
        let mut s = SIN_P[0].mul_add(z, SIN_P[1]).mul_add(z, SIN_P[2]);
        s *= z;
        s = s.mul_add(x, x);
        // The kernel selects with masks and recombines with additions of zero; written out
        // the same way so that signed zeros come out identical.
        let (s_part, c_part) = if sine_polynomial_is_sin {
            (s, 0.0)
        } else {
            (0.0, c)
        };
        let sin = c_part + s_part;
        let cos = (c - c_part) + (s - s_part);
        (
            if sin_negative { -sin } else { sin },
            if cos_negative { -cos } else { cos },
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn accurate_to_a_few_ulp() {
            let ulp = |got: f32, exact: f64| {
                (got.to_bits() as i64 - (exact as f32).to_bits() as i64).unsigned_abs()
            };
            for i in 1..=20_000u32 {
                let x = i as f32 / 20_000.0;
                assert!(ulp(log(x), f64::from(x).ln()) <= 2, "log {x}");
                let t = x * 6.283_185;
                let (s, c) = sincos(t);
                let (es, ec) = f64::from(t).sin_cos();
                assert!((f64::from(s) - es).abs() < 2e-7, "sin {t}");
                assert!((f64::from(c) - ec).abs() < 2e-7, "cos {t}");
            }
            assert_eq!(log(1.0), 0.0);
            assert_eq!(sincos(0.0), (0.0, 1.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The 10000th output of mt19937 seeded with 5489 is 4123659995 (C++11 [rand.predef]).
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn tail_block_is_redrawn() {
        // 20 values: the first 4 come from the first full block, the last 16 from a redraw.
        let mut g = NoiseGenerator::new(7);
        let v = g.randn(20);
        let mut h = NoiseGenerator::new(7);
        let w = h.randn(16);
        assert_eq!(v[..4], w[..4]);
        assert_ne!(v[4..8], w[4..8]);
    }

    #[test]
    fn small_draws_use_the_cached_pair() {
        let mut g = NoiseGenerator::new(3);
        let a = g.randn(3);
        let mut h = NoiseGenerator::new(3);
        let b = h.randn(1);
        let c = h.randn(2);
        // The cached sine half carries over from one call to the next.
        assert_eq!(a, [b[0], c[0], c[1]]);
    }
}
