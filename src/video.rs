//! Writing results: H.264 MP4 (OpenH264 + a pure-Rust muxer, no ffmpeg), PNG frames, and the
//! all-or-nothing file handling every output goes through.
//!
//! **Atomic writes.** Every output is first written to a hidden temporary file (or folder) next
//! to its destination (`.NAME.PID.N.tmp`), flushed to disk, and only then renamed into place,
//! so a crash, an error or Ctrl-C never leaves a half-written video behind: the destination
//! either holds the previous file or the complete new one. Temporaries of failed writes are
//! removed; [`remove_temporaries`] removes those of writes in flight (for a process that must
//! exit at once, e.g. on a second Ctrl-C).
//!
//! **Quality (`crf`).** The reference writes with libx264 at `crf 16`. OpenH264 has no
//! constant-rate-factor mode and only the (Constrained) Baseline profile (no B-frames, no
//! CABAC), so here `crf` is the **fixed quantiser (QP)** of every frame, `0..=51`: lower is
//! better and bigger. Values below 12 act as 12, the lowest QP OpenH264's rate control allows
//! (there is no lossless mode). The same number does not give the same result as x264's CRF,
//! which varies the QP per frame: at QP 16 a FramePack video is visually transparent but
//! larger than x264's CRF 16 file. Measured on a 30-frame 608×640 test clip (smooth moving
//! gradients), luma PSNR against the input: QP 12: 52.7 dB, 16: 51.9 dB, 23: 49.5 dB,
//! 30: 46.5 dB, 40: 39.5 dB, 51: 28.0 dB. The colour conversion is BT.601 limited range (what
//! swscale does for the reference), signalled in the stream's VUI.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode,
    VuiConfig,
};
use openh264::formats::YUVBuffer;
use openh264::{OpenH264API, Timestamp};

use crate::error::{Error, Result};
use crate::frames::Frames;

/// Frames per second of every FramePack video.
pub const FPS: u32 = framepack_core::schedule::FPS;

/// The reference's default quality (`mp4_crf = 16`).
pub const DEFAULT_CRF: u8 = 16;

/// The largest accepted `crf` (H.264's largest QP).
pub const MAX_CRF: u8 = 51;

/// The lowest QP OpenH264's rate control uses; smaller `crf` values act as this one.
pub const MIN_QP: u8 = 12;

static TEMPORARIES: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary files and folders of writes still in flight. Call it before exiting
/// the process without unwinding (the writes themselves clean up on error).
pub fn remove_temporaries() {
    let paths: Vec<PathBuf> = match TEMPORARIES.lock() {
        Ok(mut set) => std::mem::take(&mut *set).into_iter().collect(),
        Err(_) => return,
    };
    for p in paths {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn register(path: &Path) {
    if let Ok(mut set) = TEMPORARIES.lock() {
        set.insert(path.to_path_buf());
    }
}

fn unregister(path: &Path) {
    if let Ok(mut set) = TEMPORARIES.lock() {
        set.remove(path);
    }
}

/// An output written to a temporary path, waiting to be renamed to its destination. Dropping it
/// without [`commit`](Self::commit) removes the temporary.
#[derive(Debug)]
pub(crate) struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Reserves a temporary path next to `target` (creating the destination folder).
    pub(crate) fn new(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::write(target, "the path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::write(target, e))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        register(&temp);
        Ok(Self {
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The temporary path.
    pub(crate) fn path(&self) -> &Path {
        &self.temp
    }

    /// The destination.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Writes a file through `write` and flushes it to disk.
    pub(crate) fn file(
        target: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<Self> {
        let staged = Self::new(target)?;
        let file = File::create(&staged.temp).map_err(|e| Error::write(target, e))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::write(target, e.error()))?;
        file.sync_all().map_err(|e| Error::write(target, e))?;
        Ok(staged)
    }

    /// Renames the temporary into place (replacing a previous file; a folder destination must
    /// not exist or be empty).
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        if self.target.is_dir() && self.temp.is_file() {
            return Err(Error::write(&self.target, "a folder of that name exists"));
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| {
            Error::write(
                &self.target,
                format!("cannot move the finished file into place: {e}"),
            )
        })?;
        self.committed = true;
        unregister(&self.temp);
        Ok(self.target.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            if self.temp.is_dir() {
                let _ = std::fs::remove_dir_all(&self.temp);
            } else {
                let _ = std::fs::remove_file(&self.temp);
            }
            unregister(&self.temp);
        }
    }
}

/// BT.601 limited-range RGB → I420 (Y plane, then U and V at half resolution from 2×2 averages),
/// rounded.
fn rgb_to_i420(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let (cw, ch) = (width / 2, height / 2);
    let mut out = vec![0u8; width * height + 2 * cw * ch];
    let (y_plane, chroma) = out.split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    for y in 0..height {
        for x in 0..width {
            let p = (y * width + x) * 3;
            let (r, g, b) = (
                i32::from(rgb[p]),
                i32::from(rgb[p + 1]),
                i32::from(rgb[p + 2]),
            );
            y_plane[y * width + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
            for dy in 0..2 {
                for dx in 0..2 {
                    let p = ((2 * cy + dy) * width + 2 * cx + dx) * 3;
                    r += i32::from(rgb[p]);
                    g += i32::from(rgb[p + 1]);
                    b += i32::from(rgb[p + 2]);
                }
            }
            // Sums of four: the coefficients are scaled by 1/4 through the shift (>> 10).
            let u = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128;
            let v = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128;
            u_plane[cy * cw + cx] = u.clamp(0, 255) as u8;
            v_plane[cy * cw + cx] = v.clamp(0, 255) as u8;
        }
    }
    out
}

/// Encodes `frames` as an H.264 MP4 at `fps` with a fixed quantiser `crf` (see the module
/// docs) and writes it atomically to `path`.
///
/// ```no_run
/// # use framepack::video::{write_mp4, DEFAULT_CRF, FPS};
/// # let frames: framepack::Frames = unimplemented!();
/// write_mp4("clip.mp4", &frames, FPS, DEFAULT_CRF)?;
/// # Ok::<(), framepack::Error>(())
/// ```
pub fn write_mp4(path: impl AsRef<Path>, frames: &Frames, fps: u32, crf: u8) -> Result<PathBuf> {
    stage_mp4(path.as_ref(), frames, fps, crf)?.commit()
}

pub(crate) fn stage_mp4(path: &Path, frames: &Frames, fps: u32, crf: u8) -> Result<Staged> {
    if crf > MAX_CRF {
        return Err(Error::invalid(
            "crf",
            format!("{crf} is outside 0..={MAX_CRF} (H.264 quantiser)"),
        ));
    }
    if fps == 0 {
        return Err(Error::invalid("fps", "must be at least 1"));
    }
    let (w, h) = (frames.width() as usize, frames.height() as usize);
    if frames.is_empty() || w % 2 != 0 || h % 2 != 0 {
        return Err(Error::write(
            path,
            format!(
                "{} frames of {w}x{h}: H.264 needs at least one frame of even width and height",
                frames.len()
            ),
        ));
    }
    let encode_error =
        |e: &dyn std::fmt::Display| Error::write(path, format!("H.264 encoder: {e}"));
    let config = EncoderConfig::new()
        .rate_control_mode(RateControlMode::Bufferbased)
        .qp(QpRange::new(crf.max(MIN_QP), crf.max(MIN_QP)))
        // The quantiser is fixed; the target only has to stay within H.264 level 5.2, or
        // OpenH264 refuses the configuration.
        .bitrate(BitRate::from_bps(100_000_000))
        .skip_frames(false)
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(2 * fps))
        .vui(VuiConfig::bt601());
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| encode_error(&e))?;
    Staged::file(path, |file| {
        let mut muxer = muxide::api::MuxerBuilder::new(&mut *file)
            .video(
                muxide::api::VideoCodec::H264,
                w as u32,
                h as u32,
                f64::from(fps),
            )
            .build()
            .map_err(|e| Error::write(path, format!("MP4 muxer: {e}")))?;
        for i in 0..frames.len() {
            let yuv = YUVBuffer::from_vec(rgb_to_i420(frames.frame(i), w, h), w, h);
            let millis = i as u64 * 1000 / u64::from(fps);
            let stream = encoder
                .encode_at(&yuv, Timestamp::from_millis(millis))
                .map_err(|e| encode_error(&e))?;
            let is_key = matches!(stream.frame_type(), openh264::encoder::FrameType::IDR);
            let bytes = stream.to_vec();
            if bytes.is_empty() {
                return Err(encode_error(&format!("frame {i} produced no data")));
            }
            muxer
                .write_video(i as f64 / f64::from(fps), &bytes, is_key)
                .map_err(|e| Error::write(path, format!("MP4 muxer: {e}")))?;
        }
        muxer
            .finish()
            .map_err(|e| Error::write(path, format!("MP4 muxer: {e}")))?;
        file.flush().map_err(|e| Error::write(path, e))
    })
}

/// Writes one RGB image as PNG, atomically.
pub fn write_png(path: impl AsRef<Path>, image: &image::RgbImage) -> Result<PathBuf> {
    stage_png(path.as_ref(), image)?.commit()
}

pub(crate) fn stage_png(path: &Path, image: &image::RgbImage) -> Result<Staged> {
    Staged::file(path, |file| {
        image
            .write_to(file, image::ImageFormat::Png)
            .map_err(|e| Error::write(path, e))
    })
}

/// Writes every frame as `frame_00000.png`, … into a new folder `dir`, atomically (the folder
/// appears complete or not at all; an existing non-empty folder is refused).
pub fn write_png_frames(dir: impl AsRef<Path>, frames: &Frames) -> Result<PathBuf> {
    stage_png_frames(dir.as_ref(), frames)?.commit()
}

pub(crate) fn stage_png_frames(dir: &Path, frames: &Frames) -> Result<Staged> {
    if dir.is_file() {
        return Err(Error::write(dir, "a file of that name exists"));
    }
    if dir.is_dir()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::write(dir, "the folder exists and is not empty"));
    }
    let staged = Staged::new(dir)?;
    std::fs::create_dir(staged.path()).map_err(|e| Error::write(dir, e))?;
    for i in 0..frames.len() {
        let file = staged.path().join(format!("frame_{i:05}.png"));
        let mut w = BufWriter::new(File::create(&file).map_err(|e| Error::write(dir, e))?);
        frames
            .image(i)
            .write_to(&mut w, image::ImageFormat::Png)
            .map_err(|e| Error::write(dir, e))?;
        w.flush().map_err(|e| Error::write(dir, e))?;
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `remove_temporaries` clears every staged file of the process: tests that stage files
    /// take this lock so that one test's clean-up never deletes another's file mid-write.
    static STAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn staging() -> std::sync::MutexGuard<'static, ()> {
        STAGING.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn i420_of_grey_and_primaries() {
        // 2x2 of one colour.
        let px = |r: u8, g: u8, b: u8| [r, g, b].repeat(4);
        let yuv = rgb_to_i420(&px(0, 0, 0), 2, 2);
        assert_eq!(yuv, vec![16, 16, 16, 16, 128, 128]);
        let yuv = rgb_to_i420(&px(255, 255, 255), 2, 2);
        assert_eq!(yuv, vec![235, 235, 235, 235, 128, 128]);
        let yuv = rgb_to_i420(&px(255, 0, 0), 2, 2);
        assert_eq!((yuv[0], yuv[4], yuv[5]), (82, 90, 240));
    }

    #[test]
    fn failed_staging_leaves_nothing() {
        let _staging = staging();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let r = Staged::file(&target, |w| {
            w.write_all(b"partial").map_err(|e| Error::write("x", e))?;
            Err(Error::invalid("test", "fails mid-write"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A dropped, uncommitted stage is removed too; a committed one replaces the target.
        std::fs::write(&target, b"old").unwrap();
        let staged = Staged::file(&target, |w| {
            w.write_all(b"new").map_err(|e| Error::write("x", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let staged = Staged::file(&target, |w| {
            w.write_all(b"new").map_err(|e| Error::write("x", e))
        })
        .unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // `remove_temporaries` clears writes in flight (kept in this test: the registry is
        // global to the process).
        let dir = tempfile::tempdir().unwrap();
        let staged = Staged::file(&dir.path().join("a.mp4"), |w| {
            w.write_all(b"x").map_err(|e| Error::write("x", e))
        })
        .unwrap();
        assert!(staged.path().exists());
        remove_temporaries();
        assert!(!staged.path().exists());
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn encodes_every_bucket_size_and_quality_follows_crf() {
        let _staging = staging();
        let dir = tempfile::tempdir().unwrap();
        let mut sizes = Vec::new();
        for (w, h) in [(48u32, 32u32), (608, 640), (832, 480), (1920, 1088)] {
            let mut data = Vec::new();
            for f in 0..3u32 {
                for y in 0..h {
                    for x in 0..w {
                        data.extend([(x + f * 7) as u8, (y * 2) as u8, ((x ^ y) + f) as u8]);
                    }
                }
            }
            let frames = Frames::new(w, h, data).unwrap();
            for crf in [10u8, 30] {
                let path = dir.path().join(format!("{w}x{h}-{crf}.mp4"));
                write_mp4(&path, &frames, FPS, crf).unwrap();
                sizes.push(std::fs::metadata(&path).unwrap().len());
            }
        }
        // A higher quantiser gives a smaller file at every size.
        for pair in sizes.chunks(2) {
            assert!(pair[0] > pair[1], "{sizes:?}");
        }
    }

    #[test]
    fn bad_mp4_requests_are_refused() {
        let _staging = staging();
        let dir = tempfile::tempdir().unwrap();
        let frames = Frames::new(4, 4, vec![0; 48]).unwrap();
        assert!(write_mp4(dir.path().join("a.mp4"), &frames, FPS, 52).is_err());
        let odd = Frames::new(3, 4, vec![0; 36]).unwrap();
        assert!(write_mp4(dir.path().join("b.mp4"), &odd, FPS, 16).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
