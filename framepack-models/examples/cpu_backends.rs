//! Compares the CPU backends burn 0.21 offers (burn-flex, burn-ndarray) on the tiny
//! random-weight transformer, the workload of the CPU tests and the `tiny-random` demo.
//!
//! ```sh
//! cargo run --release -p framepack-models --example cpu_backends --features ndarray
//! ```

use std::time::Instant;

use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use framepack_models::nn::WeightFormat;
use framepack_models::transformer::{
    ContextGroup, DoubleStreamBlock, FramePackTransformer, LoadOptions, Rotary, SingleStreamBlock,
    TransformerConfig, TransformerInputs,
};
use framepack_models::weights::RandomSource;
use framepack_models::FramePackBackend;

/// Median seconds of `runs` forwards at a 32x32 latent window of 9 frames with full context.
fn time_forward<B: FramePackBackend>(dtype: DType, runs: usize) -> f64 {
    let device = B::Device::default();
    let config = TransformerConfig::tiny();
    let mut src = RandomSource::<B>::new(&device, 0, 0.05);
    let model = FramePackTransformer::load(&mut src, config.clone(), &LoadOptions::new(dtype))
        .expect("random weights")
        .0;
    let (h, w) = (32, 32);
    let r =
        |shape: [usize; 5]| Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let inputs = TransformerInputs {
        latents: r([1, 16, 9, h, w]),
        latent_indices: (1..10).map(|i| i as f32).collect(),
        timestep: vec![996.0],
        guidance: vec![9984.0],
        text: Tensor::random(
            [1, 16, config.text_embed_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        text_lengths: vec![16],
        pooled_text: Tensor::random(
            [1, config.pooled_projection_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        image_embeddings: Tensor::random(
            [1, 729, config.image_proj_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        clean: Some(ContextGroup {
            latents: r([1, 16, 2, h, w]),
            indices: vec![0.0, 10.0],
        }),
        clean_2x: Some(ContextGroup {
            latents: r([1, 16, 2, h, w]),
            indices: vec![11.0, 12.0],
        }),
        clean_4x: Some(ContextGroup {
            latents: r([1, 16, 16, h, w]),
            indices: (13..29).map(|i| i as f32).collect(),
        }),
    };
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let start = Instant::now();
        let out = model.forward(&inputs).expect("forward");
        let _ = out.into_data();
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median seconds of one double- and one single-stream block of the tiny config over the same
/// 4,937 image + 745 text tokens (tensors of rank <= 5, which burn-ndarray can run).
fn time_blocks<B: FramePackBackend>(runs: usize) -> f64 {
    let device = B::Device::default();
    let config = TransformerConfig::tiny();
    let (heads, head_dim) = (config.num_attention_heads, config.attention_head_dim);
    let hidden = config.hidden_size();
    let mut src = RandomSource::<B>::new(&device, 0, 0.05);
    let dims = [heads, head_dim, config.mlp_dim()];
    let double = DoubleStreamBlock::load(&mut src, "d", dims, DType::F32, WeightFormat::Dense)
        .expect("block");
    let single = SingleStreamBlock::load(&mut src, "s", dims, DType::F32, WeightFormat::Dense)
        .expect("block");
    let (n_img, n_txt) = (4937, 745);
    let n =
        |shape: [usize; 3]| Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let x = n([1, n_img, hidden]);
    let c = n([1, n_txt, hidden]);
    let temb = Tensor::<B, 2>::random([1, hidden], Distribution::Normal(0.0, 1.0), &device);
    let rotary = Rotary {
        cos: Tensor::random([n_img, head_dim], Distribution::Uniform(-1.0, 1.0), &device),
        sin: Tensor::random([n_img, head_dim], Distribution::Uniform(-1.0, 1.0), &device),
    };
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let start = Instant::now();
        let (x, c) = double.forward(x.clone(), c.clone(), temb.clone(), &rotary, None);
        let z = single.forward(
            Tensor::cat(vec![x, c], 1),
            n_img,
            temb.clone(),
            &rotary,
            None,
        );
        let _ = z.into_data();
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let runs = 5;
    println!("tiny transformer, 32x32 latents, 9-frame window + packed context (4,937 tokens), median of {runs}");
    println!("| backend | dtype | s / forward |");
    println!("|---|---|---|");
    println!(
        "| burn-flex | f32 | {:.3} |",
        time_forward::<burn::backend::Flex>(DType::F32, runs)
    );
    println!(
        "| burn-flex | bf16 | {:.3} |",
        time_forward::<burn::backend::Flex>(DType::BF16, runs)
    );
    #[cfg(feature = "ndarray")]
    println!("| burn-ndarray | any | cannot run: its tensors stop at rank 6, the patch embedding needs 8 |");
    println!();
    println!("one double + one single block of the tiny config, 4,937 + 745 tokens, f32, median of {runs}");
    println!("| backend | s / block pair |");
    println!("|---|---|");
    println!(
        "| burn-flex | {:.4} |",
        time_blocks::<burn::backend::Flex>(runs)
    );
    #[cfg(feature = "ndarray")]
    println!(
        "| burn-ndarray | {:.4} |",
        time_blocks::<burn::backend::NdArray>(runs)
    );
}
