//! Decode time per frame of the full-size HunyuanVideo VAE (random weights) on the CPU at a
//! small size: 9 latents of 8×8 (33 frames of 64×64 px), fp32, burn-flex.
//!
//! It times the reference's temporally tiled decode (chunks of 5 latents every 3: 17 + 17 + 9
//! frames decoded, 33 kept) and the streamed decode, one latent per call (33 frames decoded).
//! A measurement, not a test: run it by hand, once, with the test profile (whose
//! dependencies are built with optimisations; no separate release build):
//!
//! ```sh
//! cargo run --profile test -p framepack-models --example vae_cpu_timing
//! ```

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
use framepack_models::weights::RandomSource;
use framepack_models::CpuBackend as B;
use framepack_models::LoadOptions;

fn main() {
    let device = Default::default();
    let started = Instant::now();
    let mut src = RandomSource::<B>::new(&device, 0, 0.02);
    let vae = HunyuanVideoVae::load(
        &mut src,
        VaeConfig::hunyuan_video(),
        &LoadOptions::new(DType::F32),
    )
    .expect("random weights");
    println!(
        "built the full-size VAE in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let z = Tensor::<B, 5>::random([1, 16, 9, 8, 8], Distribution::Normal(0.0, 1.0), &device);

    let time = |name: &str, decode: &dyn Fn() -> Tensor<B, 5>| {
        let started = Instant::now();
        let out = decode();
        let [_, _, frames, h, w] = out.dims();
        // Reading the result back makes sure all the work is done.
        let mean = out.abs().mean().into_scalar();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name}: {frames} frames of {h}x{w} in {seconds:.1} s = {:.2} s per frame \
             (mean |pixel| {mean:.3})",
            seconds / frames as f64
        );
    };
    time("first latent alone (1 frame)", &|| {
        vae.decode(z.clone().narrow(2, 0, 1)).expect("decode")
    });
    time("reference chunked decode", &|| {
        vae.decode(z.clone()).expect("decode")
    });
    time("streamed decode, 1 latent per call", &|| {
        vae.decode_cached(z.clone(), 1).expect("decode")
    });
}
