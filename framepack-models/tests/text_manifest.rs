//! Every parameter the full-size text encoders ask for, by key and shape, against the
//! checkpoints' tensors (manifests generated from transformers' classes on the meta device by
//! `tools/reference/encoders_fixture.py`, with the published key names).

use std::collections::BTreeMap;

use burn::tensor::DType;
use framepack_models::text::{ClipTextConfig, ClipTextEncoder, LlamaConfig, LlamaTextEncoder};
use framepack_models::weights::ManifestRecorder;
use framepack_models::CpuBackend as B;
use framepack_models::LoadOptions;

type Manifest = BTreeMap<String, Vec<usize>>;

fn reference(name: &str) -> Manifest {
    let path = format!(
        "{}/tests/fixtures/{name}_manifest.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn recorded(recorder: ManifestRecorder<B>) -> Manifest {
    recorder
        .into_entries()
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect()
}

fn params(m: &Manifest) -> usize {
    m.values().map(|s| s.iter().product::<usize>()).sum()
}

#[test]
fn full_size_llama_reads_only_the_30_layers_it_needs() {
    let reference = reference("text_llama");
    assert_eq!(reference.len(), 290);
    assert_eq!(params(&reference), 7_505_186_816);

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let config = LlamaConfig::llava_llama3_8b();
    let model =
        LlamaTextEncoder::load(&mut recorder, config.clone(), &LoadOptions::new(DType::F16))
            .unwrap();
    assert_eq!(model.num_layers(), 30);
    drop(model);
    let ours = recorded(recorder);

    // The embedding and 30 layers of 9 tensors; shapes as stored.
    assert_eq!(ours.len(), 1 + 30 * 9);
    for (key, shape) in &ours {
        assert_eq!(reference.get(key), Some(shape), "{key}");
        assert!(
            !config.is_unused_key(key),
            "{key} is loaded but declared unused"
        );
    }
    // Everything else is layers 30 and 31 and the final norm, which loading ignores.
    let skipped: Vec<&String> = reference
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    assert_eq!(skipped.len(), 2 * 9 + 1);
    for key in skipped {
        assert!(
            key.starts_with("layers.30.") || key.starts_with("layers.31.") || key == "norm.weight",
            "{key}"
        );
        assert!(config.is_unused_key(key), "{key}");
    }
    assert_eq!(params(&ours), 7_068_958_720);
}

#[test]
fn full_size_clip_expects_exactly_the_published_keys_and_shapes() {
    let reference = reference("text_clip");
    assert_eq!(reference.len(), 196);

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let model = ClipTextEncoder::load(
        &mut recorder,
        ClipTextConfig::clip_vit_large_patch14(),
        &LoadOptions::new(DType::F16),
    )
    .unwrap();
    drop(model);
    let ours = recorded(recorder);
    assert_eq!(ours, reference);
    assert_eq!(params(&ours), 123_060_480);
}
