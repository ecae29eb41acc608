//! FramePack-eichi's kisekaeichi ("dress-up") for one-frame inference: a reference image whose
//! look the generated frame takes on, placed in the context at a chosen RoPE time index, with
//! optional masks that zero parts of the input and reference latents.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use framepack_core::Kisekae;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::InputImage;

/// The kisekaeichi controls of a one-frame request. Defaults are eichi's (`oneframe_ichi.py`):
/// reference at history index 13, target index 1, the 2x and 4x context groups kept.
///
/// ```
/// use framepack::{InputImage, KisekaeReference};
/// let dress = InputImage::from_rgb8(64, 64, vec![200; 64 * 64 * 3])?;
/// let kisekae = KisekaeReference::new(dress).target_index(5);
/// assert_eq!((kisekae.history_index, kisekae.target_index), (13, 5));
/// # Ok::<(), framepack::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KisekaeReference {
    /// The reference image (resized and cropped to the start image's bucket, then VAE-encoded).
    pub image: InputImage,
    /// RoPE time index of the reference latent (eichi's "clean index" / history index).
    pub history_index: u32,
    /// RoPE time index of the generated frame (eichi's target index; clamped to `window − 1`).
    pub target_index: u32,
    /// Keep the 2x context group.
    pub clean_2x: bool,
    /// Keep the 4x context group.
    pub clean_4x: bool,
    /// A mask of the start image (white = keep, black = zero in its latent).
    #[serde(default)]
    pub input_mask: Option<InputImage>,
    /// A mask of the reference image (white = keep, black = zero in its latent).
    #[serde(default)]
    pub reference_mask: Option<InputImage>,
}

impl KisekaeReference {
    /// `image` as the reference, with eichi's defaults.
    pub fn new(image: InputImage) -> Self {
        let d = Kisekae::default();
        Self {
            image,
            history_index: d.history_index,
            target_index: d.target_index,
            clean_2x: d.clean_2x,
            clean_4x: d.clean_4x,
            input_mask: None,
            reference_mask: None,
        }
    }

    /// The reference latent's RoPE time index.
    pub fn history_index(mut self, index: u32) -> Self {
        self.history_index = index;
        self
    }

    /// The generated frame's RoPE time index.
    pub fn target_index(mut self, index: u32) -> Self {
        self.target_index = index;
        self
    }

    /// Whether the 2x and 4x context groups are kept.
    pub fn context_groups(mut self, clean_2x: bool, clean_4x: bool) -> Self {
        self.clean_2x = clean_2x;
        self.clean_4x = clean_4x;
        self
    }

    /// A mask of the start image.
    pub fn input_mask(mut self, mask: InputImage) -> Self {
        self.input_mask = Some(mask);
        self
    }

    /// A mask of the reference image.
    pub fn reference_mask(mut self, mask: InputImage) -> Self {
        self.reference_mask = Some(mask);
        self
    }

    /// The core's description of the layout.
    pub(crate) fn layout(&self) -> Kisekae {
        Kisekae {
            history_index: self.history_index,
            target_index: self.target_index,
            clean_2x: self.clean_2x,
            clean_4x: self.clean_4x,
        }
    }

    /// The images, for checks and reloading.
    pub(crate) fn images_mut(&mut self) -> impl Iterator<Item = &mut InputImage> {
        std::iter::once(&mut self.image)
            .chain(self.input_mask.as_mut())
            .chain(self.reference_mask.as_mut())
    }

    /// The images.
    pub(crate) fn images(&self) -> impl Iterator<Item = &InputImage> {
        std::iter::once(&self.image)
            .chain(self.input_mask.as_ref())
            .chain(self.reference_mask.as_ref())
    }
}

/// A mask image as eichi reads it: grayscale (PIL's `L`: `(299 R + 587 G + 114 B) / 1000`),
/// resized from its own size straight to the latent grid `[height, width]` with a bilinear
/// (triangle) filter, divided by 255.
pub(crate) fn mask_tensor<B: Backend>(
    mask: &InputImage,
    [height, width]: [usize; 2],
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let size = mask.size();
    let gray: Vec<u8> = mask
        .rgb()?
        .chunks_exact(3)
        .map(|p| {
            let l = 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
            ((l + 500) / 1000) as u8
        })
        .collect();
    let image = image::GrayImage::from_raw(size.width, size.height, gray).ok_or_else(|| {
        Error::InvalidImage {
            image: "a kisekae mask".into(),
            reason: "pixel buffer does not match its size".into(),
        }
    })?;
    let resized = image::imageops::resize(
        &image,
        width as u32,
        height as u32,
        image::imageops::FilterType::Triangle,
    );
    let values: Vec<f32> = resized
        .into_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(values, [height, width]),
        device,
    ))
}
