//! Input images: reading (PNG, JPEG, WebP, EXIF orientation applied, alpha dropped), content
//! hashes for run records, and FramePack's resize-and-center-crop to a bucket (spec §1.3: PIL
//! LANCZOS on uint8, crop corners rounded half to even), reproduced bit for bit.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use framepack_core::{Bucket, CropGeometry, ImageSize};
use image::{ImageDecoder, ImageReader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// An RGB image given to a generation (start image, end frame or keyframe).
///
/// It serializes as its path, size and the SHA-256 of its pixels (not the pixels), which is
/// what a run record keeps; [`InputImage::reload`] reads a deserialized image back and checks
/// that its pixels did not change.
///
/// ```
/// use framepack::InputImage;
/// let gray = InputImage::from_rgb8(64, 48, vec![128; 64 * 48 * 3])?;
/// assert_eq!((gray.width(), gray.height()), (64, 48));
/// assert!(InputImage::from_rgb8(64, 48, vec![0; 10]).is_err());
/// # Ok::<(), framepack::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct InputImage {
    /// Where it was read from (absolute), if it came from a file.
    path: Option<PathBuf>,
    width: u32,
    height: u32,
    /// SHA-256 of the RGB pixels (row-major, 3 bytes per pixel), hex.
    sha256: String,
    #[serde(skip)]
    rgb: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for InputImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputImage")
            .field("path", &self.path)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("sha256", &self.sha256)
            .field("loaded", &self.rgb.is_some())
            .finish()
    }
}

impl PartialEq for InputImage {
    /// Same source and same pixels (compared by hash).
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.width == other.width
            && self.height == other.height
            && self.sha256 == other.sha256
    }
}

fn pixel_hash(width: u32, height: u32, rgb: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(width.to_le_bytes());
    h.update(height.to_le_bytes());
    h.update(rgb);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl InputImage {
    /// Reads an image file: PNG, JPEG or WebP, any bit depth, EXIF orientation applied, alpha
    /// dropped (as gradio's `image_mode="RGB"` does).
    ///
    /// Errors: [`Error::ImageNotFound`], [`Error::ImageUnreadable`] (a folder, no
    /// permission, an I/O error) and [`Error::ImageFormat`] (anything the decoders refuse).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::ImageNotFound {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| Error::ImageUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let format_error = |reason: String| Error::ImageFormat {
            path: path.to_path_buf(),
            reason,
        };
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format_error(e.to_string()))?;
        if reader.format().is_none() {
            return Err(format_error("unrecognised file contents".into()));
        }
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| format_error(e.to_string()))?;
        let orientation = decoder
            .orientation()
            .map_err(|e| format_error(e.to_string()))?;
        let mut image =
            image::DynamicImage::from_decoder(decoder).map_err(|e| format_error(e.to_string()))?;
        image.apply_orientation(orientation);
        let rgb = image.to_rgb8();
        let (width, height) = rgb.dimensions();
        if width == 0 || height == 0 {
            return Err(format_error("the image is empty".into()));
        }
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut this = Self::from_rgb8(width, height, rgb.into_raw())?;
        this.path = Some(path);
        Ok(this)
    }

    /// An image from RGB bytes (`[height][width][3]`, row-major).
    pub fn from_rgb8(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self> {
        let expected = width as usize * height as usize * 3;
        if width == 0 || height == 0 || rgb.len() != expected {
            return Err(Error::InvalidImage {
                image: "an in-memory image".into(),
                reason: format!(
                    "{} bytes for {width}x{height} RGB (expected {expected}, and a non-empty size)",
                    rgb.len()
                ),
            });
        }
        Ok(Self {
            path: None,
            width,
            height,
            sha256: pixel_hash(width, height, &rgb),
            rgb: Some(Arc::new(rgb)),
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

    /// The file it was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// SHA-256 of its pixels (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size as `height × width`.
    pub fn size(&self) -> ImageSize {
        ImageSize::new(self.height, self.width)
    }

    /// Whether the pixels are in memory (false for an image read back from a run record until
    /// [`reload`](Self::reload)).
    pub fn is_loaded(&self) -> bool {
        self.rgb.is_some()
    }

    /// Reads the pixels of a deserialized image from its path and checks them against the
    /// recorded size and hash. Does nothing if they are already loaded.
    pub fn reload(&mut self) -> Result<()> {
        if self.rgb.is_some() {
            return Ok(());
        }
        let path = self.path.clone().ok_or_else(|| Error::InvalidImage {
            image: "an image of the run record".into(),
            reason: "it was given in memory, so its pixels were not recorded".into(),
        })?;
        let fresh = Self::open(&path)?;
        if fresh.sha256 != self.sha256 || fresh.width != self.width || fresh.height != self.height {
            return Err(Error::InvalidImage {
                image: format!("image `{}`", path.display()),
                reason: "its pixels differ from the ones recorded (the file changed since the run)"
                    .into(),
            });
        }
        self.rgb = fresh.rgb;
        Ok(())
    }

    /// The RGB bytes.
    pub fn rgb(&self) -> Result<&[u8]> {
        self.rgb
            .as_deref()
            .map(Vec::as_slice)
            .ok_or_else(|| Error::InvalidImage {
                image: self.describe(),
                reason: "its pixels are not loaded (call `reload` first)".into(),
            })
    }

    pub(crate) fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("image `{}`", p.display()),
            None => "an in-memory image".into(),
        }
    }

    /// FramePack's `resize_and_center_crop` to `target` (spec §1.3): Pillow's LANCZOS to the
    /// covering size, then the centre crop. The result is `[height][width][3]` RGB.
    pub fn to_bucket(&self, target: Bucket) -> Result<Vec<u8>> {
        let geometry = CropGeometry::new(self.size(), target)?;
        let rgb = self.rgb()?;
        if geometry.is_identity() {
            return Ok(rgb.to_vec());
        }
        let (rw, rh) = (
            geometry.resized.width as usize,
            geometry.resized.height as usize,
        );
        let resized = framepack_models::vision::resize_lanczos(
            rgb,
            self.width as usize,
            self.height as usize,
            3,
            rw,
            rh,
        )?;
        let c = geometry.crop;
        let (w, h) = (c.width() as usize, c.height() as usize);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in c.top as usize..c.bottom as usize {
            let row = &resized[(y * rw + c.left as usize) * 3..(y * rw + c.right as usize) * 3];
            out.extend_from_slice(row);
        }
        Ok(out)
    }
}
