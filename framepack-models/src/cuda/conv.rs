//! 3D convolutions (the VAE's) as sums of shifted GEMMs on cuBLASLt.
//!
//! With the input channels-last, flattened to rows `[t·h·w, in]`, a stride-1 convolution's
//! output at `(t, y, x)` is the sum over the taps `(dt, dy, dx)` of input row
//! `(t+dt)·h·w + (y+dy)·w + (x+dx)` times the tap's `[out, in]` weight. For one tap that is
//! the same rows shifted by a constant, so each tap is one plain GEMM reading the input in
//! place, and cuBLASLt adds the taps up in an fp32 accumulator (beta = 1). The GEMMs run over
//! every row of the input grid; the rows whose window wraps around the right or bottom edge
//! are computed too. Our epilogue kernel then crops them, adds the bias in fp32 and rounds
//! once, straight into the channels-last output (no intermediate tensors).
//!
//! Strides: output frames are computed one at a time (only those kept); heights and widths
//! on the stride-1 grid, then subsampled (only the encoder's few downsampling layers pay).
//! Channels are padded to multiples of 8 so that every row starts 16-byte aligned (the RGB
//! input and output layers have 3).

use burn::tensor::{DType, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::engine::Engine;
use super::gemm::{Epilogue, GemmCall, GemmType};
use super::{
    elementwise_blocks, empty, engine_for, grid, kernel_dtype, launch_err, pad_to, prim, run, wrap,
    CudaBackend, Prim,
};

/// Largest fp32 accumulator of one batch of GEMMs (bytes): the extra memory a convolution
/// needs beyond its input and output.
const ACCUMULATOR_BYTES: usize = 256 << 20;

/// [`FramePackBackend::conv3d_valid`](crate::ops::FramePackBackend::conv3d_valid) on cuBLASLt,
/// or `None` where it does not apply (other dtypes, the tuned path off).
pub(super) fn conv3d_tuned(
    x: &Tensor<CudaBackend, 5>,
    weight: &Tensor<CudaBackend, 5>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    stride: [usize; 3],
) -> Option<Tensor<CudaBackend, 5>> {
    let engine = engine_for(&x.device())?;
    engine.kernels.as_ref()?;
    let [batch, cin, t, h, w] = x.dims();
    check(x.dtype(), [batch, cin, t, h, w], weight, bias, stride)?;
    let xl = pad_to(
        x.clone().permute([0, 2, 3, 4, 1]),
        4,
        cin.next_multiple_of(8),
    );
    conv_channels_last(&engine, prim(xl), [batch, t, h, w], weight, bias, stride)
}

/// [`FramePackBackend::conv3d_replicate_padded`](crate::ops::FramePackBackend::conv3d_replicate_padded)
/// for fp16 and bf16: one kernel writes the padded input straight into the channels-last
/// layout the GEMMs read (instead of three concatenations and a transposed copy), read from
/// `x` in whatever layout it has.
pub(super) fn conv3d_padded_tuned(
    x: &Tensor<CudaBackend, 5>,
    weight: &Tensor<CudaBackend, 5>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    stride: [usize; 3],
    [pf, ph, pw]: [usize; 3],
) -> Option<Tensor<CudaBackend, 5>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let dtype = x.dtype();
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let [batch, cin, t, h, w] = x.dims();
    let padded = [batch, cin, t + pf, h + 2 * ph, w + 2 * pw];
    check(dtype, padded, weight, bias, stride)?;
    let [_, _, tp, hp, wp] = padded;
    let cin_p = cin.next_multiple_of(8);
    let rows = batch * tp * hp;
    if rows > 65535 || [t, h, w].contains(&0) {
        return None;
    }
    let src = x.clone().into_primitive().tensor();
    let strides: Vec<i64> = src.meta.strides().iter().map(|&s| s as i64).collect();
    let xl = empty([batch, tp, hp, wp, cin_p], dtype, &device);
    run(&engine, &device, &[&src, &xl], |e, p| {
        let k = e.kernels.as_ref().ok_or("no kernels")?;
        let dims = [cin, t, h, w, cin_p, pf, ph, pw].map(|v| v as i32);
        let mut launch = e.stream.launch_builder(&k.pad_channels_last);
        launch.arg(&p[0]).arg(&p[1]);
        for d in &dims {
            launch.arg(d);
        }
        for s in &strides {
            launch.arg(s);
        }
        let config = LaunchConfig {
            grid_dim: (
                wp.div_ceil(32) as u32,
                cin_p.div_ceil(32) as u32,
                rows as u32,
            ),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x is read within its dims through its strides; xl holds the padded,
        // channels-last batch x tp x hp x wp x cin_p values.
        unsafe { launch.launch(config) }
            .map(|_| ())
            .map_err(launch_err)
    });
    conv_channels_last(&engine, xl, [batch, tp, hp, wp], weight, bias, stride)
}

/// `Some(())` when a convolution of `x` (`dims`) by `weight` fits the tuned path.
fn check(
    dtype: DType,
    [batch, cin, t, h, w]: [usize; 5],
    weight: &Tensor<CudaBackend, 5>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    stride: [usize; 3],
) -> Option<()> {
    GemmType::of(dtype)?;
    if weight.dtype() != dtype || bias.as_ref().is_some_and(|b| b.dtype() != dtype) {
        return None;
    }
    let [cout, weight_in, kt, kh, kw] = weight.dims();
    if weight_in != cin || t < kt || h < kh || w < kw || stride.contains(&0) {
        return None;
    }
    if [batch, cin, cout, kt, kh, kw].contains(&0) {
        return None;
    }
    Some(())
}

/// The convolution of a channels-last input `xp` (`[batch, t, h, w, cin_p]`, channels padded
/// to a multiple of 8) as shifted GEMMs, returned as a `[batch, out, t', h', w']` view of a
/// channels-last tensor.
fn conv_channels_last(
    engine: &Engine,
    xp: Prim,
    [batch, t, h, w]: [usize; 4],
    weight: &Tensor<CudaBackend, 5>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    stride: [usize; 3],
) -> Option<Tensor<CudaBackend, 5>> {
    let device = weight.device();
    let dtype = weight.dtype();
    let ty = GemmType::of(dtype)?;
    let [cout, cin, kt, kh, kw] = weight.dims();
    let [st, sh, sw] = stride;
    // Stride-1 extents, and the strided output's.
    let (t1, h1, w1) = (t - kt + 1, h - kh + 1, w - kw + 1);
    let frames_out = (t1 - 1) / st + 1;
    let (cin_p, cout_p) = (cin.next_multiple_of(8), cout.next_multiple_of(8));
    let taps = kt * kh * kw;
    let wl = weight
        .clone()
        .permute([2, 3, 4, 0, 1])
        .reshape([taps, cout, cin]);
    let wl = pad_to(pad_to(wl, 2, cin_p), 1, cout_p);
    let wp = prim(wl);
    let elt = dtype.size();
    let plane = h * w;
    // Output frames per batch of GEMMs: consecutive ones at stride 1, else one at a time.
    let frames_per_call = if st == 1 {
        (ACCUMULATOR_BYTES / (plane * cout_p * 4)).clamp(1, frames_out)
    } else {
        1
    };
    let bias = bias.as_ref().map(|b| prim(b.clone().cast(DType::F32)));
    let (h_out, w_out) = ((h1 - 1) / sh + 1, (w1 - 1) / sw + 1);
    // Channels-last output, written chunk by chunk by the epilogue kernel.
    let out = empty([batch, frames_out, h_out, w_out, cout], dtype, &device);
    let kind = kernel_dtype(dtype)?;
    let frame_values = h_out * w_out * cout;
    for b in 0..batch {
        let mut first = 0;
        while first < frames_out {
            let frames = frames_per_call.min(frames_out - first);
            // The first input frame of the window of output frame `first`.
            let base = (b * t + first * st) * plane;
            // The last row needed: output (frames-1, h1-1, w1-1) of this call.
            let rows = (frames - 1) * plane + (h1 - 1) * w + w1;
            let acc = empty([frames * plane, cout_p], DType::F32, &device);
            let mut tensors = vec![&xp, &wp, &acc, &out];
            if let Some(bias) = &bias {
                tensors.push(bias);
            }
            run(engine, &device, &tensors, |e, p| {
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
                                scales: None,
                            })?;
                        }
                    }
                }
                // Crop, bias, one rounding, straight into the output.
                let kernels = e.kernels.as_ref().ok_or("no kernels")?;
                let offset = ((b * frames_out + first) * frame_values) as i64;
                let n = (frames * frame_values) as i64;
                let bias_ptr = p.get(4).copied().unwrap_or(0);
                let (cout, cout_p, w) = (cout as i32, cout_p as i32, w as i32);
                let plane = plane as i64;
                let (h_out, w_out, sh, sw) = (h_out as i32, w_out as i32, sh as i32, sw as i32);
                let mut launch = e.stream.launch_builder(&kernels.conv_epilogue);
                launch
                    .arg(&p[2])
                    .arg(&bias_ptr)
                    .arg(&p[3])
                    .arg(&offset)
                    .arg(&n)
                    .arg(&cout)
                    .arg(&cout_p)
                    .arg(&w)
                    .arg(&plane)
                    .arg(&h_out)
                    .arg(&w_out)
                    .arg(&sh)
                    .arg(&sw)
                    .arg(&kind);
                // SAFETY: acc holds `frames` planes of cout_p fp32 columns; out holds
                // batch x frames_out frames of h_out x w_out x cout values of `dtype`.
                unsafe { launch.launch(grid(elementwise_blocks(e, n as usize), 256, 0)) }
                    .map(|_| ())
                    .map_err(launch_err)
            });
            first += frames;
        }
    }
    // [batch, t', h', w', out] → [batch, out, t', h', w'] (a view: memory stays channels-last,
    // which is what the next convolution wants).
    Some(wrap::<5>(out).permute([0, 4, 1, 2, 3]))
}
