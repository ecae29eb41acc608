//! SigLIP against transformers' `SiglipVisionModel` on a tiny random-weight model at the real
//! input size (384, patch 14: 729 tokens, the last 6 pixels ignored): `last_hidden_state` of
//! the PIL-preprocessed 640×608 test image, and the whole `hf_clip_vision_encode` path from
//! raw RGB bytes (fixtures from `tools/reference/encoders_fixture.py`).

mod vision_common;

use burn::tensor::{DType, Tensor, TensorData};
use framepack_models::vision::{SiglipImageProcessor, SiglipVisionConfig, SiglipVisionEncoder};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource, WeightError};
use framepack_models::{CpuBackend as B, LoadOptions, ModelError};
use vision_common::{procedural_image, resize_cases, FIXTURES};

fn relative_l2(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f64 {
    let a = a.cast(DType::F32);
    let diff = (a - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

fn weights() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/vision_siglip_tiny.safetensors")).unwrap()
}

/// The fixture as a published folder (`config.json` of the tiny sizes), loaded: the pooling
/// head it stores is skipped.
fn load(dtype: DType) -> SiglipVisionEncoder<B> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{FIXTURES}/vision_siglip_tiny.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let config = r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let options = LoadOptions::new(dtype);
    let model =
        SiglipVisionEncoder::from_folder(dir.path(), &Default::default(), &options).unwrap();
    assert_eq!(model.config(), &SiglipVisionConfig::tiny());
    model
}

fn expected(key: &str) -> Tensor<B, 3> {
    CheckpointFiles::open(format!("{FIXTURES}/vision_siglip_tiny_io.safetensors"))
        .unwrap()
        .read_stored(key, DType::F32, &Default::default())
        .unwrap()
}

/// The reference's pixel values: PIL's 384×384 bytes, rescaled and normalised, CHW.
fn reference_pixels() -> Tensor<B, 4> {
    let pil = &resize_cases()[0].pil;
    let processor = SiglipImageProcessor {
        do_resize: false,
        ..Default::default()
    };
    let (values, [h, w]) = processor.pixel_values(pil, 384, 384).unwrap();
    Tensor::from_data(TensorData::new(values, [1, 3, h, w]), &Default::default())
}

#[test]
fn fp32_last_hidden_state_matches_reference() {
    let model = load(DType::F32);
    let out = model.forward(reference_pixels()).unwrap();
    assert_eq!(out.dims(), [1, 729, 32]);
    let err = relative_l2(out, expected("last_hidden_state"));
    println!("SigLIP fp32 relative L2 error: {err:.3e}");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn raw_rgb_through_our_preprocessing_matches_reference() {
    let model = load(DType::F32);
    let case = &resize_cases()[0];
    let (w, h) = case.source;
    assert_eq!((w, h), (640, 608));
    let image = procedural_image(w, h, 0);
    let out = model
        .encode_image(&SiglipImageProcessor::default(), &image, w, h)
        .unwrap();
    let err = relative_l2(out, expected("last_hidden_state"));
    println!("SigLIP fp32 from raw RGB relative L2 error: {err:.3e}");
    assert!(err <= 1e-5, "relative L2 {err}");
}

#[test]
fn the_last_six_pixel_rows_and_columns_are_ignored() {
    let model = load(DType::F32);
    let pixels = reference_pixels();
    let base = model.forward(pixels.clone()).unwrap();
    // Overwrite rows/columns 378..384 with garbage: the valid convolution never reads them.
    let garbage = Tensor::<B, 4>::full([1, 3, 384, 384], 7.0, &Default::default());
    let keep = pixels.clone().narrow(2, 0, 378).narrow(3, 0, 378);
    let mixed = garbage.slice_assign([0..1, 0..3, 0..378, 0..378], keep);
    let out = model.forward(mixed).unwrap();
    let diff = (base - out).abs().max().into_scalar();
    assert_eq!(diff, 0.0);
}

#[test]
fn fp16_matches_reference() {
    let model = load(DType::F16);
    let out = model.forward(reference_pixels()).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let vs16 = relative_l2(out.clone(), expected("last_hidden_state_f16"));
    let vs32 = relative_l2(out, expected("last_hidden_state"));
    println!("SigLIP fp16 relative L2: {vs16:.3e} vs PyTorch fp16, {vs32:.3e} vs fp32");
    assert!(vs16 <= 2e-3, "relative L2 vs PyTorch fp16 {vs16}");
    assert!(vs32 <= 5e-3, "relative L2 vs fp32 {vs32}");
}

#[test]
fn the_pooling_head_is_not_loaded() {
    let mut src = SafetensorsSource::<B>::new(weights(), &Default::default());
    let options = LoadOptions::new(DType::F32);
    SiglipVisionEncoder::load(&mut src, SiglipVisionConfig::tiny(), &options).unwrap();
    match src.finish(|_| false) {
        Err(WeightError::UnexpectedKeys { count, sample, .. }) => {
            assert_eq!(count, 11, "{sample:?}");
            assert!(sample.iter().all(|k| k.starts_with("vision_model.head.")));
        }
        other => panic!("expected the head keys to be reported, got {other:?}"),
    }
}

#[test]
fn wrong_pixel_shapes_are_errors_naming_the_argument() {
    let model = load(DType::F32);
    let pixels = Tensor::<B, 4>::zeros([1, 3, 378, 378], &Default::default());
    let err = model.forward(pixels).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Input {
                argument: "pixel_values",
                ..
            }
        ),
        "{err}"
    );
}
