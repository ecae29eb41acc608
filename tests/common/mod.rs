//! Shared by the integration tests: a tiny pipeline, test images, and an MP4 reader (the `mp4`
//! demuxer + OpenH264's decoder) to check what was written.

#![allow(dead_code)]

use std::io::BufReader;
use std::path::Path;

use framepack::{InputImage, Pipeline, Request, Resolution};

/// A colourful procedural RGB image (gradients and a checkerboard).
pub fn pattern(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let checker = ((x / 8 + y / 8 + seed) % 2) * 60;
            out.push(((x * 255 / width.max(1)) as u8).wrapping_add(checker as u8));
            out.push(((y * 255 / height.max(1)) as u8).wrapping_add((seed * 40) as u8));
            out.push((((x + y) * 3) as u8).wrapping_add(checker as u8));
        }
    }
    out
}

pub fn image(width: u32, height: u32, seed: u32) -> InputImage {
    InputImage::from_rgb8(width, height, pattern(width, height, seed)).unwrap()
}

/// Writes a PNG test image and returns its path.
pub fn png(dir: &Path, name: &str, width: u32, height: u32, seed: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    image::RgbImage::from_raw(width, height, pattern(width, height, seed))
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

/// The tiny random-weight pipeline in f32 on the CPU.
pub fn tiny_pipeline() -> Pipeline {
    Pipeline::builder()
        .tiny_random(0)
        .dtype(framepack::DType::F32)
        .build()
        .unwrap()
}

/// A small, fast request: 32 tall × 48 wide, 3 steps.
pub fn small_request(seconds: f64) -> Request {
    Request::new(image(96, 64, 1), "a paper boat drifts on a pond")
        .resolution(Resolution::Exact {
            height: 32,
            width: 48,
        })
        .seconds(seconds)
        .steps(3)
}

/// An MP4 read back: container facts and every decoded frame as RGB.
pub struct Mp4Video {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub samples: u32,
    pub frames: Vec<Vec<u8>>,
}

/// Demuxes the first video track with the `mp4` crate and decodes every sample with OpenH264.
pub fn read_mp4(path: &Path) -> Mp4Video {
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut mp4 = mp4::Mp4Reader::read_header(BufReader::new(file), size).unwrap();
    let track = mp4
        .tracks()
        .values()
        .find(|t| matches!(t.track_type(), Ok(mp4::TrackType::Video)))
        .expect("a video track");
    let (id, width, height) = (track.track_id(), track.width(), track.height());
    let fps = track.frame_rate();
    let samples = track.sample_count();
    let sps = track.sequence_parameter_set().unwrap().to_vec();
    let pps = track.picture_parameter_set().unwrap().to_vec();
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let mut frames = Vec::new();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    for i in 1..=samples {
        let sample = mp4.read_sample(id, i).unwrap().expect("sample");
        // AVCC (4-byte lengths) to Annex B, parameter sets in front of the first sample.
        let mut annexb = Vec::new();
        if i == 1 {
            for ps in [&sps, &pps] {
                annexb.extend_from_slice(&[0, 0, 0, 1]);
                annexb.extend_from_slice(ps);
            }
        }
        let bytes = sample.bytes.as_ref();
        let mut p = 0;
        while p + 4 <= bytes.len() {
            let n = u32::from_be_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(&bytes[p + 4..p + 4 + n]);
            p += 4 + n;
        }
        if let Some(yuv) = decoder.decode(&annexb).unwrap() {
            yuv.write_rgb8(&mut rgb);
            frames.push(rgb.clone());
        }
    }
    for yuv in decoder.flush_remaining().unwrap() {
        yuv.write_rgb8(&mut rgb);
        frames.push(rgb.clone());
    }
    Mp4Video {
        width: u32::from(width),
        height: u32::from(height),
        fps,
        samples,
        frames,
    }
}

/// Peak signal-to-noise ratio of two 8-bit buffers, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// PSNR of the 2×2 box averages of two RGB frames (`width × height`): what survives 4:2:0
/// chroma subsampling, so that noise-like content compares fairly.
pub fn psnr_2x2(a: &[u8], b: &[u8], width: usize, height: usize) -> f64 {
    let down = |v: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() / 4);
        for y in (0..height).step_by(2) {
            for x in (0..width).step_by(2) {
                for c in 0..3 {
                    let at = |yy: usize, xx: usize| u32::from(v[(yy * width + xx) * 3 + c]);
                    let sum = at(y, x) + at(y, x + 1) + at(y + 1, x) + at(y + 1, x + 1);
                    out.push(((sum + 2) / 4) as u8);
                }
            }
        }
        out
    };
    psnr(&down(a), &down(b))
}

/// Files in `dir`, sorted (hidden ones included).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `procedural_image` of `tools/reference/encoders_fixture.py` / `lanczos_fixture.py`: uint8 RGB
/// `[height][width][3]` with a sawtooth, a checkerboard and hashed noise.
pub fn procedural_image(width: usize, height: usize, seed: u64) -> Vec<u8> {
    const MASK: u64 = 0xFFFF_FFFF;
    let mut out = Vec::with_capacity(width * height * 3);
    for y in 0..height as u64 {
        for x in 0..width as u64 {
            for c in 0..3u64 {
                let mut h = ((x * 73_856_093) & MASK)
                    ^ ((y * 19_349_663) & MASK)
                    ^ ((c * 83_492_791) & MASK)
                    ^ seed;
                h ^= h >> 13;
                h = (h * 0x5BD1_E995) & MASK;
                h ^= h >> 15;
                let mut v = ((x * 3 + y * 2 + c * 40) % 256) as i64;
                if (x / 16 + y / 16) % 2 == 0 {
                    v = 255 - v;
                }
                v += (h % 33) as i64 - 16;
                out.push(v.clamp(0, 255) as u8);
            }
        }
    }
    out
}
