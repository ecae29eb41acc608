//! Pillow's `Image.LANCZOS` for 8-bit images, bit for bit: how FramePack brings an input image to
//! its bucket (`resize_and_center_crop`, spec `pipeline.md` §1.3).
//!
//! The same separable fixed-point resampler as [`resize_bicubic`](super::resize_bicubic)
//! (Pillow's `Resample.c`), with Pillow's truncated-sinc filter of support 3, widened by the scale
//! factor when downscaling (antialiasing).

use super::preprocess::{resample_8bpc, Taps};
use crate::error::ModelError;

/// Pillow's `sinc_filter`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Pillow's `lanczos_filter`: `sinc(x)·sinc(x/3)` on `[-3, 3)`.
fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

fn lanczos_taps(in_size: usize, out_size: usize) -> Taps {
    Taps::new(in_size, out_size, 3.0, lanczos_filter)
}

/// Resizes interleaved 8-bit pixels (`[height][width][channels]`) to `out_width × out_height`
/// exactly like PIL's `Image.resize((out_width, out_height), Image.LANCZOS)`.
///
/// ```
/// use framepack_models::vision::resize_lanczos;
/// let gray = vec![128u8; 4 * 3 * 3];
/// let out = resize_lanczos(&gray, 4, 3, 3, 8, 6)?;
/// assert_eq!(out.len(), 8 * 6 * 3);
/// assert!(out.iter().all(|&v| v == 128)); // a flat image stays flat
/// # Ok::<(), framepack_models::ModelError>(())
/// ```
pub fn resize_lanczos(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<u8>, ModelError> {
    resample_8bpc(
        pixels,
        (width, height, channels),
        (out_width, out_height),
        lanczos_taps,
    )
}
