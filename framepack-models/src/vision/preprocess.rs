//! SigLIP's image preprocessing (`SiglipImageProcessor` of `flux_redux_bfl/feature_extractor`):
//! squash-resize the RGB image to 384×384 with PIL's BICUBIC, rescale by 1/255, normalise with
//! mean = std = 0.5.
//!
//! The resize reproduces Pillow's `Resample.c` for 8-bit images exactly: a separable
//! convolution with the Keys cubic (a = −0.5, support 2, widened by the scale factor when
//! downscaling, i.e. antialiased), coefficients normalised in f64 then rounded to 22-bit fixed
//! point, the horizontal pass first, and each pass rounded and clipped to `u8`.

use std::path::Path;

use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Deserializer};

use crate::error::ModelError;
use crate::ops::FramePackBackend;
use crate::weights::WeightError;

/// Pillow's `PRECISION_BITS` for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `Image.BICUBIC` (`resample = 3`).
pub const PIL_BICUBIC: u32 = 3;

/// Pillow's `bicubic_filter`: Keys' cubic convolution with a = −0.5.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point taps of one axis (`precompute_coeffs` + `normalize_coeffs_8bpc`).
pub(super) struct Taps {
    /// Per output sample: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output sample (22-bit fixed point).
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn bicubic(in_size: usize, out_size: usize) -> Self {
        Self::new(in_size, out_size, 2.0, bicubic_filter)
    }

    /// The taps of a Pillow filter (`filter`, defined on `[-filter_support, filter_support]`),
    /// widened by the scale factor when downscaling.
    pub(super) fn new(
        in_size: usize,
        out_size: usize,
        filter_support: f64,
        filter: fn(f64) -> f64,
    ) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter_support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let one = (1u32 << PRECISION_BITS) as f64;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(count) {
                let w = filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for (x, &kx) in k.iter().enumerate().take(count) {
                let kx = if ww != 0.0 { kx / ww } else { kx };
                weights[xx * ksize + x] = if kx < 0.0 {
                    (-0.5 + kx * one) as i32
                } else {
                    (0.5 + kx * one) as i32
                };
            }
            bounds.push((xmin as usize, count));
        }
        Self {
            bounds,
            weights,
            ksize,
        }
    }

    /// Pillow's `clip8` of one accumulated sample.
    fn clip8(acc: i32) -> u8 {
        if acc >= (1 << PRECISION_BITS << 8) {
            255
        } else if acc <= 0 {
            0
        } else {
            (acc >> PRECISION_BITS) as u8
        }
    }

    /// One output sample from the inputs `sample(i)` of its taps.
    fn apply(&self, out: usize, sample: impl Fn(usize) -> u8) -> u8 {
        let (start, count) = self.bounds[out];
        let k = &self.weights[out * self.ksize..out * self.ksize + count];
        let mut acc: i32 = 1 << (PRECISION_BITS - 1);
        for (i, &w) in k.iter().enumerate() {
            acc = acc.wrapping_add(i32::from(sample(start + i)).wrapping_mul(w));
        }
        Self::clip8(acc)
    }
}

/// Resizes interleaved 8-bit pixels (`[height][width][channels]`) to `out_width × out_height`
/// exactly like PIL's `Image.resize((out_width, out_height), Image.BICUBIC)`.
pub fn resize_bicubic(
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
        Taps::bicubic,
    )
}

/// Pillow's two-pass 8-bit resampling with the taps `taps(in_size, out_size)` of one axis.
pub(super) fn resample_8bpc(
    pixels: &[u8],
    (width, height, channels): (usize, usize, usize),
    (out_width, out_height): (usize, usize),
    taps: fn(usize, usize) -> Taps,
) -> Result<Vec<u8>, ModelError> {
    if width == 0 || height == 0 || channels == 0 {
        return Err(ModelError::input(
            "image",
            format!("empty image {width}x{height}x{channels}"),
        ));
    }
    if pixels.len() != width * height * channels {
        return Err(ModelError::input(
            "image",
            format!(
                "{} bytes for a {width}x{height} image with {channels} channels (expected {})",
                pixels.len(),
                width * height * channels
            ),
        ));
    }
    if out_width == 0 || out_height == 0 {
        return Err(ModelError::input(
            "size",
            format!("cannot resize to {out_width}x{out_height}"),
        ));
    }
    // Horizontal pass (skipped by Pillow when the width does not change).
    let (rows, row_width) = if out_width != width {
        let taps = taps(width, out_width);
        let mut out = vec![0u8; height * out_width * channels];
        for y in 0..height {
            let row = &pixels[y * width * channels..(y + 1) * width * channels];
            for x in 0..out_width {
                for c in 0..channels {
                    out[(y * out_width + x) * channels + c] =
                        taps.apply(x, |i| row[i * channels + c]);
                }
            }
        }
        (out, out_width)
    } else {
        (pixels.to_vec(), width)
    };
    if out_height == height {
        return Ok(rows);
    }
    // Vertical pass.
    let taps = taps(height, out_height);
    let stride = row_width * channels;
    let mut out = vec![0u8; out_height * stride];
    for y in 0..out_height {
        for i in 0..stride {
            out[y * stride + i] = taps.apply(y, |r| rows[r * stride + i]);
        }
    }
    Ok(out)
}

/// `size` of a preprocessor config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ImageSize {
    /// Output height (384).
    pub height: usize,
    /// Output width (384).
    pub width: usize,
}

/// The SigLIP image processor, as in `feature_extractor/preprocessor_config.json`; the
/// defaults are those of `lllyasviel/flux_redux_bfl` (= FLUX.1-Redux-dev).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SiglipImageProcessor {
    /// Whether to resize (true).
    pub do_resize: bool,
    /// Output size (384×384, aspect ratio not kept).
    pub size: ImageSize,
    /// PIL resampling filter; only 3 (BICUBIC).
    pub resample: u32,
    /// Whether to multiply by `rescale_factor` (true).
    pub do_rescale: bool,
    /// 1/255.
    pub rescale_factor: f64,
    /// Whether to normalise (true).
    pub do_normalize: bool,
    /// Per-channel mean (0.5).
    #[serde(deserialize_with = "per_channel")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (0.5).
    #[serde(deserialize_with = "per_channel")]
    pub image_std: [f32; 3],
}

/// A value given either once for all channels or per channel.
fn per_channel<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrThree {
        One(f32),
        Three([f32; 3]),
    }
    Ok(match OneOrThree::deserialize(d)? {
        OneOrThree::One(v) => [v; 3],
        OneOrThree::Three(v) => v,
    })
}

impl Default for SiglipImageProcessor {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ImageSize {
                height: 384,
                width: 384,
            },
            resample: PIL_BICUBIC,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }
}

impl SiglipImageProcessor {
    /// Reads and validates a `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| WeightError::io(path, e))?;
        let bad = |reason: String| WeightError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let config: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.do_resize && self.resample != PIL_BICUBIC {
            return Err(format!(
                "resample {} is not supported (only {PIL_BICUBIC}, PIL BICUBIC)",
                self.resample
            ));
        }
        if self.size.height == 0 || self.size.width == 0 {
            return Err(format!("size {:?} is empty", self.size));
        }
        if self.image_std.contains(&0.0) {
            return Err("image_std must not be zero".into());
        }
        Ok(())
    }

    /// The model input of an RGB image (`[height][width][3]` bytes, the bucket-resized image
    /// FramePack gives the VAE): `[3, H, W]` values in `[-1, 1]`, channel-major.
    ///
    /// Steps as the reference: PIL bicubic squash to `size` on `u8`, `f32(f64(v) · 1/255)`,
    /// `(x − mean) / std` in f32.
    pub fn pixel_values(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<(Vec<f32>, [usize; 2]), ModelError> {
        self.validate()
            .map_err(|reason| ModelError::input("preprocessor", reason))?;
        let (pixels, w, h) = if self.do_resize {
            let (w, h) = (self.size.width, self.size.height);
            (resize_bicubic(rgb, width, height, 3, w, h)?, w, h)
        } else {
            if rgb.len() != width * height * 3 {
                return Err(ModelError::input(
                    "image",
                    format!("{} bytes for a {width}x{height} RGB image", rgb.len()),
                ));
            }
            (rgb.to_vec(), width, height)
        };
        let mut out = vec![0f32; 3 * h * w];
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                let mut x = if self.do_rescale {
                    (f64::from(v) * self.rescale_factor) as f32
                } else {
                    f32::from(v)
                };
                if self.do_normalize {
                    x = (x - self.image_mean[c]) / self.image_std[c];
                }
                out[c * h * w + i] = x;
            }
        }
        Ok((out, [h, w]))
    }

    /// [`Self::pixel_values`] as a `[1, 3, H, W]` tensor in `dtype` (FramePack: fp16).
    pub fn preprocess<B: FramePackBackend>(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Tensor<B, 4>, ModelError> {
        let (values, [h, w]) = self.pixel_values(rgb, width, height)?;
        Ok(
            Tensor::<B, 4>::from_data(TensorData::new(values, [1, 3, h, w]), (device, DType::F32))
                .cast(dtype),
        )
    }
}
