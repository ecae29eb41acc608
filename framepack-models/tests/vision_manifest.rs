//! Every parameter the full-size SigLIP tower asks for, by key and shape, against the
//! checkpoint's 448 tensors (the 11 of the unused pooling head excepted); manifest generated
//! from transformers' `SiglipVisionModel` on the meta device by
//! `tools/reference/encoders_fixture.py`.

use std::collections::BTreeMap;

use burn::tensor::DType;
use framepack_models::vision::{SiglipVisionConfig, SiglipVisionEncoder};
use framepack_models::weights::ManifestRecorder;
use framepack_models::CpuBackend as B;
use framepack_models::LoadOptions;

#[test]
fn full_size_siglip_expects_the_published_keys_except_the_head() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vision_siglip_manifest.json"
    );
    let reference: BTreeMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(reference.len(), 448);

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let model = SiglipVisionEncoder::load(
        &mut recorder,
        SiglipVisionConfig::so400m_patch14_384(),
        &LoadOptions::new(DType::F16),
    )
    .unwrap();
    drop(model);
    let ours: BTreeMap<String, Vec<usize>> = recorder
        .into_entries()
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect();

    let without_head: BTreeMap<String, Vec<usize>> = reference
        .iter()
        .filter(|(k, _)| !SiglipVisionConfig::is_unused_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(reference.len() - without_head.len(), 11);
    assert!(reference
        .keys()
        .filter(|k| !without_head.contains_key(*k))
        .all(|k| k.starts_with("vision_model.head.")));
    assert_eq!(ours, without_head);
    let params: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 412_987_248);
}
