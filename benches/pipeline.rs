//! Seconds per output frame of the whole pipeline (text, images, sampling, per-section decode)
//! on the tiny random-weight model, on whichever device `DeviceChoice::Auto` picks (the CPU in
//! a default build). Criterion reports the time per video and the frames per second; the
//! full-size CUDA figures come from `examples/memory_bench.rs` (docs/performance.md).
//!
//! ```sh
//! cargo bench --bench pipeline
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use framepack::{DType, InputImage, Mode, Pipeline, Request, Resolution};

fn request(mode: Mode, seconds: f64) -> Request {
    let pixels: Vec<u8> = (0..96 * 64 * 3).map(|i| (i % 251) as u8).collect();
    let image = InputImage::from_rgb8(96, 64, pixels).expect("image");
    Request::new(image, "a lantern sways in the wind")
        .mode(mode)
        .seconds(seconds)
        .steps(4)
        .resolution(Resolution::Exact {
            height: 32,
            width: 48,
        })
}

fn whole_pipeline(c: &mut Criterion) {
    let mut pipeline = Pipeline::builder()
        .tiny_random(0)
        .dtype(DType::F32)
        .build()
        .expect("the tiny pipeline");
    let mut group = c.benchmark_group(format!(
        "tiny pipeline, {} ({} backend), 32x48, 4 steps",
        pipeline.device(),
        pipeline.backend()
    ));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (mode, seconds, label) in [
        (Mode::Inverted, 2.0, "inverted, 2 s (2 sections)"),
        (Mode::F1, 2.0, "F1, 2 s (2 sections)"),
        (Mode::OneFrame, 1.0, "one-frame"),
    ] {
        let request = request(mode, seconds);
        let frames = request.plan().expect("plan").frames();
        group.throughput(Throughput::Elements(u64::from(frames)));
        group.bench_function(format!("{label}: {frames} frames"), |b| {
            b.iter(|| {
                pipeline
                    .generate(&request, |_| {})
                    .expect("generation")
                    .frames
                    .len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, whole_pipeline);
criterion_main!(benches);
