//! 3D convolutions (the VAE's) as sums of shifted GEMMs on cuBLASLt.
//!
//! With the input channels-last, flattened to rows `[t·h·w, in]`, a stride-1 convolution's
//! output at `(t, y, x)` is the sum over the taps `(dt, dy, dx)` of input row
//! `(t+dt)·h·w + (y+dy)·w + (x+dx)` times the tap's `[out, in]` weight. For one tap that is
//! the same rows shifted by a constant, so each tap is one plain GEMM reading the input in
//! place, and cuBLASLt adds the taps up in an fp32 accumulator (beta = 1) that is rounded
//! once at the end. The GEMMs run over every row of the input grid; the rows whose window
//! wraps around the right or bottom edge are computed too and cropped.
//!
//! Strides: output frames are computed one at a time (only those kept); heights and widths
//! on the stride-1 grid, then subsampled (only the encoder's few downsampling layers pay).
//! Channels are padded to multiples of 8 so that every row starts 16-byte aligned (the RGB
//! input and output layers have 3).

use burn::tensor::{DType, Slice, Tensor};

use super::gemm::{Epilogue, GemmCall, GemmType};
use super::{empty, engine_for, pad_to, prim, run, wrap, CudaBackend};

/// Largest fp32 accumulator of one batch of GEMMs (bytes): the extra memory a convolution
/// needs beyond its input and output.
const ACCUMULATOR_BYTES: usize = 256 << 20;

/// [`FramePackBackend::conv3d_valid`](crate::ops::FramePackBackend::conv3d) on cuBLASLt, or `None`
/// where it does not apply (other dtypes, the tuned path off).
pub(super) fn conv3d_tuned(
    x: &Tensor<CudaBackend, 5>,
    weight: &Tensor<CudaBackend, 5>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    stride: [usize; 3],
) -> Option<Tensor<CudaBackend, 5>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    let dtype = x.dtype();
    let ty = GemmType::of(dtype)?;
    if weight.dtype() != dtype || bias.as_ref().is_some_and(|b| b.dtype() != dtype) {
        return None;
    }
    let [batch, cin, t, h, w] = x.dims();
    let [cout, weight_in, kt, kh, kw] = weight.dims();
    let [st, sh, sw] = stride;
    if weight_in != cin || t < kt || h < kh || w < kw || stride.contains(&0) {
        return None;
    }
    if [batch, cin, cout, kt, kh, kw].contains(&0) {
        return None;
    }
    // Stride-1 extents, and the strided output's.
    let (t1, h1, w1) = (t - kt + 1, h - kh + 1, w - kw + 1);
    let frames_out = (t1 - 1) / st + 1;
    let (cin_p, cout_p) = (cin.next_multiple_of(8), cout.next_multiple_of(8));
    let taps = kt * kh * kw;

    let xl = pad_to(x.clone().permute([0, 2, 3, 4, 1]), 4, cin_p);
    let wl = weight
        .clone()
        .permute([2, 3, 4, 0, 1])
        .reshape([taps, cout, cin]);
    let wl = pad_to(pad_to(wl, 2, cin_p), 1, cout_p);
    let (xp, wp) = (prim(xl), prim(wl));
    let elt = dtype.size();
    let plane = h * w;
    // Output frames per batch of GEMMs: consecutive ones at stride 1, else one at a time.
    let frames_per_call = if st == 1 {
        (ACCUMULATOR_BYTES / (plane * cout_p * 4)).clamp(1, frames_out)
    } else {
        1
    };
    let bias = bias
        .as_ref()
        .map(|b| b.clone().cast(DType::F32).reshape([1, 1, 1, cout]));
    let crop = [
        Slice::full(),
        Slice::new(0, Some(h1 as isize), sh as isize),
        Slice::new(0, Some(w1 as isize), sw as isize),
        Slice::new(0, Some(cout as isize), 1),
    ];
    let mut outputs = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut chunks = Vec::new();
        let mut first = 0;
        while first < frames_out {
            let frames = frames_per_call.min(frames_out - first);
            // The first input frame of the window of output frame `first`.
            let base = (b * t + first * st) * plane;
            // The last row needed: output (frames-1, h1-1, w1-1) of this call.
            let rows = (frames - 1) * plane + (h1 - 1) * w + w1;
            let acc = empty([frames * plane, cout_p], DType::F32, &device);
            run(&engine, &device, &[&xp, &wp, &acc], |e, p| {
                for dt in 0..kt {
                    for dy in 0..kh {
                        for dx in 0..kw {
                            let tap = (dt * kh + dy) * kw + dx;
                            let row = base + dt * plane + dy * w + dx;
                            e.gemm.run(&GemmCall {
                                x: p[0] + (row * cin_p * elt) as u64,
                                w: p[1] + (tap * cout_p * cin_p * elt) as u64,
                                bias: None,
                                out: p[2],
                                m: rows as u64,
                                n: cout_p as u64,
                                k: cin_p as u64,
                                epilogue: Epilogue::None,
                                ty,
                                f32_out: true,
                                accumulate: tap > 0,
                            })?;
                        }
                    }
                }
                Ok(())
            });
            let acc = wrap::<2>(acc).reshape([frames, h, w, cout_p]).slice(crop);
            let acc = match &bias {
                Some(bias) => acc + bias.clone(),
                None => acc,
            };
            chunks.push(acc.cast(dtype));
            first += frames;
        }
        outputs.push(Tensor::cat(chunks, 0));
    }
    // [batch, t', h', w', out] → [batch, out, t', h', w'] (a view: memory stays channels-last,
    // which is what the next convolution wants).
    Some(Tensor::stack::<5>(outputs, 0).permute([0, 4, 1, 2, 3]))
}
