//! Every parameter of the full-size transformer, by key and shape, against the published
//! checkpoint's 1,274 tensors (manifest generated from the reference class on the meta
//! device by `tools/reference/transformer_fixture.py`).

use std::collections::BTreeMap;

use burn::tensor::DType;
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::weights::ManifestRecorder;
use framepack_models::CpuBackend as B;

#[test]
fn full_size_transformer_expects_exactly_the_published_keys_and_shapes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/transformer_manifest.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let reference: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.len(), 1274);

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let options = LoadOptions::new(DType::BF16);
    let (model, _, _) =
        FramePackTransformer::load(&mut recorder, TransformerConfig::framepack(), &options)
            .unwrap();
    drop(model);
    let ours: BTreeMap<String, Vec<usize>> = recorder
        .into_entries()
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect();

    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    let extra: Vec<_> = ours
        .keys()
        .filter(|k| !reference.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of the checkpoint we never load: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys we ask for that the checkpoint lacks: {extra:?}"
    );
    for (key, shape) in &reference {
        assert_eq!(&ours[key], shape, "shape of {key}");
    }
    let params: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 12_874_314_816);
}
