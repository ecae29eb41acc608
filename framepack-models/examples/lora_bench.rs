//! LoRA on the full-size transformer on an NVIDIA GPU: what merging costs while loading, what
//! switching adapters costs, and what adapters cost per forward compared with a merged model.
//!
//! Random bf16 weights are built on the device (the same seed for the base and the merged
//! model, so both see the same `W`), and a synthetic musubi-style HunyuanVideo LoRA (kohya keys,
//! `double_blocks`/`single_blocks` names with fused QKV and QKV+MLP, bf16) of rank `--rank` on
//! the attention and MLP layers of all 60 blocks is written to a temporary file.
//!
//! ```sh
//! cargo build --release -p framepack-models --features cuda --example lora_bench
//! lora_bench [--rank 32] [--iters 3]
//! ```

use std::collections::HashMap;
use std::time::Instant;

use burn::tensor::{backend::Backend, DType, Tensor};
use framepack_models::cuda::{device_report, engine_summary, CudaBackend as B, CudaDevice};
use framepack_models::lora::{LoraFile, LoraSet, LoraSource};
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::weights::RandomSource;
use safetensors::{tensor::TensorView, Dtype};

mod bench;

use bench::{default_inputs, print_table, time, Args};

/// bf16 bytes of `n` values in `[-amp, amp]` from a simple xorshift generator.
fn random_bf16(n: usize, seed: u64, amp: f32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp;
        out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
    out
}

/// Writes the synthetic HunyuanVideo LoRA; returns its size in bytes.
fn write_lora(path: &std::path::Path, config: &TransformerConfig, rank: usize) -> u64 {
    let d = config.hidden_size();
    let mlp = config.mlp_dim();
    let mut modules: Vec<(String, usize, usize)> = Vec::new();
    for i in 0..config.num_layers {
        for stream in ["img", "txt"] {
            modules.push((format!("double_blocks_{i}_{stream}_attn_qkv"), d, 3 * d));
            modules.push((format!("double_blocks_{i}_{stream}_attn_proj"), d, d));
            modules.push((format!("double_blocks_{i}_{stream}_mlp_fc1"), d, mlp));
            modules.push((format!("double_blocks_{i}_{stream}_mlp_fc2"), mlp, d));
        }
    }
    for j in 0..config.num_single_layers {
        modules.push((format!("single_blocks_{j}_linear1"), d, 3 * d + mlp));
        modules.push((format!("single_blocks_{j}_linear2"), d + mlp, d));
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, (name, input, output)) in modules.iter().enumerate() {
        let base = format!("lora_unet_{name}");
        data.push((
            format!("{base}.lora_down.weight"),
            vec![rank, *input],
            random_bf16(rank * input, 2 * n as u64, 0.05),
        ));
        data.push((
            format!("{base}.lora_up.weight"),
            vec![*output, rank],
            random_bf16(output * rank, 2 * n as u64 + 1, 0.05),
        ));
        data.push((
            format!("{base}.alpha"),
            vec![],
            half::bf16::from_f32(rank as f32).to_le_bytes().to_vec(),
        ));
    }
    let views: HashMap<String, TensorView> = data
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).expect(k),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, path).expect("write LoRA");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn used() -> usize {
    device_report(0).map(|(_, used, _)| used).unwrap_or(0)
}

fn main() {
    let args = Args::from_env();
    let rank: usize = args.parsed("--rank", 32);
    let iters: usize = args.parsed("--iters", 3);
    let device = CudaDevice { index: 0 };
    let config = TransformerConfig::framepack();
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some((name, _, total)) = device_report(0) {
        rows.push(("device".into(), format!("{name}, {}", gib(total))));
    }
    rows.push(("tuned path".into(), engine_summary(0)));

    let dir = std::env::temp_dir().join("framepack_lora_bench");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("hv_rank{rank}.safetensors"));
    let start = Instant::now();
    let size = write_lora(&path, &config, rank);
    rows.push((
        format!("synthetic LoRA (HunyuanVideo names, rank {rank}, bf16)"),
        format!(
            "{:.0} MB, written in {:.1} s",
            size as f64 / 1e6,
            start.elapsed().as_secs_f64()
        ),
    ));
    let start = Instant::now();
    let lora = LoraFile::open(&path).expect("parse LoRA");
    rows.push((
        "parse (header, key mapping, splits)".into(),
        format!(
            "{:.3} s, {} FramePack modules, format: {}",
            start.elapsed().as_secs_f64(),
            lora.modules().count(),
            lora.format()
        ),
    ));
    let set = LoraSet::new().with(lora, 1.0);

    // Base model.
    let start = Instant::now();
    let mut src = RandomSource::<B>::new(&device, 0, 0.02);
    let mut model =
        FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(DType::BF16))
            .expect("base model")
            .0;
    B::sync(&device).expect("sync");
    let t_base = start.elapsed().as_secs_f64();
    let mem_base = used();
    rows.push((
        "build base model (random bf16 on the GPU)".into(),
        format!("{t_base:.2} s, GPU memory in use {}", gib(mem_base)),
    ));
    let x = default_inputs::<B>(&config, &device, DType::BF16);
    let t_fwd_base = time::<B>(iters, &device, || drop(model.forward(&x).expect("forward")));
    rows.push((
        "forward, base (640x608, window 9, context, 32 text)".into(),
        format!("median {t_fwd_base:.3} s of {iters}"),
    ));

    // Adapters.
    let start = Instant::now();
    let report = model.set_lora_adapters(&set).expect("adapters");
    B::sync(&device).expect("sync");
    let t_attach = start.elapsed().as_secs_f64();
    let adapter_bytes: usize = model
        .lora_linears_mut()
        .iter()
        .filter_map(|l| {
            let inner: usize = l.shape()[1..].iter().product();
            l.adapter().map(|a| a.rank() * (l.shape()[0] + inner) * 2)
        })
        .sum();
    rows.push((
        "set_lora_adapters (build + upload all factors)".into(),
        format!(
            "{t_attach:.2} s, {} layers, factors {:.0} MB (bf16)",
            report.applied.len(),
            adapter_bytes as f64 / 1e6
        ),
    ));
    let start = Instant::now();
    model.set_lora_adapters(&set).expect("adapters");
    B::sync(&device).expect("sync");
    rows.push((
        "set_lora_adapters again (a switch)".into(),
        format!("{:.2} s", start.elapsed().as_secs_f64()),
    ));
    let mut adapted = None;
    let t_fwd_adapted = time::<B>(iters, &device, || {
        adapted = Some(model.forward(&x).expect("forward"))
    });
    rows.push((
        "forward, adapters".into(),
        format!(
            "median {t_fwd_adapted:.3} s of {iters} ({:+.1} % vs base)",
            (t_fwd_adapted / t_fwd_base - 1.0) * 100.0
        ),
    ));
    let adapted = adapted.expect("forward ran");
    model.clear_lora_adapters();
    drop(model);

    // Merged while loading, same base weights (same seed and draw order).
    let mem_before = used();
    let start = Instant::now();
    let mut src = LoraSource::new(RandomSource::<B>::new(&device, 0, 0.02), &set);
    let merged =
        FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(DType::BF16))
            .expect("merged")
            .0;
    B::sync(&device).expect("sync");
    let t_merged = start.elapsed().as_secs_f64();
    let (_, report) = src.finish();
    rows.push((
        "build merged model (random bf16 + LoRA merged while loading)".into(),
        format!(
            "{t_merged:.2} s ({:+.2} s for merging {} weights), GPU memory in use {} (before: {})",
            t_merged - t_base,
            report.applied.len(),
            gib(used()),
            gib(mem_before)
        ),
    ));
    let mut out = None;
    let t_fwd_merged = time::<B>(iters, &device, || {
        out = Some(merged.forward(&x).expect("forward"))
    });
    rows.push((
        "forward, merged".into(),
        format!(
            "median {t_fwd_merged:.3} s of {iters} ({:+.1} % vs base)",
            (t_fwd_merged / t_fwd_base - 1.0) * 100.0
        ),
    ));
    let out = out.expect("forward ran");
    let rel = |a: &Tensor<B, 5>, b: &Tensor<B, 5>| {
        let diff = (a.clone() - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
        let norm = b.clone().powi_scalar(2).sum().into_scalar() as f64;
        (diff / norm).sqrt()
    };
    rows.push((
        "adapters vs merged, relative L2 (bf16)".into(),
        format!("{:.3e}", rel(&adapted, &out)),
    ));
    drop(merged);

    // How much a bf16-sized change of the LoRA moves the output of this random-weight model:
    // the same merge with the multiplier 1 + 2^-8 (about one bf16 rounding of the delta).
    let nudged = LoraSet::new().with(
        LoraFile::open(&path).expect("parse LoRA"),
        1.0 + 1.0 / 256.0,
    );
    let mut src = LoraSource::new(RandomSource::<B>::new(&device, 0, 0.02), &nudged);
    let start = Instant::now();
    let merged =
        FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(DType::BF16))
            .expect("merged")
            .0;
    B::sync(&device).expect("sync");
    let t_again = start.elapsed().as_secs_f64();
    let out_nudged = merged.forward(&x).expect("forward");
    rows.push((
        "merged again with multiplier 1 + 2^-8: load, relative L2 vs multiplier 1".into(),
        format!("{t_again:.2} s, {:.3e}", rel(&out_nudged, &out)),
    ));
    let _ = std::fs::remove_file(&path);

    print_table(&rows);
}
