//! UniPC (variant bh1) for flow matching, as FramePack's `FlowMatchUniPC` (spec §4.4).
//!
//! The sampler integrates `x` from σ₀ = 1 down the schedule with an x0-predictor `D(x, σ)`. With
//! `λ(σ) = −ln σ` (not the log-SNR) and `h = λ(σ_i) − λ(σ_{i−1})`, each update is a
//! predictor-corrector step whose coefficients come from a small linear system (the `R`/`b`
//! of the UniPC paper, with `B(h) = −h` for bh1):
//!
//! ```text
//! x_lin  = (σ_i/σ_{i−1})·x − expm1(−h)·m0
//! x_pred = x_lin − B·Σ ρ_p[k]·D_k                    (predictor; orders ≥ 2)
//! m_t    = D(x_pred, σ_i)                            (the only model call of the update)
//! x      = x_lin − B·(Σ ρ_c[k]·D_k + ρ_c[p]·(m_t − m0))   (corrector)
//! ```
//!
//! The orders are 1, 2, 3, 3, …, 3 (no lower order at the end); the order-2 predictor and the
//! order-1 corrector are hard-coded to 0.5. There are exactly N model calls for N steps, σ_N = 0
//! is never evaluated, and the result is **the x0 estimate of the last model call**, not the
//! corrected `x` of the last update.
//!
//! # Coefficient precision
//!
//! The reference computes the coefficients in `f32`. For small `h` (the early steps of a shift-7
//! schedule) the φ-function recurrence `g_{k+1} = g_k/hh − 1/(k+1)!` cancels catastrophically in
//! `f32`, so the reference's order-3 corrector weights differ from the exact ones by up to 0.2
//! (step 3 of 25: ρ_c = [0.457, −0.257, 0.299] in `f32` against [0.230, −0.100, 0.368]). Their
//! effect on the sample is small (they are multiplied by `h` ≈ 0.007 and by differences of
//! consecutive x0 estimates), but it is what the reference does, so
//! [`CoefficientPrecision::Reference`] reproduces the `f32` evaluation and is the default;
//! [`CoefficientPrecision::Exact`] evaluates the same formulas in `f64` (the values of the spec's
//! Appendix A).

use core::ops::{Add, ControlFlow, Div, Mul, Neg, Sub};

use burn::tensor::{backend::Backend, Tensor};

use crate::error::{Result, SamplingError};

/// The highest order the sampler reaches.
pub const MAX_ORDER: usize = 3;

/// How the per-step coefficients are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CoefficientPrecision {
    /// In `f32`, in PyTorch's order of operations: the reference's values, rounding artefacts
    /// included.
    #[default]
    Reference,
    /// In `f64`: the mathematically intended values (spec Appendix A).
    Exact,
}

/// The coefficients of one update step `i ≥ 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateCoefficients {
    /// The step index `i` (1..N).
    pub step: usize,
    /// The order `p` of the update.
    pub order: usize,
    /// `h = λ(σ_i) − λ(σ_{i−1})`, with `λ = −ln σ`.
    pub h: f64,
    /// `σ_i / σ_{i−1}`, the factor on `x`.
    pub ratio: f64,
    /// `expm1(−h)`, the factor on `m0` (subtracted).
    pub phi1: f64,
    /// `B(h) = −h` (bh1).
    pub b_h: f64,
    /// `r_1 … r_{p−1}, 1`: the older points' λ offsets in units of `h`.
    pub rks: Vec<f64>,
    /// The right-hand side `b` of the order conditions.
    pub b: Vec<f64>,
    /// Predictor weights of `D_1 … D_{p−1}` (empty for order 1).
    pub rhos_p: Vec<f64>,
    /// Corrector weights of `D_1 … D_{p−1}` and, last, of `m_t − m0`.
    pub rhos_c: Vec<f64>,
}

/// The arithmetic the coefficients are evaluated in.
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    fn of(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn ln(self) -> Self;
    fn exp_m1(self) -> Self;
    fn abs(self) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn exp_m1(self) -> Self {
        f32::exp_m1(self)
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn exp_m1(self) -> Self {
        f64::exp_m1(self)
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
}

/// Solves `a·x = b` by LU with partial pivoting, as close as we could get to what
/// `torch.linalg.solve` (MKL `getrf`/`getrs`) does on the CPU: the pivot column is scaled by the
/// reciprocal of the pivot, every multiply-subtract is fused, the forward substitution
/// accumulates each row from its nearest term, the back substitution divides. This reproduces
/// PyTorch's 2×2 solves bit for bit and its 3×3 solves to within 1 ulp (MKL's small-matrix
/// kernels are not documented; the GPU, where the reference really runs, differs again).
fn solve<R: Real>(mut a: Vec<Vec<R>>, mut b: Vec<R>) -> Option<Vec<R>> {
    let n = b.len();
    let zero = R::of(0.0);
    for k in 0..n {
        let mut p = k;
        for i in k + 1..n {
            if a[i][k].abs() > a[p][k].abs() {
                p = i;
            }
        }
        if a[p][k] == zero {
            return None;
        }
        a.swap(k, p);
        b.swap(k, p);
        let r = R::of(1.0) / a[k][k];
        for row in a.iter_mut().skip(k + 1) {
            row[k] = row[k] * r;
        }
        for j in k + 1..n {
            for i in k + 1..n {
                a[i][j] = (-a[i][k]).mul_add(a[k][j], a[i][j]);
            }
        }
    }
    for i in 1..n {
        let mut acc = b[i];
        for j in (0..i).rev() {
            acc = (-a[i][j]).mul_add(b[j], acc);
        }
        b[i] = acc;
    }
    for k in (0..n).rev() {
        b[k] = b[k] / a[k][k];
        for i in 0..k {
            b[i] = (-b[k]).mul_add(a[i][k], b[i]);
        }
    }
    Some(b)
}

/// The coefficients of the update to `t` from the previous points `prev` (oldest first, the
/// newest last), of order `p = prev.len()`.
fn update<R: Real>(prev: &[f32], t: f32, step: usize) -> Result<UpdateCoefficients> {
    let p = prev.len();
    let s = |v: f32| R::of(f64::from(v));
    let s0 = s(prev[p - 1]);
    let lambda = |v: R| -v.ln();
    let lambda_0 = lambda(s0);
    let h = lambda(s(t)) - lambda_0;
    let mut rks: Vec<R> = (1..p)
        .map(|k| (lambda(s(prev[p - 1 - k])) - lambda_0) / h)
        .collect();
    rks.push(R::of(1.0));
    let hh = -h;
    let phi1 = hh.exp_m1();
    let b_h = hh;
    let mut g = phi1 / hh - R::of(1.0);
    let mut factorial = 1u64;
    let mut r = Vec::with_capacity(p);
    let mut b = Vec::with_capacity(p);
    for i in 1..=p {
        r.push(rks.iter().map(|&x| pow(x, i - 1)).collect::<Vec<R>>());
        b.push(g * R::of(factorial as f64) / b_h);
        factorial *= (i + 1) as u64;
        g = g / hh - R::of(1.0 / factorial as f64);
    }
    let singular = || {
        SamplingError::invalid(
            "sigmas",
            format!("the UniPC system of step {step} is singular (repeated sigmas?)"),
        )
    };
    let rhos_p: Vec<R> = match p {
        1 => Vec::new(),
        2 => vec![R::of(0.5)],
        _ => {
            let sub: Vec<Vec<R>> = r[..p - 1].iter().map(|row| row[..p - 1].to_vec()).collect();
            solve(sub, b[..p - 1].to_vec()).ok_or_else(singular)?
        }
    };
    let rhos_c: Vec<R> = if p == 1 {
        vec![R::of(0.5)]
    } else {
        solve(r, b.clone()).ok_or_else(singular)?
    };
    let f = |v: &[R]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    Ok(UpdateCoefficients {
        step,
        order: p,
        h: h.to_f64(),
        ratio: (s(t) / s0).to_f64(),
        phi1: phi1.to_f64(),
        b_h: b_h.to_f64(),
        rks: f(&rks),
        b: f(&b),
        rhos_p: f(&rhos_p),
        rhos_c: f(&rhos_c),
    })
}

/// `torch.pow(x, e)` for the small integer exponents of `R` (0: ones, 1: x, 2: x·x).
fn pow<R: Real>(x: R, e: usize) -> R {
    let mut y = R::of(1.0);
    for i in 0..e {
        y = if i == 0 { x } else { y * x };
    }
    y
}

/// The order the reference reaches for `steps` steps: `min(3, steps − 1)`.
pub fn max_order(steps: usize) -> usize {
    MAX_ORDER.min(steps.saturating_sub(1))
}

/// The order of update step `i` (1..N) of an `steps`-step run: 1, 2, 3, 3, …
pub fn step_order(i: usize, steps: usize) -> usize {
    let order = max_order(steps);
    if i < order {
        i
    } else {
        order
    }
}

fn check_sigmas(sigmas: &[f32]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(SamplingError::invalid(
            "sigmas",
            format!("{} values; a schedule needs at least 2", sigmas.len()),
        ));
    }
    let n = sigmas.len() - 1;
    if let Some(i) = sigmas[..n]
        .iter()
        .position(|s| !(s.is_finite() && *s > 0.0))
    {
        return Err(SamplingError::invalid(
            "sigmas",
            format!("σ_{i} = {} must be finite and positive", sigmas[i]),
        ));
    }
    if let Some(i) = (1..n).find(|&i| sigmas[i] >= sigmas[i - 1]) {
        return Err(SamplingError::invalid(
            "sigmas",
            format!("not strictly decreasing at {i}"),
        ));
    }
    Ok(())
}

/// The coefficients of every update step `1..N` of a schedule (`sigmas` has `N + 1` values).
///
/// ```
/// use framepack_sampling::unipc::{coefficients, CoefficientPrecision};
/// use framepack_sampling::SigmaSchedule;
/// let sigmas = SigmaSchedule::new(25).sigmas(13_680)?;
/// let c = coefficients(&sigmas, CoefficientPrecision::Exact)?;
/// assert_eq!(c.len(), 24);
/// assert_eq!((c[0].order, c[1].order, c[2].order, c[23].order), (1, 2, 3, 3));
/// assert!((c[23].rhos_c[0] - 0.377538).abs() < 1e-6);
/// # Ok::<(), framepack_sampling::SamplingError>(())
/// ```
pub fn coefficients(
    sigmas: &[f32],
    precision: CoefficientPrecision,
) -> Result<Vec<UpdateCoefficients>> {
    check_sigmas(sigmas)?;
    let steps = sigmas.len() - 1;
    (1..steps)
        .map(|i| {
            let p = step_order(i, steps);
            let prev = &sigmas[i - p..i];
            match precision {
                CoefficientPrecision::Reference => update::<f32>(prev, sigmas[i], i),
                CoefficientPrecision::Exact => update::<f64>(prev, sigmas[i], i),
            }
        })
        .collect()
}

/// What the sampler reports after each step (the reference's `callback` dict).
#[derive(Debug)]
pub struct StepView<'a, B: Backend> {
    /// The step index `i` (0..N).
    pub index: usize,
    /// The number of steps N.
    pub steps: usize,
    /// σ_i, where the step's model call was made.
    pub sigma: f32,
    /// The sampler state after the step.
    pub x: &'a Tensor<B, 5>,
    /// The x0 estimate of the step's model call (the preview latents).
    pub denoised: &'a Tensor<B, 5>,
}

/// The outcome of a sampler run.
#[derive(Debug, Clone)]
pub enum Sampled<B: Backend> {
    /// All steps ran: the x0 estimate of the last model call.
    Complete(Tensor<B, 5>),
    /// The step callback asked to stop after `steps_done` steps.
    Stopped {
        /// Steps completed.
        steps_done: usize,
    },
}

/// The UniPC bh1 flow-matching sampler.
///
/// ```
/// use burn::tensor::Tensor;
/// use core::ops::ControlFlow;
/// use framepack_models::CpuBackend as B;
/// use framepack_sampling::{SigmaSchedule, Sampled, UniPc};
///
/// // Data concentrated at 0.5: the exact x0-predictor is constant.
/// let x = Tensor::<B, 5>::ones([1, 1, 1, 1, 2], &Default::default());
/// let sigmas = SigmaSchedule::new(4).sigmas(16)?;
/// let out = UniPc::default().sample(x, &sigmas, |x, _| Ok::<_, framepack_sampling::SamplingError>(x.zeros_like().add_scalar(0.5)), |_| ControlFlow::Continue(()))?;
/// let Sampled::Complete(x0) = out else { unreachable!() };
/// assert_eq!(x0.into_data().to_vec::<f32>().unwrap(), vec![0.5, 0.5]);
/// # Ok::<(), framepack_sampling::SamplingError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UniPc {
    precision: CoefficientPrecision,
}

impl UniPc {
    /// A sampler with the given coefficient precision.
    pub fn new(precision: CoefficientPrecision) -> Self {
        Self { precision }
    }

    /// The coefficient precision.
    pub fn precision(&self) -> CoefficientPrecision {
        self.precision
    }

    /// Runs the sampler from `x` (noise at σ₀) down `sigmas` (N + 1 values, the last one 0).
    ///
    /// `model(x, σ)` is the x0-predictor; it is called exactly N times. `on_step` sees every step
    /// and may stop the run by returning `ControlFlow::Break` (cooperative cancellation).
    pub fn sample<B, E, M, C>(
        &self,
        x: Tensor<B, 5>,
        sigmas: &[f32],
        mut model: M,
        mut on_step: C,
    ) -> Result<Sampled<B>, E>
    where
        B: Backend,
        E: From<SamplingError>,
        M: FnMut(Tensor<B, 5>, f32) -> Result<Tensor<B, 5>, E>,
        C: FnMut(StepView<'_, B>) -> ControlFlow<()>,
    {
        let table = coefficients(sigmas, self.precision)?;
        let steps = sigmas.len() - 1;
        let keep = max_order(steps).max(1);
        let mut x = x;
        // model_prev_list, newest last.
        let mut history: Vec<Tensor<B, 5>> = vec![model(x.clone(), sigmas[0])?];
        if let ControlFlow::Break(()) = on_step(StepView {
            index: 0,
            steps,
            sigma: sigmas[0],
            x: &x,
            denoised: &history[0],
        }) {
            return Ok(Sampled::Stopped { steps_done: 1 });
        }
        for c in &table {
            let i = c.step;
            let p = c.order;
            let n = history.len();
            let m0 = history[n - 1].clone();
            let d: Vec<Tensor<B, 5>> = (1..p)
                .map(|k| (history[n - 1 - k].clone() - m0.clone()).div_scalar(c.rks[k - 1] as f32))
                .collect();
            let weighted = |rhos: &[f64]| -> Option<Tensor<B, 5>> {
                d.iter()
                    .zip(rhos)
                    .map(|(dk, &rho)| dk.clone().mul_scalar(rho as f32))
                    .reduce(|a, b| a + b)
            };
            let x_lin = x.clone().mul_scalar(c.ratio as f32) - m0.clone().mul_scalar(c.phi1 as f32);
            let x_pred = match weighted(&c.rhos_p) {
                Some(pred) => x_lin.clone() - pred.mul_scalar(c.b_h as f32),
                None => x_lin.clone(),
            };
            let m_t = model(x_pred, sigmas[i])?;
            let last = (m_t.clone() - m0).mul_scalar(c.rhos_c[p - 1] as f32);
            let correction = match weighted(&c.rhos_c[..p - 1]) {
                Some(corr) => corr + last,
                None => last,
            };
            x = x_lin - correction.mul_scalar(c.b_h as f32);
            history.push(m_t);
            if history.len() > keep {
                history.remove(0);
            }
            let denoised = &history[history.len() - 1];
            if let ControlFlow::Break(()) = on_step(StepView {
                index: i,
                steps,
                sigma: sigmas[i],
                x: &x,
                denoised,
            }) {
                return Ok(Sampled::Stopped { steps_done: i + 1 });
            }
        }
        let last = history
            .pop()
            .ok_or_else(|| SamplingError::invalid("sigmas", "no step ran"))?;
        Ok(Sampled::Complete(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigmas::{seq_len, SigmaSchedule};

    /// Spec Appendix A (N = 25, shift 7), computed in f64: (i, p, h, t/s0, rks, ρ_p, ρ_c).
    #[allow(clippy::type_complexity)]
    const APPENDIX_A: &[(usize, usize, f64, f64, &[f64], &[f64], &[f64])] = &[
        (1, 1, 0.005935, 0.994083, &[1.0], &[], &[0.5]),
        (
            2,
            2,
            0.006411,
            0.993610,
            &[-0.92573, 1.0],
            &[0.5],
            &[0.086270, 0.412663],
        ),
        (
            3,
            3,
            0.006947,
            0.993077,
            &[-0.92279, -1.77704, 1.0],
            &[1.427240, -0.928396],
            &[0.230282, -0.099637, 0.368199],
        ),
        (
            4,
            3,
            0.007554,
            0.992474,
            &[-0.91970, -1.76839, 1.0],
            &[1.431241, -0.932497],
            &[0.231216, -0.100357, 0.367884],
        ),
        (
            10,
            3,
            0.013680,
            0.986413,
            &[-0.89387, -1.69770, 1.0],
            &[1.464471, -0.966743],
            &[0.239039, -0.106453, 0.365141],
        ),
        (
            16,
            3,
            0.032157,
            0.968354,
            &[-0.84280, -1.56301, 1.0],
            &[1.532700, -1.038017],
            &[0.255141, -0.119454, 0.358996],
        ),
        (
            20,
            3,
            0.078781,
            0.924242,
            &[-0.76582, -1.37212, 1.0],
            &[1.641542, -1.154418],
            &[0.280817, -0.141484, 0.347792],
        ),
        (
            22,
            3,
            0.157062,
            0.854651,
            &[-0.68528, -1.18687, 1.0],
            &[1.762777, -1.287957],
            &[0.309092, -0.167697, 0.333425],
        ),
        (
            23,
            3,
            0.255183,
            0.774775,
            &[-0.61549, -1.03727, 1.0],
            &[1.873739, -1.413689],
            &[0.334266, -0.192936, 0.318720],
        ),
        (
            24,
            3,
            0.516217,
            0.596774,
            &[-0.49433, -0.79859, 1.0],
            &[2.080528, -1.656515],
            &[0.377538, -0.241609, 0.288084],
        ),
    ];

    /// The table is printed to 6 decimals (5 for rks): agreement to within half a unit of the
    /// last printed digit plus 1e-6.
    fn close(got: f64, want: f64, decimals: i32) -> bool {
        (got - want).abs() <= 0.5 * 10f64.powi(-decimals) + 1e-6
    }

    #[test]
    fn exact_coefficients_match_appendix_a() {
        let sigmas = SigmaSchedule::new(25).sigmas(seq_len(9, 80, 76)).unwrap();
        let table = coefficients(&sigmas, CoefficientPrecision::Exact).unwrap();
        assert_eq!(table.len(), 24);
        let mut worst = 0.0f64;
        for &(i, p, h, ratio, rks, rhos_p, rhos_c) in APPENDIX_A {
            let c = &table[i - 1];
            assert_eq!((c.step, c.order), (i, p));
            assert!(close(c.h, h, 6), "h_{i}: {} vs {h}", c.h);
            assert!(close(c.ratio, ratio, 6), "t/s0 {i}: {} vs {ratio}", c.ratio);
            assert!((c.b_h + c.h).abs() < 1e-15, "bh1: B(h) = -h");
            for (got, want) in c.rks.iter().zip(rks) {
                assert!(close(*got, *want, 5), "rks {i}: {:?} vs {rks:?}", c.rks);
            }
            assert_eq!(c.rhos_p.len(), rhos_p.len());
            assert_eq!(c.rhos_c.len(), rhos_c.len());
            for (got, want) in c
                .rhos_p
                .iter()
                .zip(rhos_p)
                .chain(c.rhos_c.iter().zip(rhos_c))
            {
                worst = worst.max((got - want).abs());
                assert!(close(*got, *want, 6), "ρ {i}: {got} vs {want}");
            }
        }
        // Every order condition holds: R·ρ_c = b.
        for c in &table {
            for (j, bj) in c.b.iter().enumerate() {
                let lhs: f64 = c
                    .rhos_c
                    .iter()
                    .zip(&c.rks)
                    .map(|(r, k)| r * k.powi(j as i32))
                    .sum();
                if c.order > 1 {
                    assert!((lhs - bj).abs() < 1e-9, "step {} row {j}", c.step);
                }
            }
        }
        println!("Appendix A: largest |ρ − table| = {worst:.2e}");
    }

    #[test]
    fn orders_follow_the_reference() {
        let orders: Vec<usize> = (1..25).map(|i| step_order(i, 25)).collect();
        assert_eq!(&orders[..4], &[1, 2, 3, 3]);
        assert!(orders[3..].iter().all(|&o| o == 3));
        assert_eq!(max_order(1), 0);
        assert_eq!(max_order(2), 1);
        assert_eq!(step_order(1, 2), 1);
        assert_eq!(max_order(3), 2);
    }

    #[test]
    fn solve_pivots() {
        let x = solve(vec![vec![0.0, 1.0], vec![2.0, 1.0]], vec![1.0, 4.0]).unwrap();
        assert_eq!(x, vec![1.5, 1.0]);
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 1.0]).is_none());
    }

    #[test]
    fn bad_schedules_are_rejected() {
        for bad in [
            vec![1.0],
            vec![1.0, 1.0, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![f32::NAN, 0.0],
        ] {
            let e = coefficients(&bad, CoefficientPrecision::Exact).unwrap_err();
            assert!(e.to_string().contains("sigmas"), "{e}");
        }
    }
}
