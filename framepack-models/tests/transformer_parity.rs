//! The transformer against diffusers' reference on a tiny random-weight model.
//!
//! Fixtures come from `tools/reference/transformer_fixture.py`: the same weights, inputs with
//! every context group (2x/4x with replicate padding in t, y and x) and padded text, and the
//! reference outputs for batch 1 (text cropped) and batch 2 (unequal text lengths, key mask).

use burn::tensor::{DType, Tensor};
use framepack_models::transformer::{
    BlockResidency, ContextGroup, FramePackTransformer, LoadOptions, TransformerConfig,
    TransformerInputs,
};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource};
use framepack_models::CpuBackend as B;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn relative_l2(a: Tensor<B, 5>, b: Tensor<B, 5>) -> f64 {
    let diff = (a - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

/// Relative L2 error of `out` against the reference output `key` of the io fixture, printed
/// under `what`.
fn error_vs_reference(io: &CheckpointFiles, out: Tensor<B, 5>, key: &str, what: &str) -> f64 {
    let expected: Tensor<B, 5> = io
        .read_stored(key, DType::F32, &Default::default())
        .unwrap();
    let err = relative_l2(out, expected);
    println!("{what}: relative L2 {err:.3e}");
    err
}

fn vec1(io: &CheckpointFiles, key: &str) -> Vec<f32> {
    let t: Tensor<B, 1> = io
        .read_stored(key, DType::F32, &Default::default())
        .unwrap();
    t.into_data().to_vec().unwrap()
}

fn inputs(io: &CheckpointFiles, batch: usize) -> TransformerInputs<B> {
    let dev = Default::default();
    let t5 = |k: &str| -> Tensor<B, 5> {
        io.read_stored::<B, 5>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    let t3 = |k: &str| -> Tensor<B, 3> {
        io.read_stored::<B, 3>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    let t2 = |k: &str| -> Tensor<B, 2> {
        io.read_stored::<B, 2>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    TransformerInputs {
        latents: t5("latents"),
        latent_indices: vec1(io, "latent_indices"),
        timestep: vec1(io, "timestep")[..batch].to_vec(),
        guidance: vec1(io, "guidance")[..batch].to_vec(),
        text: t3("text"),
        text_lengths: vec1(io, "text_lengths")[..batch]
            .iter()
            .map(|&l| l as usize)
            .collect(),
        pooled_text: t2("pooled_text"),
        image_embeddings: t3("image_embeddings"),
        clean: Some(ContextGroup {
            latents: t5("clean"),
            indices: vec1(io, "clean_indices"),
        }),
        clean_2x: Some(ContextGroup {
            latents: t5("clean_2x"),
            indices: vec1(io, "clean_2x_indices"),
        }),
        clean_4x: Some(ContextGroup {
            latents: t5("clean_4x"),
            indices: vec1(io, "clean_4x_indices"),
        }),
    }
}

fn load(dtype: DType) -> FramePackTransformer<B> {
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/transformer_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let options = LoadOptions::new(dtype);
    let model = FramePackTransformer::load(&mut src, TransformerConfig::tiny(), &options)
        .unwrap()
        .0;
    // Every stored tensor is used: no key is silently dropped by a mis-mapping.
    src.finish(|_| false).unwrap();
    model
}

fn io() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/transformer_tiny_io.safetensors")).unwrap()
}

#[test]
fn fp32_batch_one_matches_reference() {
    let io = io();
    let model = load(DType::F32);
    let out = model.forward(&inputs(&io, 1)).unwrap();
    assert_eq!(out.dims(), [1, 16, 3, 12, 10]);
    let err = error_vs_reference(&io, out, "output_b1", "fp32 batch 1");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn fp32_batch_two_with_unequal_prompts_matches_reference() {
    let io = io();
    let model = load(DType::F32);
    let out = model.forward(&inputs(&io, 2)).unwrap();
    let err = error_vs_reference(&io, out, "output_b2", "fp32 batch 2");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn bf16_matches_fp32_reference() {
    let io = io();
    let model = load(DType::BF16);
    let out = model.forward(&inputs(&io, 1)).unwrap();
    assert_eq!(
        out.dtype(),
        DType::F32,
        "the velocity comes out of the fp32 proj_out"
    );
    let err = error_vs_reference(&io, out, "output_b1", "bf16");
    assert!(err <= 2e-2, "relative L2 {err}");
}

#[test]
fn mismatched_inputs_are_errors_naming_the_argument() {
    let io = io();
    let model = load(DType::F32);
    let mut bad = inputs(&io, 1);
    bad.latent_indices.pop();
    let err = model.forward(&bad).unwrap_err().to_string();
    assert!(err.contains("latent_indices"), "{err}");

    let mut bad = inputs(&io, 1);
    bad.text_lengths = vec![0];
    let err = model.forward(&bad).unwrap_err().to_string();
    assert!(err.contains("text_lengths"), "{err}");
}

#[test]
fn checkpoint_folder_with_config_json_loads_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{FIXTURES}/transformer_tiny.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    // A config.json as diffusers writes it, with the tiny sizes.
    let config = r#"{"_class_name": "HunyuanVideoTransformer3DModelPacked", "_diffusers_version": "0.33.1",
        "attention_head_dim": 16, "num_attention_heads": 2, "num_layers": 2, "num_single_layers": 2,
        "num_refiner_layers": 1, "text_embed_dim": 32, "pooled_projection_dim": 24,
        "rope_axes_dim": [4, 6, 6], "image_proj_dim": 20, "has_image_proj": true, "has_clean_x_embedder": true}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let options = LoadOptions::new(DType::F32);
    let (model, _) =
        FramePackTransformer::<B>::from_folder(dir.path(), &Default::default(), &options).unwrap();
    assert_eq!(model.config(), &TransformerConfig::tiny());
    let io = io();
    let out = model.forward(&inputs(&io, 1)).unwrap();
    let expected: Tensor<B, 5> = io
        .read_stored("output_b1", DType::F32, &Default::default())
        .unwrap();
    assert!(relative_l2(out, expected) <= 1e-5);

    // The published config (24 heads x 128) does not fit these weights: a shape error naming the key.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = FramePackTransformer::<B>::from_folder(dir.path(), &Default::default(), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("x_embedder.proj.weight") && err.contains("expected"),
        "{err}"
    );
}

#[test]
fn streamed_blocks_give_the_resident_output() {
    let io = io();
    let resident = load(DType::F32);
    let streamed = load_streamed_f32();
    assert_eq!(streamed.residency(), BlockResidency::Streamed);
    // 2 double + 2 single tiny blocks kept on the host, in fp32.
    assert!(streamed.streamed_host_bytes() > 100_000);
    for batch in [1, 2] {
        let a = resident.forward(&inputs(&io, batch)).unwrap();
        let b = streamed.forward(&inputs(&io, batch)).unwrap();
        assert_eq!(relative_l2(b, a), 0.0, "batch {batch}");
    }
}

/// The feed-forward networks run over slices of tokens (7 here, the low-VRAM mode's default
/// is 4,096) give the reference output: they work token by token.
#[test]
fn token_chunked_feed_forward_matches_reference() {
    let io = io();
    let mut model = load(DType::F32);
    assert_eq!(
        model.token_chunk(),
        None,
        "resident models run all tokens at once"
    );
    assert_eq!(
        load_streamed_f32().token_chunk(),
        Some(framepack_models::transformer::STREAMED_TOKEN_CHUNK)
    );
    model.set_token_chunk(Some(7));
    for (batch, key) in [(1, "output_b1"), (2, "output_b2")] {
        let out = model.forward(&inputs(&io, batch)).unwrap();
        let what = format!("7-token feed-forward slices, batch {batch}");
        let err = error_vs_reference(&io, out, key, &what);
        assert!(err <= 1e-5, "batch {batch}: relative L2 {err}");
    }
}

/// FP8 block weights (e4m3, per-row scales): the blocks' linear weights take one byte each,
/// and the forward stays close to the reference.
#[test]
fn fp8_block_weights_stay_close_to_the_reference() {
    use framepack_models::nn::WeightFormat;
    let io = io();
    let load_fp8 = |residency| {
        let mut src = SafetensorsSource::<B>::open(
            format!("{FIXTURES}/transformer_tiny.safetensors"),
            &Default::default(),
        )
        .unwrap();
        let options = LoadOptions::new(DType::F32)
            .residency(residency)
            .block_weights(WeightFormat::Fp8);
        FramePackTransformer::load(&mut src, TransformerConfig::tiny(), &options)
            .map(|(model, _, _)| model)
    };
    let model = load_fp8(BlockResidency::Resident).unwrap();
    let out = model.forward(&inputs(&io, 1)).unwrap();
    let err = error_vs_reference(&io, out, "output_b1", "fp8");
    // e4m3 keeps 3 mantissa bits: each weight is off by up to 2^-4 relative.
    assert!(err > 1e-4, "FP8 weights were not used (error {err})");
    assert!(err <= 5e-2, "relative L2 {err}");

    // Streamed FP8 blocks hold one byte per linear weight on the host (fp32 blocks: four), and
    // give the resident FP8 model's output exactly.
    let streamed = load_fp8(BlockResidency::Streamed).unwrap();
    let dense_host = load_streamed_f32().streamed_host_bytes();
    assert!(
        streamed.streamed_host_bytes() * 3 < dense_host,
        "{} vs {dense_host} host bytes",
        streamed.streamed_host_bytes()
    );
    for batch in [1, 2] {
        let a = model.forward(&inputs(&io, batch)).unwrap();
        let b = streamed.forward(&inputs(&io, batch)).unwrap();
        assert_eq!(relative_l2(b, a), 0.0, "batch {batch}");
    }
}

/// The fixture with streamed fp32 blocks (every stored tensor used).
fn load_streamed_f32() -> FramePackTransformer<B> {
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/transformer_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let options = LoadOptions::new(DType::F32).residency(BlockResidency::Streamed);
    let (model, _, _) =
        FramePackTransformer::load(&mut src, TransformerConfig::tiny(), &options).unwrap();
    src.finish(|_| false).unwrap();
    model
}
