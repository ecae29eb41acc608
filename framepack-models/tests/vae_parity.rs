//! The VAE against diffusers' `AutoencoderKLHunyuanVideo` on a tiny random-weight model.
//!
//! Fixtures come from `tools/reference/vae_fixture.py`: encode (batch 2), the temporally and
//! spatially tiled encodes, the plain decode, the temporally tiled decode with the published
//! tile sizes, and the spatially (+ temporally) tiled decodes with reduced tile sizes.

mod vae_common;

use burn::tensor::DType;
use framepack_models::vae::VaeTiling;
use vae_common::{
    half_precision_bound, io, load, reduced_spatial, reduced_spatial_temporal, relative_l2, t5,
    torch_half_precision_error,
};

const FP32_TOLERANCE: f64 = 1e-5;

#[test]
fn encode_matches_reference_mean_and_logvar() {
    let io = io();
    let vae = load(DType::F32);
    let posterior = vae.encode_posterior(t5(&io, "enc_x")).unwrap();
    assert_eq!(posterior.mean.dims(), [2, 16, 3, 3, 4]);
    let mean_err = relative_l2(posterior.mean.clone(), t5(&io, "enc_mean"));
    let logvar_err = relative_l2(posterior.logvar, t5(&io, "enc_logvar"));
    println!("encode fp32: mean relative L2 {mean_err:.3e}, logvar {logvar_err:.3e}");
    assert!(mean_err <= FP32_TOLERANCE, "mean {mean_err}");
    assert!(logvar_err <= FP32_TOLERANCE, "logvar {logvar_err}");
    // `encode` is the mean.
    let mean = vae.encode(t5(&io, "enc_x")).unwrap();
    assert_eq!(relative_l2(mean, posterior.mean), 0.0);
}

#[test]
fn temporally_tiled_encode_matches_reference() {
    let io = io();
    let vae = load(DType::F32);
    let posterior = vae.encode_posterior(t5(&io, "enc_t_x")).unwrap();
    assert_eq!(posterior.mean.dims(), [1, 16, 6, 2, 2]);
    let mean_err = relative_l2(posterior.mean, t5(&io, "enc_t_mean"));
    let logvar_err = relative_l2(posterior.logvar, t5(&io, "enc_t_logvar"));
    println!("temporally tiled encode (21 frames): mean {mean_err:.3e}, logvar {logvar_err:.3e}");
    assert!(mean_err <= FP32_TOLERANCE && logvar_err <= FP32_TOLERANCE);
}

#[test]
fn spatially_tiled_encode_matches_reference() {
    let io = io();
    let mut vae = load(DType::F32);
    vae.set_tiling(reduced_spatial()).unwrap();
    let posterior = vae.encode_posterior(t5(&io, "enc_sp_x")).unwrap();
    assert_eq!(posterior.mean.dims(), [1, 16, 1, 5, 7]);
    let mean_err = relative_l2(posterior.mean.clone(), t5(&io, "enc_sp_mean"));
    let logvar_err = relative_l2(posterior.logvar, t5(&io, "enc_sp_logvar"));
    println!("spatially tiled encode: mean {mean_err:.3e}, logvar {logvar_err:.3e}");
    assert!(mean_err <= FP32_TOLERANCE && logvar_err <= FP32_TOLERANCE);

    // Without tiling the same image gives the reference's untiled latents, and tiling matters.
    vae.set_tiling(VaeTiling::reference()).unwrap();
    let untiled = vae.encode(t5(&io, "enc_sp_x")).unwrap();
    let err = relative_l2(untiled.clone(), t5(&io, "enc_sp_untiled_mean"));
    assert!(err <= FP32_TOLERANCE, "untiled {err}");
    assert!(relative_l2(untiled, posterior.mean) > 1e-2);
}

#[test]
fn decode_matches_reference() {
    let io = io();
    let vae = load(DType::F32);
    let out = vae.decode(t5(&io, "dec_z")).unwrap();
    assert_eq!(out.dims(), [1, 3, 9, 24, 32]);
    let err = relative_l2(out, t5(&io, "dec_out"));
    println!("decode fp32 (3 latents, one pass): relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
}

#[test]
fn temporally_tiled_decode_matches_reference() {
    let io = io();
    let mut vae = load(DType::F32);
    let z = t5(&io, "dec_long_z");
    // 10 latents: chunks 0-4, 3-7, 6-9 and 9 (one frame, dropped) -> 13 + 12 + 12 frames.
    let tiled = vae.decode(z.clone()).unwrap();
    assert_eq!(tiled.dims(), [1, 3, 37, 16, 16]);
    let err = relative_l2(tiled.clone(), t5(&io, "dec_long_out"));
    println!("temporally tiled decode (10 latents): relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");

    vae.set_tiling(VaeTiling::none()).unwrap();
    let direct = vae.decode(z).unwrap();
    let err = relative_l2(direct.clone(), t5(&io, "dec_long_direct"));
    println!("one-pass decode (10 latents): relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
    // The chunking is visible: chunked and one-pass decodes are different functions.
    assert!(relative_l2(direct, tiled) > 1e-2);
}

#[test]
fn spatially_tiled_decode_matches_reference() {
    let io = io();
    let mut vae = load(DType::F32);
    vae.set_tiling(reduced_spatial()).unwrap();
    let out = vae.decode(t5(&io, "dec_sp_z")).unwrap();
    assert_eq!(out.dims(), [1, 3, 5, 40, 56]);
    let err = relative_l2(out, t5(&io, "dec_sp_out"));
    println!("spatially tiled decode (5x7 latents, 2x3 tiles): relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
}

#[test]
fn spatially_and_temporally_tiled_decode_matches_reference() {
    let io = io();
    let mut vae = load(DType::F32);
    vae.set_tiling(reduced_spatial_temporal()).unwrap();
    let out = vae.decode(t5(&io, "dec_tsp_z")).unwrap();
    assert_eq!(out.dims(), [1, 3, 13, 40, 32]);
    let err = relative_l2(out, t5(&io, "dec_tsp_out"));
    println!("spatially + temporally tiled decode: relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
}

#[test]
fn half_precision_stays_close_to_the_fp32_reference() {
    let io = io();
    for dtype in [DType::BF16, DType::F16] {
        let [torch_enc, torch_dec, _] = torch_half_precision_error(&io, dtype);
        let vae = load(dtype);
        let mean = vae.encode(t5(&io, "enc_x")).unwrap();
        assert_eq!(mean.dtype(), DType::F32, "latents come out in fp32");
        let enc_err = relative_l2(mean, t5(&io, "enc_mean"));
        let out = vae.decode(t5(&io, "dec_long_z")).unwrap();
        assert_eq!(out.dtype(), dtype, "pixels come out in the compute dtype");
        let dec_err = relative_l2(out, t5(&io, "dec_long_out"));
        println!(
            "{dtype:?} vs fp32 reference: encode mean {enc_err:.3e} (PyTorch {torch_enc:.3e}), \
             tiled decode {dec_err:.3e} (PyTorch {torch_dec:.3e})"
        );
        assert!(
            enc_err <= half_precision_bound(torch_enc),
            "{dtype:?} encode {enc_err}"
        );
        assert!(
            dec_err <= half_precision_bound(torch_dec),
            "{dtype:?} decode {dec_err}"
        );
    }
}

#[test]
fn scaling_helpers_and_seeded_sampling() {
    let io = io();
    let vae = load(DType::F32);
    let x = t5(&io, "enc_x");
    let posterior = vae.encode_posterior(x.clone()).unwrap();

    let scaled = vae.scale_latents(posterior.mean.clone());
    let expected = posterior.mean.clone().mul_scalar(0.476986);
    assert!(relative_l2(scaled.clone(), expected) < 1e-7);
    assert!(relative_l2(vae.unscale_latents(scaled), posterior.mean.clone()) < 1e-6);

    let a = vae.encode_sample(x.clone(), 42).unwrap();
    let b = vae.encode_sample(x.clone(), 42).unwrap();
    let c = vae.encode_sample(x, 43).unwrap();
    assert_eq!(relative_l2(a.clone(), b), 0.0, "same seed, same draw");
    assert!(
        relative_l2(a.clone(), c) > 1e-3,
        "another seed, another draw"
    );
    // (sample − mean) / std is standard normal.
    let eps: Vec<f32> = ((a - posterior.mean.clone()) / posterior.std())
        .into_data()
        .to_vec()
        .unwrap();
    let n = eps.len() as f64;
    let mean = eps.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = eps.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(
        mean.abs() < 0.15 && (var - 1.0).abs() < 0.2,
        "mean {mean}, var {var}"
    );

    let zero = posterior.mean.zeros_like();
    let same = posterior.sample_with_noise(zero).unwrap();
    assert_eq!(relative_l2(same, posterior.mean.clone()), 0.0);
    let err = posterior
        .sample_with_noise(posterior.mean.clone().narrow(2, 0, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("noise"), "{err}");
}

#[test]
fn wrong_inputs_are_errors_naming_the_argument() {
    let io = io();
    let mut vae = load(DType::F32);
    let z = t5(&io, "dec_z");
    let err = vae.encode(z.clone()).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("16 channels"), "{err}");
    let err = vae.decode(t5(&io, "enc_x")).unwrap_err().to_string();
    assert!(err.contains("`z`") && err.contains("3 channels"), "{err}");
    let err = vae.decode_cached(z, 0).unwrap_err().to_string();
    assert!(err.contains("latents_per_call"), "{err}");

    let bad = VaeTiling {
        tile_sample_stride_height: 300,
        ..VaeTiling::reference()
    };
    let err = vae.set_tiling(bad).unwrap_err().to_string();
    assert!(
        err.contains("tiling") && err.contains("tile_sample_stride_height"),
        "{err}"
    );
    let bad = VaeTiling {
        tile_sample_stride_num_frames: 2,
        ..VaeTiling::reference()
    };
    assert!(vae.set_tiling(bad).is_err());
    // An image smaller than one latent cannot be spatially tiled.
    vae.set_tiling(VaeTiling::low_vram()).unwrap();
    let thin = t5(&io, "enc_sp_x").narrow(3, 0, 4);
    let long = burn::tensor::Tensor::cat(vec![thin.clone(); 8], 4);
    assert_eq!(long.dims(), [1, 3, 1, 4, 448]);
    let err = vae.encode(long).unwrap_err().to_string();
    assert!(err.contains("`x`"), "{err}");
    // ... while the untiled encode takes it (as the reference does).
    vae.set_tiling(VaeTiling::reference()).unwrap();
    assert_eq!(vae.encode(thin).unwrap().dims(), [1, 16, 1, 1, 7]);
}

/// Releasing the pool's unused buffers between tiles and layers (the low-VRAM tiling) changes
/// no value; the estimate of an untiled decode's memory follows the temporal chunking: twelve
/// activations of the widest full-resolution stage (16 channels here, fp32) over the frames
/// of one chunk (a whole 3-latent decode: 9 frames; 9 latents in 5-latent chunks: 17).
#[test]
fn released_buffers_change_nothing_and_the_decode_estimate() {
    let io = io();
    let mut vae = load(DType::F32);
    vae.set_tiling(reduced_spatial()).unwrap();
    let z = t5(&io, "dec_sp_z");
    let kept = vae.decode(z.clone()).unwrap().into_data();
    vae.set_tiling(VaeTiling {
        release_buffers: true,
        ..reduced_spatial()
    })
    .unwrap();
    let released = vae.decode(z).unwrap().into_data();
    assert_eq!(kept, released);

    let pixels = 40 * 56;
    assert_eq!(
        vae.untiled_decode_bytes([1, 16, 3, 5, 7]),
        12 * 9 * pixels * 16 * 4
    );
    assert_eq!(
        vae.untiled_decode_bytes([1, 16, 9, 5, 7]),
        12 * 17 * pixels * 16 * 4
    );
}

/// `HunyuanVideoVae::from_folder` reads the published layout (`config.json` beside the
/// safetensors) and gives the model that `load` builds from the same tensors, bit for bit.
#[test]
fn from_folder_reads_the_published_layout() {
    use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}"#,
    )
    .unwrap();
    assert_eq!(
        VaeConfig::from_file(dir.path().join("config.json")).unwrap(),
        VaeConfig::tiny()
    );
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::copy(
        format!("{}/vae_tiny.safetensors", vae_common::FIXTURES),
        &weights,
    )
    .unwrap();
    let device = Default::default();
    let options = framepack_models::LoadOptions::new(DType::F32);
    let folder =
        HunyuanVideoVae::<framepack_models::CpuBackend>::from_folder(dir.path(), &device, &options)
            .unwrap();
    let io = io();
    let z = t5(&io, "dec_z");
    let a = folder.decode(z.clone()).unwrap();
    let b = load(DType::F32).decode(z).unwrap();
    assert_eq!(relative_l2(a, b), 0.0);
}
