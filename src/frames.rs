//! Pixels: the decoded clip as FramePack keeps it while sections are joined (fp16 in `[-1, 1]`,
//! spec §2.5), the final 8-bit frames (spec §7), and the latent preview.

use framepack_core::blend::{soft_append_weights, Join};
use half::f16;
use image::RgbImage;

use crate::error::{Error, Result};

/// The clip decoded so far: one `[3][height][width]` fp16 plane set per frame, values nominally
/// in `[-1, 1]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clip {
    width: usize,
    height: usize,
    frames: Vec<Vec<f16>>,
}

impl Clip {
    /// Splits a VAE decode `[1, 3, T, H, W]` (row-major values) into frames.
    pub(crate) fn from_decoded(values: Vec<f16>, dims: [usize; 5]) -> Result<Self> {
        let [b, c, t, h, w] = dims;
        if b != 1 || c != 3 || values.len() != c * t * h * w {
            return Err(Error::TensorData {
                what: "decoded pixels",
                reason: format!("{} values for shape {dims:?}", values.len()),
            });
        }
        let plane = h * w;
        let frames = (0..t)
            .map(|f| {
                let mut frame = Vec::with_capacity(3 * plane);
                for ch in 0..3 {
                    let start = (ch * t + f) * plane;
                    frame.extend_from_slice(&values[start..start + plane]);
                }
                frame
            })
            .collect();
        Ok(Self {
            width: w,
            height: h,
            frames,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Joins a section's decode to the clip as the reference's loops do (spec §2.5):
    /// `Before` is `soft_append_bcthw(current, clip, overlap)` (inverted: the new frames are
    /// earlier in time), `After` is `soft_append_bcthw(clip, current, overlap)` (F1).
    pub(crate) fn join(&mut self, current: Clip, join: Join, overlap: usize) -> Result<()> {
        let (earlier, later) = match join {
            Join::First => {
                *self = current;
                return Ok(());
            }
            Join::Before => (current, std::mem::take(self)),
            Join::After => (std::mem::take(self), current),
        };
        *self = soft_append(earlier, later, overlap)?;
        Ok(())
    }

    /// Frame `i` as 8-bit RGB (`[height][width][3]`): `clamp(x, -1, 1)·127.5 + 127.5` in f32,
    /// truncated to `u8` as torch's cast does.
    pub(crate) fn frame_rgb(&self, i: usize) -> Vec<u8> {
        let plane = self.width * self.height;
        let frame = &self.frames[i];
        let mut out = vec![0u8; plane * 3];
        for p in 0..plane {
            for c in 0..3 {
                out[p * 3 + c] = to_u8(frame[c * plane + p]);
            }
        }
        out
    }

    /// Frame `i` as an image.
    pub(crate) fn image(&self, i: usize) -> RgbImage {
        RgbImage::from_raw(self.width as u32, self.height as u32, self.frame_rgb(i))
            .unwrap_or_default()
    }

    /// Every frame as 8-bit RGB.
    pub(crate) fn to_frames(&self) -> Frames {
        let mut data = Vec::with_capacity(self.frames.len() * self.width * self.height * 3);
        for i in 0..self.frames.len() {
            data.extend(self.frame_rgb(i));
        }
        Frames {
            width: self.width as u32,
            height: self.height as u32,
            data,
        }
    }

    /// Up to `n` frames evenly spaced over the clip, side by side.
    pub(crate) fn strip(&self, n: usize) -> RgbImage {
        let count = self.frames.len().min(n.max(1));
        let (w, h) = (self.width, self.height);
        let mut out = RgbImage::new((w * count) as u32, h as u32);
        for k in 0..count {
            let i = if count == 1 {
                0
            } else {
                k * (self.frames.len() - 1) / (count - 1)
            };
            let rgb = self.frame_rgb(i);
            for y in 0..h {
                for x in 0..w {
                    let p = (y * w + x) * 3;
                    out.put_pixel(
                        (k * w + x) as u32,
                        y as u32,
                        image::Rgb([rgb[p], rgb[p + 1], rgb[p + 2]]),
                    );
                }
            }
        }
        out
    }
}

fn to_u8(x: f16) -> u8 {
    // Two separately rounded f32 operations, as torch evaluates `x * 127.5 + 127.5`; `as u8`
    // truncates (and saturates; NaN becomes 0).
    let v = x.to_f32().clamp(-1.0, 1.0) * 127.5;
    (v + 127.5) as u8
}

/// `soft_append_bcthw(earlier, later, n)` with the reference's fp16 arithmetic: weights
/// `w = linspace(1, 0, n)` in fp16; every product, `1 − w` and the sum rounded to fp16.
fn soft_append(mut earlier: Clip, later: Clip, n: usize) -> Result<Clip> {
    if (earlier.width, earlier.height) != (later.width, later.height) {
        return Err(Error::TensorData {
            what: "decoded pixels",
            reason: "sections of different sizes".into(),
        });
    }
    if n == 0 {
        earlier.frames.extend(later.frames);
        return Ok(earlier);
    }
    if earlier.len() < n || later.len() < n {
        return Err(Error::TensorData {
            what: "decoded pixels",
            reason: format!(
                "cannot cross-fade {n} frames between clips of {} and {} frames",
                earlier.len(),
                later.len()
            ),
        });
    }
    let weights = soft_append_weights(n as u32);
    let start = earlier.len() - n;
    let mut later_frames = later.frames.into_iter();
    for (i, &weight) in weights.iter().enumerate() {
        let w = f16::from_f32(weight);
        let one_minus = f16::from_f32(1.0 - w.to_f32());
        let b = later_frames.next().unwrap_or_default();
        let a = &mut earlier.frames[start + i];
        for (a, b) in a.iter_mut().zip(&b) {
            let t1 = f16::from_f32(w.to_f32() * a.to_f32());
            let t2 = f16::from_f32(one_minus.to_f32() * b.to_f32());
            *a = f16::from_f32(t1.to_f32() + t2.to_f32());
        }
    }
    earlier.frames.extend(later_frames);
    Ok(earlier)
}

/// FramePack's live preview of a step's latents (spec §7, `vae_decode_fake`): a 1×1 projection
/// of the 16 latent channels to RGB plus a bias, clamped to `[0, 1]`, ×255, laid out as the
/// window's frames side by side at latent resolution.
pub(crate) fn latent_preview(values: &[f32], dims: [usize; 5]) -> Result<RgbImage> {
    const FACTORS: [[f32; 3]; 16] = [
        [-0.0395, -0.0331, 0.0445],
        [0.0696, 0.0795, 0.0518],
        [0.0135, -0.0945, -0.0282],
        [0.0108, -0.0250, -0.0765],
        [-0.0209, 0.0032, 0.0224],
        [-0.0804, -0.0254, -0.0639],
        [-0.0991, 0.0271, -0.0669],
        [-0.0646, -0.0422, -0.0400],
        [-0.0696, -0.0595, -0.0894],
        [-0.0799, -0.0208, -0.0375],
        [0.1166, 0.1627, 0.0962],
        [0.1165, 0.0432, 0.0407],
        [-0.2315, -0.1920, -0.1355],
        [-0.0270, 0.0401, -0.0821],
        [-0.0616, -0.0997, -0.0727],
        [0.0249, -0.0469, -0.1703],
    ];
    const BIAS: [f32; 3] = [0.0259, -0.0192, -0.0761];
    let [b, c, t, h, w] = dims;
    if b == 0 || c != 16 || values.len() != b * c * t * h * w {
        return Err(Error::TensorData {
            what: "preview latents",
            reason: format!("{} values for shape {dims:?}", values.len()),
        });
    }
    let plane = t * h * w;
    let mut out = RgbImage::new((t * w) as u32, h as u32);
    for f in 0..t {
        for y in 0..h {
            for x in 0..w {
                let pos = (f * h + y) * w + x;
                let mut rgb = BIAS;
                for (ch, factors) in FACTORS.iter().enumerate() {
                    let v = values[ch * plane + pos];
                    for k in 0..3 {
                        rgb[k] += v * factors[k];
                    }
                }
                let px = rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8);
                out.put_pixel((f * w + x) as u32, y as u32, image::Rgb(px));
            }
        }
    }
    Ok(out)
}

/// The frames of a video, 8-bit RGB, row-major `[frame][height][width][3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl Frames {
    /// Frames from raw RGB bytes (`data.len()` must be a multiple of `width·height·3`).
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let frame = width as usize * height as usize * 3;
        if frame == 0 || !data.len().is_multiple_of(frame) {
            return Err(Error::invalid(
                "frames",
                format!(
                    "{} bytes are not whole {width}x{height} RGB frames",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.data.len() / self.frame_len().max(1)
    }

    /// Whether there is no frame.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// The RGB bytes of frame `i` (`[height][width][3]`).
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.frame_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// Frame `i` as an image.
    pub fn image(&self, i: usize) -> RgbImage {
        RgbImage::from_raw(self.width, self.height, self.frame(i).to_vec())
            .unwrap_or_else(|| RgbImage::new(self.width, self.height))
    }

    /// All bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(values: &[f32], frames: usize) -> Clip {
        // 1x1 pixel frames, the same value in all three channels.
        let mut v = vec![f16::ZERO; 3 * frames];
        for c in 0..3 {
            for (f, &x) in values.iter().enumerate() {
                v[c * frames + f] = f16::from_f32(x);
            }
        }
        Clip::from_decoded(v, [1, 3, frames, 1, 1]).unwrap()
    }

    fn values(c: &Clip) -> Vec<f32> {
        c.frames.iter().map(|f| f[0].to_f32()).collect()
    }

    #[test]
    fn soft_append_cross_fades_the_overlap() {
        // earlier = [1, 1, 1], later = [0, 0, 0, 0], overlap 3: weights 1, 0.5, 0.
        let out = soft_append(clip(&[1.0; 3], 3), clip(&[0.0; 4], 4), 3).unwrap();
        assert_eq!(values(&out), vec![1.0, 0.5, 0.0, 0.0]);
        // Length |A| + |B| - n, as the reference.
        let out = soft_append(clip(&[0.25; 5], 5), clip(&[0.75; 4], 4), 3).unwrap();
        assert_eq!(out.len(), 6);
        assert_eq!(values(&out), vec![0.25, 0.25, 0.25, 0.5, 0.75, 0.75]);
    }

    #[test]
    fn join_direction_follows_the_mode() {
        let mut c = clip(&[1.0; 3], 3);
        // Inverted: the new section is earlier in time and goes in front.
        c.join(clip(&[-1.0; 3], 3), Join::Before, 1).unwrap();
        assert_eq!(values(&c), vec![-1.0, -1.0, -1.0, 1.0, 1.0]);
        // F1: the new section goes behind.
        c.join(clip(&[0.5; 2], 2), Join::After, 1).unwrap();
        assert_eq!(values(&c), vec![-1.0, -1.0, -1.0, 1.0, 1.0, 0.5]);
        assert!(c.clone().join(clip(&[0.0; 2], 2), Join::After, 3).is_err());
    }

    #[test]
    fn blend_rounds_every_operation_to_fp16() {
        // w = 31/32 at i = 1 of 33: t1 = f16(w·a), t2 = f16((1−w)·b), sum rounded again.
        let a = 0.3f32;
        let b = -0.7f32;
        let mut earlier = vec![a; 33];
        earlier.insert(0, 0.0);
        let out = soft_append(clip(&earlier, 34), clip(&[b; 33], 33), 33).unwrap();
        let w = f16::from_f32(31.0 / 32.0);
        let om = f16::from_f32(1.0 - w.to_f32());
        let ah = f16::from_f32(a);
        let bh = f16::from_f32(b);
        let t1 = f16::from_f32(w.to_f32() * ah.to_f32());
        let t2 = f16::from_f32(om.to_f32() * bh.to_f32());
        let want = f16::from_f32(t1.to_f32() + t2.to_f32());
        assert_eq!(out.frames[2][0], want);
    }

    #[test]
    fn uint8_conversion_truncates_like_torch() {
        assert_eq!(to_u8(f16::from_f32(-1.0)), 0);
        assert_eq!(to_u8(f16::from_f32(1.0)), 255);
        assert_eq!(to_u8(f16::from_f32(2.0)), 255);
        assert_eq!(to_u8(f16::from_f32(0.0)), 127); // 127.5 truncates to 127
        assert_eq!(to_u8(f16::NAN), 0);
        // 0.00390625 * 127.5 + 127.5 = 127.998..: truncated, not rounded.
        assert_eq!(to_u8(f16::from_f32(0.003_906_25)), 127);
    }

    #[test]
    fn preview_projects_latents_to_rgb() {
        // Zero latents give the bias: clamp([0.0259, -0.0192, -0.0761]) * 255.
        let img = latent_preview(&vec![0.0; 16 * 2 * 3 * 4], [1, 16, 2, 3, 4]).unwrap();
        assert_eq!(img.dimensions(), (8, 3));
        assert_eq!(img.get_pixel(5, 1).0, [6, 0, 0]);
        // Channel 10 = 1 everywhere: bias + [0.1166, 0.1627, 0.0962].
        let mut v = vec![0.0; 16 * 24];
        v[10 * 24..11 * 24].fill(1.0);
        let img = latent_preview(&v, [1, 16, 2, 3, 4]).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [36, 36, 5]);
        assert!(latent_preview(&[0.0; 5], [1, 16, 1, 1, 1]).is_err());
    }
}
