//! The VAE's configuration (as in the checkpoint's `config.json`) and its tiling settings.

use std::path::Path;

use serde::Deserialize;

use crate::load::read_config;
use crate::weights::WeightError;

const DOWN_BLOCK: &str = "HunyuanVideoDownBlock3D";
const UP_BLOCK: &str = "HunyuanVideoUpBlock3D";

/// Hyper-parameters of `AutoencoderKLHunyuanVideo`.
///
/// Field names are those of the checkpoint's `config.json`, so a config can be read from the
/// published file (`hunyuanvideo-community/HunyuanVideo`, subfolder `vae`); the defaults are
/// the published values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Pixel channels in (3).
    pub in_channels: usize,
    /// Pixel channels out (3).
    pub out_channels: usize,
    /// Latent channels (16); the encoder emits twice as many moments (mean, logvar).
    pub latent_channels: usize,
    /// Encoder block types; only `HunyuanVideoDownBlock3D` exists.
    pub down_block_types: Vec<String>,
    /// Decoder block types; only `HunyuanVideoUpBlock3D` exists.
    pub up_block_types: Vec<String>,
    /// Channels of each encoder block, reversed for the decoder ((128, 256, 512, 512)).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (2); the decoder blocks have one more.
    pub layers_per_block: usize,
    /// Activation, `silu` (or its alias `swish`).
    pub act_fn: String,
    /// GroupNorm groups (32).
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding and divided by it before decoding
    /// (0.476986; there is no shift).
    pub scaling_factor: f64,
    /// Pixels per latent along height and width (8).
    pub spatial_compression_ratio: usize,
    /// Pixel frames per latent frame after the first (4); the only value the decoder knows.
    pub temporal_compression_ratio: usize,
    /// Whether the mid blocks have their attention layer (true).
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 16,
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            scaling_factor: 0.476986,
            spatial_compression_ratio: 8,
            temporal_compression_ratio: 4,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// The published HunyuanVideo VAE (246,478,803 parameters, 248 tensors).
    pub fn hunyuan_video() -> Self {
        Self::default()
    }

    /// A small configuration of the same architecture for tests and demos that must run on
    /// a CPU in seconds: channels (8, 16, 16, 16), one resnet per encoder block (two per
    /// decoder block), 4 norm groups, 16 latent channels. `tools/reference/vae_fixture.py`
    /// builds the same model in diffusers.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![8, 16, 16, 16],
            layers_per_block: 1,
            norm_num_groups: 4,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        read_config(path.as_ref(), None, |config: &mut Self| config.validate())
    }

    /// Checks the invariants the implementation relies on (the same ones diffusers enforces,
    /// plus those that would otherwise fail deep inside a forward call).
    pub fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} down and {} up block types for {n} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(format!("unsupported down block type `{t}`"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(format!("unsupported up block type `{t}`"));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(format!("unsupported act_fn `{}` (only silu)", self.act_fn));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups must be positive".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be positive".into());
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            ));
        }
        if self.temporal_compression_ratio != 4 {
            return Err(format!(
                "temporal_compression_ratio {} is not supported (the decoder only knows 4)",
                self.temporal_compression_ratio
            ));
        }
        let s = self.spatial_compression_ratio;
        if !s.is_power_of_two() {
            return Err(format!(
                "spatial_compression_ratio {s} is not a power of two"
            ));
        }
        let (space, time) = self
            .down_strides()
            .iter()
            .flatten()
            .fold((1usize, 1usize), |(space, time), [t, h, _]| {
                (space * h, time * t)
            });
        if space != s || time != self.temporal_compression_ratio {
            return Err(format!(
                "{n} blocks give a compression of {time}x{space}x{space}, not the configured \
                 {}x{s}x{s}",
                self.temporal_compression_ratio
            ));
        }
        Ok(())
    }

    /// The stride `(t, h, w)` of each encoder block's downsampler (`None`: no downsampler),
    /// by diffusers' rule: space in the first log2(spatial) blocks, time in the two blocks
    /// before the last.
    pub fn down_strides(&self) -> Vec<Option<[usize; 3]>> {
        self.resampling()
            .into_iter()
            .map(|(time, space)| {
                (time || space).then_some([
                    if time { 2 } else { 1 },
                    if space { 2 } else { 1 },
                    if space { 2 } else { 1 },
                ])
            })
            .collect()
    }

    /// The factor `(t, h, w)` of each decoder block's upsampler (`None`: no upsampler); the
    /// mirror image of [`VaeConfig::down_strides`].
    pub fn up_factors(&self) -> Vec<Option<[usize; 3]>> {
        self.down_strides()
    }

    /// `(time, space)` resampling of block `i`, the same rule for the encoder's
    /// downsamplers and the decoder's upsamplers.
    fn resampling(&self) -> Vec<(bool, bool)> {
        let n = self.block_out_channels.len();
        let spatial_layers = self.spatial_compression_ratio.max(1).trailing_zeros() as usize;
        let time_layers = self.temporal_compression_ratio.max(1).trailing_zeros() as usize;
        (0..n)
            .map(|i| {
                let last = i + 1 == n;
                let time = i + 1 + time_layers >= n && !last;
                (time, i < spatial_layers)
            })
            .collect()
    }
}

/// How [`crate::vae::HunyuanVideoVae::encode`] and [`crate::vae::HunyuanVideoVae::decode`]
/// split their work, with diffusers' attribute names and defaults.
///
/// - Temporal tiling (`use_framewise_*`, on by default as in diffusers): a decode of more
///   than `tile_sample_min_num_frames / 4` latents runs on overlapping latent chunks of
///   `min/4 + 1` latents every `stride/4`, blended over `min - stride` frames; an encode of
///   more than `tile_sample_min_num_frames` frames runs on chunks of `min + 1` frames every
///   `stride` frames.
/// - Spatial tiling (`use_tiling`, off by default; FramePack turns it on in low-VRAM mode):
///   tiles of `tile_sample_min_*` pixels every `tile_sample_stride_*` pixels, blended over
///   `min - stride` pixels (decode) or `(min - stride) / 8` latents (encode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeTiling {
    /// Spatial tiling (diffusers' `enable_tiling()`); off by default.
    pub use_tiling: bool,
    /// Temporal tiling of encodes longer than `tile_sample_min_num_frames`; on by default.
    pub use_framewise_encoding: bool,
    /// Temporal tiling of decodes longer than `tile_sample_min_num_frames / 4` latents; on by
    /// default.
    pub use_framewise_decoding: bool,
    /// Tile height in pixels (256).
    pub tile_sample_min_height: usize,
    /// Tile width in pixels (256).
    pub tile_sample_min_width: usize,
    /// Temporal tile length in pixel frames (16).
    pub tile_sample_min_num_frames: usize,
    /// Vertical tile stride in pixels (192).
    pub tile_sample_stride_height: usize,
    /// Horizontal tile stride in pixels (192).
    pub tile_sample_stride_width: usize,
    /// Temporal tile stride in pixel frames (12).
    pub tile_sample_stride_num_frames: usize,
    /// Hand the backend's unused device buffers back (`memory_cleanup`) after each tile and,
    /// in the decoder, after each resnet and upsampler; off by default. The low-VRAM mode's
    /// exact-size allocations keep one buffer per size they have seen until then, and a
    /// decode makes buffers of many sizes: without this, one section's decode grew the
    /// device's use to 60 GiB. Costs re-allocations.
    pub release_buffers: bool,
}

impl Default for VaeTiling {
    fn default() -> Self {
        Self {
            use_tiling: false,
            use_framewise_encoding: true,
            use_framewise_decoding: true,
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_min_num_frames: 16,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
            tile_sample_stride_num_frames: 12,
            release_buffers: false,
        }
    }
}

impl VaeTiling {
    /// diffusers' defaults: temporal tiling only (FramePack's high-VRAM mode).
    pub fn reference() -> Self {
        Self::default()
    }

    /// Temporal and spatial tiling with the default tile sizes (FramePack's low-VRAM mode,
    /// `vae.enable_tiling()`), releasing device buffers as it goes
    /// ([`VaeTiling::release_buffers`]).
    pub fn low_vram() -> Self {
        Self {
            use_tiling: true,
            release_buffers: true,
            ..Self::default()
        }
    }

    /// No tiling at all: every call runs the encoder or decoder once on the whole input.
    pub fn none() -> Self {
        Self {
            use_tiling: false,
            use_framewise_encoding: false,
            use_framewise_decoding: false,
            ..Self::default()
        }
    }

    /// Checks that the tile sizes make sense for `config`'s compression ratios: every tile
    /// and stride spans at least one latent, and strides do not exceed tiles (so that tiles
    /// overlap or touch, never leave gaps).
    pub fn validate(&self, config: &VaeConfig) -> Result<(), String> {
        let s = config.spatial_compression_ratio;
        let t = config.temporal_compression_ratio;
        let spatial = [
            (
                "height",
                self.tile_sample_min_height,
                self.tile_sample_stride_height,
            ),
            (
                "width",
                self.tile_sample_min_width,
                self.tile_sample_stride_width,
            ),
        ];
        for (axis, min, stride) in spatial {
            if stride < s || min < s {
                return Err(format!(
                    "tile_sample_min_{axis} {min} and tile_sample_stride_{axis} {stride} must \
                     be at least the spatial compression {s}"
                ));
            }
            if stride > min {
                return Err(format!(
                    "tile_sample_stride_{axis} {stride} exceeds tile_sample_min_{axis} {min}"
                ));
            }
        }
        let (min, stride) = (
            self.tile_sample_min_num_frames,
            self.tile_sample_stride_num_frames,
        );
        if stride < t || min < t {
            return Err(format!(
                "tile_sample_min_num_frames {min} and tile_sample_stride_num_frames {stride} \
                 must be at least the temporal compression {t}"
            ));
        }
        if stride > min {
            return Err(format!(
                "tile_sample_stride_num_frames {stride} exceeds tile_sample_min_num_frames {min}"
            ));
        }
        Ok(())
    }
}
