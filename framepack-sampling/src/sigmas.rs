//! The flow-matching sigma schedule and the scalar inputs of a model call (spec §4.2, §4.3).
//!
//! `σ_i = e^μ / (e^μ + (1/t_i − 1))` with `t = linspace(1, 0, N + 1)`: the exponential time
//! shift of Flux. μ comes from a linear fit on the number of noisy tokens and is clamped to
//! `ln 7`, so every 640-bucket video runs with an effective shift of exactly 7
//! (`σ = 7t / (1 + 6t)`); an explicit shift gives `μ = ln(shift)`. Everything is evaluated in
//! `f32` in PyTorch's order of operations, so the values are bit-identical to the reference.
//!
//! The model does not see σ itself: the reference casts `σ·1000` and the distilled guidance
//! `gs·1000` to bf16 first ([`model_timestep`], [`model_guidance`]), so σ = 0.994083 reaches the
//! model as timestep 996 and gs = 10 as guidance 9984.

use crate::error::{Result, SamplingError};

/// `t_scale` of the reference wrapper: the model's timestep is `σ·1000`.
pub const TIMESTEP_SCALE: f32 = 1000.0;

/// The largest shift the automatic μ may reach (`exp_max = 7.0` in the reference).
pub const MAX_AUTO_SHIFT: f64 = 7.0;

/// Rounds to the nearest bf16 value (ties to even), as `tensor.to(torch.bfloat16)`.
///
/// ```
/// use framepack_sampling::sigmas::bf16_round;
/// assert_eq!(bf16_round(994.0827), 996.0);
/// assert_eq!(bf16_round(10_000.0), 9984.0);
/// ```
pub fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The timestep the model receives for `sigma`: `bf16(f32(σ·1000))`.
pub fn model_timestep(sigma: f32) -> f32 {
    bf16_round(sigma * TIMESTEP_SCALE)
}

/// The distilled-guidance input for `gs`: `bf16(f32(gs·1000))` (9984 for the default 10).
pub fn model_guidance(gs: f64) -> f32 {
    bf16_round((gs * 1000.0) as f32)
}

/// `torch.linspace(start, end, steps)` in `f32` as PyTorch's CPU kernel computes it on x86-64:
/// the first half as `start + i·step`, the second as `end − (steps − 1 − i)·step`, with
/// `step = (end − start)/(steps − 1)` in `f32`, each product-and-sum rounded once (the kernel
/// is compiled with FMA contraction; verified against PyTorch for every length up to 400).
pub fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// The noisy-token count the shift is fitted on: `T·h·w / 4` for `T` latent frames of `h × w`
/// latents (the 2×2 patches of the noisy window only; the context is not counted).
pub fn seq_len(frames: usize, height: usize, width: usize) -> usize {
    frames * height * width / 4
}

/// The reference's automatic μ (`calculate_flux_mu`): a line through (256, 0.5) and
/// (4096, 1.15), clamped to `ln 7`.
///
/// Every 640 bucket has 13,464 to 14,040 noisy tokens, far above the 8,798 where the clamp
/// starts, hence the effective shift of 7.
pub fn auto_mu(seq_len: usize) -> f64 {
    let (x1, y1, x2, y2) = (256.0, 0.5, 4096.0, 1.15);
    let k = (y2 - y1) / (x2 - x1);
    let b = y1 - k * x1;
    let mu = k * seq_len as f64 + b;
    mu.min(MAX_AUTO_SHIFT.ln())
}

/// How the schedule is shifted towards high noise.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Shift {
    /// The reference's default (`shift=None`): μ from the token count, clamped to `ln 7`.
    #[default]
    Auto,
    /// A fixed shift `s`, i.e. `μ = ln s` (the demo's commented-out `shift=3.0`).
    Fixed(f64),
}

/// A flow-matching sigma schedule: step count, shift and (eichi F1 image influence) strength.
///
/// ```
/// use framepack_sampling::{SigmaSchedule, Shift};
/// let sigmas = SigmaSchedule::new(25).sigmas(9 * 80 * 76 / 4)?;
/// assert_eq!(sigmas.len(), 26);
/// assert_eq!(sigmas[0], 1.0);
/// assert!((sigmas[1] - 0.994_082_7).abs() < 1e-7);
/// assert_eq!(sigmas[25], 0.0);
/// // Shift 7 explicitly gives the same values.
/// assert_eq!(SigmaSchedule::new(25).shift(Shift::Fixed(7.0)).sigmas(1)?, sigmas);
/// # Ok::<(), framepack_sampling::SamplingError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmaSchedule {
    steps: usize,
    shift: Shift,
    strength: f64,
}

impl SigmaSchedule {
    /// A schedule of `steps` model calls (FramePack's default is 25), automatic shift, strength 1.
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            shift: Shift::Auto,
            strength: 1.0,
        }
    }

    /// The shift.
    pub fn shift(mut self, shift: Shift) -> Self {
        self.shift = shift;
        self
    }

    /// Scales every sigma by `strength` (`sigmas * strength` in the reference, used with an
    /// `initial_latent`: eichi's F1 image influence passes `1/v`).
    pub fn strength(mut self, strength: f64) -> Self {
        self.strength = strength;
        self
    }

    /// The number of steps.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// μ for a window of `seq_len` noisy tokens.
    pub fn mu(&self, seq_len: usize) -> f64 {
        match self.shift {
            Shift::Auto => auto_mu(seq_len),
            Shift::Fixed(s) => s.ln(),
        }
    }

    /// The `steps + 1` sigmas, from `strength` down to 0, for a window of `seq_len` noisy tokens.
    ///
    /// Errors: zero steps, a shift that is not finite and positive, a strength outside `(0, 1]`.
    pub fn sigmas(&self, seq_len: usize) -> Result<Vec<f32>> {
        if self.steps == 0 {
            return Err(SamplingError::invalid("steps", "must be at least 1"));
        }
        if let Shift::Fixed(s) = self.shift {
            if !(s.is_finite() && s > 0.0) {
                return Err(SamplingError::invalid(
                    "shift",
                    format!("{s} must be finite and positive"),
                ));
            }
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return Err(SamplingError::invalid(
                "strength",
                format!("{} must lie in (0, 1]", self.strength),
            ));
        }
        // `math.exp(mu)` is a Python float; PyTorch rounds it to f32 when it meets the tensor.
        let e = self.mu(seq_len).exp() as f32;
        let strength = self.strength as f32;
        let sigmas = linspace(1.0, 0.0, self.steps + 1)
            .into_iter()
            .map(|t| {
                // `1 / t` is `reciprocal(t) * 1`, `e / y` is `reciprocal(y) * e` in PyTorch.
                let y = e + (1.0 / t - 1.0);
                let sigma = (1.0 / y) * e;
                if self.strength == 1.0 {
                    sigma
                } else {
                    sigma * strength
                }
            })
            .collect();
        Ok(sigmas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec Appendix A: σ_i for N = 25, shift 7, and the bf16 timesteps (as printed there).
    #[allow(clippy::excessive_precision)]
    const APPENDIX_A: [(f32, f32); 25] = [
        (1.000000000, 1000.0),
        (0.994082749, 996.0),
        (0.987730086, 988.0),
        (0.980891705, 980.0),
        (0.973509967, 972.0),
        (0.965517223, 964.0),
        (0.956834555, 956.0),
        (0.947368443, 948.0),
        (0.937007844, 936.0),
        (0.925619781, 924.0),
        (0.913043499, 912.0),
        (0.899082541, 900.0),
        (0.883495152, 884.0),
        (0.865979314, 864.0),
        (0.846153855, 848.0),
        (0.823529422, 824.0),
        (0.797468364, 796.0),
        (0.767123282, 768.0),
        (0.731343269, 732.0),
        (0.688524544, 688.0),
        (0.636363626, 636.0),
        (0.571428537, 572.0),
        (0.488372058, 488.0),
        (0.378378391, 378.0),
        (0.225806445, 226.0),
    ];

    #[test]
    fn appendix_a_sigmas_and_timesteps() {
        // 640×608: 9·80·76/4 = 13,680 noisy tokens, mu clamped to ln 7.
        let sigmas = SigmaSchedule::new(25).sigmas(seq_len(9, 80, 76)).unwrap();
        assert_eq!(sigmas.len(), 26);
        for (i, &(sigma, timestep)) in APPENDIX_A.iter().enumerate() {
            assert!(
                (sigmas[i] - sigma).abs() <= 1e-6,
                "σ_{i}: {} vs {sigma}",
                sigmas[i]
            );
            assert_eq!(model_timestep(sigmas[i]), timestep, "timestep {i}");
            let t = 1.0 - i as f64 / 25.0;
            let closed = 7.0 * t / (1.0 + 6.0 * t);
            assert!(
                (f64::from(sigmas[i]) - closed).abs() < 1e-7,
                "closed form {i}"
            );
        }
        assert_eq!(sigmas[25], 0.0);
        assert_eq!(model_guidance(10.0), 9984.0);
    }

    #[test]
    fn mu_is_clamped_for_every_640_bucket() {
        for tokens in [13_464, 13_608, 13_680, 13_824, 14_040] {
            assert_eq!(auto_mu(tokens), 7f64.ln());
        }
        assert!(auto_mu(8_797) < 7f64.ln());
        assert!((auto_mu(256) - 0.5).abs() < 1e-12);
        assert!((auto_mu(4096) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn linspace_matches_torch_split_evaluation() {
        let t = linspace(1.0, 0.0, 26);
        assert_eq!((t[0], t[25]), (1.0, 0.0));
        assert_eq!(t[13], (1.0f32 / 25.0).mul_add(12.0, 0.0));
        assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
        assert!(linspace(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn strength_scales_every_sigma() {
        let base = SigmaSchedule::new(8).sigmas(36).unwrap();
        let scaled = SigmaSchedule::new(8)
            .strength(1.0 / 1.02)
            .sigmas(36)
            .unwrap();
        let s = (1.0f64 / 1.02) as f32;
        for (a, b) in base.iter().zip(&scaled) {
            assert_eq!(*b, a * s);
        }
    }

    #[test]
    fn invalid_schedules_name_the_argument() {
        let e = SigmaSchedule::new(0).sigmas(10).unwrap_err().to_string();
        assert!(e.contains("steps"), "{e}");
        let e = SigmaSchedule::new(5)
            .shift(Shift::Fixed(-1.0))
            .sigmas(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shift"), "{e}");
        let e = SigmaSchedule::new(5)
            .strength(1.5)
            .sigmas(10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("strength"), "{e}");
    }
}
