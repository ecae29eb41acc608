//! Per-frame latency of the tiny random-weight transformer on the CPU (burn-flex): one forward
//! over a window of 9 latent frames of 32x32 latents with the full packed context (2 + 2 + 16
//! latents) and 16 text tokens, the unit of work of each sampler step. Criterion reports the
//! time per forward and the latent frames per second of the window.
//!
//! ```sh
//! cargo bench -p framepack-models --bench tiny_forward
//! ```

use std::time::Duration;

use burn::tensor::DType;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::weights::RandomSource;
use framepack_models::CpuBackend as B;

#[path = "../examples/bench/mod.rs"]
mod bench;

/// Latent frames one forward denoises.
const WINDOW: u64 = 9;

fn tiny_forward(c: &mut Criterion) {
    let device = Default::default();
    let config = TransformerConfig::tiny();
    let mut group = c.benchmark_group("tiny transformer forward, CPU");
    // About a second per forward on two cores: a few samples suffice.
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(12))
        .throughput(Throughput::Elements(WINDOW));
    for dtype in [DType::F32, DType::BF16] {
        let mut src = RandomSource::<B>::new(&device, 0, 0.05);
        let model = FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(dtype))
            .expect("random weights")
            .0;
        let inputs = bench::inputs_at::<B>(&config, &device, dtype, [32, 32], [16, 16]);
        group.bench_function(
            format!("{dtype:?}, 32x32 latents, window 9 + context"),
            |b| b.iter(|| model.forward(&inputs).expect("forward").into_data()),
        );
    }
    group.finish();
}

criterion_group!(benches, tiny_forward);
criterion_main!(benches);
