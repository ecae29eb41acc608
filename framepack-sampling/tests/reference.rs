//! framepack-sampling against FramePack's own sampler code (fixtures from
//! `tools/reference/sampling_fixture.py`): `torch.randn`, the sigma schedules, the float32 UniPC
//! coefficients the reference computes, and whole `sample_hunyuan` trajectories with an analytic
//! stand-in transformer.

mod common;

use core::ops::ControlFlow;
use std::collections::BTreeMap;

use common::*;
use framepack_sampling::sigmas::{auto_mu, model_timestep};
use framepack_sampling::unipc::{coefficients, CoefficientPrecision};
use framepack_sampling::{
    FlowDenoiser, Guidance, NoiseGenerator, Sampled, SamplingError, Shift, SigmaSchedule, UniPc,
};
use serde_json::Value;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn randn_matches_torch() {
    let tensors = read_tensors("sampling_reference.safetensors");
    let meta = read_json("sampling_reference.json");
    let (mut total, mut exact, mut worst) = (0usize, 0usize, 0u32);
    for case in meta["randn"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let mut g = NoiseGenerator::new(seed);
        for (i, shape) in case["shapes"].as_array().unwrap().iter().enumerate() {
            let shape: Vec<usize> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let (want_shape, want) = &tensors[&format!("randn.{seed}.{i}")];
            assert_eq!(&shape, want_shape);
            let got = g.randn(shape.iter().product());
            for (k, (a, b)) in got.iter().zip(want).enumerate() {
                let d = ulps(*a, *b);
                assert!(
                    d <= 2,
                    "seed {seed} draw {i} element {k}: {a} vs torch {b} ({d} ulp)"
                );
                worst = worst.max(d);
                exact += usize::from(d == 0);
                total += 1;
            }
        }
    }
    println!("torch.randn: {exact}/{total} values bit-identical, worst {worst} ulp");
    assert_eq!(exact, total, "every value bit-identical");
}

#[test]
fn sigma_schedules_match_the_reference_bit_for_bit() {
    let meta = read_json("sampling_reference.json");
    for case in meta["sigmas"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let seq = case["seq_len"].as_u64().unwrap() as usize;
        let shift = match case["shift"].as_f64() {
            Some(s) => Shift::Fixed(s),
            None => Shift::Auto,
        };
        let schedule = SigmaSchedule::new(steps).shift(shift);
        let mu = case["mu"].as_f64().unwrap();
        assert!(
            (schedule.mu(seq) - mu).abs() <= 1e-15,
            "mu {seq}: {} vs {mu}",
            schedule.mu(seq)
        );
        if shift == Shift::Auto {
            assert_eq!(auto_mu(seq), mu);
        }
        let got = schedule.sigmas(seq).unwrap();
        let want = f32s(&case["sigmas"]);
        assert_eq!(got, want, "{steps} steps, seq {seq}, {shift:?}");
        let timesteps: Vec<f32> = got.iter().map(|&s| model_timestep(s)).collect();
        assert_eq!(timesteps, f32s(&case["timesteps"]));
    }
}

#[test]
fn float32_unipc_coefficients_match_the_reference() {
    let meta = read_json("sampling_reference.json");
    let unipc = &meta["unipc"];
    let sigmas = f32s(&unipc["sigmas"]);
    assert_eq!(sigmas, SigmaSchedule::new(25).sigmas(13_680).unwrap());
    let table = coefficients(&sigmas, CoefficientPrecision::Reference).unwrap();
    let exact = coefficients(&sigmas, CoefficientPrecision::Exact).unwrap();
    let updates = unipc["updates"].as_array().unwrap();
    assert_eq!(updates.len(), table.len());
    let (mut worst, mut worst_exact) = (0.0f64, 0.0f64);
    for (c, u) in table.iter().zip(updates) {
        let hh = u["expm1"][0]["hh"].as_f64().unwrap();
        let phi1 = u["expm1"][0]["phi1"].as_f64().unwrap();
        // JSON holds the f32 values; compare them as f32 (serde_json's f64 parse may be off
        // in the last f64 bit).
        assert_eq!((-c.h) as f32, hh as f32, "h of step {}", c.step);
        assert_eq!(c.phi1 as f32, phi1 as f32, "expm1 of step {}", c.step);
        let solves = u["solve"].as_array().unwrap();
        // Order 1: no solve; order 2: the corrector; order 3: predictor, then corrector.
        assert_eq!(
            solves.len(),
            c.order.saturating_sub(1).min(2),
            "step {}",
            c.step
        );
        let mut check = |got: &[f64], want: &Value, what: &str| {
            let want: Vec<f64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
                assert!(
                    (g - w).abs() <= 1e-6,
                    "{what} of step {}: {got:?} vs {want:?}",
                    c.step
                );
            }
        };
        if let Some(last) = solves.last() {
            check(&c.b, &last["b"], "b");
            check(&c.rhos_c, &last["x"], "rho_c");
            check(
                &c.rks[..c.order - 1],
                &last["a"][1].as_array().unwrap()[..c.order - 1].into(),
                "rks",
            );
        }
        if c.order == 3 {
            check(&c.rhos_p, &solves[0]["x"], "rho_p");
        }
        let e = &exact[c.step - 1];
        for (a, b) in c.rhos_c.iter().zip(&e.rhos_c) {
            worst_exact = worst_exact.max((a - b).abs());
        }
    }
    println!("float32 UniPC coefficients: largest |ours − torch| = {worst:.2e}");
    println!("float32 vs exact (f64) corrector weights: largest difference = {worst_exact:.3}");
    // The reference's float32 cancellation is real and large at small h.
    assert!(worst_exact > 0.1);
}

/// Replays `sample_hunyuan` (fm_wrapper + FlowMatchUniPC, seeded CPU noise, automatic or fixed
/// shift, real CFG with rescale, image-influence start) with the same stand-in transformer.
#[test]
fn sample_hunyuan_trajectories_match_the_reference() {
    let tensors = read_tensors("sampling_reference.safetensors");
    let meta = read_json("sampling_reference.json");
    let m_pos = tensors["traj.m_pos"].1.clone();
    let m_neg = tensors["traj.m_neg"].1.clone();
    for case in meta["trajectories"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let frames = case["frames"].as_u64().unwrap() as usize;
        let size = case["size"].as_u64().unwrap() as usize;
        let (t, hw) = (frames.div_ceil(4), size / 8);
        let mut noise = NoiseGenerator::new(case["seed"].as_u64().unwrap());
        let mut x = noise.randn_tensor::<B, 5>([1, 16, t, hw, hw], &device());
        let mut schedule = SigmaSchedule::new(steps);
        if let Some(s) = case["shift"].as_f64() {
            schedule = schedule.shift(Shift::Fixed(s));
        }
        if let Some(s) = case["strength"].as_f64() {
            schedule = schedule.strength(s);
        }
        let sigmas = schedule
            .sigmas(framepack_sampling::sigmas::seq_len(t, hw, hw))
            .unwrap();
        if case["strength"].is_f64() {
            let (shape, v) = &tensors[&format!("traj.{name}.initial")];
            let initial = tensor5(shape, v).expand([1, 16, t, hw, hw]);
            x = initial.mul_scalar(1.0 - sigmas[0]) + x.mul_scalar(sigmas[0]);
        }
        let guidance = Guidance::default()
            .distilled(case["gs"].as_f64().unwrap())
            .cfg(case["cfg"].as_f64().unwrap())
            .rescale(case["rs"].as_f64().unwrap());
        let mut denoiser =
            FlowDenoiser::new(GaussianFlow::new(m_pos.clone(), m_neg.clone()), guidance);
        let window = empty_window();
        let mut seen = BTreeMap::new();
        let out = UniPc::default()
            .sample(
                x,
                &sigmas,
                |x, s| framepack_sampling::Denoiser::x0(&mut denoiser, x, s, &window),
                |step| {
                    seen.insert(
                        step.index,
                        (values(step.denoised.clone()), values(step.x.clone())),
                    );
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        let Sampled::Complete(out) = out else {
            panic!("not cancelled")
        };
        let calls = denoiser.model().calls;
        assert_eq!(
            calls,
            steps * if case["cfg"] == 1.0 { 1 } else { 2 },
            "{name}: model calls"
        );
        let (shape, want) = &tensors[&format!("traj.{name}.out")];
        assert_eq!(&out.dims().to_vec(), shape);
        let got = values(out);
        let err = relative_l2(&got, want);
        println!(
            "{name}: final x0 relative L2 {err:.2e}, max abs {:.2e}",
            max_abs(&got, want)
        );
        assert!(err < 1e-6, "{name}: relative L2 {err}");
        for i in case["recorded"].as_array().unwrap() {
            let i = i.as_u64().unwrap() as usize;
            let (_, want) = &tensors[&format!("traj.{name}.denoised.{i}")];
            let (_, want_x) = &tensors[&format!("traj.{name}.x.{i}")];
            let (got, got_x) = &seen[&i];
            let err = relative_l2(got, want);
            let err_x = relative_l2(got_x, want_x);
            println!(
                "  step {i}: x0 relative L2 {err:.2e} (max abs {:.2e}), x relative L2 {err_x:.2e}",
                max_abs(got, want)
            );
            assert_eq!(got, want, "{name} step {i}: x0 estimate");
            assert!(
                err_x < 1e-6,
                "{name} step {i}: sampler state relative L2 {err_x}"
            );
        }
    }
}

#[test]
fn guidance_rescale_out_of_range_is_rejected() {
    let e = Guidance::default().rescale(1.5).validate().unwrap_err();
    assert!(matches!(
        e,
        SamplingError::InvalidArgument {
            argument: "guidance rescale",
            ..
        }
    ));
}
