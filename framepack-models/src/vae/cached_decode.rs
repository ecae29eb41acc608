//! The streamed ("cached") decode: latents in, pixels out, call by call, no frame decoded twice.

use burn::tensor::Tensor;

use super::decoder::DecoderState;
use super::model::HunyuanVideoVae;
use super::tiling::SpatialTiles;
use crate::error::{check, ModelError};
use crate::ops::FramePackBackend;

/// A decoder that takes a clip's latents in consecutive chunks (one latent frame or more per
/// call) and returns each chunk's pixels, carrying between calls what the causal layers need
/// from the past: the last two input frames of every 3×3×3 causal conv (its *tail*, used
/// instead of the replicate padding) and the mid-block attention's keys and values. This is
/// FramePack-eichi's "VAE cache", written as an explicit state instead of module hooks.
///
/// What it computes, precisely: a call is the reference decoder run on the call's latents
/// with (1) each causal conv's front padding replaced by the previous call's tail, (2) every
/// frame time-upsampled except the stream's very first one, (3) queries also seeing all
/// earlier frames (or the last `window` frames, see
/// [`CachedDecoder::with_attention_window`]). GroupNorm statistics are those of the call's
/// own frames, as in any reference call. Consequences:
///
/// - The first call is exactly the reference decode of its latents; a single call with the
///   whole clip is exactly the reference decode without temporal tiling.
/// - Convolutions and attention are exactly causal across calls: with GroupNorm statistics
///   frozen, any chunking gives the same pixels as one pass.
/// - It can **not** give the pixels of the reference's temporally tiled ("chunked") decode
///   beyond its first chunk: that decode restarts each 5-latent chunk with replicate
///   padding and normalises over the chunk, then blends chunks; a stream has true causal
///   context and per-call statistics instead. How far apart the two are depends on the
///   weights (see `docs/vae.md`).
///
/// Output frames: the first call yields `4(t−1)+1` frames for `t` latents, later calls `4t`,
/// so a clip of `T` latents yields `4(T−1)+1` frames in total, like [`HunyuanVideoVae::decode`].
/// Spatial tiling ([`super::VaeTiling::use_tiling`]) applies as in the reference, with one
/// stream state per tile; temporal tiling does not apply (this is the alternative to it).
pub struct CachedDecoder<'a, B: FramePackBackend> {
    vae: &'a HunyuanVideoVae<B>,
    attention_window: Option<usize>,
    stream: Option<Stream<B>>,
    latent_frames: usize,
}

/// What is fixed at the first call: the shape, the tile grid and one state per tile.
struct Stream<B: FramePackBackend> {
    batch: usize,
    size: [usize; 2],
    grid: Option<SpatialTiles>,
    states: Vec<DecoderState<B>>,
}

impl<'a, B: FramePackBackend> CachedDecoder<'a, B> {
    pub(super) fn new(vae: &'a HunyuanVideoVae<B>) -> Self {
        Self {
            vae,
            attention_window: None,
            stream: None,
            latent_frames: 0,
        }
    }

    /// Limits what a mid-block query sees to the last `frames` latent frames (the current
    /// one included), instead of every earlier frame. The reference sees at most 5 (one
    /// temporal chunk); an unlimited stream's attention cost and key/value memory grow with
    /// the clip (about 12 MB of fp16 keys and values per latent frame at 640×608). Must be
    /// set before the first call.
    pub fn with_attention_window(mut self, frames: usize) -> Result<Self, ModelError> {
        check(frames >= 1, "frames", || {
            "the window must hold at least the current frame".into()
        })?;
        check(self.stream.is_none(), "frames", || {
            "the attention window must be set before the first call".into()
        })?;
        self.attention_window = Some(frames);
        Ok(self)
    }

    /// Latent frames decoded so far.
    pub fn latent_frames(&self) -> usize {
        self.latent_frames
    }

    /// Pixel frames produced so far (`4(n−1)+1` for `n` latents, 0 before the first call).
    pub fn pixel_frames(&self) -> usize {
        match self.latent_frames {
            0 => 0,
            n => (n - 1) * self.vae.config.temporal_compression_ratio + 1,
        }
    }

    /// Decodes the next unscaled latents `[batch, 16, t, h, w]` of the clip; returns their
    /// new pixel frames in the compute dtype. Batch and size must match the first call's.
    pub fn decode_next(&mut self, z: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        let vae = self.vae;
        vae.check_latents(&z)?;
        let [batch, _, frames, height, width] = z.dims();
        let stream = match &mut self.stream {
            Some(stream) => {
                check(
                    stream.batch == batch && stream.size == [height, width],
                    "z",
                    || {
                        format!(
                            "batch {batch} and size {height}x{width} differ from the stream's \
                             batch {} and size {}x{}",
                            stream.batch, stream.size[0], stream.size[1]
                        )
                    },
                )?;
                stream
            }
            None => {
                let t = &vae.tiling;
                let s = vae.config.spatial_compression_ratio;
                let grid = (t.use_tiling
                    && (width > t.tile_sample_min_width / s
                        || height > t.tile_sample_min_height / s))
                    .then(|| SpatialTiles::decode(t, s, height, width));
                let tiles = grid
                    .as_ref()
                    .map_or(1, |g| g.tiles().iter().map(Vec::len).sum());
                self.stream.insert(Stream {
                    batch,
                    size: [height, width],
                    states: (0..tiles)
                        .map(|_| vae.decoder.new_state(self.attention_window))
                        .collect(),
                    grid,
                })
            }
        };
        let z = vae.post_quant_conv.forward(z.cast(vae.dtype));
        let out = match &stream.grid {
            None => vae
                .decoder
                .forward(z, Some(&mut stream.states[0]), vae.tiling.release_buffers),
            Some(grid) => {
                let mut states = stream.states.iter_mut();
                let rows = grid
                    .tiles()
                    .into_iter()
                    .map(|row| {
                        row.into_iter()
                            .zip(states.by_ref())
                            .map(|((i, h, j, w), state)| {
                                let tile = z.clone().narrow(3, i, h).narrow(4, j, w);
                                vae.decoder
                                    .forward(tile, Some(state), vae.tiling.release_buffers)
                            })
                            .collect()
                    })
                    .collect();
                grid.stitch(rows)
            }
        };
        self.latent_frames += frames;
        Ok(out)
    }
}
