//! The image conditioning: SigLIP so400m/14 @384 and its preprocessing (see
//! `docs/encoders.md`).
//!
//! FramePack's `hf_clip_vision_encode`: the bucket-resized start image (uint8 RGB) is squashed
//! to 384×384 with PIL's bicubic ([`resize_bicubic`], bit-exact), scaled to `[-1, 1]`
//! ([`SiglipImageProcessor`]) and encoded; the transformer reads `last_hidden_state`
//! `[1, 729, 1152]` ([`SiglipVisionEncoder`]).
//!
//! [`resize_lanczos`] is Pillow's LANCZOS, with which FramePack resizes the input image to its
//! bucket before the VAE and SigLIP see it.

mod lanczos;
pub mod preprocess;
pub mod siglip;

pub use lanczos::resize_lanczos;
pub use preprocess::{resize_bicubic, ImageSize, SiglipImageProcessor, PIL_BICUBIC};
pub use siglip::{SiglipVisionConfig, SiglipVisionEncoder};
