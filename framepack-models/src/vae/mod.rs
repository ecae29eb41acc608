//! The causal 3D VAE of HunyuanVideo (`AutoencoderKLHunyuanVideo`, diffusers 0.35.2).
//!
//! Data flow (see `docs/vae.md`):
//! - encode: pixels `[b, 3, T, H, W]` in [−1, 1] → `conv_in` → 4 down blocks (resnets, then
//!   strided causal convs: space ×½ in blocks 0-2, time ×½ in blocks 1-2) → mid block
//!   (resnet, frame-causal attention, resnet) → GroupNorm, SiLU, `conv_out` → `quant_conv` →
//!   moments = (mean, logvar) `[b, 16, (T−1)/4+1, H/8, W/8]`;
//! - decode: latents → `post_quant_conv` → `conv_in` → mid block → 4 up blocks (resnets, then
//!   nearest upsampling + causal conv: space ×2 in blocks 0-2, time ×2 in blocks 1-2, never
//!   for a call's first frame) → GroupNorm, SiLU, `conv_out` → pixels `[b, 3, 4(t−1)+1, 8h, 8w]`.
//!
//! Every convolution is causal in time (replicate padding of 2 frames in front). GroupNorm
//! statistics span all frames of a call, which is why the reference's temporally tiled
//! decode, a single-pass decode and the streamed [`CachedDecoder`] differ.

mod attention;
mod cached_decode;
mod causal_conv;
mod config;
mod decoder;
mod encoder;
mod mid_block;
mod model;
mod norm;
mod posterior;
mod resnet;
mod tiling;

pub use attention::MidBlockAttention;
pub use cached_decode::CachedDecoder;
pub use causal_conv::{CausalConv3d, Conv3d};
pub use config::{VaeConfig, VaeTiling};
pub use decoder::{Decoder, UpBlock, Upsampler};
pub use encoder::{DownBlock, Encoder};
pub use mid_block::MidBlock;
pub use model::HunyuanVideoVae;
pub use norm::GroupNorm;
pub use posterior::Posterior;
pub use resnet::ResnetBlock;

use burn::tensor::Tensor;

use crate::ops::FramePackBackend;

/// Returns `x` after handing the backend's unused device buffers back when `release`
/// ([`VaeTiling::release_buffers`]): what a tile or layer left behind goes before the next one.
fn released<B: FramePackBackend>(x: Tensor<B, 5>, release: bool) -> Tensor<B, 5> {
    if release {
        B::memory_cleanup(&x.device());
    }
    x
}
