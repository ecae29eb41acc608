//! The wgpu fallback (feature `wgpu`): the whole tiny pipeline on a Vulkan / Metal / DX12
//! adapter through the portable path, against the CPU result.
//!
//! Needs an adapter: a real GPU, or Mesa's lavapipe (software Vulkan) where there is none
//! (`tools/wgpu/install-lavapipe.sh`). Opt-in (`cargo test --features wgpu --test wgpu`): the
//! default `cargo test` builds no wgpu backend (docs/backends.md says why CI does not run them).
#![cfg(feature = "wgpu")]

mod common;

use std::sync::OnceLock;

use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, WgpuDevice};
use burn::tensor::backend::Backend;
use common::{psnr, small_request};
use framepack::{DType, DeviceChoice, Dtypes, Error, Pipeline, Video};

type Gpu = burn::backend::Wgpu;

/// The default adapter, described (name, type, API, driver), and whether it is a CPU
/// (software Vulkan such as lavapipe). Sets up the default device's runtime once, before any
/// test uses it.
fn adapter() -> &'static (String, bool) {
    static ADAPTER: OnceLock<(String, bool)> = OnceLock::new();
    ADAPTER.get_or_init(|| {
        let setup = init_setup::<AutoGraphicsApi>(&WgpuDevice::default(), Default::default());
        let info = setup.adapter.get_info();
        let kind = format!("{:?}", info.device_type);
        let name = format!(
            "{} ({kind}, {:?}, {} {})",
            info.name, info.backend, info.driver, info.driver_info
        );
        println!("adapter: {name}");
        (name, kind == "Cpu")
    })
}

/// Bounds on the latents' relative L2 error and the frames' PSNR for a dtype, against the
/// CPU in f32. A software adapter gets looser ones: llvmpipe's shader arithmetic is less
/// exact (f32: 8.9e-3 and 52 dB on Mesa 25.0.7 lavapipe, against 2.2e-5 and 91 dB on an H100).
fn bounds(dtype: DType) -> (f64, f64) {
    match (dtype, adapter().1) {
        (DType::F32, false) => (1e-4, 50.0),
        // Half precision (H100 over Vulkan: 8.5e-4, 51 dB).
        (_, false) => (1e-2, 40.0),
        (_, true) => (3e-2, 40.0),
    }
}

fn gpu_pipeline(dtype: DType) -> Result<Pipeline, Error> {
    Pipeline::builder()
        .device(DeviceChoice::Wgpu)
        .tiny_random(0)
        .dtype(dtype)
        .build()
}

fn generate(pipeline: &mut Pipeline) -> Video {
    pipeline
        .generate(&small_request(2.0).seed(11), |_| {})
        .expect("generation")
}

/// The whole latent buffer (the frames outside the valid part are zeros in both runs).
fn latents(video: &Video) -> Vec<f32> {
    video.latents.values().to_vec()
}

/// `‖a − b‖ / ‖b‖`.
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(y).powi(2);
    }
    (diff / norm).sqrt()
}

fn mean_psnr(a: &Video, b: &Video) -> f64 {
    assert_eq!(a.frames.len(), b.frames.len());
    let n = a.frames.len();
    (0..n)
        .map(|i| psnr(a.frames.frame(i), b.frames.frame(i)).min(99.0))
        .sum::<f64>()
        / n as f64
}

#[test]
fn dtypes_follow_the_adapter_and_bf16_is_refused() {
    adapter();
    let device = WgpuDevice::default();
    // WGSL has no bf16, so the automatic choice is f16 where the adapter has it, else f32.
    assert!(!Gpu::supports_dtype(&device, DType::BF16));
    let half = Gpu::supports_dtype(&device, DType::F16);
    let expected = if half { DType::F16 } else { DType::F32 };
    let chosen = Dtypes::for_device::<Gpu>(&device);
    println!("automatic dtypes: {chosen}");
    assert_eq!(chosen, Dtypes::all(expected));

    let pipeline = Pipeline::builder()
        .device(DeviceChoice::Wgpu)
        .tiny_random(0)
        .build()
        .expect("tiny pipeline with automatic dtypes");
    assert_eq!(pipeline.dtypes(), chosen);

    let message = gpu_pipeline(DType::BF16)
        .err()
        .expect("bf16 refused")
        .to_string();
    assert!(
        message.contains("bf16") && message.contains("transformer") && message.contains("--dtype"),
        "{message}"
    );
}

#[test]
fn tiny_pipeline_on_wgpu_matches_the_cpu() {
    let (max_error, min_db) = bounds(DType::F32);
    let mut cpu = common::tiny_pipeline();
    let mut gpu = gpu_pipeline(DType::F32).expect("wgpu f32 pipeline");
    let expected = generate(&mut cpu);
    let video = generate(&mut gpu);

    assert_eq!(video.frames.len(), 73);
    assert_eq!(
        video.record.runtime.backend,
        Gpu::name(&WgpuDevice::default())
    );
    assert_eq!(video.record.runtime.dtypes.transformer, DType::F32);
    let error = relative_l2(&latents(&video), &latents(&expected));
    let frames = mean_psnr(&video, &expected);
    println!("wgpu f32 vs CPU f32: latents relative L2 {error:.2e}, frames {frames:.1} dB");
    // fp32 on both, different summation orders, through 2 sections x 3 steps and the VAE.
    assert!(
        error <= max_error,
        "latents differ: relative L2 {error:.2e}"
    );
    assert!(frames >= min_db, "frames differ: {frames:.1} dB");
}

#[test]
fn tiny_pipeline_in_f16_on_wgpu_stays_close_to_f32() {
    let (max_error, min_db) = bounds(DType::F16);
    let device = WgpuDevice::default();
    if !Gpu::supports_dtype(&device, DType::F16) {
        // No f16 on this adapter: asking for it is a clear error, not a crash.
        let message = gpu_pipeline(DType::F16)
            .err()
            .expect("f16 refused")
            .to_string();
        assert!(message.contains("f16"), "{message}");
        return;
    }
    let expected = generate(&mut common::tiny_pipeline());
    let video = generate(&mut gpu_pipeline(DType::F16).expect("wgpu f16 pipeline"));
    assert_eq!(video.record.runtime.dtypes.vae, DType::F16);
    let error = relative_l2(&latents(&video), &latents(&expected));
    let frames = mean_psnr(&video, &expected);
    println!("wgpu f16 vs CPU f32: latents relative L2 {error:.2e}, frames {frames:.1} dB");
    assert!(
        error <= max_error,
        "latents differ: relative L2 {error:.2e}"
    );
    assert!(frames >= min_db, "frames differ: {frames:.1} dB");
}
