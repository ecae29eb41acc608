//! UniPC against a closed-form flow: Gaussian data, where the exact ODE solution and the exact
//! x0-predictor are known, so the sampler's error and its order of convergence can be measured.

mod common;

use core::ops::ControlFlow;

use common::*;
use framepack_sampling::{CoefficientPrecision, Sampled, Shift, SigmaSchedule, UniPc};

/// A schedule of `steps` model calls from σ = 1 to `end`, uniform in λ = −ln σ (or in σ), with
/// the terminal 0 the sampler expects (never evaluated).
///
/// FramePack's own schedules end at σ_{N−1} ≈ 7/N, so their last steps keep `h ≈ ln 2, ln 1.5, …`
/// whatever N is and the final x0 does not converge as N grows; to measure the order the
/// schedule must end at a fixed σ.
fn schedule(steps: usize, end: f64, uniform_in_lambda: bool) -> Vec<f32> {
    let mut s: Vec<f32> = (0..steps)
        .map(|i| {
            let f = i as f64 / (steps - 1) as f64;
            if uniform_in_lambda {
                (end.ln() * f).exp() as f32
            } else {
                (1.0 - f * (1.0 - end)) as f32
            }
        })
        .collect();
    s.push(0.0);
    s
}

/// Error of the returned x0 against the exact predictor on the exact trajectory at σ_{N−1}.
fn error(sigmas: &[f32], precision: CoefficientPrecision) -> (f64, usize) {
    let steps = sigmas.len() - 1;
    let means: Vec<f32> = (0..16).map(|c| -0.6 + 0.08 * c as f32).collect();
    let mut flow = GaussianFlow::new(means, vec![0.0; 16]);
    flow.std = 0.5;
    let (h, w) = (2, 2);
    let noise = framepack_sampling::NoiseGenerator::new(7).randn(16 * h * w);
    let x = tensor5(&[1, 16, 1, h, w], &noise);
    let window = empty_window();
    let out = UniPc::new(precision)
        .sample(
            x,
            sigmas,
            |x, s| framepack_sampling::Denoiser::x0(&mut flow, x, s, &window),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    let Sampled::Complete(x0) = out else {
        panic!("complete")
    };
    let last = f64::from(sigmas[steps - 1]);
    let exact_x = flow.exact_sample(&noise, h * w, last);
    let exact_x0 = values(flow.posterior_mean(
        tensor5(&[1, 16, 1, h, w], &exact_x),
        sigmas[steps - 1],
        0.5,
        framepack_sampling::Branch::Positive,
    ));
    let got = values(x0);
    let err = got
        .iter()
        .zip(&exact_x0)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max);
    (err, flow.calls)
}

fn orders(uniform_in_lambda: bool, precision: CoefficientPrecision, steps: &[usize]) -> Vec<f64> {
    let errors: Vec<f64> = steps
        .iter()
        .map(|&n| error(&schedule(n, 0.2, uniform_in_lambda), precision).0)
        .collect();
    let shown: Vec<String> = errors.iter().map(|e| format!("{e:.3e}")).collect();
    let kind = if uniform_in_lambda {
        "uniform in λ"
    } else {
        "uniform in σ"
    };
    println!("{kind}, {precision:?}: max |x0 − exact| at σ = 0.2 for N = {steps:?}: {shown:?}");
    errors
        .windows(2)
        .zip(steps.windows(2))
        .map(|(e, n)| (e[0] / e[1]).ln() / ((n[1] - 1) as f64 / (n[0] - 1) as f64).ln())
        .collect()
}

#[test]
fn unipc_converges_with_third_order_or_better() {
    // One model call per step, σ = 0 never evaluated.
    assert_eq!(
        error(&schedule(12, 0.2, true), CoefficientPrecision::Exact).1,
        12
    );

    let steps = [5, 9, 17, 33];
    let lambda = orders(true, CoefficientPrecision::Exact, &steps);
    println!("observed orders, uniform in λ, exact coefficients: {lambda:.2?}");
    let sigma = orders(false, CoefficientPrecision::Exact, &steps);
    println!("observed orders, uniform in σ, exact coefficients: {sigma:.2?}");
    let reference = orders(true, CoefficientPrecision::Reference, &steps);
    println!("observed orders, uniform in λ, reference (f32) coefficients: {reference:.2?}");
    for o in lambda.iter().chain(&sigma).chain(&reference).take(2) {
        assert!(*o > 2.7, "observed order {o}");
    }
    assert!(sigma[..2].iter().all(|o| *o > 2.7), "{sigma:?}");
    assert!(reference[..2].iter().all(|o| *o > 2.7), "{reference:?}");
}

#[test]
fn framepack_schedules_do_not_converge_at_the_last_step() {
    // The property that makes the test above use its own schedules: the shift-7 schedule's
    // last λ-step tends to ln 2, so the returned x0 keeps an O(1) error as N grows.
    let last_h = |n: usize| {
        let s = SigmaSchedule::new(n)
            .shift(Shift::Fixed(7.0))
            .sigmas(1)
            .unwrap();
        (f64::from(s[n - 2]) / f64::from(s[n - 1])).ln()
    };
    assert!(last_h(25) > 0.5, "{}", last_h(25));
    assert!((last_h(1000) - 2f64.ln()).abs() < 0.02, "{}", last_h(1000));
    let e25 = error(
        &SigmaSchedule::new(25).sigmas(13_680).unwrap(),
        CoefficientPrecision::Reference,
    )
    .0;
    let e50 = error(
        &SigmaSchedule::new(50).sigmas(13_680).unwrap(),
        CoefficientPrecision::Reference,
    )
    .0;
    println!("FramePack schedule: x0 error at σ_(N−1): N = 25: {e25:.3e}, N = 50: {e50:.3e}");
    assert!(e50 > 0.5 * e25);
}

#[test]
fn a_single_step_is_one_model_call_at_sigma_one() {
    let (err, calls) = error(&[1.0, 0.0], CoefficientPrecision::Reference);
    assert_eq!(calls, 1);
    // At σ = 1 the exact predictor is the data mean, and the error is only f32 rounding.
    assert!(err < 1e-6, "{err}");
}
