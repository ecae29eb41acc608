//! Shared by the bench examples: timing, the transformer's inputs at FramePack's default
//! shapes, peak RSS, arguments and the closing table.
#![allow(dead_code)]

use std::time::Instant;

use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use framepack_models::transformer::{ContextGroup, TransformerConfig, TransformerInputs};

/// FLOPs of one forward at 640x608, window 9, 32 text tokens (shared/spec/models.md 7.1).
pub const FORWARD_FLOPS: f64 = 494.1e12;

/// Bytes in a GiB, as a float.
pub const GIB: f64 = (1u64 << 30) as f64;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `iters` runs of `f` after one warm-up run, each ended by a device sync.
pub fn time<B: Backend>(iters: usize, device: &B::Device, mut f: impl FnMut()) -> f64 {
    f();
    B::sync(device).expect("sync");
    median(
        (0..iters.max(1))
            .map(|_| {
                let start = Instant::now();
                f();
                B::sync(device).expect("sync");
                start.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Standard-normal values in `dtype`.
pub fn randn<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
}

/// Random inputs of the reference benchmark: the 640x608 bucket (80x76 latents), window 9,
/// the packed context (2 + 2 + 16 latents) and 32 of 512 text tokens.
pub fn default_inputs<B: Backend>(
    config: &TransformerConfig,
    device: &B::Device,
    dtype: DType,
) -> TransformerInputs<B> {
    inputs_at(config, device, dtype, [80, 76], [512, 32])
}

/// Random inputs of a window of 9 latent frames of `latent_hw` with the full packed context
/// (2 + 2 + 16 latents), `text[1]` valid of `text[0]` text tokens.
pub fn inputs_at<B: Backend>(
    config: &TransformerConfig,
    device: &B::Device,
    dtype: DType,
    latent_hw: [usize; 2],
    text: [usize; 2],
) -> TransformerInputs<B> {
    let [h, w] = latent_hw;
    let randn5 = |t: usize| randn::<B, 5>([1, 16, t, h, w], device, dtype);
    TransformerInputs {
        latents: randn5(9),
        latent_indices: (1..10).map(|i| i as f32).collect(),
        timestep: vec![996.0],
        guidance: vec![9984.0],
        text: randn([1, text[0], config.text_embed_dim], device, dtype),
        text_lengths: vec![text[1]],
        pooled_text: randn([1, config.pooled_projection_dim], device, dtype),
        image_embeddings: randn([1, 729, config.image_proj_dim], device, dtype),
        clean: Some(ContextGroup {
            latents: randn5(2),
            indices: vec![0.0, 10.0],
        }),
        clean_2x: Some(ContextGroup {
            latents: randn5(2),
            indices: vec![11.0, 12.0],
        }),
        clean_4x: Some(ContextGroup {
            latents: randn5(16),
            indices: (13..29).map(|i| i as f32).collect(),
        }),
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The command line: `--name value` options and `--flag` switches.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Self(std::env::args().collect())
    }

    /// The value after `name`, if any.
    pub fn value(&self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).cloned()
    }

    /// The value after `name` parsed, or `default` (exits with a message if unparsable).
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("invalid {name} `{v}`");
                std::process::exit(2)
            }),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

/// The closing table (the last thing a bench prints).
pub fn print_table(rows: &[(String, String)]) {
    println!("\n| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
