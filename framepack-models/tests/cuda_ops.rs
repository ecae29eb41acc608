//! Every tuned CUDA operation against the portable burn path on the same random inputs
//! (bf16: relative L2 <= 1e-2, never NaN). Needs an NVIDIA GPU: built only with `--features
//! cuda` and run on the GPU machine (see docs/performance.md).
#![cfg(feature = "cuda")]

use burn::tensor::{DType, Distribution, Tensor};
use framepack_models::cuda::{
    attention_kernels, engine_summary, time_kernels, CudaBackend as B, CudaDevice,
};
use framepack_models::runtime::RuntimeOptions;
use framepack_models::FramePackBackend;
use std::sync::{Mutex, MutexGuard};

/// The kernel choices are per thread ([`RuntimeOptions::scope`]), so tests cannot change each
/// other's; they still run one at a time, so that the timed ones and autotuning (burn's
/// portable kernels) do not compete for the GPU. Each test runs on a thread of its own (the
/// engine is created on whichever thread comes first).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `work` on burn's portable kernels (the tuned ones off on this thread).
fn portable<R>(work: impl FnOnce() -> R) -> R {
    RuntimeOptions::default().tuned_kernels(false).scope(work)
}

fn device() -> CudaDevice {
    CudaDevice { index: 0 }
}

fn randn<const D: usize>(shape: [usize; D], std: f64) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, std), &device()).cast(DType::BF16)
}

/// Runs `f` with the tuned kernels on and off; returns (tuned, portable) as fp32.
fn both<const D: usize>(f: impl Fn() -> Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let tuned = f().cast(DType::F32);
    (tuned, portable(|| f().cast(DType::F32)))
}

/// Softmax attention on the host in f64 (`[batch, seq, heads, dim]`, grouped heads when k and
/// v have fewer, causal or not): the reference of every attention kernel. Computed on the
/// host rather than by burn's portable fp32 attention, which autotunes its products for every
/// new shape (minutes on a fresh machine) and rounds differently on each card.
fn attention_host(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let values = |t: &Tensor<B, 4>| -> Vec<f32> {
        t.clone()
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    let [batch, seq_q, heads, dim] = q.dims();
    let [_, seq_k, k_heads, _] = k.dims();
    let (qv, kv, vv) = (values(q), values(k), values(v));
    let scale = 1.0 / (dim as f64).sqrt();
    let mut out = vec![0f32; batch * seq_q * heads * dim];
    let mut scores = vec![0f64; seq_k];
    for b in 0..batch {
        for h in 0..heads {
            let kh = h / (heads / k_heads);
            for i in 0..seq_q {
                let qrow = &qv[((b * seq_q + i) * heads + h) * dim..][..dim];
                let keys = if causal { i + 1 } else { seq_k };
                let mut max = f64::NEG_INFINITY;
                for (j, score) in scores[..keys].iter_mut().enumerate() {
                    let krow = &kv[((b * seq_k + j) * k_heads + kh) * dim..][..dim];
                    let dot: f64 = qrow
                        .iter()
                        .zip(krow)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    *score = dot * scale;
                    max = max.max(*score);
                }
                let mut total = 0.0;
                for score in &mut scores[..keys] {
                    *score = (*score - max).exp();
                    total += *score;
                }
                let orow = &mut out[((b * seq_q + i) * heads + h) * dim..][..dim];
                for (d, o) in orow.iter_mut().enumerate() {
                    let sum: f64 = scores[..keys]
                        .iter()
                        .enumerate()
                        .map(|(j, p)| p * f64::from(vv[((b * seq_k + j) * k_heads + kh) * dim + d]))
                        .sum();
                    *o = (sum / total) as f32;
                }
            }
        }
    }
    Tensor::from_data(
        burn::tensor::TensorData::new(out, [batch, seq_q, heads, dim]),
        &device(),
    )
}

/// Relative L2 error of `tuned` against `reference` (both fp32); panics on NaN.
fn relative_l2<const D: usize>(name: &str, tuned: Tensor<B, D>, reference: Tensor<B, D>) -> f64 {
    assert_eq!(tuned.dims(), reference.dims(), "{name}: shape");
    let nan = tuned.clone().is_nan().int().sum().into_scalar();
    assert!(nan == 0, "{name}: NaN in the tuned output");
    let diff = (tuned - reference.clone())
        .powi_scalar(2)
        .sum()
        .into_scalar() as f64;
    let norm = reference.powi_scalar(2).sum().into_scalar() as f64;
    let err = (diff / norm).sqrt();
    println!("{name}: relative L2 {err:.3e}");
    err
}

fn check<const D: usize>(name: &str, (tuned, portable): (Tensor<B, D>, Tensor<B, D>), bound: f64) {
    let err = relative_l2(name, tuned, portable);
    assert!(err <= bound, "{name}: relative L2 {err} > {bound}");
}

/// `x · wᵀ + b` (then GELU, tanh form) on the host in f64: the reference of the dense
/// products. Not burn's portable matmul, which autotunes every new shape (about 30 s each on a
/// fresh machine).
fn dense_host(
    x: &Tensor<B, 3>,
    w: &Tensor<B, 2>,
    b: Option<&Tensor<B, 1>>,
    gelu: bool,
) -> Tensor<B, 3> {
    let values = |t: Tensor<B, 2>| -> Vec<f32> {
        t.cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    let [batch, rows, k] = x.dims();
    let [n, _] = w.dims();
    let xs = values(x.clone().reshape([batch * rows, k]));
    let ws = values(w.clone());
    let bs = b.map(|b| values(b.clone().reshape([1, n])));
    let gelu_tanh =
        |v: f64| 0.5 * v * (1.0 + (0.797_884_560_802_865_4 * (v + 0.044715 * v * v * v)).tanh());
    let mut out = Vec::with_capacity(batch * rows * n);
    for r in 0..batch * rows {
        let xr = &xs[r * k..][..k];
        for c in 0..n {
            let wr = &ws[c * k..][..k];
            let mut v: f64 = xr
                .iter()
                .zip(wr)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            if let Some(bs) = &bs {
                v += f64::from(bs[c]);
            }
            out.push(if gelu { gelu_tanh(v) } else { v } as f32);
        }
    }
    Tensor::from_data(
        burn::tensor::TensorData::new(out, [batch, rows, n]),
        &device(),
    )
}

/// The tuned products (cuBLASLt) in bf16, fp16 and fp32, with bias and GELU epilogues,
/// against the host: bf16/fp16 within 1e-2 (the output's rounding), fp32 within 1e-4.
#[test]
fn dense_matches_host() {
    let _serial = serial();
    let x = randn([2, 150, 768], 1.0);
    let w = randn([1536, 768], 0.03);
    let b = randn([1536], 0.1);
    let tuned = |t: Tensor<B, 3>| t.cast(DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        // fp16: the text and image encoders, the VAE.
        let (x, w, b) = (
            x.clone().cast(dtype),
            w.clone().cast(dtype),
            b.clone().cast(dtype),
        );
        let name = |what: &str| format!("{what} {dtype:?}");
        check(
            &name("dense+bias"),
            (
                tuned(B::dense(x.clone(), w.clone(), Some(b.clone()))),
                dense_host(&x, &w, Some(&b), false),
            ),
            1e-2,
        );
        check(
            &name("dense"),
            (
                tuned(B::dense(x.clone(), w.clone(), None)),
                dense_host(&x, &w, None, false),
            ),
            1e-2,
        );
        check(
            &name("dense+gelu"),
            (
                tuned(B::dense_gelu(x.clone(), w.clone(), Some(b.clone()))),
                dense_host(&x, &w, Some(&b), true),
            ),
            1e-2,
        );
    }
    // Widths whose rows burn's allocator would pad (SigLIP's 4,304-wide MLP in fp16; 48 and
    // 3 outputs): the outputs must be packed.
    let x16 = x.clone().cast(DType::F16);
    for n in [4304, 48, 3] {
        let w = randn([n, 768], 0.03).cast(DType::F16);
        check(
            &format!("dense fp16 {n} wide"),
            (
                tuned(B::dense(x16.clone(), w.clone(), None)),
                dense_host(&x16, &w, None, false),
            ),
            1e-2,
        );
    }
    // fp32 (the transformer's proj_out)
    let (x32, w32) = (x.clone().cast(DType::F32), w.clone().cast(DType::F32));
    check(
        "dense fp32",
        (
            tuned(B::dense(x32.clone(), w32.clone(), None)),
            dense_host(&x32, &w32, None, false),
        ),
        1e-4,
    );
}

#[test]
fn kernel_timer_repeats_without_changing_outputs() {
    let _serial = serial();
    let x = randn([1, 500, 256], 1.0).cast(DType::BF16);
    let w = randn([384, 256], 0.05).cast(DType::BF16);
    let plain = B::dense(x.clone(), w.clone(), None);
    let (timed, time) = time_kernels(5, || {
        let y = B::dense(x.clone(), w.clone(), None);
        B::gelu_tanh(y)
    });
    assert_eq!(time.ops, 2, "a product and a GELU: {time:?}");
    assert!(time.seconds > 0.0 && time.seconds < 1.0, "{time:?}");
    let expected = B::gelu_tanh(plain);
    let diff: f32 = (timed.cast(DType::F32) - expected.cast(DType::F32))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0, "repeating the kernels changed the output");
    // Outside a timer nothing is repeated or counted.
    let ((), idle) = time_kernels(0, || ());
    assert_eq!(idle.ops, 0);
}

#[test]
fn flash_attention_matches_portable() {
    let _serial = serial();
    println!("{}", engine_summary(0));
    // Every kernel this GPU runs: the Hopper ones that passed their self-test and the sm_80
    // one, each against one fp32 reference per case (the slow part).
    let kernels = attention_kernels(&device());
    assert!(
        kernels.contains(&"flash_attention_fwd_bf16"),
        "the sm_80 kernel is always available: {kernels:?}"
    );
    // Not a multiple of the 128-row / 64-key tiles, to exercise the edges.
    let mut cases = Vec::new();
    for (seq_q, seq_k) in [(333, 333), (1000, 1000), (64, 700)] {
        cases.push((
            format!("attention {seq_q}x{seq_k}"),
            randn([1, seq_q, 3, 128], 1.0),
            randn([1, seq_k, 3, 128], 1.0),
            randn([1, seq_k, 3, 128], 1.0),
        ));
    }
    cases.push((
        "attention batch 2, large scores".into(),
        randn([2, 200, 2, 128], 2.0),
        randn([2, 257, 2, 128], 2.0),
        randn([2, 257, 2, 128], 1.0),
    ));
    // v read in place from the last third of a fused q/k/v projection (batch 2).
    let qkv = randn([2, 300, 9, 128], 1.0);
    let view = |i: usize| qkv.clone().narrow(2, 3 * i, 3);
    cases.push((
        "attention, q/k/v views of a fused projection".into(),
        view(0),
        view(1),
        view(2),
    ));
    for (name, q, k, v) in &cases {
        let exact = attention_host(q, k, v, false);
        for kernel in &kernels {
            let tuned = RuntimeOptions::default()
                .attention_kernel(Some(kernel))
                .scope(|| B::attend(q.clone(), k.clone(), v.clone(), None).cast(DType::F32));
            check(&format!("{kernel}: {name}"), (tuned, exact.clone()), 1e-2);
        }
    }
    // Switching the Hopper kernels off selects the sm_80 kernel, on this thread only.
    let without_hopper = RuntimeOptions::default()
        .hopper_attention(false)
        .scope(|| engine_summary(0));
    assert!(without_hopper.contains("flash_attention_fwd_bf16"));
    let other_thread = std::thread::spawn(|| engine_summary(0)).join().unwrap();
    assert_eq!(other_thread, engine_summary(0));
}

#[test]
fn fp8_dequantize_matches_portable() {
    let _serial = serial();
    use burn::tensor::{Int, TensorData};
    use framepack_models::fp8::Fp8Host;
    let values: Vec<f32> = randn([96, 3072], 0.05)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let host = Fp8Host::quantize(&values, [96, 3072]);
    let codes = Tensor::<B, 2, Int>::from_data(
        TensorData::new(host.codes.clone(), [96, 3072]),
        (&device(), DType::U8),
    );
    let scales = Tensor::<B, 1>::from_data(TensorData::new(host.scales.clone(), [96]), &device());
    let (tuned, portable) = both(|| B::dequantize_fp8(codes.clone(), scales.clone(), DType::BF16));
    // Same arithmetic (fp32 product, one rounding): bit-identical.
    let diff = (tuned.clone() - portable.clone()).abs().max().into_scalar();
    assert_eq!(
        diff, 0.0,
        "fp8 dequantisation differs from the portable path"
    );
    check("fp8 dequantize", (tuned, portable), 0.0);
}

#[test]
fn norms_match_portable() {
    let _serial = serial();
    let x = randn([2, 77, 3072], 2.0);
    let shift = randn([2, 1, 3072], 0.5);
    let scale = randn([2, 1, 3072], 0.5);
    check(
        "layer_norm",
        both(|| B::layer_norm_fp32(x.clone(), None, None, 1e-6)),
        1e-2,
    );
    check(
        "layer_norm_modulate",
        both(|| B::layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), 1e-6)),
        1e-2,
    );

    let h = randn([1, 150, 4, 128], 3.0);
    let w = randn([128], 0.2).add_scalar(1.0);
    let cos = Tensor::<B, 2>::random([100, 128], Distribution::Uniform(-1.0, 1.0), &device());
    let sin = Tensor::<B, 2>::random([100, 128], Distribution::Uniform(-1.0, 1.0), &device());
    check(
        "rms_norm",
        both(|| B::rms_norm(h.clone(), w.clone(), 1e-6)),
        1e-2,
    );
    check(
        "rms_norm_rope (100 of 150 tokens)",
        both(|| B::rms_norm_rope(h.clone(), w.clone(), 1e-6, cos.clone(), sin.clone())),
        1e-2,
    );
    // k read in place from the middle third of a fused q/k/v projection (batch 2).
    let k = randn([2, 150, 12, 128], 3.0).narrow(2, 4, 4);
    check(
        "rms_norm_rope on a view of a fused projection",
        both(|| B::rms_norm_rope(k.clone(), w.clone(), 1e-6, cos.clone(), sin.clone())),
        1e-2,
    );
}

#[test]
fn elementwise_matches_portable() {
    let _serial = serial();
    let x = randn([2, 91, 3072], 1.0);
    let y = randn([2, 91, 3072], 1.0);
    let gate = randn([2, 1, 3072], 0.5);
    check(
        "gated_residual",
        both(|| B::gated_residual(x.clone(), gate.clone(), y.clone())),
        1e-2,
    );
    check("gelu_tanh", both(|| B::gelu_tanh(x.clone())), 1e-2);
    check("silu", both(|| B::silu(x.clone())), 1e-2);
}

/// The output shape of a valid 3D convolution.
fn conv3d_dims(
    [batch, _, t, h, w]: [usize; 5],
    [cout, k]: [usize; 2],
    [st, sh, sw]: [usize; 3],
) -> [usize; 5] {
    [
        batch,
        cout,
        (t - k) / st + 1,
        (h - k) / sh + 1,
        (w - k) / sw + 1,
    ]
}

/// A plain 3D convolution on the host in f64 (no padding), at the flat output indices
/// `outputs` (all of them for small cases, a sample of a large one): the reference for both
/// paths.
fn conv3d_host(
    x: &[f32],
    shape: [usize; 5],
    weight: &[f32],
    [cout, k]: [usize; 2],
    bias: &[f32],
    stride: [usize; 3],
    outputs: &[usize],
) -> Vec<f32> {
    let [_, cin, t, h, w] = shape;
    let [_, _, to, ho, wo] = conv3d_dims(shape, [cout, k], stride);
    let [st, sh, sw] = stride;
    outputs
        .iter()
        .map(|&flat| {
            let (ox, rest) = (flat % wo, flat / wo);
            let (oy, rest) = (rest % ho, rest / ho);
            let (ot, rest) = (rest % to, rest / to);
            let (o, b) = (rest % cout, rest / cout);
            let mut sum = f64::from(bias[o]);
            for i in 0..cin {
                for dt in 0..k {
                    for dy in 0..k {
                        let xrow =
                            (((b * cin + i) * t + ot * st + dt) * h + oy * sh + dy) * w + ox * sw;
                        let wrow = (((o * cin + i) * k + dt) * k + dy) * k;
                        for dx in 0..k {
                            sum += f64::from(x[xrow + dx]) * f64::from(weight[wrow + dx]);
                        }
                    }
                }
            }
            sum as f32
        })
        .collect()
}

/// Relative L2 error of `got` against `want` (host values); panics on NaN.
fn relative_l2_host(name: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    assert!(got.iter().all(|v| !v.is_nan()), "{name}: NaN");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    let err = (diff / norm).sqrt();
    println!("{name}: relative L2 {err:.3e}");
    err
}

/// The VAE's convolutions as shifted GEMMs (fp16, bf16, fp32) and burn's convolution (fp32)
/// against the host: stride 1 and the encoder's strides, RGB in and out (channels padded to
/// 8), 1×1×1, a batch of two, and a frame count that splits into two accumulator slices.
/// The large case is checked at 4,096 sampled outputs (all of its 84 million would take the
/// host minutes). burn's convolution is checked on the first case only: it autotunes every
/// new shape.
#[test]
fn conv3d_matches_host() {
    let _serial = serial();
    /// Name, input shape, output channels, kernel size, strides.
    type Case = (&'static str, [usize; 5], usize, usize, [usize; 3]);
    let cases: [Case; 6] = [
        ("3x3x3", [1, 32, 6, 17, 19], 48, 3, [1, 1, 1]),
        ("RGB in, stride 1,2,2", [1, 3, 5, 20, 18], 32, 3, [1, 2, 2]),
        ("stride 2,2,2", [1, 16, 7, 13, 12], 16, 3, [2, 2, 2]),
        ("RGB out", [1, 24, 4, 10, 9], 3, 3, [1, 1, 1]),
        ("1x1x1, batch 2", [2, 40, 3, 7, 5], 24, 1, [1, 1, 1]),
        (
            "two accumulator slices",
            [1, 8, 7, 514, 514],
            64,
            3,
            [1, 1, 1],
        ),
    ];
    const SAMPLED: usize = 4096;
    let mut failures = Vec::new();
    let host =
        |t: Tensor<B, 5>| -> Vec<f32> { t.cast(DType::F32).into_data().to_vec::<f32>().unwrap() };
    for (name, shape, out, k, stride) in cases {
        let x = randn(shape, 1.0);
        let w = randn([out, shape[1], k, k, k], 0.1);
        let b = randn([out], 0.1);
        let dims = conv3d_dims(shape, [out, k], stride);
        let total: usize = dims.iter().product();
        let sampled = total > 1 << 20;
        // Every output, or a fixed spread of them (a stride coprime to the sizes).
        let outputs: Vec<usize> = if sampled {
            (0..SAMPLED).map(|i| (i * 20_477 + 13) % total).collect()
        } else {
            (0..total).collect()
        };
        let pick = |values: Vec<f32>| -> Vec<f32> { outputs.iter().map(|&i| values[i]).collect() };
        let expected = conv3d_host(
            &host(x.clone()),
            shape,
            &host(w.clone()),
            [out, k],
            &b.clone()
                .cast(DType::F32)
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            stride,
            &outputs,
        );
        let mut results = Vec::new();
        // burn's own convolution once (it autotunes every new shape: 10-15 s each).
        if name == cases[0].0 {
            let f32 = |t: &Tensor<B, 5>| t.clone().cast(DType::F32);
            let portable = portable(|| {
                B::conv3d_valid(f32(&x), f32(&w), Some(b.clone().cast(DType::F32)), stride)
            });
            let what = format!("conv3d {name} burn F32");
            let err = relative_l2_host(&what, &pick(host(portable)), &expected);
            results.push((what, err, 1e-5));
        }
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let tuned = B::conv3d_valid(
                x.clone().cast(dtype),
                w.clone().cast(dtype),
                Some(b.clone().cast(dtype)),
                stride,
            );
            assert_eq!(tuned.dtype(), dtype, "{name}: dtype");
            assert_eq!(tuned.dims(), dims, "{name}: shape");
            // fp16/bf16: the output's one rounding; fp32: summation order only.
            let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            let what = format!("conv3d {name} {dtype:?}");
            let err = relative_l2_host(&what, &pick(host(tuned)), &expected);
            results.push((what, err, bound));
        }
        // Every path is reported before any failure.
        failures.extend(
            results
                .into_iter()
                .filter(|(_, err, bound)| err.is_nan() || err > bound)
                .map(|(what, err, bound)| format!("{what}: {err:.3e} > {bound}")),
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attention the flash kernels do not take (the VAE's 512-wide head, SigLIP's 72, CLIP's and
/// LLaMA's causal text attention with grouped heads; fp16 and bf16) on cuBLASLt with fp32
/// scores, against the host's f64 attention on the same values.
#[test]
fn gemm_attention_matches_fp32() {
    let _serial = serial();
    let cases: [(&str, [usize; 4], usize, bool, DType); 5] = [
        ("VAE head 512", [1, 700, 1, 512], 1, false, DType::F16),
        ("SigLIP 16x72", [1, 729, 16, 72], 16, false, DType::F16),
        (
            "LLaMA causal GQA 32/8",
            [1, 77, 32, 128],
            8,
            true,
            DType::F16,
        ),
        ("CLIP causal 12x64", [2, 77, 12, 64], 12, true, DType::F16),
        (
            "bf16 head 64, batch 2",
            [2, 300, 4, 64],
            4,
            false,
            DType::BF16,
        ),
    ];
    for (name, [batch, seq, heads, dim], k_heads, causal, dtype) in cases {
        let started = std::time::Instant::now();
        let q = randn([batch, seq, heads, dim], 1.0).cast(dtype);
        let k = randn([batch, seq, k_heads, dim], 1.0).cast(dtype);
        let v = randn([batch, seq, k_heads, dim], 1.0).cast(dtype);
        let call = |q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>| {
            if causal {
                B::attend_causal(q, k, v)
            } else {
                B::attend(q, k, v, None)
            }
        };
        let tuned = call(q.clone(), k.clone(), v.clone());
        assert_eq!(tuned.dtype(), dtype, "{name}: dtype");
        let tuned_s = started.elapsed().as_secs_f64();
        let exact = attention_host(&q, &k, &v, causal);
        println!(
            "attention {name}: tuned {tuned_s:.2} s, host reference {:.2} s",
            started.elapsed().as_secs_f64() - tuned_s
        );
        check(
            &format!("attention {name}"),
            (tuned.cast(DType::F32), exact),
            1e-2,
        );
    }
}

/// FP8 tensor-core products (`RuntimeOptions::fp8_tensor_cores`) against the same arithmetic on
/// the host in f64: activations and weights rounded to e4m3 per row by `Fp8Host::quantize`
/// (the rule our quantisation kernel follows), products of the rounded values, bias, GELU.
/// bf16 output: relative L2 <= 1e-2. The activations' rounding is visible: against the
/// products of the unrounded activations (the expanded path's numbers) the error is several
/// times larger, which shows the tensor-core path ran. Without FP8 tensor cores the fallback
/// must give the expanded path's output exactly.
#[test]
fn fp8_tensor_core_dense_matches_host() {
    let _serial = serial();
    use burn::tensor::TensorData;
    use framepack_models::cuda::fp8_tensor_cores_available;
    use framepack_models::fp8::Fp8Host;
    let (m, n, k) = (200, 256, 3072);
    let host = |t: Tensor<B, 2>| -> Vec<f32> {
        t.cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    // Rows of very different magnitudes (one 50x louder, one all zero): per-row scales.
    let mut x_vals = host(randn([m, k], 1.0));
    x_vals[7 * k..8 * k].iter_mut().for_each(|v| *v *= 50.0);
    x_vals[9 * k..10 * k].iter_mut().for_each(|v| *v = 0.0);
    let x = Tensor::<B, 2>::from_data(TensorData::new(x_vals.clone(), [m, k]), &device())
        .cast(DType::BF16);
    let x_vals = host(x.clone());
    let w_host = Fp8Host::quantize(&host(randn([n, k], 0.05)), [n, k]);
    let bias_vals = host(randn([1, n], 0.5));
    let bias = Tensor::<B, 1>::from_data(TensorData::new(bias_vals.clone(), [n]), &device())
        .cast(DType::BF16);
    let weight = w_host.clone().upload::<B>(&device(), DType::BF16);
    // FP8 tensor-core products are a per-thread option.
    let on_tensor_cores = RuntimeOptions::default().fp8_tensor_cores(true);

    let w_vals = w_host.dequantize();
    let x_rounded = Fp8Host::quantize(&x_vals, [m, k]).dequantize();
    let gelu =
        |v: f64| 0.5 * v * (1.0 + (0.797_884_560_802_865_4 * (v + 0.044715 * v * v * v)).tanh());
    let reference = |xs: &[f32], with_gelu: bool| -> Tensor<B, 2> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(xs[r * k + i]) * f64::from(w_vals[c * k + i]))
                    .sum();
                let v = dot + f64::from(bias_vals[c]);
                out[r * n + c] = if with_gelu { gelu(v) } else { v } as f32;
            }
        }
        Tensor::from_data(TensorData::new(out, [m, n]), &device())
    };
    let tensor_cores = fp8_tensor_cores_available(&device());
    println!(
        "FP8 tensor cores: {:?}",
        framepack_models::cuda::fp8_tensor_cores_check(&device())
    );
    for with_gelu in [false, true] {
        let name = if with_gelu {
            "fp8 dense + GELU"
        } else {
            "fp8 dense + bias"
        };
        let out = on_tensor_cores
            .scope(|| B::dense_fp8(x.clone(), &weight, Some(bias.clone()), with_gelu))
            .cast(DType::F32);
        if tensor_cores {
            let exact = relative_l2(name, out.clone(), reference(&x_rounded, with_gelu));
            let unrounded = relative_l2(name, out.clone(), reference(&x_vals, with_gelu));
            assert!(exact <= 1e-2, "{name}: relative L2 {exact} > 1e-2");
            assert!(
                unrounded > 3.0 * exact,
                "{name}: {unrounded:.3e} against unrounded activations, {exact:.3e} against \
                 rounded ones: the activations were not rounded to e4m3"
            );
            // A 3-D input takes the same path.
            let x3 = x.clone().reshape([2, m / 2, k]);
            let out3 =
                on_tensor_cores.scope(|| B::dense_fp8(x3, &weight, Some(bias.clone()), with_gelu));
            let diff = (out3.cast(DType::F32).reshape([m, n]) - out.clone())
                .abs()
                .max()
                .into_scalar();
            assert_eq!(diff, 0.0, "{name}: 3-D input");
        } else {
            let expanded = framepack_models::ops::dense_fp8_expanded(
                x.clone(),
                &weight,
                Some(bias.clone()),
                with_gelu,
            )
            .cast(DType::F32);
            let diff = (out - expanded).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "{name}: the fallback is the expanded path");
        }
    }
}

/// The GroupNorm kernels (+ SiLU) against the portable burn path on the VAE's dtypes: odd
/// sizes, a batch of two, spans of several chunks, and values far from zero (the variance is
/// taken about the mean in a second pass, not from a sum of squares). Both round once to the
/// dtype (twice with SiLU): fp16 within 1e-3, bf16 within 1e-2.
#[test]
fn group_norm_matches_portable() {
    let _serial = serial();
    for (dtype, bound) in [(DType::F16, 1e-3), (DType::BF16, 1e-2)] {
        for (shape, groups, offset) in [
            ([1, 256, 3, 17, 19], 32, 0.0),
            ([2, 64, 2, 8, 8], 32, 0.0),
            ([1, 128, 5, 64, 64], 32, 0.0),
            ([1, 32, 17, 64, 48], 32, 40.0),
        ] {
            let x = Tensor::<B, 5>::random(shape, Distribution::Normal(offset, 2.0), &device())
                .cast(dtype);
            let c = shape[1];
            let weight =
                Tensor::<B, 1>::random([c], Distribution::Normal(1.0, 0.3), &device()).cast(dtype);
            let bias =
                Tensor::<B, 1>::random([c], Distribution::Normal(0.0, 0.5), &device()).cast(dtype);
            for silu in [false, true] {
                let name = format!("group norm {dtype:?} {shape:?} offset {offset} silu {silu}");
                check(
                    &name,
                    both(|| {
                        B::group_norm(x.clone(), weight.clone(), bias.clone(), groups, 1e-6, silu)
                    }),
                    bound,
                );
            }
        }
    }
}

/// The causal convolution with its padding built channels-last by one kernel, against the
/// same padding done by concatenations before the tuned `conv3d_valid` (the same GEMMs on the
/// same values: equal), and against the host's convolution of the portably padded values
/// (burn's own fp16 convolution accumulates in fp16, and autotunes): fp16 within 1e-3, bf16
/// 1e-2. Inputs in both layouts the VAE produces: contiguous, and a channels-last view (a
/// convolution's output).
#[test]
fn conv3d_replicate_padded_matches() {
    let _serial = serial();
    for dtype in [DType::F16, DType::BF16] {
        for channels_last in [false, true] {
            let shape = [1, 24, 5, 9, 11];
            let x = if channels_last {
                Tensor::<B, 5>::random([1, 5, 9, 11, 24], Distribution::Normal(0.0, 1.0), &device())
                    .permute([0, 4, 1, 2, 3])
            } else {
                Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &device())
            }
            .cast(dtype);
            let weight = Tensor::<B, 5>::random(
                [16, 24, 3, 3, 3],
                Distribution::Normal(0.0, 0.1),
                &device(),
            )
            .cast(dtype);
            let bias =
                Tensor::<B, 1>::random([16], Distribution::Normal(0.0, 0.1), &device()).cast(dtype);
            let name = format!("padded conv {dtype:?} channels-last input {channels_last}");
            type PaddedConv = fn(
                Tensor<B, 5>,
                Tensor<B, 5>,
                Option<Tensor<B, 1>>,
                [usize; 3],
                [usize; 3],
            ) -> Tensor<B, 5>;
            let conv = |f: PaddedConv| {
                f(
                    x.clone(),
                    weight.clone(),
                    Some(bias.clone()),
                    [1, 1, 1],
                    [2, 1, 1],
                )
                .cast(DType::F32)
            };
            let fused = conv(B::conv3d_replicate_padded);
            let unfused = conv(framepack_models::ops::pad_then_conv3d::<B>);
            assert_eq!(fused.dims(), [1, 16, 5, 9, 11], "{name}");
            let diff = (fused.clone() - unfused).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "{name}: differs from padding by concatenation");
            // The reference: the portable padding (copies, exact) and the host's convolution.
            let exact = {
                use framepack_models::ops::portable::{replicate_pad_front, replicate_pad_hw};
                let padded =
                    replicate_pad_front(replicate_pad_hw(x.clone().cast(DType::F32), 1, 1), 2);
                let dims = padded.dims();
                let host = |t: Tensor<B, 5>| -> Vec<f32> {
                    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
                };
                let out_dims = conv3d_dims(dims, [16, 3], [1, 1, 1]);
                let outputs: Vec<usize> = (0..out_dims.iter().product()).collect();
                let values = conv3d_host(
                    &host(padded),
                    dims,
                    &host(weight.clone()),
                    [16, 3],
                    &bias
                        .clone()
                        .cast(DType::F32)
                        .into_data()
                        .to_vec::<f32>()
                        .unwrap(),
                    [1, 1, 1],
                    &outputs,
                );
                Tensor::<B, 5>::from_data(
                    burn::tensor::TensorData::new(values, out_dims),
                    &device(),
                )
            };
            let bound = if dtype == DType::F16 { 1e-3 } else { 1e-2 };
            check(&name, (fused, exact), bound);
        }
    }
}

/// The inputs of [`tuned_ops_on_any_thread`]: one of every tuned operation's shapes.
#[derive(Clone)]
struct ThreadInputs {
    x: Tensor<B, 3>,
    w: Tensor<B, 2>,
    b: Tensor<B, 1>,
    qkv: [Tensor<B, 4>; 3],
    vae_head: Tensor<B, 4>,
    h: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    video: Tensor<B, 5>,
    conv_w: Tensor<B, 5>,
}

impl ThreadInputs {
    fn new() -> Self {
        let uniform = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Uniform(-1.0, 1.0), &device())
        };
        Self {
            x: randn([2, 300, 768], 1.0),
            w: randn([1536, 768], 0.03),
            b: randn([1536], 0.1),
            qkv: [0, 1, 2].map(|_| randn([1, 333, 3, 128], 1.0)),
            vae_head: randn([1, 300, 1, 512], 1.0).cast(DType::F16),
            h: randn([1, 150, 4, 128], 3.0),
            cos: uniform([100, 128]),
            sin: uniform([100, 128]),
            video: randn([1, 32, 5, 17, 19], 1.0).cast(DType::F16),
            conv_w: randn([48, 32, 3, 3, 3], 0.1).cast(DType::F16),
        }
    }

    /// Every tuned operation once, as host values.
    fn run(&self) -> Vec<(&'static str, Vec<f32>)> {
        fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
            t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
        }
        let s = self.clone();
        let [q, k, v] = s.qkv.clone();
        let norm_w = s.b.clone().narrow(0, 0, 128).add_scalar(1.0);
        let shift = s.x.clone().narrow(1, 0, 1);
        let gate = s.x.clone().narrow(1, 1, 1);
        let gn_w = s.b.clone().narrow(0, 0, 32).cast(DType::F16);
        vec![
            (
                "dense+bias",
                host(B::dense(s.x.clone(), s.w.clone(), Some(s.b.clone()))),
            ),
            (
                "dense+gelu",
                host(B::dense_gelu(s.x.clone(), s.w.clone(), None)),
            ),
            (
                "flash attention",
                host(B::attend(q.clone(), k.clone(), v.clone(), None)),
            ),
            (
                "GEMM attention, head 512",
                host(B::attend(
                    s.vae_head.clone(),
                    s.vae_head.clone(),
                    s.vae_head.clone(),
                    None,
                )),
            ),
            (
                "causal attention",
                host(B::attend_causal(
                    q.clone().cast(DType::F16),
                    k.clone().cast(DType::F16),
                    v.clone().cast(DType::F16),
                )),
            ),
            (
                "layer_norm_modulate",
                host(B::layer_norm_modulate(
                    s.x.clone(),
                    shift.clone(),
                    gate.clone(),
                    1e-6,
                )),
            ),
            (
                "rms_norm_rope",
                host(B::rms_norm_rope(
                    s.h.clone(),
                    norm_w,
                    1e-6,
                    s.cos.clone(),
                    s.sin.clone(),
                )),
            ),
            (
                "gated_residual",
                host(B::gated_residual(s.x.clone(), gate, s.x.clone())),
            ),
            ("gelu_tanh", host(B::gelu_tanh(s.x.clone()))),
            ("silu", host(B::silu(s.x.clone()))),
            (
                "group_norm+silu",
                host(B::group_norm(
                    s.video.clone(),
                    gn_w.clone(),
                    gn_w,
                    8,
                    1e-6,
                    true,
                )),
            ),
            (
                "conv3d",
                host(B::conv3d_valid(
                    s.video.clone(),
                    s.conv_w.clone(),
                    None,
                    [1, 1, 1],
                )),
            ),
            (
                "padded conv3d",
                host(B::conv3d_replicate_padded(
                    s.video,
                    s.conv_w,
                    None,
                    [1, 1, 1],
                    [2, 1, 1],
                )),
            ),
        ]
    }
}

/// Tuned operations on threads other than the one that created the engine: the TMA attention
/// once failed there (`CUDA_ERROR_INVALID_CONTEXT`: raw driver calls use the thread's current
/// context). On a freshly spawned thread, and on two threads at once, every operation gives
/// the bits it gave on the test's thread.
#[test]
fn tuned_ops_on_any_thread() {
    let _serial = serial();
    println!("{}", engine_summary(0));
    let inputs = ThreadInputs::new();
    let here = inputs.run();
    let compare = |other: Vec<(&'static str, Vec<f32>)>, thread: &str| {
        assert_eq!(other.len(), here.len());
        for ((name, want), (_, got)) in here.iter().zip(&other) {
            assert!(want.iter().all(|v| v.is_finite()), "{name}: not finite");
            assert!(
                want == got,
                "{name} on {thread} differs from the test's thread"
            );
        }
        println!("{thread}: {} tuned operations identical", other.len());
    };
    let fresh = {
        let inputs = inputs.clone();
        std::thread::spawn(move || inputs.run())
    };
    compare(fresh.join().expect("a fresh thread"), "a fresh thread");
    let pair: Vec<_> = (0..2)
        .map(|_| {
            let inputs = inputs.clone();
            std::thread::spawn(move || inputs.run())
        })
        .collect();
    for (n, thread) in pair.into_iter().enumerate() {
        compare(
            thread.join().expect("a thread of two"),
            &format!("thread {n} of two at once"),
        );
    }
}
