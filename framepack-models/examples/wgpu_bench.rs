//! The transformer on a wgpu adapter (Vulkan / Metal / DX12) through the portable path: op
//! rates on FramePack's shapes and the full-size forward at the default 640x608 bucket
//! (window 9, packed context, 32 text tokens) with random weights built on the device, in f16
//! where the adapter has it (WGSL has no bf16), else f32.
//!
//! ```sh
//! cargo build --release -p framepack-models --no-default-features --features wgpu --example wgpu_bench
//! wgpu_bench [--iters N] [--dtype f16|f32] [--blocks DOUBLE,SINGLE] [--skip-ops]
//! ```
//! `--blocks 1,1` keeps the full width and shapes with fewer blocks, for a quick check on a
//! small or software adapter.

mod bench;

use std::time::Instant;

use burn::backend::wgpu::WgpuDevice;
use burn::tensor::{backend::Backend, DType, Tensor};
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::weights::RandomSource;
use framepack_models::FramePackBackend;

use bench::{default_inputs, peak_rss, print_table, randn, time, Args, FORWARD_FLOPS, GIB};

type B = burn::backend::Wgpu;

fn op_rates(device: &WgpuDevice, dtype: DType, rows: &mut Vec<(String, String)>) {
    let iters = 3;
    for (name, m, k, n) in [
        ("GEMM qkv/out 17500x3072 -> 3072", 17500, 3072, 3072),
        ("GEMM ff-in 17500x3072 -> 12288", 17500, 3072, 12288),
        ("GEMM ff-out 17500x12288 -> 3072", 17500, 12288, 3072),
    ] {
        let x = randn::<B, 3>([1, m, k], device, dtype);
        let w = randn::<B, 2>([n, k], device, dtype).mul_scalar(0.02);
        let b = randn::<B, 1>([n], device, dtype);
        let t = time::<B>(iters, device, || {
            drop(B::dense(x.clone(), w.clone(), Some(b.clone())))
        });
        let tflops = 2.0 * (m * k * n) as f64 / t / 1e12;
        rows.push((
            name.to_string(),
            format!("{:.2} ms, {tflops:.1} TFLOP/s", t * 1e3),
        ));
    }
    for seq in [4096usize, 18261] {
        let qkv = || randn::<B, 4>([1, seq, 24, 128], device, dtype);
        let (q, k, v) = (qkv(), qkv(), qkv());
        let t = time::<B>(iters, device, || {
            drop(B::attend(q.clone(), k.clone(), v.clone(), None))
        });
        let tflops = 4.0 * (seq * seq * 128 * 24) as f64 / t / 1e12;
        rows.push((
            format!("attention 24 heads x {seq} x 128"),
            format!("{:.2} ms, {tflops:.1} TFLOP/s", t * 1e3),
        ));
    }
}

fn finite(t: &Tensor<B, 5>) -> bool {
    let t = t.clone().cast(DType::F32);
    t.clone().is_nan().int().sum().into_scalar() == 0 && t.is_inf().int().sum().into_scalar() == 0
}

fn main() {
    let args = Args::from_env();
    let iters: usize = args.parsed("--iters", 3);
    let device = WgpuDevice::default();
    let half = B::supports_dtype(&device, DType::F16);
    let dtype = match args.value("--dtype").as_deref() {
        None if half => DType::F16,
        None => DType::F32,
        Some("f16") => DType::F16,
        Some("f32") => DType::F32,
        Some(other) => {
            eprintln!("--dtype `{other}`: expected f16 or f32 (wgpu has no bf16)");
            std::process::exit(2)
        }
    };
    let mut config = TransformerConfig::framepack();
    if let Some(blocks) = args.value("--blocks") {
        let parsed: Vec<usize> = blocks.split(',').filter_map(|b| b.parse().ok()).collect();
        let [double, single] = parsed[..] else {
            eprintln!("--blocks `{blocks}`: expected DOUBLE,SINGLE (e.g. 1,1)");
            std::process::exit(2)
        };
        config.num_layers = double;
        config.num_single_layers = single;
    }
    let full = config == TransformerConfig::framepack();

    let mut rows: Vec<(String, String)> = vec![
        ("backend".into(), B::name(&device)),
        (
            "adapter dtypes".into(),
            format!(
                "f16 {half}, bf16 {}",
                B::supports_dtype(&device, DType::BF16)
            ),
        ),
        ("compute dtype".into(), format!("{dtype:?}")),
    ];
    if !args.flag("--skip-ops") {
        op_rates(&device, dtype, &mut rows);
    }

    let start = Instant::now();
    let mut src = RandomSource::<B>::new(&device, 0, 0.02);
    let model = FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(dtype))
        .expect("random model")
        .0;
    let inputs = default_inputs::<B>(&config, &device, dtype);
    B::sync(&device).expect("sync");
    rows.push((
        "model build".into(),
        format!(
            "{:.1} s ({} double + {} single blocks, random weights on the device)",
            start.elapsed().as_secs_f64(),
            config.num_layers,
            config.num_single_layers
        ),
    ));

    let mut out = None;
    let t = time::<B>(iters, &device, || {
        out = Some(model.forward(&inputs).expect("forward"))
    });
    let out = out.expect("forward ran");
    let rate = if full {
        format!(", {:.1} TFLOP/s", FORWARD_FLOPS / t / 1e12)
    } else {
        String::new()
    };
    rows.push((
        "forward (640x608, window 9, context, 32 text)".into(),
        format!("median {t:.3} s of {iters}{rate}, finite: {}", finite(&out)),
    ));
    if let Some(memory) = B::device_memory(&device) {
        rows.push((
            "device memory in use".into(),
            format!("{:.1} GiB", memory.used() as f64 / GIB),
        ));
    }
    rows.push((
        "peak RSS".into(),
        format!("{:.1} GiB", peak_rss() as f64 / GIB),
    ));
    print_table(&rows);
}
