//! The CLIP text tower against transformers' `CLIPTextModel` on a tiny random-weight model:
//! the pooled output (legacy `eos_token_id = 2`: pooled at the largest id, the first EOS) of a
//! 77-token padded input (fixtures from `tools/reference/encoders_fixture.py`).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, Tensor};
use framepack_models::text::{ClipTextConfig, ClipTextEncoder};
use framepack_models::weights::CheckpointFiles;
use framepack_models::{CpuBackend as B, LoadOptions, ModelError};
use safetensors::tensor::TensorView;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn relative_l2<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let a = a.cast(DType::F32);
    let diff = (a - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

fn io() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/text_clip_tiny_io.safetensors")).unwrap()
}

fn ids(io: &CheckpointFiles) -> (Vec<u32>, usize) {
    let dev = Default::default();
    let ids: Tensor<B, 2> = io.read_stored("ids", DType::F32, &dev).unwrap();
    let ids: Vec<f32> = ids.into_data().to_vec().unwrap();
    let eos: Tensor<B, 1> = io.read_stored("eos_index", DType::F32, &dev).unwrap();
    (
        ids.iter().map(|&v| v as u32).collect(),
        eos.into_scalar() as usize,
    )
}

/// `ClipTextConfig::tiny()` as a `config.json`.
const TINY_CONFIG: &str = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 512}"#;

/// A published-layout folder in `dir` holding `weights` and the tiny `config.json`, loaded.
fn from_folder(dir: &Path, weights: &[u8], dtype: DType) -> ClipTextEncoder<B> {
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let options = LoadOptions::new(dtype);
    ClipTextEncoder::from_folder(dir, &Default::default(), &options).unwrap()
}

fn load(dtype: DType) -> ClipTextEncoder<B> {
    let dir = tempfile::tempdir().unwrap();
    let weights = std::fs::read(format!("{FIXTURES}/text_clip_tiny.safetensors")).unwrap();
    let model = from_folder(dir.path(), &weights, dtype);
    assert_eq!(model.config(), &ClipTextConfig::tiny());
    model
}

/// transformers ≥ 5 save the tower without the `text_model.` root: the same model loads.
#[test]
fn a_checkpoint_without_the_text_model_root_loads_the_same() {
    let bytes = std::fs::read(format!("{FIXTURES}/text_clip_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: HashMap<String, TensorView> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_string(), v))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let weights = safetensors::serialize(&views, None).unwrap();
    let model = from_folder(dir.path(), &weights, DType::F32);
    let (ids, _) = ids(&io());
    let pooled = |model: &ClipTextEncoder<B>| {
        let out = model.pooled(&ids).unwrap();
        out.into_data().to_vec::<f32>().unwrap()
    };
    assert_eq!(pooled(&model), pooled(&load(DType::F32)));
}

#[test]
fn fp32_pooled_output_matches_reference() {
    let io = io();
    let model = load(DType::F32);
    let (ids, eos) = ids(&io);
    assert_eq!(ids.len(), 77);
    let out = model.forward(&ids).unwrap();
    assert_eq!(out.pooled_index, eos);
    let expected: Tensor<B, 2> = io
        .read_stored("pooler_output", DType::F32, &Default::default())
        .unwrap();
    let err = relative_l2(out.pooled, expected);
    println!("CLIP fp32 pooled relative L2 error: {err:.3e}");
    assert!(err <= 1e-5, "relative L2 {err}");

    // The final-LN states of the tokens that were run match too.
    let states: Tensor<B, 3> = io
        .read_stored("last_hidden_state", DType::F32, &Default::default())
        .unwrap();
    let err = relative_l2(out.last_hidden_state, states.narrow(1, 0, eos + 1));
    println!("CLIP fp32 last_hidden_state[..=eos] relative L2 error: {err:.3e}");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn padding_after_the_eos_changes_nothing() {
    let io = io();
    let model = load(DType::F32);
    let (ids, eos) = ids(&io);
    let padded = model.pooled(&ids).unwrap();
    let unpadded = model.pooled(&ids[..=eos]).unwrap();
    let diff = (padded - unpadded).abs().max().into_scalar();
    assert_eq!(diff, 0.0);
}

#[test]
fn fp16_matches_reference() {
    let io = io();
    let model = load(DType::F16);
    let (ids, _) = ids(&io);
    let out = model.pooled(&ids).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let dev = Default::default();
    let e16: Tensor<B, 2> = io
        .read_stored("pooler_output_f16", DType::F32, &dev)
        .unwrap();
    let e32: Tensor<B, 2> = io.read_stored("pooler_output", DType::F32, &dev).unwrap();
    let vs16 = relative_l2(out.clone(), e16);
    let vs32 = relative_l2(out, e32);
    println!("CLIP fp16 pooled relative L2: {vs16:.3e} vs PyTorch fp16, {vs32:.3e} vs fp32");
    assert!(vs16 <= 2e-3, "relative L2 vs PyTorch fp16 {vs16}");
    assert!(vs32 <= 5e-3, "relative L2 vs fp32 {vs32}");
}

#[test]
fn bad_ids_are_errors_naming_the_argument() {
    let model = load(DType::F32);
    for ids in [vec![], vec![1u32; 78], vec![1, 512]] {
        let err = model.forward(&ids).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Input {
                    argument: "ids",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn config_accepts_a_text_config_or_a_full_clip_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"architectures": ["CLIPTextModel"], "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
            "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 768}"#,
    )
    .unwrap();
    assert_eq!(
        ClipTextConfig::from_file(&path).unwrap(),
        ClipTextConfig::clip_vit_large_patch14()
    );
    std::fs::write(
        &path,
        r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4, "hidden_act": "relu"}, "vision_config": {}}"#,
    )
    .unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("relu"), "{err}");
}
