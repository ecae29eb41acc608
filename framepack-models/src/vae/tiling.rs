//! Tiled encode and decode, exactly as diffusers 0.35.2's `AutoencoderKLHunyuanVideo`.
//!
//! - Temporal (`_temporal_tiled_decode`): latent chunks `z[i : i + min/4 + 1]` for
//!   `i = 0, stride/4, …`; each chunk after the first drops its first decoded frame, blends
//!   its first `min − stride` frames with the previous chunk's last ones
//!   (`b[x] = a[−e+x]·(1 − x/e) + b[x]·x/e`), and keeps `stride` frames (`stride + 1` for the
//!   first chunk). With the defaults: 5-latent chunks every 3 latents, a 4-frame blend,
//!   13 + 12 + 12 + … frames. The encode is the mirror image on pixel chunks of `min + 1`
//!   frames every `stride` frames, blending `(min − stride)/4` latents.
//! - Spatial (`tiled_decode` / `tiled_encode`): tiles of `min` pixels (`min/8` latents) every
//!   `stride`, each blended with the (already blended) tile above, then with the one to the
//!   left, over `min − stride` pixels (decode) or `(min − stride)/8` latents (encode); each
//!   keeps its first `stride` pixels (`stride/8` latents) per axis; the result is cropped.
//!
//! The reference blends in place, so a tile's overlap with its right/lower neighbour is read
//! after its own blends; the loops below keep that order.

use burn::tensor::{DType, Tensor, TensorData};

use super::model::HunyuanVideoVae;
use crate::ops::FramePackBackend;

impl<B: FramePackBackend> HunyuanVideoVae<B> {
    /// `_temporal_tiled_decode`.
    pub(super) fn temporal_tiled_decode(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, frames, height, width] = z.dims();
        let t = &self.tiling;
        let (s, r) = (
            self.config.spatial_compression_ratio,
            self.config.temporal_compression_ratio,
        );
        let tile_frames = t.tile_sample_min_num_frames / r + 1;
        let stride = t.tile_sample_stride_num_frames / r;
        let blend_frames = t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames;
        let sample_frames = (frames - 1) * r + 1;

        let mut row: Vec<Tensor<B, 5>> = Vec::new();
        for i in (0..frames).step_by(stride) {
            let tile = z.clone().narrow(2, i, tile_frames.min(frames - i));
            let decoded = if t.use_tiling
                && (width > t.tile_sample_min_width / s || height > t.tile_sample_min_height / s)
            {
                self.tiled_decode(tile)
            } else {
                self.decode_direct(tile)
            };
            match drop_first_if(decoded, i > 0) {
                Some(decoded) => row.push(decoded),
                // A one-latent chunk decodes to one frame, which is dropped: the last chunk.
                None => break,
            }
        }
        let t_s = t.tile_sample_stride_num_frames;
        join_temporal(row, blend_frames, t_s, sample_frames)
    }

    /// `_temporal_tiled_encode`; returns moments.
    pub(super) fn temporal_tiled_encode(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, frames, height, width] = x.dims();
        let t = &self.tiling;
        let r = self.config.temporal_compression_ratio;
        let latent_frames = (frames - 1) / r + 1;
        let tile_latents = t.tile_sample_min_num_frames / r;
        let stride_latents = t.tile_sample_stride_num_frames / r;

        let mut row: Vec<Tensor<B, 5>> = Vec::new();
        for i in (0..frames).step_by(t.tile_sample_stride_num_frames) {
            let tile = x
                .clone()
                .narrow(2, i, (t.tile_sample_min_num_frames + 1).min(frames - i));
            let moments = if t.use_tiling
                && (height > t.tile_sample_min_height || width > t.tile_sample_min_width)
            {
                self.tiled_encode(tile)
            } else {
                self.encode_direct(tile)
            };
            match drop_first_if(moments, i > 0) {
                Some(moments) => row.push(moments),
                None => break,
            }
        }
        join_temporal(
            row,
            tile_latents - stride_latents,
            stride_latents,
            latent_frames,
        )
    }

    /// `tiled_decode`: spatial tiles of one temporal chunk.
    pub(super) fn tiled_decode(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, _, height, width] = z.dims();
        let grid = SpatialTiles::decode(
            &self.tiling,
            self.config.spatial_compression_ratio,
            height,
            width,
        );
        let rows = grid
            .tiles()
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(i, h, j, w)| {
                        self.decode_direct(z.clone().narrow(3, i, h).narrow(4, j, w))
                    })
                    .collect()
            })
            .collect();
        grid.stitch(rows)
    }

    /// `tiled_encode`: spatial tiles of one temporal chunk; returns moments.
    pub(super) fn tiled_encode(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, _, height, width] = x.dims();
        let t = &self.tiling;
        let s = self.config.spatial_compression_ratio;
        let rows: Vec<Vec<Tensor<B, 5>>> = origins(height, t.tile_sample_stride_height)
            .map(|i| {
                origins(width, t.tile_sample_stride_width)
                    .map(|j| {
                        let tile = x
                            .clone()
                            .narrow(3, i, t.tile_sample_min_height.min(height - i))
                            .narrow(4, j, t.tile_sample_min_width.min(width - j));
                        self.encode_direct(tile)
                    })
                    .collect()
            })
            .collect();
        let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / s,
            t.tile_sample_stride_width / s,
        );
        stitch(
            rows,
            [min_h - stride_h, min_w - stride_w],
            [stride_h, stride_w],
            [height / s, width / s],
        )
    }
}

/// The spatial tile grid of a decode: which latent windows are decoded, and how the decoded
/// tiles are put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpatialTiles {
    /// Latent size `(h, w)`.
    size: [usize; 2],
    /// Tile size in latents.
    tile: [usize; 2],
    /// Tile stride in latents.
    stride: [usize; 2],
    /// Pixels blended between neighbours.
    blend: [usize; 2],
    /// Pixels kept from each tile.
    keep: [usize; 2],
    /// Spatial compression.
    scale: usize,
}

impl SpatialTiles {
    /// The grid `tiled_decode` uses for latents of `height × width`.
    pub(super) fn decode(
        tiling: &super::VaeTiling,
        scale: usize,
        height: usize,
        width: usize,
    ) -> Self {
        let t = tiling;
        Self {
            size: [height, width],
            tile: [
                t.tile_sample_min_height / scale,
                t.tile_sample_min_width / scale,
            ],
            stride: [
                t.tile_sample_stride_height / scale,
                t.tile_sample_stride_width / scale,
            ],
            blend: [
                t.tile_sample_min_height - t.tile_sample_stride_height,
                t.tile_sample_min_width - t.tile_sample_stride_width,
            ],
            keep: [t.tile_sample_stride_height, t.tile_sample_stride_width],
            scale,
        }
    }

    /// Rows of `(y, height, x, width)` latent windows.
    pub(super) fn tiles(&self) -> Vec<Vec<(usize, usize, usize, usize)>> {
        let [h, w] = self.size;
        origins(h, self.stride[0])
            .map(|i| {
                origins(w, self.stride[1])
                    .map(|j| (i, self.tile[0].min(h - i), j, self.tile[1].min(w - j)))
                    .collect()
            })
            .collect()
    }

    /// Blends and joins decoded tiles (in the order of [`SpatialTiles::tiles`]).
    pub(super) fn stitch<B: FramePackBackend>(&self, rows: Vec<Vec<Tensor<B, 5>>>) -> Tensor<B, 5> {
        let [h, w] = self.size;
        stitch(
            rows,
            self.blend,
            self.keep,
            [h * self.scale, w * self.scale],
        )
    }
}

/// `0, stride, 2·stride, … < len`.
fn origins(len: usize, stride: usize) -> impl Iterator<Item = usize> {
    (0..len).step_by(stride.max(1))
}

/// Drops the first frame of `x` when `drop`; `None` when nothing is left.
fn drop_first_if<B: FramePackBackend>(x: Tensor<B, 5>, drop: bool) -> Option<Tensor<B, 5>> {
    let frames = x.dims()[2];
    match (drop, frames) {
        (false, _) => Some(x),
        (true, 1) => None,
        (true, n) => Some(x.narrow(2, 1, n - 1)),
    }
}

/// Blends consecutive temporal chunks over `blend` frames, keeps `keep` frames of each
/// (`keep + 1` of the first) and crops to `total`.
fn join_temporal<B: FramePackBackend>(
    mut row: Vec<Tensor<B, 5>>,
    blend_frames: usize,
    keep: usize,
    total: usize,
) -> Tensor<B, 5> {
    for i in 1..row.len() {
        let blended = blend(&row[i - 1], row[i].clone(), blend_frames, 2);
        row[i] = blended;
    }
    let kept = row
        .into_iter()
        .enumerate()
        .map(|(i, tile)| {
            let n = if i == 0 { keep + 1 } else { keep };
            let frames = tile.dims()[2];
            tile.narrow(2, 0, n.min(frames))
        })
        .collect();
    let out = Tensor::cat(kept, 2);
    let frames = out.dims()[2];
    out.narrow(2, 0, total.min(frames))
}

/// Blends a grid of tiles (each with the tile above, then the one to the left), keeps the
/// first `keep` rows/columns of each, joins them and crops to `crop`.
fn stitch<B: FramePackBackend>(
    mut rows: Vec<Vec<Tensor<B, 5>>>,
    [blend_h, blend_w]: [usize; 2],
    [keep_h, keep_w]: [usize; 2],
    [crop_h, crop_w]: [usize; 2],
) -> Tensor<B, 5> {
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], tile, blend_h, 3);
            }
            if j > 0 {
                tile = blend(&rows[i][j - 1], tile, blend_w, 4);
            }
            rows[i][j] = tile;
        }
    }
    let joined_rows = rows
        .into_iter()
        .map(|row| {
            let kept = row
                .into_iter()
                .map(|tile| {
                    let [_, _, _, h, w] = tile.dims();
                    tile.narrow(3, 0, keep_h.min(h)).narrow(4, 0, keep_w.min(w))
                })
                .collect();
            Tensor::cat(kept, 4)
        })
        .collect();
    let out = Tensor::cat(joined_rows, 3);
    let [_, _, _, h, w] = out.dims();
    out.narrow(3, 0, crop_h.min(h)).narrow(4, 0, crop_w.min(w))
}

/// diffusers' `blend_v` / `blend_h` / `blend_t` along `dim`: the first `e = min(extent,
/// |a|, |b|)` entries of `b` become `a[−e+x]·(1 − x/e) + b[x]·(x/e)`. Computed in fp32 and
/// rounded once.
fn blend<B: FramePackBackend>(
    a: &Tensor<B, 5>,
    b: Tensor<B, 5>,
    extent: usize,
    dim: usize,
) -> Tensor<B, 5> {
    let (len_a, len_b) = (a.dims()[dim], b.dims()[dim]);
    let e = extent.min(len_a).min(len_b);
    if e == 0 {
        return b;
    }
    let dtype = b.dtype();
    let device = b.device();
    let mut shape = [1; 5];
    shape[dim] = e;
    let ramp = |f: fn(f64) -> f64| {
        let v: Vec<f32> = (0..e).map(|x| f(x as f64 / e as f64) as f32).collect();
        Tensor::<B, 5>::from_data(TensorData::new(v, shape), (&device, DType::F32))
    };
    let head = a.clone().narrow(dim, len_a - e, e).cast(DType::F32) * ramp(|w| 1.0 - w)
        + b.clone().narrow(dim, 0, e).cast(DType::F32) * ramp(|w| w);
    let head = head.cast(dtype);
    if e == len_b {
        head
    } else {
        Tensor::cat(vec![head, b.narrow(dim, e, len_b - e)], dim)
    }
}
