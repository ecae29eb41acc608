//! Shared helpers of the VAE tests: the tiny fixture model, its inputs and outputs.
#![allow(dead_code)]

use burn::tensor::{DType, Tensor};
use framepack_models::vae::{HunyuanVideoVae, VaeConfig, VaeTiling};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource};
use framepack_models::CpuBackend as B;
use framepack_models::LoadOptions;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The tiny VAE of `tools/reference/vae_fixture.py`, every stored tensor used.
pub fn load(dtype: DType) -> HunyuanVideoVae<B> {
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/vae_tiny.safetensors"),
        &Default::default(),
    )
    .unwrap();
    let vae = HunyuanVideoVae::load(&mut src, VaeConfig::tiny(), &LoadOptions::new(dtype)).unwrap();
    src.finish(|_| false).unwrap();
    vae
}

pub fn io() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/vae_tiny_io.safetensors")).unwrap()
}

pub fn t5(io: &CheckpointFiles, key: &str) -> Tensor<B, 5> {
    io.read_stored(key, DType::F32, &Default::default())
        .unwrap()
}

/// `‖a − b‖ / ‖b‖`, in fp32 whatever the dtypes.
pub fn relative_l2(a: Tensor<B, 5>, b: Tensor<B, 5>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.cast(DType::F32);
    let b = b.cast(DType::F32);
    let diff = (a - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

/// The reduced spatial tiles of the fixture: 32 px every 24 px (4 latents every 3).
pub fn reduced_spatial() -> VaeTiling {
    VaeTiling {
        use_tiling: true,
        tile_sample_min_height: 32,
        tile_sample_min_width: 32,
        tile_sample_stride_height: 24,
        tile_sample_stride_width: 24,
        ..VaeTiling::reference()
    }
}

/// Reduced spatial and temporal tiles: 8 frames (2 latents + 1) every 4 frames (1 latent).
pub fn reduced_spatial_temporal() -> VaeTiling {
    VaeTiling {
        tile_sample_min_num_frames: 8,
        tile_sample_stride_num_frames: 4,
        ..reduced_spatial()
    }
}

/// PyTorch's own relative L2 error of a half-precision run against its fp32 outputs, on the
/// fixture model: `(encode mean, temporally tiled decode, stream of 1 latent per call)`.
pub fn torch_half_precision_error(io: &CheckpointFiles, dtype: DType) -> [f64; 3] {
    let t: Tensor<B, 2> = io
        .read_stored("half_precision_error", DType::F32, &Default::default())
        .unwrap();
    let row = match dtype {
        DType::BF16 => 0,
        DType::F16 => 1,
        other => panic!("no reference error for {other:?}"),
    };
    let v: Vec<f32> = t.narrow(0, row, 1).into_data().to_vec().unwrap();
    [v[0] as f64, v[1] as f64, v[2] as f64]
}

/// The half-precision bound: 1e-2, or 1.5× PyTorch's own error where the random tiny model
/// amplifies rounding beyond that (bf16: GroupNorm over a handful of elements per group).
pub fn half_precision_bound(torch_error: f64) -> f64 {
    (1.5 * torch_error).max(1e-2)
}
