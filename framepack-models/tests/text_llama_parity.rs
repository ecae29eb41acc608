//! The LLaMA text tower against transformers' `LlamaModel` on a tiny random-weight model
//! (4 layers, GQA 4:2): `hidden_states[-3]` of a padded, masked call as FramePack makes it,
//! while we load and run only the first 2 layers on the valid tokens
//! (fixtures from `tools/reference/encoders_fixture.py`).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, Tensor};
use framepack_models::text::{LlamaConfig, LlamaTextEncoder};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource, WeightError};
use framepack_models::{CpuBackend as B, LoadOptions, ModelError, Residency};
use safetensors::tensor::TensorView;
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn relative_l2(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f64 {
    let a = a.cast(DType::F32);
    let diff = (a - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

fn weights() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/text_llama_tiny.safetensors")).unwrap()
}

/// The valid ids and the reference output of `key`.
fn io(key: &str) -> (Vec<u32>, Tensor<B, 3>) {
    let io = CheckpointFiles::open(format!("{FIXTURES}/text_llama_tiny_io.safetensors")).unwrap();
    let dev = Default::default();
    let n: Tensor<B, 1> = io.read_stored("n_valid", DType::F32, &dev).unwrap();
    let n = n.into_scalar() as usize;
    let ids: Tensor<B, 2> = io.read_stored("ids", DType::F32, &dev).unwrap();
    let ids: Vec<f32> = ids.into_data().to_vec().unwrap();
    let ids = ids[..n].iter().map(|&v| v as u32).collect();
    (ids, io.read_stored(key, DType::F32, &dev).unwrap())
}

/// `LlamaConfig::tiny()` as a `config.json`.
const TINY_CONFIG: &str = r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
    "max_position_embeddings": 512}"#;

/// A published-layout folder in `dir` holding `weights` and the tiny `config.json`.
fn write_folder(dir: &Path, weights: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
}

/// The fixture as a published folder, loaded with `options` (the folder is kept alive for
/// streamed layers).
fn from_folder(options: &LoadOptions) -> (Result<LlamaTextEncoder<B>, ModelError>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let weights = std::fs::read(format!("{FIXTURES}/text_llama_tiny.safetensors")).unwrap();
    write_folder(dir.path(), &weights);
    let model = LlamaTextEncoder::from_folder(dir.path(), &Default::default(), options);
    (model, dir)
}

fn load(dtype: DType) -> LlamaTextEncoder<B> {
    let model = from_folder(&LoadOptions::new(dtype)).0.unwrap();
    assert_eq!(model.config(), &LlamaConfig::tiny());
    model
}

#[test]
fn fp32_hidden_state_minus_3_matches_reference() {
    let model = load(DType::F32);
    assert_eq!(
        model.num_layers(),
        2,
        "hidden_states[-3] of 4 layers needs 2"
    );
    let (ids, expected) = io("hidden_states_m3");
    let out = model.hidden_states(&ids).unwrap();
    assert_eq!(out.dims(), [1, ids.len(), 64]);
    let err = relative_l2(out, expected);
    println!("LLaMA fp32 relative L2 error: {err:.3e}");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn fp16_matches_reference() {
    let model = load(DType::F16);
    let (ids, expected32) = io("hidden_states_m3");
    let (_, expected16) = io("hidden_states_m3_f16");
    let out = model.hidden_states(&ids).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let vs16 = relative_l2(out.clone(), expected16);
    let vs32 = relative_l2(out, expected32);
    println!("LLaMA fp16 relative L2: {vs16:.3e} vs PyTorch fp16, {vs32:.3e} vs fp32");
    assert!(vs16 <= 2e-3, "relative L2 vs PyTorch fp16 {vs16}");
    assert!(vs32 <= 5e-3, "relative L2 vs fp32 {vs32}");
}

#[test]
fn layers_after_hidden_state_minus_3_and_the_final_norm_are_never_read() {
    let dev = Default::default();
    let mut src = SafetensorsSource::<B>::new(weights(), &dev);
    let options = LoadOptions::new(DType::F32);
    LlamaTextEncoder::load(&mut src, LlamaConfig::tiny(), &options).unwrap();
    match src.finish(|_| false) {
        Err(WeightError::UnexpectedKeys { count, sample, .. }) => {
            // layers.2.* and layers.3.* (9 tensors each) and norm.weight.
            assert_eq!(count, 19, "{sample:?}");
            assert!(sample.iter().all(|k| k.starts_with("layers.2.")
                || k.starts_with("layers.3.")
                || k == "norm.weight"));
        }
        other => panic!("expected the unused keys to be reported, got {other:?}"),
    }
    let config = LlamaConfig::tiny();
    assert!(config.is_unused_key("layers.3.mlp.up_proj.weight"));
    assert!(config.is_unused_key("norm.weight"));
    assert!(config.is_unused_key("layers.0.self_attn.rotary_emb.inv_freq"));
    assert!(!config.is_unused_key("layers.1.mlp.up_proj.weight"));
    assert!(!config.is_unused_key("embed_tokens.weight"));
}

#[test]
fn a_model_prefixed_checkpoint_loads_the_same() {
    // LlamaForCausalLM-style exports store `model.embed_tokens.weight` etc. (and `lm_head`).
    let bytes = std::fs::read(format!("{FIXTURES}/text_llama_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: HashMap<String, TensorView> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    let embed = st.tensor("embed_tokens.weight").unwrap();
    views.insert("lm_head.weight".into(), embed);
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &safetensors::serialize(&views, None).unwrap());

    let options = LoadOptions::new(DType::F32);
    let model =
        LlamaTextEncoder::<B>::from_folder(dir.path(), &Default::default(), &options).unwrap();
    let (ids, expected) = io("hidden_states_m3");
    let err = relative_l2(model.hidden_states(&ids).unwrap(), expected);
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn layerwise_loading_gives_the_resident_output() {
    let (model, _dir) = from_folder(&LoadOptions::new(DType::F32).residency(Residency::Streamed));
    let model = model.unwrap();
    assert_eq!(model.num_layers(), 2);
    let (ids, expected) = io("hidden_states_m3");
    let resident = load(DType::F32).hidden_states(&ids).unwrap();
    // Twice: every call reads the layers again.
    for _ in 0..2 {
        let out = model.hidden_states(&ids).unwrap();
        assert_eq!(
            out.clone().into_data().to_vec::<f32>().unwrap(),
            resident.clone().into_data().to_vec::<f32>().unwrap(),
            "the same weights in the same order give the same bits"
        );
        let err = relative_l2(out, expected.clone());
        assert!(err <= 1e-5, "relative L2 {err}");
    }
}

#[test]
fn layerwise_loading_checks_every_key_and_shape_up_front() {
    let bytes = std::fs::read(format!("{FIXTURES}/text_llama_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, views: &HashMap<String, TensorView>| {
        let folder = dir.path().join(name);
        write_folder(&folder, &safetensors::serialize(views, None).unwrap());
        folder
    };
    let all: HashMap<String, TensorView> = st.tensors().into_iter().collect();
    let layerwise = |folder: std::path::PathBuf| {
        let options = LoadOptions::new(DType::F32).residency(Residency::Streamed);
        LlamaTextEncoder::<B>::from_folder(folder, &Default::default(), &options)
    };

    // A layer's weight missing: found before any layer is read.
    let mut missing = all.clone();
    missing.remove("layers.1.mlp.down_proj.weight");
    match layerwise(write("missing", &missing)) {
        Err(ModelError::Weights(WeightError::MissingKey { key, .. })) => {
            assert_eq!(key, "layers.1.mlp.down_proj.weight")
        }
        other => panic!("expected a missing key, got {other:?}"),
    }

    // A stray tensor: listed.
    let mut stray = all.clone();
    stray.insert(
        "layers.0.extra.weight".into(),
        st.tensor("norm.weight").unwrap(),
    );
    match layerwise(write("stray", &stray)) {
        Err(ModelError::Weights(WeightError::UnexpectedKeys { sample, .. })) => {
            assert_eq!(sample, vec!["layers.0.extra.weight".to_string()])
        }
        other => panic!("expected an unexpected key, got {other:?}"),
    }

    // A wrong shape: named with both shapes.
    let mut wrong = all;
    wrong.insert(
        "layers.0.input_layernorm.weight".into(),
        st.tensor("layers.0.self_attn.q_proj.weight").unwrap(),
    );
    match layerwise(write("shape", &wrong)) {
        Err(ModelError::Weights(WeightError::ShapeMismatch { key, expected, .. })) => {
            assert_eq!(key, "layers.0.input_layernorm.weight");
            assert_eq!(expected, vec![64]);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}

#[test]
fn bad_ids_are_errors_naming_the_argument() {
    let model = load(DType::F32);
    let err = model.hidden_states(&[1, 2, 256]).unwrap_err();
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
    assert!(err.to_string().contains("256"), "{err}");
    let err = model.hidden_states(&[]).unwrap_err();
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
    let too_long = vec![1u32; 513];
    let err = model.hidden_states(&too_long).unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn config_reads_the_published_fields_and_rejects_unsupported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // The fields of the published text_encoder/config.json that matter.
    std::fs::write(
        &path,
        r#"{"architectures": ["LlamaModel"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": null,
            "vocab_size": 128320, "max_position_embeddings": 8192, "hidden_act": "silu",
            "torch_dtype": "float16", "attention_bias": false}"#,
    )
    .unwrap();
    let config = LlamaConfig::from_file(&path).unwrap();
    assert_eq!(config, LlamaConfig::llava_llama3_8b());
    assert_eq!(config.layers_needed(), 30);
    assert_eq!(config.head_dim(), 128);

    std::fs::write(
        &path,
        r#"{"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
    )
    .unwrap();
    let err = LlamaConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("RoPE scaling"), "{err}");
    assert!(err.contains("config.json"), "{err}");
}
