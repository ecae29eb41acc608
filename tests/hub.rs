//! Finding checkpoints in a Hugging Face cache layout and checking them without reading their
//! weights (what `framepack info` reports), on the small reference checkpoints of the fixtures.

use std::path::{Path, PathBuf};

use framepack::hub::{check, revision_of, Component, ModelLocations};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/framepack-models/tests/fixtures"
);

/// The tiny transformer's config.json, as diffusers writes one.
const TRANSFORMER_CONFIG: &str = r#"{"_class_name": "HunyuanVideoTransformer3DModelPacked",
    "attention_head_dim": 16, "num_attention_heads": 2, "num_layers": 2, "num_single_layers": 2,
    "num_refiner_layers": 1, "text_embed_dim": 32, "pooled_projection_dim": 24,
    "rope_axes_dim": [4, 6, 6], "image_proj_dim": 20}"#;

/// `<cache>/models--OWNER--NAME/{refs/main, snapshots/<commit>/<subfolder>}` holding `files`.
fn snapshot(cache: &Path, repo: &str, commit: &str, subfolder: Option<&str>) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let mut dir = repo_dir.join("snapshots").join(commit);
    if let Some(sub) = subfolder {
        dir = dir.join(sub);
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_fixture(name: &str, to: &Path) {
    std::fs::copy(format!("{FIXTURES}/{name}"), to).unwrap();
}

#[test]
fn finds_snapshots_and_checks_headers() {
    let cache = tempfile::tempdir().unwrap();
    let locations = ModelLocations {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let b = |c: Component, path: &Path| check(c, path);

    // Nothing yet: not found, naming the repository and the download command.
    let e = locations
        .find(Component::Transformer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lllyasviel/FramePackI2V_HY") && e.contains("framepack download"),
        "{e}"
    );

    // The transformer: found with its revision, and valid.
    let dir = snapshot(cache.path(), "lllyasviel/FramePackI2V_HY", "0123abcd", None);
    copy_fixture(
        "transformer_tiny.safetensors",
        &dir.join("diffusion_pytorch_model.safetensors"),
    );
    std::fs::write(dir.join("config.json"), TRANSFORMER_CONFIG).unwrap();
    let found = locations.find(Component::Transformer).unwrap();
    assert_eq!(found.revision, "lllyasviel/FramePackI2V_HY@0123abcd");
    assert_eq!(revision_of(&found.path), found.revision);
    let report = b(Component::Transformer, &found.path).unwrap();
    assert_eq!(report.tensors, 148);
    assert!(report.bytes > 0);
    // The F1 transformer lives in another repository.
    assert!(locations.find(Component::TransformerF1).is_err());

    // The VAE and SigLIP, in subfolders of their repositories.
    let vae = snapshot(
        cache.path(),
        "hunyuanvideo-community/HunyuanVideo",
        "feed",
        Some("vae"),
    );
    copy_fixture(
        "vae_tiny.safetensors",
        &vae.join("diffusion_pytorch_model.safetensors"),
    );
    std::fs::write(
        vae.join("config.json"),
        r#"{"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}"#,
    )
    .unwrap();
    let found = locations.find(Component::Vae).unwrap();
    assert_eq!(found.revision, "hunyuanvideo-community/HunyuanVideo@feed");
    assert_eq!(b(Component::Vae, &found.path).unwrap().tensors, 180);

    let siglip = snapshot(
        cache.path(),
        "lllyasviel/flux_redux_bfl",
        "beef",
        Some("image_encoder"),
    );
    copy_fixture(
        "vision_siglip_tiny.safetensors",
        &siglip.join("model.safetensors"),
    );
    std::fs::write(
        siglip.join("config.json"),
        r#"{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}"#,
    )
    .unwrap();
    let found = locations.find(Component::ImageEncoder).unwrap();
    assert!(b(Component::ImageEncoder, &found.path).is_ok());

    // An explicit repository folder wins over the cache.
    let local = tempfile::tempdir().unwrap();
    let explicit = ModelLocations {
        transformer: Some(local.path().to_path_buf()),
        ..locations.clone()
    };
    let found = explicit.find(Component::Transformer).unwrap();
    assert_eq!(found.path, local.path());
    assert!(found.revision.starts_with("path:"));

    // A wrong config: the check names the tensor and both shapes.
    let transformer = locations.find(Component::Transformer).unwrap().path;
    std::fs::write(transformer.join("config.json"), "{}").unwrap();
    let e = b(Component::Transformer, &transformer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x_embedder.proj.weight") && e.contains("expected"),
        "{e}"
    );
    std::fs::write(transformer.join("config.json"), TRANSFORMER_CONFIG).unwrap();

    // A truncated download: the file is named, the check fails.
    let file = transformer.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = b(Component::Transformer, &transformer)
        .unwrap_err()
        .to_string();
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");

    // A stray tensor from another model is reported.
    std::fs::write(&file, &bytes).unwrap();
    copy_fixture(
        "vae_tiny.safetensors",
        &transformer.join("extra.safetensors"),
    );
    let e = b(Component::Transformer, &transformer)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected"), "{e}");
}
