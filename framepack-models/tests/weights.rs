//! The checkpoint loader on small crafted files: every failure is a typed error that names
//! the file and key at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};
use framepack_models::weights::hub::{files_to_fetch, find_in_cache, locate, RepoFolder};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource, TensorSource, WeightError};
use framepack_models::CpuBackend as B;
use safetensors::{tensor::TensorView, Dtype};

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(&views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// A folder with a two-shard checkpoint and its index.
fn sharded(dir: &Path) -> PathBuf {
    write(
        &dir.join("model-00001-of-00002.safetensors"),
        &[(
            "a.weight",
            Dtype::BF16,
            vec![2, 2],
            bf16_bytes(&[1.0, 2.0, 3.0, 4.5]),
        )],
    );
    write(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("b.bias", Dtype::F32, vec![3], f32_bytes(&[0.5, -1.0, 2.0]))],
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn shards_are_read_through_the_index_and_converted() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = SafetensorsSource::<B>::open(sharded(dir.path()), &Default::default()).unwrap();
    let a: Tensor<B, 2> = src.tensor("a.weight", [2, 2], DType::F32).unwrap();
    assert_eq!(
        a.into_data().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.5]
    );
    let b: Tensor<B, 1> = src.tensor("b.bias", [3], DType::BF16).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(
        b.cast(DType::F32).into_data().to_vec::<f32>().unwrap(),
        vec![0.5, -1.0, 2.0]
    );
    src.finish(|_| false).unwrap();
}

#[test]
fn missing_key_names_key_and_location() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = SafetensorsSource::<B>::open(sharded(dir.path()), &Default::default()).unwrap();
    let err = src.tensor::<1>("c.weight", [3], DType::F32).unwrap_err();
    assert!(
        matches!(err, WeightError::MissingKey { ref key, .. } if key == "c.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("c.weight"));
}

#[test]
fn unexpected_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = SafetensorsSource::<B>::open(sharded(dir.path()), &Default::default()).unwrap();
    let _: Tensor<B, 2> = src.tensor("a.weight", [2, 2], DType::F32).unwrap();
    let err = src.finish(|_| false).unwrap_err();
    match &err {
        WeightError::UnexpectedKeys { count, sample, .. } => {
            assert_eq!(*count, 1);
            assert_eq!(sample, &vec!["b.bias".to_string()]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("b.bias"));
}

#[test]
fn ignored_keys_are_not_unexpected() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = SafetensorsSource::<B>::open(sharded(dir.path()), &Default::default()).unwrap();
    let _: Tensor<B, 2> = src.tensor("a.weight", [2, 2], DType::F32).unwrap();
    src.finish(|k| k.ends_with(".bias")).unwrap();
}

#[test]
fn shape_mismatch_names_key_shapes_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = SafetensorsSource::<B>::open(sharded(dir.path()), &Default::default()).unwrap();
    let err = src.tensor::<2>("a.weight", [4, 1], DType::F32).unwrap_err();
    match &err {
        WeightError::ShapeMismatch {
            key,
            expected,
            found,
            path,
        } => {
            assert_eq!(key, "a.weight");
            assert_eq!(expected, &vec![4, 1]);
            assert_eq!(found, &vec![2, 2]);
            assert!(path.ends_with("model-00001-of-00002.safetensors"));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn truncated_file_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write(
        &path,
        &[("a", Dtype::F32, vec![4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))],
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = CheckpointFiles::open(&path).err().unwrap();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(err.to_string().contains("w.safetensors"), "{err}");
}

#[test]
fn garbage_header_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let err = CheckpointFiles::open(&path).err().unwrap();
    assert!(matches!(err, WeightError::Corrupt { .. }), "{err}");
}

#[test]
fn integer_tensor_is_an_unsupported_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write(
        &path,
        &[("ids", Dtype::I32, vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0])],
    );
    let mut src = SafetensorsSource::<B>::open(&path, &Default::default()).unwrap();
    let err = src.tensor::<1>("ids", [2], DType::F32).unwrap_err();
    assert!(
        matches!(err, WeightError::UnsupportedDtype { ref dtype, .. } if dtype == "I32"),
        "{err}"
    );
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = CheckpointFiles::open(dir.path()).err().unwrap();
    assert!(matches!(err, WeightError::BadIndex { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn folder_without_weights_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = CheckpointFiles::open(dir.path()).err().unwrap();
    assert!(matches!(err, WeightError::NoWeights { .. }), "{err}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = CheckpointFiles::open("/nonexistent/weights.safetensors")
        .err()
        .unwrap();
    assert!(matches!(err, WeightError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/weights.safetensors"));
}

#[test]
fn hugging_face_cache_layout_is_found_by_ref_and_subfolder() {
    let root = tempfile::tempdir().unwrap();
    let repo = root
        .path()
        .join("models--hunyuanvideo-community--HunyuanVideo");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc123/vae")).unwrap();

    let folder = RepoFolder::new("hunyuanvideo-community/HunyuanVideo").subfolder("vae");
    assert_eq!(
        find_in_cache(root.path(), &folder),
        Some(repo.join("snapshots/abc123/vae"))
    );
    // a commit given directly, and a subfolder that is not there
    let by_commit = RepoFolder::new("hunyuanvideo-community/HunyuanVideo").revision("abc123");
    assert_eq!(
        find_in_cache(root.path(), &by_commit),
        Some(repo.join("snapshots/abc123"))
    );
    let absent = RepoFolder::new("hunyuanvideo-community/HunyuanVideo").subfolder("text_encoder");
    assert_eq!(find_in_cache(root.path(), &absent), None);
}

#[test]
fn locate_reports_what_is_missing_and_how_to_get_it() {
    let folder = RepoFolder::new("lllyasviel/NoSuchRepoForTests");
    let err = locate(&folder, None).unwrap_err().to_string();
    assert!(err.contains("lllyasviel/NoSuchRepoForTests"), "{err}");
    assert!(err.contains("framepack download"), "{err}");
    let err = locate(&folder, Some(Path::new("/nonexistent/dir")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn download_selects_the_subfolder_or_the_root_weights() {
    let listing = [
        ".gitattributes",
        "README.md",
        "config.json",
        "diffusion_pytorch_model-00001-of-00003.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ];
    let root = RepoFolder::new("lllyasviel/FramePackI2V_HY");
    assert_eq!(
        files_to_fetch(listing, &root),
        vec![
            "config.json",
            "diffusion_pytorch_model-00001-of-00003.safetensors",
            "diffusion_pytorch_model.safetensors.index.json"
        ]
    );
    let vae = RepoFolder::new("hunyuanvideo-community/HunyuanVideo").subfolder("vae");
    assert_eq!(
        files_to_fetch(listing, &vae),
        vec!["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    );
}

/// An FP8 checkpoint (`float8_e4m3fn` weights, as kijai's FramePack files store them) loads as
/// float weights, and its codes pass unchanged (scale 1) into FP8 layers; a bf16 weight asked
/// for as FP8 is quantised with one scale per row.
#[test]
fn fp8_checkpoints_load_dense_or_as_codes() {
    use framepack_models::fp8::e4m3_to_f32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp8.safetensors");
    // 1.0, -2.0, 448, 2^-9 (the smallest subnormal), 0.5, 0.
    let codes = vec![0x38u8, 0xc0, 0x7e, 0x01, 0x30, 0x00];
    write(
        &path,
        &[
            ("w.weight", Dtype::F8_E4M3, vec![2, 3], codes.clone()),
            (
                "v.weight",
                Dtype::BF16,
                vec![2, 2],
                bf16_bytes(&[1.0, -0.5, 0.0, 3.0]),
            ),
        ],
    );
    let mut src = SafetensorsSource::<B>::open(&path, &Default::default()).unwrap();
    let dense: Tensor<B, 2> = src.tensor("w.weight", [2, 3], DType::F32).unwrap();
    assert_eq!(
        dense.into_data().to_vec::<f32>().unwrap(),
        vec![1.0, -2.0, 448.0, 2f32.powi(-9), 0.5, 0.0]
    );
    let fp8 = src.fp8_host("w.weight", [2, 3]).unwrap();
    assert_eq!(fp8.codes, codes);
    assert_eq!(fp8.scales, vec![1.0, 1.0]);

    let quantised = src.fp8_host("v.weight", [2, 2]).unwrap();
    assert_eq!(quantised.scales, vec![1.0 / 448.0, 3.0 / 448.0]);
    let values: Vec<f32> = quantised
        .codes
        .iter()
        .zip([0, 0, 1, 1])
        .map(|(c, row)| e4m3_to_f32(*c) * quantised.scales[row])
        .collect();
    assert_eq!(values, vec![1.0, -0.5, 0.0, 3.0]);
    // A wrong shape names the key.
    let err = src.fp8_host("w.weight", [3, 2]).unwrap_err().to_string();
    assert!(err.contains("w.weight"), "{err}");
    src.finish(|_| false).unwrap();
}
