//! The streamed ("cached") decode.
//!
//! What it must equal, exactly (fp32, relative L2 ≤ 1e-5):
//! - FramePack-eichi's VAE cache, rebuilt in `tools/reference/vae_fixture.py` on diffusers'
//!   own modules (conv tails instead of front padding, every frame time-upsampled once the
//!   stream has started, keys/values of earlier frames kept), for one latent per call and
//!   for uneven chunks; the script checks that its stream is exactly causal when GroupNorm
//!   statistics are frozen;
//! - the reference decode without temporal tiling, when the whole clip is one call;
//! - the reference's temporally tiled ("chunked") decode on its first chunk, when the first
//!   call is that chunk;
//! - the reference's spatially tiled decode, when spatial tiling is on.
//!
//! Beyond the first chunk the stream and the chunked decode are different functions (the
//! chunked decode restarts every chunk with replicate padding and normalises per chunk); the
//! tests print how far apart they are on this random-weight model.

mod vae_common;

use burn::tensor::DType;
use framepack_models::vae::VaeTiling;
use vae_common::{
    half_precision_bound, io, load, reduced_spatial, relative_l2, t5, torch_half_precision_error,
};

const FP32_TOLERANCE: f64 = 1e-5;

#[test]
fn frame_by_frame_matches_the_reference_stream() {
    let io = io();
    let vae = load(DType::F32);
    let z = t5(&io, "dec_long_z");
    let mut decoder = vae.cached_decoder();
    let mut frames = Vec::new();
    for i in 0..10 {
        let out = decoder.decode_next(z.clone().narrow(2, i, 1)).unwrap();
        // One pixel frame for the first latent, four for every later one.
        assert_eq!(out.dims()[2], if i == 0 { 1 } else { 4 });
        frames.push(out);
        assert_eq!(decoder.latent_frames(), i + 1);
        assert_eq!(decoder.pixel_frames(), 4 * i + 1);
    }
    let stream = burn::tensor::Tensor::cat(frames, 2);
    let err = relative_l2(stream.clone(), t5(&io, "stream_1_out"));
    println!("stream, 1 latent per call, vs reference stream: relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");

    let chunked = t5(&io, "dec_long_out");
    println!(
        "stream, 1 latent per call, vs the reference chunked decode: relative L2 {:.3e} \
         (random weights; GroupNorm statistics differ)",
        relative_l2(stream, chunked)
    );
}

#[test]
fn uneven_chunks_match_the_reference_stream() {
    let io = io();
    let vae = load(DType::F32);
    let z = t5(&io, "dec_long_z");
    let mut decoder = vae.cached_decoder();
    let mut parts = Vec::new();
    let mut start = 0;
    for n in [2, 3, 1, 4] {
        parts.push(decoder.decode_next(z.clone().narrow(2, start, n)).unwrap());
        start += n;
    }
    let stream = burn::tensor::Tensor::cat(parts, 2);
    assert_eq!(stream.dims(), [1, 3, 37, 16, 16]);
    let err = relative_l2(stream, t5(&io, "stream_mixed_out"));
    println!("stream, chunks 2/3/1/4, vs reference stream: relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
}

#[test]
fn one_call_is_the_one_pass_reference_decode() {
    let io = io();
    let vae = load(DType::F32);
    let out = vae.decode_cached(t5(&io, "dec_long_z"), 10).unwrap();
    let err = relative_l2(out, t5(&io, "dec_long_direct"));
    println!("stream, one call, vs reference one-pass decode: relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
}

#[test]
fn a_first_call_of_five_latents_is_the_chunked_decodes_first_chunk() {
    let io = io();
    let vae = load(DType::F32);
    let z = t5(&io, "dec_long_z");
    let chunked = t5(&io, "dec_long_out");
    // 5 latents per call: calls 0-4 and 5-9, never a frame decoded twice.
    let stream = vae.decode_cached(z, 5).unwrap();
    assert_eq!(stream.dims(), chunked.dims());
    // The chunked decode keeps frames 0-12 of its first chunk z[0:5] unblended.
    let head = relative_l2(
        stream.clone().narrow(2, 0, 13),
        chunked.clone().narrow(2, 0, 13),
    );
    println!("stream (5 latents per call) vs chunked decode, frames 0-12: relative L2 {head:.3e}");
    assert!(head <= FP32_TOLERANCE, "{head}");
    let tail = relative_l2(stream.narrow(2, 13, 24), chunked.narrow(2, 13, 24));
    println!(
        "stream (5 latents per call) vs chunked decode, frames 13-36: relative L2 {tail:.3e} \
         (different functions there)"
    );
    assert!(tail > FP32_TOLERANCE);
}

#[test]
fn the_attention_window_limits_what_a_frame_sees() {
    let io = io();
    let vae = load(DType::F32);
    let z = t5(&io, "dec_long_z");
    let stream = |window: Option<usize>| {
        let mut decoder = vae.cached_decoder();
        if let Some(w) = window {
            decoder = decoder.with_attention_window(w).unwrap();
        }
        let parts = (0..10)
            .map(|i| decoder.decode_next(z.clone().narrow(2, i, 1)).unwrap())
            .collect();
        burn::tensor::Tensor::cat(parts, 2)
    };
    let all = stream(None);
    // A window as long as the clip changes nothing.
    assert!(relative_l2(stream(Some(10)), all.clone()) <= 1e-6);
    // With a window of 2, latents 0 and 1 (pixel frames 0-4) see what they always saw;
    // latent 2 (frames 5-8) no longer sees latent 0.
    let windowed = stream(Some(2));
    let same = relative_l2(
        windowed.clone().narrow(2, 0, 5),
        all.clone().narrow(2, 0, 5),
    );
    let changed = relative_l2(windowed.narrow(2, 5, 4), all.narrow(2, 5, 4));
    println!("window 2: frames 0-4 {same:.3e}, frames 5-8 {changed:.3e}");
    assert!(same <= 1e-6, "{same}");
    assert!(changed > 1e-4, "{changed}");

    let err = vae.cached_decoder().with_attention_window(0).err().unwrap();
    assert!(err.to_string().contains("`frames`"), "{err}");
}

#[test]
fn spatial_tiles_keep_one_stream_each() {
    let io = io();
    let mut vae = load(DType::F32);
    vae.set_tiling(reduced_spatial()).unwrap();
    let z = t5(&io, "dec_sp_z");
    // One call: exactly the reference's spatially tiled decode.
    let out = vae.decode_cached(z.clone(), 2).unwrap();
    let err = relative_l2(out, t5(&io, "dec_sp_out"));
    println!("tiled stream, one call, vs reference tiled decode: relative L2 {err:.3e}");
    assert!(err <= FP32_TOLERANCE, "{err}");
    // Two calls: the first is the tiled decode of latent 0 alone.
    let mut decoder = vae.cached_decoder();
    let first = decoder.decode_next(z.clone().narrow(2, 0, 1)).unwrap();
    let second = decoder.decode_next(z.clone().narrow(2, 1, 1)).unwrap();
    assert_eq!(first.dims(), [1, 3, 1, 40, 56]);
    assert_eq!(second.dims(), [1, 3, 4, 40, 56]);
    let alone = vae.decode(z.clone().narrow(2, 0, 1)).unwrap();
    assert!(relative_l2(first, alone) <= FP32_TOLERANCE);

    // Later calls must keep the stream's shape.
    let err = decoder
        .decode_next(z.narrow(3, 0, 4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`z`") && err.contains("differ"), "{err}");
    vae.set_tiling(VaeTiling::reference()).unwrap();
}

#[test]
fn half_precision_stream_stays_close() {
    let io = io();
    for dtype in [DType::BF16, DType::F16] {
        let [_, _, torch_err] = torch_half_precision_error(&io, dtype);
        let vae = load(dtype);
        let out = vae.decode_cached(t5(&io, "dec_long_z"), 1).unwrap();
        assert_eq!(out.dtype(), dtype);
        let err = relative_l2(out, t5(&io, "stream_1_out"));
        println!("{dtype:?} stream vs fp32 reference stream: {err:.3e} (PyTorch {torch_err:.3e})");
        assert!(err <= half_precision_bound(torch_err), "{dtype:?} {err}");
    }
}
