//! Every parameter of the full-size VAE by key and shape (the published checkpoint's 248
//! tensors, manifest generated from diffusers on the meta device by
//! `tools/reference/vae_fixture.py`), and the loader's errors.

mod vae_common;

use std::collections::BTreeMap;

use burn::tensor::DType;
use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
use framepack_models::weights::{ManifestRecorder, SafetensorsSource, WeightError};
use framepack_models::LoadOptions;
use framepack_models::{CpuBackend as B, ModelError};
use vae_common::FIXTURES;

#[test]
fn full_size_vae_expects_exactly_the_published_keys_and_shapes() {
    let text = std::fs::read_to_string(format!("{FIXTURES}/vae_manifest.json")).unwrap();
    let reference: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.len(), 248);

    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let vae = HunyuanVideoVae::load(
        &mut recorder,
        VaeConfig::hunyuan_video(),
        &LoadOptions::new(DType::F16),
    )
    .unwrap();
    drop(vae);
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
    assert_eq!(params, 246_478_803);
}

#[test]
fn a_shape_mismatch_names_the_key() {
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/vae_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let config = VaeConfig {
        latent_channels: 8,
        ..VaeConfig::tiny()
    };
    let err = HunyuanVideoVae::load(&mut src, config, &LoadOptions::new(DType::F32))
        .expect_err("a config with 8 latent channels cannot load 16-channel weights");
    match &err {
        ModelError::Weights(WeightError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        }) => {
            assert_eq!(key, "encoder.conv_out.conv.weight");
            assert_eq!(expected, &vec![16, 16, 3, 3, 3]);
            assert_eq!(found, &vec![32, 16, 3, 3, 3]);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(
        err.to_string().contains("encoder.conv_out.conv.weight"),
        "{err}"
    );
}

#[test]
fn unused_checkpoint_tensors_are_reported() {
    // Without the mid-block attention, its 20 tensors (2 mid blocks × 10) stay unused.
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/vae_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let config = VaeConfig {
        mid_block_add_attention: false,
        ..VaeConfig::tiny()
    };
    HunyuanVideoVae::load(&mut src, config, &LoadOptions::new(DType::F32)).unwrap();
    match src.finish(|_| false) {
        Err(WeightError::UnexpectedKeys { count, sample, .. }) => {
            assert_eq!(count, 20);
            assert!(
                sample.iter().all(|k| k.contains("mid_block.attentions.0")),
                "{sample:?}"
            );
        }
        other => panic!("expected unexpected keys, got {other:?}"),
    }
}

#[test]
fn bad_configs_are_rejected_with_a_reason() {
    let mut recorder = ManifestRecorder::<B>::new(&Default::default());
    let cases = [
        (
            VaeConfig {
                temporal_compression_ratio: 8,
                ..VaeConfig::tiny()
            },
            "temporal_compression_ratio",
        ),
        (
            VaeConfig {
                norm_num_groups: 3,
                ..VaeConfig::tiny()
            },
            "norm_num_groups",
        ),
        (
            VaeConfig {
                block_out_channels: vec![8, 16],
                down_block_types: vec!["HunyuanVideoDownBlock3D".into(); 2],
                up_block_types: vec!["HunyuanVideoUpBlock3D".into(); 2],
                ..VaeConfig::tiny()
            },
            "compression",
        ),
        (
            VaeConfig {
                act_fn: "gelu".into(),
                ..VaeConfig::tiny()
            },
            "act_fn",
        ),
    ];
    for (config, word) in cases {
        let err = HunyuanVideoVae::load(&mut recorder, config, &LoadOptions::new(DType::F32))
            .expect_err("invalid config accepted")
            .to_string();
        assert!(err.contains("`config`") && err.contains(word), "{err}");
    }
    let err = HunyuanVideoVae::load(
        &mut recorder,
        VaeConfig::tiny(),
        &LoadOptions::new(DType::I32),
    )
    .expect_err("integer dtype accepted")
    .to_string();
    assert!(err.contains("`dtype`"), "{err}");
}

#[test]
fn published_config_json_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // The published file (hunyuanvideo-community/HunyuanVideo, vae/config.json) lists the
    // defaults plus diffusers' bookkeeping fields, which are ignored.
    std::fs::write(
        &path,
        r#"{"_class_name": "AutoencoderKLHunyuanVideo", "_diffusers_version": "0.32.0.dev0",
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D",
                                 "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D"],
            "in_channels": 3, "latent_channels": 16, "layers_per_block": 2,
            "mid_block_add_attention": true, "norm_num_groups": 32, "out_channels": 3,
            "scaling_factor": 0.476986, "spatial_compression_ratio": 8,
            "temporal_compression_ratio": 4,
            "up_block_types": ["HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D",
                               "HunyuanVideoUpBlock3D", "HunyuanVideoUpBlock3D"]}"#,
    )
    .unwrap();
    assert_eq!(
        VaeConfig::from_file(&path).unwrap(),
        VaeConfig::hunyuan_video()
    );
    std::fs::write(&path, r#"{"norm_num_groups": 5}"#).unwrap();
    let err = VaeConfig::from_file(&path).unwrap_err();
    assert!(matches!(err, WeightError::BadConfig { .. }), "{err}");
}
