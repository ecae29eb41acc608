//! FP8 weights: e4m3 codes (`float8_e4m3fn`: 1 sign, 4 exponent, 3 mantissa bits, bias 7, no
//! infinities, largest finite 448) with one fp32 scale per output row.
//!
//! A linear layer's weight `[out, in]` is stored as `codes[out, in]` (one byte each) and
//! `scales[out]`, with `weight[r, c] ≈ e4m3(codes[r, c]) · scales[r]`. That halves the memory
//! and the host-to-device traffic of the transformer's blocks against bf16. Each row is scaled
//! so that its largest magnitude lands on 448, which keeps the relative rounding error of every
//! weight at most 2⁻⁴ (3 mantissa bits) above the subnormal range.
//!
//! Before a product the weight is expanded back to the compute dtype
//! ([`FramePackBackend::dequantize_fp8`]: a table lookup on the portable path, one kernel on
//! CUDA), and the GEMM runs as usual.

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::ops::FramePackBackend;

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The value of an e4m3 code (`0x7f` and `0xff` are NaN).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((code >> 3) & 0x0f) as i32;
    let mantissa = (code & 0x07) as f32;
    if code & 0x7f == 0x7f {
        return f32::NAN;
    }
    let magnitude = if exponent == 0 {
        mantissa / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    };
    sign * magnitude
}

/// The nearest e4m3 code to `x` (ties to even), saturating at ±448; NaN gives `0x7f`.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    let magnitude = if a >= E4M3_MAX {
        0x7e
    } else if a < 2f32.powi(-6) {
        // Subnormal range, steps of 2⁻⁹; rounding up to 8 steps gives the smallest normal
        // (code 0x08), which is the right code.
        (a * 512.0).round_ties_even() as u8
    } else {
        // Round the 23-bit fp32 mantissa to 3 bits, ties to even, in the integer domain.
        let bits = a.to_bits();
        let lsb = (bits >> 20) & 1;
        let rounded = (bits + 0x7ffff + lsb) & !0xfffff;
        let exponent = (rounded >> 23) as i32 - 127 + 7;
        let mantissa = (rounded >> 20) & 0x07;
        if exponent > 15 || (exponent == 15 && mantissa == 7) {
            0x7e
        } else {
            ((exponent as u32) << 3 | mantissa) as u8
        }
    };
    sign | magnitude
}

/// All 256 code values, indexed by code: the portable dequantisation table.
pub fn e4m3_table() -> [f32; 256] {
    std::array::from_fn(|code| e4m3_to_f32(code as u8))
}

/// An FP8 weight on the host: what is quantised at load, streamed, or read from an FP8 file.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Host {
    /// `[rows, cols]` e4m3 codes, row-major.
    pub codes: Vec<u8>,
    /// One scale per row.
    pub scales: Vec<f32>,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
}

impl Fp8Host {
    /// Quantises a row-major `[rows, cols]` matrix with one absmax scale per row, on up to
    /// `available_parallelism` threads (the transformer has 12.8 billion weights).
    pub fn quantize(values: &[f32], shape: [usize; 2]) -> Self {
        let [rows, cols] = shape;
        assert_eq!(
            values.len(),
            rows * cols,
            "fp8: values do not match [{rows}, {cols}]"
        );
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0f32; rows];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rows_per_thread = rows.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let chunks = codes
                .chunks_mut(rows_per_thread * cols.max(1))
                .zip(scales.chunks_mut(rows_per_thread))
                .zip(values.chunks(rows_per_thread * cols.max(1)));
            for ((codes, scales), values) in chunks {
                scope.spawn(move || {
                    for ((codes, scale), row) in codes
                        .chunks_mut(cols)
                        .zip(scales.iter_mut())
                        .zip(values.chunks(cols))
                    {
                        let absmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                        *scale = if absmax > 0.0 && absmax.is_finite() {
                            absmax / E4M3_MAX
                        } else {
                            1.0
                        };
                        let inv = 1.0 / *scale;
                        for (code, v) in codes.iter_mut().zip(row) {
                            *code = f32_to_e4m3(v * inv);
                        }
                    }
                });
            }
        });
        Self {
            codes,
            scales,
            shape,
        }
    }

    /// Codes already in e4m3 (an FP8 checkpoint, as saved by `weight.to(torch.float8_e4m3fn)`):
    /// every row's scale is one.
    pub fn from_codes(codes: Vec<u8>, shape: [usize; 2]) -> Self {
        Self {
            codes,
            scales: vec![1.0; shape[0]],
            shape,
        }
    }

    /// The weight's values, `codes · scales` row by row.
    pub fn dequantize(&self) -> Vec<f32> {
        let table = e4m3_table();
        let cols = self.shape[1];
        self.codes
            .chunks(cols.max(1))
            .zip(&self.scales)
            .flat_map(|(row, s)| row.iter().map(move |c| table[*c as usize] * s))
            .collect()
    }

    /// Moves the weight to `device`; it expands to `dtype` at every use.
    pub fn upload<B: Backend>(self, device: &B::Device, dtype: DType) -> Fp8Weight<B> {
        let [rows, cols] = self.shape;
        let codes = Tensor::from_data(
            TensorData::new(self.codes, [rows, cols]),
            (device, DType::U8),
        );
        let scales = Tensor::from_data(TensorData::new(self.scales, [rows]), (device, DType::F32));
        Fp8Weight {
            codes,
            scales,
            dtype,
        }
    }
}

/// An FP8 weight on the device.
#[derive(Debug, Clone)]
pub struct Fp8Weight<B: Backend> {
    /// `[out, in]` e4m3 codes (`u8`).
    pub codes: Tensor<B, 2, Int>,
    /// `[out]` fp32 scales.
    pub scales: Tensor<B, 1>,
    /// The compute dtype the weight expands to.
    pub dtype: DType,
}

impl<B: FramePackBackend> Fp8Weight<B> {
    /// The weight in its compute dtype, `[out, in]`.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        B::dequantize_fp8(self.codes.clone(), self.scales.clone(), self.dtype)
    }
}

impl<B: Backend> Fp8Weight<B> {
    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.codes.dims()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let v = e4m3_to_f32(code);
            if v.is_nan() {
                assert!(code & 0x7f == 0x7f, "code {code:#x}");
                continue;
            }
            let back = f32_to_e4m3(v);
            // +0 and -0 are distinct codes with equal values.
            assert_eq!(e4m3_to_f32(back), v, "code {code:#x} -> {v} -> {back:#x}");
            if v != 0.0 {
                assert_eq!(back, code, "code {code:#x}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_saturates() {
        // Between 1.0 (0x38) and 1.125 (0x39): halfway goes to the even code.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.0626), 0x39);
        // Between 1.125 (0x39) and 1.25 (0x3a): halfway goes up to the even code.
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
        // Subnormal halfway between 1 and 2 steps of 2^-9 goes to 2 steps.
        assert_eq!(f32_to_e4m3(1.5 * 2f32.powi(-9)), 0x02);
        // Rounding up across an exponent boundary: 15.5 -> 16 (0x58).
        assert_eq!(f32_to_e4m3(15.5), 0x58);
        assert_eq!(f32_to_e4m3(1e6), 0x7e);
        assert_eq!(f32_to_e4m3(-1e6), 0xfe);
        assert_eq!(f32_to_e4m3(440.0), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
        // Brute force against the nearest value in the table (ties: even code).
        let table = e4m3_table();
        let mut x = -500.0f32;
        while x < 500.0 {
            let code = f32_to_e4m3(x);
            let err = (table[code as usize] - x.clamp(-448.0, 448.0)).abs();
            let best = (0..=255u8)
                .filter(|c| c & 0x7f != 0x7f)
                .map(|c| (table[c as usize] - x.clamp(-448.0, 448.0)).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!(err, best, "x = {x}: code {code:#x}");
            x += 0.0137;
        }
    }

    #[test]
    fn rows_are_scaled_to_their_absmax() {
        let values: Vec<f32> = (0..6 * 70)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let mut values = values;
        values[70..140].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
        let q = Fp8Host::quantize(&values, [6, 70]);
        assert_eq!(q.scales[1], 1.0);
        let back = q.dequantize();
        for (r, row) in values.chunks(70).enumerate() {
            let absmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if absmax > 0.0 {
                assert_eq!(q.scales[r], absmax / 448.0);
            }
            for (v, b) in row.iter().zip(&back[r * 70..(r + 1) * 70]) {
                // 3 mantissa bits: relative error <= 2^-4 above the subnormals.
                let tol = (v.abs() / 16.0).max(q.scales[r] * 2f32.powi(-10));
                assert!((v - b).abs() <= tol * 1.0001, "row {r}: {v} -> {b}");
            }
        }
    }
}
