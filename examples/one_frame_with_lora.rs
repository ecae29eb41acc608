//! One-frame inference with a kisekaeichi reference image and a LoRA, kept as a switchable
//! adapter: two jobs on one loaded pipeline, the second at another LoRA strength, without
//! reloading the transformer.
//!
//! ```text
//! cargo run --release --example one_frame_with_lora -- [LORA.safetensors]
//! ```
//!
//! Without a LoRA file it writes a small one for the tiny random-weight model (kohya key style)
//! into a temporary folder. Tiny model: the images are noise; the plumbing is real.

use std::path::{Path, PathBuf};

use framepack::{
    InputImage, KisekaeReference, LoraMode, Mode, Outputs, Pipeline, Request, Resolution,
};

/// A rank-1 LoRA on one attention projection of the tiny transformer (hidden size 32).
fn tiny_lora(dir: &Path) -> PathBuf {
    use safetensors::{tensor::TensorView, Dtype};
    let bytes = |n: usize, v: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (v * (1.0 + i as f32 / n as f32)).to_le_bytes())
            .collect()
    };
    let (down, up) = (bytes(32, 0.2), bytes(32, -0.3));
    let name = "lora_unet_transformer_blocks_0_attn_to_q";
    let tensors = vec![
        (
            format!("{name}.lora_down.weight"),
            TensorView::new(Dtype::F32, vec![1, 32], &down).unwrap(),
        ),
        (
            format!("{name}.lora_up.weight"),
            TensorView::new(Dtype::F32, vec![32, 1], &up).unwrap(),
        ),
    ];
    let path = dir.join("tiny_lora.safetensors");
    safetensors::serialize_to_file(tensors, None, &path).expect("writing the example LoRA");
    path
}

fn main() -> Result<(), framepack::Error> {
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let lora = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| tiny_lora(scratch.path()));
    let person = InputImage::from_rgb8(64, 64, [180u8, 150, 130].repeat(64 * 64))?;
    let dress = InputImage::from_rgb8(64, 64, [40u8, 60, 200].repeat(64 * 64))?;

    let mut pipeline = Pipeline::builder()
        .tiny_random(0)
        .dtype(framepack::DType::F32)
        .lora_mode(LoraMode::Adapters)
        .build()?;
    for strength in [1.0, 0.4] {
        let request = Request::new(person.clone(), "the same person in a blue dress")
            .mode(Mode::OneFrame)
            .steps(4)
            .resolution(Resolution::Exact {
                height: 32,
                width: 32,
            })
            .kisekae(KisekaeReference::new(dress.clone()).target_index(1))
            .lora(&lora, strength);
        let video = pipeline.generate(&request, |_| {})?;
        let out = format!("outputs/one_frame_lora_{strength}.png");
        let record = video.save(&Outputs::beside(&out))?;
        println!(
            "{out}: LoRA {} at {strength} ({})",
            lora.display(),
            record.runtime.lora_mode
        );
    }
    Ok(())
}
