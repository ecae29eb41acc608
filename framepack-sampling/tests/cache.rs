//! TeaCache and MagCache: their decisions on stand-in block stacks with known signals, and their
//! speed-up and error against the uncached result on the tiny transformer.

mod common;

use std::cell::Cell;
use std::time::Instant;

use burn::tensor::{DType, Tensor};
use common::*;
use framepack_core::GenerationRequest;
use framepack_sampling::cache::BlockStack;
use framepack_sampling::{
    CacheMode, CancelToken, FlowDenoiser, FramePackModel, Guidance, MagCache, SectionInputs,
    SectionSampler, StepCache, TeaCache,
};

/// A block stack whose signal and residual are chosen by the test.
struct Stand {
    blocks_run: Cell<usize>,
}

/// (image stream, TeaCache signal, residual the blocks add)
type Prepared = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>);

impl BlockStack<B> for Stand {
    type Prepared = Prepared;
    fn image_stream(&self, p: &Prepared) -> Tensor<B, 3> {
        p.0.clone()
    }
    fn cache_signal(&self, p: &Prepared) -> Tensor<B, 3> {
        p.1.clone()
    }
    fn run_blocks(&self, p: &Prepared) -> Tensor<B, 3> {
        self.blocks_run.set(self.blocks_run.get() + 1);
        p.0.clone() + p.2.clone()
    }
}

fn full(v: f32) -> Tensor<B, 3> {
    Tensor::full([1, 4, 3], v, &device())
}

fn decisions(
    mode: CacheMode,
    steps: usize,
    call: impl Fn(usize) -> Prepared,
) -> (Vec<bool>, Vec<Vec<f32>>) {
    let stand = Stand {
        blocks_run: Cell::new(0),
    };
    let mut cache = StepCache::new(mode);
    cache.begin_window(steps);
    let outputs = (0..steps)
        .map(|i| values(cache.run(&stand, &call(i)).unwrap()))
        .collect();
    let log = cache.window_log().to_vec();
    assert_eq!(stand.blocks_run.get(), log.iter().filter(|c| **c).count());
    let stats = cache.stats();
    assert_eq!(
        (stats.calls, stats.computed + stats.skipped),
        (steps, steps)
    );
    (log, outputs)
}

#[test]
fn teacache_skips_a_slowly_varying_signal_and_always_computes_the_ends() {
    // A constant signal: rel-L1 = 0, f(0) = 0.0961 per call, so every second call reaches 0.15.
    let (log, out) = decisions(CacheMode::TeaCache(TeaCache::default()), 7, |i| {
        (full(i as f32), full(1.0), full(10.0 * (i + 1) as f32))
    });
    assert_eq!(log, [true, false, true, false, true, false, true]);
    // A skipped call reuses the last computed residual: input 1 + residual of call 0 (10).
    assert_eq!(out[1], vec![11.0; 12]);
    assert_eq!(out[2], vec![2.0 + 30.0; 12]);
    // The last call is computed even when the accumulator says skip (6 calls: 0 .. 5).
    let (log, _) = decisions(CacheMode::TeaCache(TeaCache::default()), 6, |i| {
        (full(i as f32), full(1.0), full(1.0))
    });
    assert_eq!(log, [true, false, true, false, true, true]);
    // A fast-changing signal (rel-L1 = 1 per call, f(1) ≈ 396) is computed every time. (The
    // fitted polynomial is not monotone: around rel-L1 = 0.25 it dips to ~0.1, so a moderately
    // changing signal can still be skipped.)
    let (log, _) = decisions(CacheMode::TeaCache(TeaCache::default()), 6, |i| {
        (full(0.0), full(2f32.powi(i as i32)), full(1.0))
    });
    assert!(log.iter().all(|c| *c));
    // A higher threshold skips more.
    let (log, _) = decisions(
        CacheMode::TeaCache(TeaCache::default().threshold(0.3)),
        8,
        |i| (full(i as f32), full(1.0), full(1.0)),
    );
    assert_eq!(log, [true, false, false, false, true, false, false, true]);
}

#[test]
fn magcache_follows_its_ratio_table() {
    let table = vec![1.0; 10]
        .into_iter()
        .enumerate()
        .map(|(i, r)| if i == 0 { r } else { 0.99 })
        .collect();
    let (log, _) = decisions(CacheMode::MagCache(MagCache::new(table)), 10, |i| {
        (full(i as f32), full(1.0), full(1.0))
    });
    // 20 % retention (calls 0, 1), then at most 2 skips in a row, the last call computed.
    assert_eq!(
        log,
        [true, true, false, false, true, false, false, true, false, true]
    );
    // A steep ratio curve exceeds the error budget at once: nothing is skipped.
    let steep = vec![1.0, 0.5, 0.5, 0.5, 0.5, 0.5];
    let (log, _) = decisions(CacheMode::MagCache(MagCache::new(steep)), 6, |i| {
        (full(i as f32), full(1.0), full(1.0))
    });
    assert!(log.iter().all(|c| *c));
}

#[test]
fn magcache_calibration_records_residual_magnitude_ratios() {
    let stand = Stand {
        blocks_run: Cell::new(0),
    };
    let mut cache = StepCache::new(CacheMode::MagCache(MagCache::calibrate()));
    for _ in 0..2 {
        cache.begin_window(5);
        for i in 0..5 {
            let scale = 0.8f32.powi(i);
            cache
                .run(&stand, &(full(0.0), full(0.0), full(scale)))
                .unwrap();
        }
    }
    assert!(cache.window_log().iter().all(|c| *c));
    let ratios = cache.calibrated_ratios().unwrap();
    assert_eq!(ratios.len(), 5);
    assert_eq!(ratios[0], 1.0);
    for r in &ratios[1..] {
        assert!((r - 0.8).abs() < 1e-6, "{ratios:?}");
    }
}

/// One inverted window on the tiny transformer: (final latents, best of 3 wall times, which calls
/// were computed, calibrated MagCache ratios).
fn tiny_run(
    cache: CacheMode,
    seed: u64,
    steps: usize,
    cfg: f64,
) -> (Vec<f32>, f64, Vec<bool>, Option<Vec<f64>>) {
    let runs: Vec<_> = (0..3)
        .map(|_| tiny_run_once(cache.clone(), seed, steps, cfg))
        .collect();
    let best = runs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let (latents, _, log, ratios) = runs.into_iter().next().unwrap();
    (latents, best, log, ratios)
}

fn tiny_run_once(
    cache: CacheMode,
    seed: u64,
    steps: usize,
    cfg: f64,
) -> (Vec<f32>, f64, Vec<bool>, Option<Vec<f64>>) {
    let transformer = tiny_transformer(DType::F32);
    let plan = GenerationRequest::new(1.0).validate().unwrap();
    let model = FramePackModel::new(&transformer, tiny_conditions()).cache(cache);
    let mut d = FlowDenoiser::new(model, Guidance::default().cfg(cfg));
    let start = latent(8, 8, 1);
    let t = Instant::now();
    let out = SectionSampler::new(&plan)
        .steps(steps)
        .seed(seed)
        .run(
            &mut d,
            &SectionInputs::new(start),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let cache = d.model().step_cache();
    (
        values(out.history.valid()),
        seconds,
        cache.window_log().to_vec(),
        cache.calibrated_ratios(),
    )
}

#[test]
fn caches_on_the_tiny_transformer_speed_up_with_bounded_error() {
    let steps = 25;
    let (base, t_base, log, _) = tiny_run(CacheMode::Off, 31337, steps, 1.0);
    assert!(log.is_empty());

    let (tea, t_tea, log, _) =
        tiny_run(CacheMode::TeaCache(TeaCache::default()), 31337, steps, 1.0);
    let tea_computed = log.iter().filter(|c| **c).count();
    assert_eq!(log.len(), steps);
    assert!(
        log[0] && log[steps - 1],
        "first and last calls are computed"
    );
    let tea_err = relative_l2(&tea, &base);

    // MagCache with ratios calibrated on another seed (the curve is meant to be seed-independent).
    let (_, _, _, ratios) = tiny_run(CacheMode::MagCache(MagCache::calibrate()), 7, steps, 1.0);
    let ratios = ratios.expect("calibrated");
    let (mag, t_mag, log, _) = tiny_run(
        CacheMode::MagCache(MagCache::new(ratios.clone())),
        31337,
        steps,
        1.0,
    );
    let mag_computed = log.iter().filter(|c| **c).count();
    assert!(log[0] && log[steps - 1]);
    let mag_err = relative_l2(&mag, &base);

    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!("MagCache ratios calibrated on the tiny model: {shown:?}");
    println!(
        "tiny transformer, 8x8 latents, {steps} steps (best of 3): uncached {:.3} s; TeaCache {tea_computed}/{steps} \
         computed, {:.3} s ({:.2}x), relative L2 error {tea_err:.2e}; MagCache {mag_computed}/{steps} \
         computed, {:.3} s ({:.2}x), relative L2 error {mag_err:.2e}",
        t_base,
        t_tea,
        t_base / t_tea,
        t_mag,
        t_base / t_mag
    );
    assert!(tea_computed < steps, "TeaCache skipped nothing");
    assert!(mag_computed < steps, "MagCache skipped nothing");
    assert!(tea_err > 0.0 && tea_err < 0.2, "TeaCache error {tea_err}");
    assert!(mag_err > 0.0 && mag_err < 0.2, "MagCache error {mag_err}");
}

#[test]
fn teacache_counts_model_calls_like_the_reference_under_real_cfg() {
    // cfg != 1: two calls per step, the counter wraps after `steps` calls, so the forced
    // computes fall on calls 0, 3, 4 and 7 of a 4-step window.
    let (_, _, log, _) = tiny_run(CacheMode::TeaCache(TeaCache::default()), 5, 4, 2.0);
    assert_eq!(log.len(), 8);
    for i in [0, 3, 4, 7] {
        assert!(log[i], "call {i}: {log:?}");
    }
}

#[test]
fn teacache_measures_in_the_compute_dtype() {
    // A bf16 model: the signal, its difference and the means are bf16, as in the reference.
    let transformer = tiny_transformer(DType::BF16);
    let plan = GenerationRequest::new(1.0).validate().unwrap();
    let model = FramePackModel::new(&transformer, tiny_conditions())
        .cache(CacheMode::TeaCache(TeaCache::default()));
    let mut d = FlowDenoiser::new(model, Guidance::default());
    let out = SectionSampler::new(&plan)
        .steps(6)
        .run(
            &mut d,
            &SectionInputs::new(latent(4, 4, 1)),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    assert!(out.is_complete());
    let log = d.model().step_cache().window_log();
    assert_eq!(log.len(), 6);
    assert!(log[0] && log[5]);
    assert_eq!(d.model().stats().calls, 6);
    assert!(values(out.history.valid()).iter().all(|v| v.is_finite()));
}
