//! The transformer on an NVIDIA GPU: per-op rates on FramePack's shapes and the full-size
//! forward at the default 640x608 bucket (window 9, packed context, 32 text tokens), with
//! random bf16 weights built on the device, or with the PyTorch reference's own weights and
//! inputs for a parity check.
//!
//! ```sh
//! cargo build --release -p framepack-models --features cuda --example cuda_bench
//! cuda_bench [--iters N] [--reference /path/weights.safetensors] [--skip-ops]
//!            [--fp8 [--fp8-control]] [--memory-modes] [--vae]
//! ```
//! `--fp8`: the same weights with FP8 block weights, expanded and (where cuBLASLt offers it)
//! on FP8 tensor cores; `--fp8-control` adds a dense model holding the FP8-rounded weights.
//! `--reference` takes the files written by `../shared/perf/ref_transformer.py` with `SAVE=`:
//! the weights, and `<path>.io.safetensors` with the inputs and the reference output (or by
//! `tools/cuda/ref_fp8.py`, which adds PyTorch's output on FP8-rounded block weights, compared
//! with ours under `--fp8`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};
use framepack_models::cuda::{
    attention_kernels, device_report, engine_summary, fp8_tensor_cores_available,
    fp8_tensor_cores_check, pool_usage, time_kernels, CudaBackend as B, CudaDevice,
};
use framepack_models::fp8::Fp8Host;
use framepack_models::nn::WeightFormat;
use framepack_models::runtime::RuntimeOptions;
use framepack_models::transformer::{
    BlockResidency, ContextGroup, FramePackTransformer, LoadOptions, TransformerConfig,
    TransformerInputs, STREAMED_TOKEN_CHUNK,
};
use framepack_models::weights::{
    CheckpointFiles, RandomSource, SafetensorsSource, TensorSource, WeightError,
};
use framepack_models::FramePackBackend;

mod bench;

use bench::{default_inputs, peak_rss, print_table, time, Args, FORWARD_FLOPS};

fn randn<const D: usize>(shape: [usize; D], device: &CudaDevice) -> Tensor<B, D> {
    bench::randn(shape, device, DType::BF16)
}

/// "op time, rate | kernel time, rate": the op as the model calls it (host round trips
/// included, median of `iters`) and its kernels alone (CUDA events around `iters` back-to-back
/// launches, as PyTorch is timed).
fn op_and_kernel(iters: usize, device: &CudaDevice, flops: f64, mut op: impl FnMut()) -> String {
    let t = time::<B>(iters, device, &mut op);
    let ((), kernel) = time_kernels(iters, &mut op);
    format!(
        "{:.3} ms, {:.0} TFLOP/s | kernels {:.3} ms, {:.0} TFLOP/s",
        t * 1e3,
        flops / t / 1e12,
        kernel.seconds * 1e3,
        flops / kernel.seconds / 1e12
    )
}

fn op_rates(device: &CudaDevice, rows: &mut Vec<(String, String)>) {
    let iters = 10;
    for (name, m, k, n, gelu) in [
        (
            "GEMM fused qkv 17500x3072 -> 9216",
            17500,
            3072,
            9216,
            false,
        ),
        ("GEMM attn out 17500x3072 -> 3072", 17500, 3072, 3072, false),
        (
            "GEMM ff-in +GELU 17500x3072 -> 12288",
            17500,
            3072,
            12288,
            true,
        ),
        ("GEMM ff-out 17500x12288 -> 3072", 17500, 12288, 3072, false),
        (
            "GEMM single out 18261x15360 -> 3072",
            18261,
            15360,
            3072,
            false,
        ),
    ] {
        let x = randn([1, m, k], device);
        let w = randn([n, k], device).mul_scalar(0.02);
        let b = randn([n], device);
        let flops = 2.0 * (m * k * n) as f64;
        let rate = op_and_kernel(iters, device, flops, || {
            let y = if gelu {
                B::dense_gelu(x.clone(), w.clone(), Some(b.clone()))
            } else {
                B::dense(x.clone(), w.clone(), Some(b.clone()))
            };
            drop(y);
        });
        rows.push((name.to_string(), rate));
        // The same product on FP8 tensor cores (activations quantised by our kernel first,
        // inside the time).
        if fp8_tensor_cores_available(device) {
            let values: Vec<f32> = w
                .clone()
                .cast(DType::F32)
                .into_data()
                .to_vec()
                .expect("values");
            let w8 = Fp8Host::quantize(&values, [n, k]).upload::<B>(device, DType::BF16);
            let rate = RuntimeOptions::default().fp8_tensor_cores(true).scope(|| {
                op_and_kernel(iters, device, flops, || {
                    drop(B::dense_fp8(x.clone(), &w8, Some(b.clone()), gelu))
                })
            });
            rows.push((format!("{name}, FP8 tensor cores"), rate));
        }
    }
    for kernel in attention_kernels(device) {
        let _kernel = RuntimeOptions::default()
            .attention_kernel(Some(kernel))
            .enter();
        for seq in [4096usize, 18261] {
            let q = randn([1, seq, 24, 128], device);
            let k = randn([1, seq, 24, 128], device);
            let v = randn([1, seq, 24, 128], device);
            let flops = 4.0 * (seq * seq * 128 * 24) as f64;
            let rate = op_and_kernel(iters, device, flops, || {
                drop(B::attend(q.clone(), k.clone(), v.clone(), None))
            });
            rows.push((format!("attention {kernel} 24 heads x {seq} x 128"), rate));
        }
    }
    let x = randn([1, 17500, 3072], device);
    let shift = randn([1, 1, 3072], device);
    let scale = randn([1, 1, 3072], device);
    let t = time::<B>(iters, device, || {
        drop(B::layer_norm_modulate(
            x.clone(),
            shift.clone(),
            scale.clone(),
            1e-6,
        ))
    });
    rows.push((
        "LayerNorm+modulate 17500x3072".into(),
        format!(
            "{:.3} ms, {:.0} GB/s",
            t * 1e3,
            2.0 * 17500.0 * 3072.0 * 2.0 / t / 1e9
        ),
    ));
    let h = randn([1, 17500, 24, 128], device);
    let w = randn([128], device);
    let cos = Tensor::<B, 2>::random([17500, 128], Distribution::Uniform(-1.0, 1.0), device);
    let sin = cos.clone();
    let t = time::<B>(iters, device, || {
        drop(B::rms_norm_rope(
            h.clone(),
            w.clone(),
            1e-6,
            cos.clone(),
            sin.clone(),
        ))
    });
    rows.push((
        "RMSNorm+RoPE 17500x24x128".into(),
        format!("{:.3} ms", t * 1e3),
    ));
    // FP8 weight expansion (the largest block weight, ff-in): 1 byte read, 2 written each.
    let values: Vec<f32> = randn([12288, 3072], device)
        .mul_scalar(0.02)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("values");
    let fp8 = Fp8Host::quantize(&values, [12288, 3072]).upload::<B>(device, DType::BF16);
    let t = time::<B>(iters, device, || drop(fp8.dequantize()));
    rows.push((
        "FP8 -> bf16 weight 12288x3072".into(),
        format!(
            "{:.3} ms, {:.0} GB/s",
            t * 1e3,
            3.0 * 12288.0 * 3072.0 / t / 1e9
        ),
    ));

    let y = randn([1, 17500, 3072], device);
    let t = time::<B>(iters, device, || {
        drop(B::gated_residual(x.clone(), shift.clone(), y.clone()))
    });
    rows.push((
        "gated residual 17500x3072".into(),
        format!(
            "{:.3} ms, {:.0} GB/s",
            t * 1e3,
            3.0 * 17500.0 * 3072.0 * 2.0 / t / 1e9
        ),
    ));
}

fn reference_inputs(io: &CheckpointFiles, device: &CudaDevice) -> TransformerInputs<B> {
    let t5 = |k: &str| io.read_stored::<B, 5>(k, DType::BF16, device).expect(k);
    TransformerInputs {
        latents: t5("hidden_states"),
        latent_indices: (1..10).map(|i| i as f32).collect(),
        timestep: vec![996.0],
        guidance: vec![9984.0],
        text: io
            .read_stored::<B, 3>("encoder_hidden_states", DType::BF16, device)
            .expect("text"),
        text_lengths: vec![std::env::var("TXT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(32)],
        pooled_text: io
            .read_stored::<B, 2>("pooled_projections", DType::BF16, device)
            .expect("pooled"),
        image_embeddings: io
            .read_stored::<B, 3>("image_embeds", DType::BF16, device)
            .expect("image"),
        clean: Some(ContextGroup {
            latents: t5("latents_clean"),
            indices: vec![0.0, 10.0],
        }),
        clean_2x: Some(ContextGroup {
            latents: t5("latents_history_2x"),
            indices: vec![11.0, 12.0],
        }),
        clean_4x: Some(ContextGroup {
            latents: t5("latents_history_4x"),
            indices: (13..29).map(|i| i as f32).collect(),
        }),
    }
}

/// The full-size transformer in bf16 with the reference's weights (`SAVE=` of
/// ref_transformer.py, every tensor used) or random ones (seed 0: the same draws for every
/// format and residency).
fn load_model(
    device: &CudaDevice,
    reference: Option<&str>,
    residency: BlockResidency,
    format: WeightFormat,
) -> FramePackTransformer<B> {
    let config = TransformerConfig::framepack();
    let options = LoadOptions::new(DType::BF16)
        .residency(residency)
        .block_weights(format);
    match reference {
        Some(path) => {
            let mut src = SafetensorsSource::<B>::open(path, device).expect("reference weights");
            let (model, _, _) =
                FramePackTransformer::load(&mut src, config, &options).expect("load");
            src.finish(|_| false).expect("every reference tensor used");
            model
        }
        None => {
            let src = RandomSource::<B>::new(device, 0, 0.02);
            FramePackTransformer::load(src, config, &options)
                .expect("random model")
                .0
        }
    }
}

/// Prints a result row at once (a long call may be cut short) and keeps it for the table.
fn report(rows: &mut Vec<(String, String)>, row: (String, String)) {
    eprintln!("| {} | {} |", row.0, row.1);
    rows.push(row);
}

/// Resident vs streamed blocks on the same weights (random, or the reference's file when
/// given, read through the memory-mapped loader): forward time, GPU memory, host memory.
/// Streamed models load and run with exact-size allocations, as the pipeline's low-VRAM mode.
fn memory_modes(
    device: &CudaDevice,
    iters: usize,
    reference: Option<&str>,
    rows: &mut Vec<(String, String)>,
) {
    let config = TransformerConfig::framepack();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let mut times = Vec::new();
    // Streamed first, in a fresh process: its GPU figure is then not inflated by the pool that
    // the 25 GB resident model leaves behind. The third row turns the streamed model's
    // feed-forward slicing and its pool clean-ups between block kinds off, to show what they
    // save and cost.
    let default_chunk = Some(STREAMED_TOKEN_CHUNK);
    for (residency, format, chunk) in [
        (BlockResidency::Streamed, WeightFormat::Dense, default_chunk),
        (BlockResidency::Streamed, WeightFormat::Fp8, default_chunk),
        (BlockResidency::Streamed, WeightFormat::Dense, None),
        (BlockResidency::Resident, WeightFormat::Dense, None),
    ] {
        let streamed = residency == BlockResidency::Streamed;
        let exact = |work: &mut dyn FnMut()| {
            if streamed {
                B::with_exact_allocations(device, work)
            } else {
                work()
            }
        };
        let (_, before, _) = device_report(0).unwrap_or_default();
        let start = Instant::now();
        let mut model = None;
        exact(&mut || model = Some(load_model(device, reference, residency, format)));
        let mut model = model.expect("model loaded");
        model.set_token_chunk(chunk);
        model.set_pool_cleanup(streamed && chunk.is_some());
        B::sync(device).expect("sync");
        let build = start.elapsed().as_secs_f64();
        // Loading leaves conversion buffers in the pool: hand them back, as the pipeline does.
        B::memory_cleanup(device);
        let inputs = default_inputs::<B>(&config, device, DType::BF16);
        // A watcher samples the device's used memory every 20 ms during the forwards.
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some((_, used, _)) = device_report(0) {
                        peak.fetch_max(used, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
        };
        let mut t = 0.0;
        exact(&mut || {
            t = time::<B>(iters, device, || {
                drop(model.forward(&inputs).expect("forward"))
            })
        });
        done.store(true, Ordering::Relaxed);
        watcher.join().ok();
        let (in_use, reserved) = pool_usage(device);
        let chunk = match chunk {
            Some(tokens) => {
                format!(", feed-forward in {tokens}-token slices, pool cleaned per block kind")
            }
            None => String::new(),
        };
        report(rows, (
            format!("{residency:?} {format:?} blocks{chunk}: forward"),
            format!(
                "median {t:.3} s of {iters} (build {build:.1} s); GPU peak {:.2} GiB (device used, idle before load {:.2} GiB); pool after: {:.2} GiB in use, {:.2} GiB reserved; host blocks {:.1} GiB; peak RSS so far {:.1} GiB",
                gib(peak.load(Ordering::Relaxed)),
                gib(before),
                gib(in_use as usize),
                gib(reserved as usize),
                gib(model.streamed_host_bytes()),
                gib(peak_rss())
            ),
        ));
        times.push(t);
        drop(model);
        drop(inputs);
        B::sync(device).expect("sync");
        B::memory_cleanup(device);
    }
    report(
        rows,
        (
            "streamed / resident".into(),
            format!(
                "{:.2}x per forward (FP8 streamed: {:.2}x; without slices and clean-ups: {:.2}x)",
                times[0] / times[3],
                times[1] / times[3],
                times[2] / times[3]
            ),
        ),
    );
}

/// The full-size VAE (random fp16 weights) on CUDA: one decoder convolution on cuBLASLt and
/// on burn's kernel, then FramePack's encode of one 640x608 frame and decode of a section's
/// latents, both with the low-VRAM tiling (first call includes kernel compilation).
fn vae_bench(device: &CudaDevice, rows: &mut Vec<(String, String)>) {
    use framepack_models::vae::{HunyuanVideoVae, VaeConfig, VaeTiling};
    let seconds = |f: &mut dyn FnMut()| {
        B::sync(device).expect("sync");
        let start = Instant::now();
        f();
        B::sync(device).expect("sync");
        start.elapsed().as_secs_f64()
    };
    let rand5 = |shape: [usize; 5], std: f64| {
        Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, std), device).cast(DType::F16)
    };
    // A decoder convolution at full resolution on one 256x256 tile of 17 frames.
    {
        let shape = [1, 128, 19, 258, 258];
        let x = rand5(shape, 1.0);
        let w = rand5([128, 128, 3, 3, 3], 0.03);
        let flops =
            2.0 * 27.0 * 128.0 * 128.0 * ((shape[2] - 2) * (shape[3] - 2) * (shape[4] - 2)) as f64;
        let mut tuned = 0.0;
        for _ in 0..3 {
            tuned = seconds(&mut || drop(B::conv3d_valid(x.clone(), w.clone(), None, [1, 1, 1])));
        }
        let row = format!(
            "cuBLASLt shifted GEMMs {:.2} ms ({:.0} TFLOP/s)",
            tuned * 1e3,
            flops / tuned / 1e12
        );
        report(rows, (format!("VAE conv3d fp16 {shape:?} -> 128, k3"), row));
    }
    let start = Instant::now();
    let mut vae = HunyuanVideoVae::<B>::load(
        &mut RandomSource::<B>::new(device, 1, 0.02),
        VaeConfig::hunyuan_video(),
        &LoadOptions::new(DType::F16),
    )
    .expect("random VAE");
    vae.set_tiling(VaeTiling::low_vram()).expect("tiling");
    B::sync(device).expect("sync");
    report(
        rows,
        (
            "VAE build (random fp16)".into(),
            format!("{:.1} s", start.elapsed().as_secs_f64()),
        ),
    );
    let image = rand5([1, 3, 1, 640, 608], 0.5);
    let latents = rand5([1, 16, 9, 80, 76], 1.0);
    for call in ["first", "second"] {
        let mut z = None;
        let t = seconds(&mut || z = Some(vae.encode(image.clone()).expect("encode")));
        let z = z.expect("encoded");
        let finite = z.clone().is_nan().int().sum().into_scalar() == 0;
        let mut pixels = None;
        let d = seconds(&mut || pixels = Some(vae.decode(latents.clone()).expect("decode")));
        let pixels = pixels.expect("decoded");
        let finite = finite && pixels.clone().is_nan().int().sum().into_scalar() == 0;
        report(rows, (
            format!("VAE, {call} call"),
            format!(
                "encode 1x640x608 {t:.2} s; decode 9 latents -> {:?} {d:.2} s; finite: {finite}; GPU {:.2} GiB",
                pixels.dims(),
                device_report(0).map_or(0.0, |(_, used, _)| used as f64 / (1u64 << 30) as f64)
            ),
        ));
    }
}

fn main() {
    let args = Args::from_env();
    let iters: usize = args.parsed("--iters", 5);
    let reference = args.value("--reference");
    let device = CudaDevice { index: 0 };
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some((name, _, total)) = device_report(0) {
        rows.push((
            "device".into(),
            format!("{name}, {:.1} GiB", total as f64 / (1u64 << 30) as f64),
        ));
    }
    rows.push(("tuned path".into(), engine_summary(0)));
    if !args.flag("--skip-ops") {
        op_rates(&device, &mut rows);
    }

    if args.flag("--vae") {
        vae_bench(&device, &mut rows);
        print_table(&rows);
        return;
    }
    if args.flag("--memory-modes") {
        memory_modes(&device, iters, reference.as_deref(), &mut rows);
        print_table(&rows);
        return;
    }

    let config = TransformerConfig::framepack();
    // The reference's weights, or random ones (the same draws for both formats: one seed).
    let load = |format: WeightFormat| {
        load_model(
            &device,
            reference.as_deref(),
            BlockResidency::Resident,
            format,
        )
    };
    let start = Instant::now();
    let model = load(WeightFormat::Dense);
    // `output_fp8` (written by tools/cuda/ref_fp8.py): PyTorch's forward with the block
    // weights rounded through FP8 as ours are.
    let (inputs, expected, expected_fp8) = match &reference {
        Some(path) => {
            let io = CheckpointFiles::open(format!("{path}.io.safetensors")).expect("reference io");
            let read = |key: &str| io.read_stored::<B, 5>(key, DType::F32, &device).ok();
            let expected = read("output").expect("output");
            (
                reference_inputs(&io, &device),
                Some(expected),
                read("output_fp8"),
            )
        }
        None => (
            default_inputs::<B>(&config, &device, DType::BF16),
            None,
            None,
        ),
    };
    B::sync(&device).expect("sync");
    B::memory_cleanup(&device);
    let weights_bf16 = pool_usage(&device).0;
    rows.push((
        "model build".into(),
        format!(
            "{:.1} s ({})",
            start.elapsed().as_secs_f64(),
            if reference.is_some() {
                "reference weights"
            } else {
                "random weights on the GPU"
            }
        ),
    ));

    let mut out = None;
    let t = time::<B>(iters, &device, || {
        out = Some(model.forward(&inputs).expect("forward"))
    });
    let out = out.expect("forward ran");
    let finite = out.clone().is_nan().int().sum().into_scalar() == 0
        && out.clone().is_inf().int().sum().into_scalar() == 0;
    rows.push((
        "forward (640x608, window 9, context, 32 text)".into(),
        format!(
            "median {t:.3} s of {iters}, {:.0} TFLOP/s, finite: {finite}",
            FORWARD_FLOPS / t / 1e12
        ),
    ));
    if let Some((_, used, _)) = device_report(0) {
        rows.push((
            "GPU memory in use after the forward".into(),
            format!("{:.1} GiB", used as f64 / (1u64 << 30) as f64),
        ));
    }
    let relative_l2 = |a: &Tensor<B, 5>, b: &Tensor<B, 5>| {
        let diff = (a.clone().cast(DType::F32) - b.clone().cast(DType::F32))
            .powi_scalar(2)
            .sum()
            .into_scalar() as f64;
        let norm = b
            .clone()
            .cast(DType::F32)
            .powi_scalar(2)
            .sum()
            .into_scalar() as f64;
        (diff / norm).sqrt()
    };
    if let Some(expected) = &expected {
        rows.push((
            "relative L2 vs PyTorch reference".into(),
            format!("{:.3e}", relative_l2(&out, expected)),
        ));
    }

    if args.flag("--fp8") {
        // The same weights with FP8 blocks: memory, speed and error against bf16, with the
        // weights expanded before each GEMM (`WeightFormat::Fp8`'s numbers) and on FP8 tensor
        // cores (`RuntimeOptions::fp8_tensor_cores`: activations rounded to e4m3 too), one
        // loaded model.
        drop(model);
        B::sync(&device).expect("sync");
        B::memory_cleanup(&device);
        let empty_pool = pool_usage(&device).0;
        let start = Instant::now();
        let model = load(WeightFormat::Fp8);
        B::sync(&device).expect("sync");
        let build = start.elapsed().as_secs_f64();
        B::memory_cleanup(&device);
        let weights_fp8 = pool_usage(&device).0.saturating_sub(empty_pool);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        rows.push((
            "FP8 blocks: weights on the GPU".into(),
            format!(
                "{:.2} GiB (bf16 model: {:.2} GiB incl. inputs), build {build:.1} s",
                gib(weights_fp8),
                gib(weights_bf16)
            ),
        ));
        let available = fp8_tensor_cores_check(&device);
        let mut fp8_out = None;
        for tensor_cores in [false, true] {
            if let (true, Err(reason)) = (tensor_cores, &available) {
                rows.push(("FP8 tensor cores: not available".into(), reason.clone()));
                continue;
            }
            let _options = RuntimeOptions::default()
                .fp8_tensor_cores(tensor_cores)
                .enter();
            let label = if tensor_cores {
                "FP8 blocks on FP8 tensor cores"
            } else {
                "FP8 blocks, expanded to bf16"
            };
            let mut out8 = None;
            let t8 = time::<B>(iters, &device, || {
                out8 = Some(model.forward(&inputs).expect("fp8 forward"))
            });
            let out8 = out8.expect("forward ran");
            rows.push((
                format!("{label}: forward"),
                format!(
                    "median {t8:.3} s of {iters} ({:.2}x the bf16 forward)",
                    t8 / t
                ),
            ));
            rows.push((
                format!("{label}: relative L2 vs bf16 forward"),
                format!("{:.3e}", relative_l2(&out8, &out)),
            ));
            if let Some(expected) = &expected {
                rows.push((
                    format!("{label}: relative L2 vs PyTorch reference"),
                    format!("{:.3e}", relative_l2(&out8, expected)),
                ));
            }
            if let Some(expected_fp8) = &expected_fp8 {
                rows.push((
                    format!("{label}: relative L2 vs PyTorch on the same FP8-rounded weights"),
                    format!("{:.3e}", relative_l2(&out8, expected_fp8)),
                ));
            }
            if !tensor_cores {
                fp8_out = Some(out8);
            }
        }
        let fp8_out = fp8_out.expect("expanded forward ran");
        // Control (`--fp8-control`): a dense bf16 model whose block weights are the FP8
        // values. It must give the expanded FP8 forward (the expansion is exact), so the error
        // above is the quantisation's.
        if let Some(path) = reference.as_ref().filter(|_| args.flag("--fp8-control")) {
            drop(model);
            B::sync(&device).expect("sync");
            B::memory_cleanup(&device);
            let mut src = Fp8Rounded(SafetensorsSource::<B>::open(path, &device).expect("weights"));
            let rounded = FramePackTransformer::load(
                &mut src,
                config.clone(),
                &LoadOptions::new(DType::BF16),
            )
            .expect("load")
            .0;
            let rounded_out = rounded.forward(&inputs).expect("forward");
            rows.push((
                "FP8 blocks vs dense model on the FP8-rounded weights".into(),
                format!("relative L2 {:.3e}", relative_l2(&fp8_out, &rounded_out)),
            ));
        }
    }
    print_table(&rows);
}

/// A source whose block linear weights are rounded through FP8 (quantised and expanded on the
/// host), handed out dense.
struct Fp8Rounded(SafetensorsSource<B>);

impl TensorSource<B> for Fp8Rounded {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let block =
            key.starts_with("transformer_blocks.") || key.starts_with("single_transformer_blocks.");
        if D != 2 || !block || !key.ends_with(".weight") {
            return self.0.tensor(key, shape, dtype);
        }
        let fp8 = self.0.fp8_host(key, [shape[0], shape[1]])?;
        let values = fp8.dequantize();
        Ok(Tensor::<B, D>::from_data(TensorData::new(values, shape), self.0.device()).cast(dtype))
    }

    fn device(&self) -> &CudaDevice {
        self.0.device()
    }
}
