//! Context packing as data: the RoPE index layout of one window, which latents feed each group,
//! how the latent history grows, and how many tokens each group costs (spec §3).
//!
//! A window is sampled with a handful of index vectors (`latent_indices`,
//! `clean_latent_indices`, `clean_latent_2x_indices`, `clean_latent_4x_indices`) and the
//! latents that go with them. The reference builds them as `arange(n).split(sizes)`; here the
//! split is kept as [`Segment`]s (always a partition of `0..n`) and the vectors the model gets
//! are derived from it. In the video modes the vectors are the segments themselves; one-frame
//! inference picks single indices out of them.

use core::ops::Range;

use crate::bucket::Bucket;
use crate::error::{Error, Result};

/// Latent frames of context every window reads from the history: 1 (post / 1x) + 2 (2x) + 16
/// (4x). The history starts as this many zero latents.
pub const CONTEXT_FRAMES: u32 = 1 + 2 + 16;

/// Frames of the 2x-compressed context group.
pub const CLEAN_2X_FRAMES: u32 = 2;

/// Frames of the 4x-compressed context group.
pub const CLEAN_4X_FRAMES: u32 = 16;

/// A latent frame size: pixels / 8 on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LatentSize {
    /// Latent rows (`height / 8`).
    pub height: u32,
    /// Latent columns (`width / 8`).
    pub width: u32,
}

impl LatentSize {
    /// The latent size of a `height × width` pixel frame.
    ///
    /// Both sides must be positive multiples of 16: the VAE compresses by 8 and the transformer
    /// patchifies the latent in 2×2 blocks, so an odd latent side would not tile (eichi's
    /// 1080-base buckets `960×1080` / `1080×960` fail here).
    ///
    /// ```
    /// use framepack_core::LatentSize;
    /// assert_eq!(LatentSize::from_pixels(640, 608)?, LatentSize { height: 80, width: 76 });
    /// assert!(LatentSize::from_pixels(960, 1080).is_err());
    /// # Ok::<(), framepack_core::Error>(())
    /// ```
    pub fn from_pixels(height: u32, width: u32) -> Result<Self> {
        for (argument, value) in [("height", height), ("width", width)] {
            if value == 0 {
                return Err(Error::ZeroSize { argument });
            }
            if value % 16 != 0 {
                return Err(Error::NotMultiple {
                    argument,
                    value,
                    multiple: 16,
                });
            }
        }
        Ok(Self {
            height: height / 8,
            width: width / 8,
        })
    }

    /// The latent size of a bucket (see [`from_pixels`](Self::from_pixels)).
    pub fn from_bucket(bucket: Bucket) -> Result<Self> {
        Self::from_pixels(bucket.height, bucket.width)
    }
}

impl TryFrom<Bucket> for LatentSize {
    type Error = Error;

    fn try_from(bucket: Bucket) -> Result<Self> {
        Self::from_bucket(bucket)
    }
}

/// Which end of the history a [`HistorySlice`] counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryEnd {
    /// From index 0 (inverted mode: the newest latents are at the front).
    Front,
    /// From the last index (F1: the newest latents are at the back).
    Back,
}

/// A run of history frames: `len` frames starting `offset` frames from one end.
///
/// `Front, offset 1, len 2` is `history[1:3]`; `Back, offset 19, len 16` is
/// `history[-19:-3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistorySlice {
    /// The end it counts from.
    pub from: HistoryEnd,
    /// Frames between that end and the slice (for `Back`, the distance of the slice's first
    /// frame from the end, as in `history[-offset:]`).
    pub offset: u32,
    /// Number of frames.
    pub len: u32,
}

impl HistorySlice {
    /// `history[offset : offset + len]`.
    pub const fn front(offset: u32, len: u32) -> Self {
        Self {
            from: HistoryEnd::Front,
            offset,
            len,
        }
    }

    /// `history[-offset : -offset + len]` (to the end when `offset == len`).
    pub const fn back(offset: u32, len: u32) -> Self {
        Self {
            from: HistoryEnd::Back,
            offset,
            len,
        }
    }

    /// The frame range in a history of `history_len` frames, or `None` if it does not fit.
    ///
    /// ```
    /// use framepack_core::packing::HistorySlice;
    /// assert_eq!(HistorySlice::back(19, 16).range(20), Some(1..17));
    /// assert_eq!(HistorySlice::front(0, 1).range(19), Some(0..1));
    /// assert_eq!(HistorySlice::back(19, 16).range(10), None);
    /// ```
    pub fn range(&self, history_len: u32) -> Option<Range<u32>> {
        let start = match self.from {
            HistoryEnd::Front => self.offset,
            HistoryEnd::Back => history_len.checked_sub(self.offset)?,
        };
        let end = start.checked_add(self.len)?;
        (end <= history_len).then_some(start..end)
    }
}

/// What a frame of `clean_latents` is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatentSource {
    /// The window's anchor latent: the start image, or the keyframe that
    /// [`Conditioning::anchor`](crate::chain::Conditioning::anchor) names.
    Anchor,
    /// Frames of the latent history.
    History(HistorySlice),
    /// The kisekaeichi reference image's latent.
    Reference,
}

/// One frame of `clean_latents` and its RoPE time index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CleanFrame {
    /// Its entry in `clean_latent_indices`.
    pub index: u32,
    /// Where the latent comes from.
    pub source: LatentSource,
}

/// A compressed context group (`clean_latents_2x` or `_4x`): its indices and its history frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContextGroup {
    /// Its index vector (`clean_latent_2x_indices` or `_4x_indices`).
    pub indices: Vec<u32>,
    /// The history frames that fill it, one per index.
    pub source: HistorySlice,
}

/// The name of a part of a window's `arange(n).split(...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// Inverted / one-frame `clean_latent_indices_pre`: the anchor, at index 0.
    Pre,
    /// Inverted `blank_indices`: a gap in RoPE time, fed nothing.
    Blank,
    /// `latent_indices`: the frames being sampled.
    Noisy,
    /// Inverted / one-frame `clean_latent_indices_post`: the nearest future context frame.
    Post,
    /// `clean_latent_2x_indices`.
    Clean2x,
    /// `clean_latent_4x_indices`.
    Clean4x,
    /// F1 `clean_latent_indices_start`: the start image, at index 0.
    Start,
    /// F1 `clean_latent_1x_indices`: the newest history frame.
    Clean1x,
}

/// One part of the split: its kind and its index range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// What the part is.
    pub kind: SegmentKind,
    /// Its indices.
    pub range: Range<u32>,
}

/// eichi's kisekaeichi options for one-frame inference (`oneframe_ichi.py`): a reference image
/// latent goes into the post slot of `clean_latents`.
///
/// The defaults are the worker's (`history_index = 13`, `target_index = 1`, both context groups
/// on). eichi's UI starts `history_index` at 16 and offers 0..=16, and `target_index` 0..=8.
///
/// eichi's `use_clean_latents_post` toggle is not here: in the code it reads, the post slot is
/// overwritten by the reference latent (with a reference) or trimmed away (without one), so the
/// toggle changes nothing the model receives. Its 2x/4x toggles take effect only with a
/// reference image, which is why they live here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kisekae {
    /// RoPE time index of the reference latent (`clean_latent_indices[1]`).
    pub history_index: u32,
    /// RoPE time index of the sampled frame; clamped to `window − 1` as eichi does.
    pub target_index: u32,
    /// Keep the (one-frame, all-zero) 2x context group.
    pub clean_2x: bool,
    /// Keep the (one-frame, all-zero) 4x context group.
    pub clean_4x: bool,
}

impl Default for Kisekae {
    fn default() -> Self {
        Self {
            history_index: 13,
            target_index: 1,
            clean_2x: true,
            clean_4x: true,
        }
    }
}

/// The index layout of one window and the latents that feed each group.
///
/// ```
/// use framepack_core::{LatentSize, WindowLayout};
/// // Inverted, padding 3 windows of 9 (S = 4, first window): spec §3.1.
/// let layout = WindowLayout::inverted(27, 9);
/// assert_eq!(layout.latent_indices(), (28..37).collect::<Vec<_>>());
/// assert_eq!(layout.clean_latent_indices(), vec![0, 37]);
/// let tokens = layout.tokens(LatentSize::from_pixels(640, 608)?);
/// assert_eq!(tokens.total(), 17_500);
/// # Ok::<(), framepack_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowLayout {
    segments: Vec<Segment>,
    latent_indices: Vec<u32>,
    clean_latents: Vec<CleanFrame>,
    clean_latents_2x: Option<ContextGroup>,
    clean_latents_4x: Option<ContextGroup>,
}

fn split(parts: &[(SegmentKind, u32)]) -> Vec<Segment> {
    let mut start = 0;
    parts
        .iter()
        .map(|&(kind, len)| {
            let range = start..start + len;
            start += len;
            Segment { kind, range }
        })
        .collect()
}

impl WindowLayout {
    /// The inverted (anti-drifting) layout: `[pre 1 | blank P | latent L | post 1 | 2x 2 | 4x 16]`
    /// with `P = padding_size` and `L = latents` (spec §3.1, eichi `endframe_ichi.py`).
    ///
    /// Context comes from the **front** of the history, `history[0:19]` split `[1, 2, 16]`:
    /// the newest latents, which lie just after the window in video time (all zeros in the first
    /// window, or the end frame at `history[0]`).
    pub fn inverted(padding_size: u32, latents: u32) -> Self {
        use SegmentKind::*;
        let segments = split(&[
            (Pre, 1),
            (Blank, padding_size),
            (Noisy, latents),
            (Post, 1),
            (Clean2x, CLEAN_2X_FRAMES),
            (Clean4x, CLEAN_4X_FRAMES),
        ]);
        let r = |k: SegmentKind| -> Vec<u32> { segment_indices(&segments, k) };
        Self {
            latent_indices: r(Noisy),
            clean_latents: vec![
                CleanFrame {
                    index: segments[0].range.start,
                    source: LatentSource::Anchor,
                },
                CleanFrame {
                    index: segments[3].range.start,
                    source: LatentSource::History(HistorySlice::front(0, 1)),
                },
            ],
            clean_latents_2x: Some(ContextGroup {
                indices: r(Clean2x),
                source: HistorySlice::front(1, CLEAN_2X_FRAMES),
            }),
            clean_latents_4x: Some(ContextGroup {
                indices: r(Clean4x),
                source: HistorySlice::front(1 + CLEAN_2X_FRAMES, CLEAN_4X_FRAMES),
            }),
            segments,
        }
    }

    /// The F1 (forward) layout: `[start 1 | 4x 16 | 2x 2 | 1x 1 | latent L]`, the same in every
    /// window (spec §3.4).
    ///
    /// Context comes from the **back** of the history, `history[-19:]` split `[16, 2, 1]`: the
    /// newest latents, just before the window in video time.
    pub fn f1(latents: u32) -> Self {
        use SegmentKind::*;
        let segments = split(&[
            (Start, 1),
            (Clean4x, CLEAN_4X_FRAMES),
            (Clean2x, CLEAN_2X_FRAMES),
            (Clean1x, 1),
            (Noisy, latents),
        ]);
        let r = |k: SegmentKind| -> Vec<u32> { segment_indices(&segments, k) };
        Self {
            latent_indices: r(Noisy),
            clean_latents: vec![
                CleanFrame {
                    index: 0,
                    source: LatentSource::Anchor,
                },
                CleanFrame {
                    index: segments[3].range.start,
                    source: LatentSource::History(HistorySlice::back(1, 1)),
                },
            ],
            clean_latents_4x: Some(ContextGroup {
                indices: r(Clean4x),
                source: HistorySlice::back(CONTEXT_FRAMES, CLEAN_4X_FRAMES),
            }),
            clean_latents_2x: Some(ContextGroup {
                indices: r(Clean2x),
                source: HistorySlice::back(1 + CLEAN_2X_FRAMES, CLEAN_2X_FRAMES),
            }),
            segments,
        }
    }

    /// eichi's one-frame inference (`oneframe_ichi.py`), `window` being its "RoPE value".
    ///
    /// The split is the inverted one with no padding, `[pre 1 | latent W | post 1 | 2x 2 | 4x 16]`,
    /// and the model gets single indices picked from it:
    ///
    /// - Without a reference: one sampled frame at `W − 1` (the last index of `arange(W)`),
    ///   `clean_latents = [anchor]` at `[0]` (the post slot is trimmed away), and one-frame
    ///   2x / 4x groups at `[W + 2]` / `[W + 4]` fed by `history[2]` / `history[18]`.
    /// - With a [`Kisekae`] reference: the sampled frame at `min(target_index, W − 1)`,
    ///   `clean_latents = [anchor, reference]` at `[0, history_index]`, and (unless switched off)
    ///   one-frame 2x / 4x groups at `[W + 3]` / `[W + 19]`, fed by `history[2]` / `history[18]`.
    ///
    /// The history is fresh (19 zero latents), so the 2x / 4x groups are zeros either way.
    ///
    /// ```
    /// use framepack_core::{Kisekae, WindowLayout};
    /// let plain = WindowLayout::one_frame(9, None);
    /// assert_eq!(plain.latent_indices(), &[8]);
    /// assert_eq!(plain.clean_latent_indices(), vec![0]);
    /// let kisekae = WindowLayout::one_frame(9, Some(&Kisekae::default()));
    /// assert_eq!(kisekae.latent_indices(), &[1]);
    /// assert_eq!(kisekae.clean_latent_indices(), vec![0, 13]);
    /// assert_eq!(kisekae.clean_latent_2x_indices(), Some(&[12][..]));
    /// assert_eq!(kisekae.clean_latent_4x_indices(), Some(&[28][..]));
    /// ```
    pub fn one_frame(window: u32, kisekae: Option<&Kisekae>) -> Self {
        use SegmentKind::*;
        let segments = split(&[
            (Pre, 1),
            (Noisy, window),
            (Post, 1),
            (Clean2x, CLEAN_2X_FRAMES),
            (Clean4x, CLEAN_4X_FRAMES),
        ]);
        let two = segment_indices(&segments, Clean2x);
        let four = segment_indices(&segments, Clean4x);
        let last_of_window = window.saturating_sub(1);
        // Both paths trim the context tensors to their last frame: history[1:3][-1:] and
        // history[3:19][-1:].
        let group = |index: Option<u32>, offset: u32| {
            index.map(|i| ContextGroup {
                indices: vec![i],
                source: HistorySlice::front(offset, 1),
            })
        };
        let anchor = CleanFrame {
            index: 0,
            source: LatentSource::Anchor,
        };
        match kisekae {
            None => Self {
                latent_indices: vec![last_of_window],
                clean_latents: vec![anchor],
                clean_latents_2x: group(two.first().copied(), CLEAN_2X_FRAMES),
                clean_latents_4x: group(four.first().copied(), CONTEXT_FRAMES - 1),
                segments,
            },
            Some(k) => Self {
                latent_indices: vec![k.target_index.min(last_of_window)],
                clean_latents: vec![
                    anchor,
                    CleanFrame {
                        index: k.history_index,
                        source: LatentSource::Reference,
                    },
                ],
                clean_latents_2x: group(
                    two.last().copied().filter(|_| k.clean_2x),
                    CLEAN_2X_FRAMES,
                ),
                clean_latents_4x: group(
                    four.last().copied().filter(|_| k.clean_4x),
                    CONTEXT_FRAMES - 1,
                ),
                segments,
            },
        }
    }

    /// The split of `arange(len)`, in index order (a partition of `0..len`).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The length of the `arange` the window is split from.
    pub fn len(&self) -> u32 {
        self.segments.last().map_or(0, |s| s.range.end)
    }

    /// Whether the layout has no indices at all (never the case for a built layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range of the first segment of `kind`, if the layout has one.
    pub fn segment(&self, kind: SegmentKind) -> Option<Range<u32>> {
        self.segments
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.range.clone())
    }

    /// `latent_indices`: the RoPE time of each sampled frame.
    pub fn latent_indices(&self) -> &[u32] {
        &self.latent_indices
    }

    /// `clean_latent_indices`: the RoPE time of each `clean_latents` frame.
    pub fn clean_latent_indices(&self) -> Vec<u32> {
        self.clean_latents.iter().map(|c| c.index).collect()
    }

    /// The frames of `clean_latents`, in order, with their sources.
    pub fn clean_latents(&self) -> &[CleanFrame] {
        &self.clean_latents
    }

    /// `clean_latent_2x_indices`, or `None` when the group is not fed.
    pub fn clean_latent_2x_indices(&self) -> Option<&[u32]> {
        self.clean_latents_2x.as_ref().map(|g| g.indices.as_slice())
    }

    /// `clean_latent_4x_indices`, or `None` when the group is not fed.
    pub fn clean_latent_4x_indices(&self) -> Option<&[u32]> {
        self.clean_latents_4x.as_ref().map(|g| g.indices.as_slice())
    }

    /// The 2x context group, or `None` when it is not fed.
    pub fn clean_latents_2x(&self) -> Option<&ContextGroup> {
        self.clean_latents_2x.as_ref()
    }

    /// The 4x context group, or `None` when it is not fed.
    pub fn clean_latents_4x(&self) -> Option<&ContextGroup> {
        self.clean_latents_4x.as_ref()
    }

    /// The number of sampled frames (`latent_indices.len()`).
    pub fn noisy_frames(&self) -> u32 {
        self.latent_indices.len() as u32
    }

    /// Image-stream tokens per group for frames of `latent` size (spec §3.3).
    ///
    /// With `h × w` the latent size: noisy and clean frames are patchified 2×2
    /// (`frames·h/2·w/2`); the 2x group is padded to multiples of (2, 4, 4) and compressed by
    /// them (`⌈frames/2⌉·⌈h/4⌉·⌈w/4⌉`); the 4x group likewise by (4, 8, 8).
    pub fn tokens(&self, latent: LatentSize) -> TokenCounts {
        let (h, w) = (u64::from(latent.height), u64::from(latent.width));
        let per_frame = h.div_ceil(2) * w.div_ceil(2);
        let frames = |g: &Option<ContextGroup>| g.as_ref().map_or(0, |g| g.indices.len() as u64);
        TokenCounts {
            noisy: self.latent_indices.len() as u64 * per_frame,
            clean: self.clean_latents.len() as u64 * per_frame,
            clean_2x: frames(&self.clean_latents_2x).div_ceil(2) * h.div_ceil(4) * w.div_ceil(4),
            clean_4x: frames(&self.clean_latents_4x).div_ceil(4) * h.div_ceil(8) * w.div_ceil(8),
        }
    }
}

fn segment_indices(segments: &[Segment], kind: SegmentKind) -> Vec<u32> {
    segments
        .iter()
        .filter(|s| s.kind == kind)
        .flat_map(|s| s.range.clone())
        .collect()
}

/// Image-stream token counts of one model call, per group.
///
/// The text stream (729 SigLIP tokens + up to 256 prompt tokens) comes on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenCounts {
    /// Tokens of the frames being sampled. This is also the sampler's `seq_length` for the
    /// flow shift (`mu`), which counts only these.
    pub noisy: u64,
    /// Tokens of `clean_latents` (1x).
    pub clean: u64,
    /// Tokens of the 2x group.
    pub clean_2x: u64,
    /// Tokens of the 4x group.
    pub clean_4x: u64,
}

impl TokenCounts {
    /// All image-stream tokens.
    pub fn total(&self) -> u64 {
        self.noisy + self.clean + self.clean_2x + self.clean_4x
    }

    /// The context tokens (everything but the noisy frames).
    pub fn context(&self) -> u64 {
        self.clean + self.clean_2x + self.clean_4x
    }
}

/// Where a window's output goes in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Growth {
    /// New latents go in front (inverted and one-frame: generation runs backwards in time).
    Prepend,
    /// New latents go at the back (F1).
    Append,
}

/// How the latent history of a job starts, grows, and where its valid part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryPlan {
    /// Zero latents the history starts with ([`CONTEXT_FRAMES`]).
    pub zero_frames: u32,
    /// Whether the start latent follows the zeros from the beginning (F1), counted as the first
    /// generated frame.
    pub starts_with_start_latent: bool,
    /// Where new latents go.
    pub growth: Growth,
}

impl HistoryPlan {
    /// The history length before the first window.
    pub fn initial_len(&self) -> u32 {
        self.zero_frames + u32::from(self.starts_with_start_latent)
    }

    /// `total_generated_latent_frames` before the first window.
    pub fn initial_generated(&self) -> u32 {
        u32::from(self.starts_with_start_latent)
    }

    /// The valid part of a history of `history_len` frames of which `generated` are generated:
    /// the first `generated` frames when prepending (`history[:n]`), the last when appending
    /// (`history[-n:]`). The rest is the initial zero context, which is never decoded.
    ///
    /// ```
    /// use framepack_core::packing::{Growth, HistoryPlan, CONTEXT_FRAMES};
    /// let f1 = HistoryPlan { zero_frames: CONTEXT_FRAMES, starts_with_start_latent: true, growth: Growth::Append };
    /// assert_eq!(f1.valid_range(20 + 9, 10), 19..29);
    /// ```
    pub fn valid_range(&self, history_len: u32, generated: u32) -> Range<u32> {
        let n = generated.min(history_len);
        match self.growth {
            Growth::Prepend => 0..n,
            Growth::Append => history_len - n..history_len,
        }
    }
}

/// What one window does to the history once its latents are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryStep {
    /// Latent frames the sampler returns.
    pub sampled: u32,
    /// Whether the start latent is put in front of them first (the last inverted window).
    pub prepend_start_latent: bool,
    /// Latent frames added to the history (`sampled`, plus one with the start latent).
    pub added: u32,
    /// `total_generated_latent_frames` after the window.
    pub generated_after: u32,
    /// The history length after the window.
    pub history_len_after: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketTable;
    use proptest::prelude::*;

    fn kinds(layout: &WindowLayout) -> Vec<(SegmentKind, u32)> {
        layout
            .segments()
            .iter()
            .map(|s| (s.kind, s.range.end - s.range.start))
            .collect()
    }

    fn is_partition(layout: &WindowLayout) -> bool {
        let mut next = 0;
        for s in layout.segments() {
            if s.range.start != next || s.range.end < s.range.start {
                return false;
            }
            next = s.range.end;
        }
        next == layout.len()
    }

    #[test]
    fn inverted_table_spec_3_1() {
        // (padding p, latent_indices, [pre, post], 2x, 4x) for S = 4, L = 9.
        let rows = [
            (3, 28..37, [0, 37], [38, 39], 40..56),
            (2, 19..28, [0, 28], [29, 30], 31..47),
            (1, 10..19, [0, 19], [20, 21], 22..38),
            (0, 1..10, [0, 10], [11, 12], 13..29),
        ];
        for (p, latent, clean, two, four) in rows {
            let l = WindowLayout::inverted(p * 9, 9);
            assert_eq!(l.latent_indices(), latent.collect::<Vec<_>>(), "p={p}");
            assert_eq!(l.clean_latent_indices(), clean.to_vec());
            assert_eq!(l.clean_latent_2x_indices(), Some(&two[..]));
            assert_eq!(
                l.clean_latent_4x_indices().map(<[u32]>::to_vec),
                Some(four.collect())
            );
            assert_eq!(l.len(), 29 + 9 * p);
            assert_eq!(l.segment(SegmentKind::Blank), Some(1..1 + 9 * p));
            assert!(is_partition(&l));
        }
    }

    #[test]
    fn inverted_sources_read_history_front() {
        let l = WindowLayout::inverted(9, 9);
        assert_eq!(l.clean_latents()[0].source, LatentSource::Anchor);
        assert_eq!(
            l.clean_latents()[1].source,
            LatentSource::History(HistorySlice::front(0, 1))
        );
        assert_eq!(l.clean_latents_2x().unwrap().source.range(19), Some(1..3));
        assert_eq!(l.clean_latents_4x().unwrap().source.range(19), Some(3..19));
    }

    #[test]
    fn f1_layout_spec_3_4() {
        let l = WindowLayout::f1(9);
        assert_eq!(
            kinds(&l),
            vec![
                (SegmentKind::Start, 1),
                (SegmentKind::Clean4x, 16),
                (SegmentKind::Clean2x, 2),
                (SegmentKind::Clean1x, 1),
                (SegmentKind::Noisy, 9),
            ]
        );
        assert_eq!(l.clean_latent_indices(), vec![0, 19]);
        assert_eq!(
            l.clean_latent_4x_indices().unwrap(),
            (1..17).collect::<Vec<_>>()
        );
        assert_eq!(l.clean_latent_2x_indices().unwrap(), &[17, 18]);
        assert_eq!(l.latent_indices(), (20..29).collect::<Vec<_>>());
        // history[-19:] split [16, 2, 1] of the initial 19 zeros + start latent.
        assert_eq!(l.clean_latents_4x().unwrap().source.range(20), Some(1..17));
        assert_eq!(l.clean_latents_2x().unwrap().source.range(20), Some(17..19));
        assert_eq!(
            l.clean_latents()[1].source,
            LatentSource::History(HistorySlice::back(1, 1))
        );
        assert_eq!(HistorySlice::back(1, 1).range(20), Some(19..20));
    }

    #[test]
    fn token_table_spec_3_3_for_every_bucket() {
        // (H, W) -> noisy, 1x, 2x, 4x, total; both orientations share a row.
        let rows = [
            ((416, 960), [14040, 3120, 390, 420, 17970]),
            ((448, 864), [13608, 3024, 378, 392, 17402]),
            ((480, 832), [14040, 3120, 390, 416, 17966]),
            ((512, 768), [13824, 3072, 384, 384, 17664]),
            ((544, 704), [13464, 2992, 374, 396, 17226]),
            ((576, 672), [13608, 3024, 378, 396, 17406]),
            ((608, 640), [13680, 3040, 380, 400, 17500]),
        ];
        let layout = WindowLayout::inverted(0, 9);
        let mut seen = 0;
        for bucket in BucketTable::framepack().entries() {
            let key = (
                bucket.height.min(bucket.width),
                bucket.height.max(bucket.width),
            );
            let row = rows.iter().find(|(hw, _)| *hw == key).unwrap().1;
            let t = layout.tokens(LatentSize::from_bucket(*bucket).unwrap());
            assert_eq!(
                [t.noisy, t.clean, t.clean_2x, t.clean_4x, t.total()].map(|x| x as u32),
                row,
                "{bucket}"
            );
            // Tokens do not depend on the padding or the mode.
            assert_eq!(
                WindowLayout::inverted(27, 9).tokens(LatentSize::from_bucket(*bucket).unwrap()),
                t
            );
            assert_eq!(
                WindowLayout::f1(9).tokens(LatentSize::from_bucket(*bucket).unwrap()),
                t
            );
            seen += 1;
        }
        assert_eq!(seen, 14);
        // The hypothetical 640×640 of spec §3.3.
        let t = layout.tokens(LatentSize::from_pixels(640, 640).unwrap());
        assert_eq!(t.total(), 18_400);
        assert_eq!(t.context(), 4_000);
    }

    #[test]
    fn one_frame_layouts() {
        let plain = WindowLayout::one_frame(9, None);
        assert_eq!(plain.len(), 29);
        assert!(is_partition(&plain));
        assert_eq!(plain.latent_indices(), &[8]);
        assert_eq!(plain.clean_latent_indices(), vec![0]);
        assert_eq!(plain.clean_latent_2x_indices(), Some(&[11][..]));
        assert_eq!(plain.clean_latent_4x_indices(), Some(&[13][..]));
        assert_eq!(
            plain.clean_latents_2x().unwrap().source,
            HistorySlice::front(2, 1)
        );
        assert_eq!(
            plain.clean_latents_4x().unwrap().source,
            HistorySlice::front(18, 1)
        );

        let k = Kisekae {
            history_index: 16,
            target_index: 20,
            clean_2x: false,
            clean_4x: true,
        };
        let ref_layout = WindowLayout::one_frame(9, Some(&k));
        assert_eq!(ref_layout.latent_indices(), &[8]); // clamped to W - 1
        assert_eq!(ref_layout.clean_latent_indices(), vec![0, 16]);
        assert_eq!(
            ref_layout.clean_latents()[1].source,
            LatentSource::Reference
        );
        assert_eq!(ref_layout.clean_latent_2x_indices(), None);
        assert_eq!(ref_layout.clean_latent_4x_indices(), Some(&[28][..]));

        // Tokens at 640×608: 1 noisy + 2 clean frames, a 1-frame 2x and a 1-frame 4x group.
        let t = ref_layout.tokens(LatentSize::from_pixels(640, 608).unwrap());
        assert_eq!(
            (t.noisy, t.clean, t.clean_2x, t.clean_4x),
            (1520, 3040, 0, 100)
        );
        let t = plain.tokens(LatentSize::from_pixels(640, 608).unwrap());
        assert_eq!(
            (t.noisy, t.clean, t.clean_2x, t.clean_4x),
            (1520, 1520, 380, 100)
        );
        // RoPE value 1: arange(1)[-1:] is index 0.
        assert_eq!(WindowLayout::one_frame(1, None).latent_indices(), &[0]);
    }

    #[test]
    fn latent_size_rejects_bad_sides() {
        assert_eq!(
            LatentSize::from_pixels(0, 16),
            Err(Error::ZeroSize { argument: "height" })
        );
        assert_eq!(
            LatentSize::from_pixels(640, 600),
            Err(Error::NotMultiple {
                argument: "width",
                value: 600,
                multiple: 16
            })
        );
        assert_eq!(
            LatentSize::from_pixels(1080, 960),
            Err(Error::NotMultiple {
                argument: "height",
                value: 1080,
                multiple: 16
            })
        );
        // Every bucket of every table passes, except eichi's two 1080-sided ones.
        let mut failing = Vec::new();
        for base in crate::bucket::EICHI_BASES {
            for b in BucketTable::eichi(*base).unwrap().entries() {
                if LatentSize::from_bucket(*b).is_err() {
                    failing.push(*b);
                }
            }
        }
        assert_eq!(
            failing,
            vec![Bucket::new(960, 1080), Bucket::new(1080, 960)]
        );
    }

    #[test]
    fn history_plan_ranges() {
        let inv = HistoryPlan {
            zero_frames: CONTEXT_FRAMES,
            starts_with_start_latent: false,
            growth: Growth::Prepend,
        };
        assert_eq!(inv.initial_len(), 19);
        assert_eq!(inv.initial_generated(), 0);
        assert_eq!(inv.valid_range(19 + 37, 37), 0..37);
    }

    proptest! {
        #[test]
        fn inverted_layout_is_a_partition(p in 0u32..200, l in 1u32..65) {
            let layout = WindowLayout::inverted(p, l);
            prop_assert!(is_partition(&layout));
            prop_assert_eq!(
                kinds(&layout),
                vec![
                    (SegmentKind::Pre, 1),
                    (SegmentKind::Blank, p),
                    (SegmentKind::Noisy, l),
                    (SegmentKind::Post, 1),
                    (SegmentKind::Clean2x, 2),
                    (SegmentKind::Clean4x, 16),
                ]
            );
            prop_assert_eq!(layout.len(), 1 + p + l + 19);
            prop_assert_eq!(layout.latent_indices().len() as u32, l);
            // Every index the model gets is in a segment of its own kind.
            let post = layout.segment(SegmentKind::Post).unwrap();
            prop_assert_eq!(layout.clean_latent_indices(), vec![0, post.start]);
        }

        #[test]
        fn f1_layout_is_a_partition(l in 1u32..65) {
            let layout = WindowLayout::f1(l);
            prop_assert!(is_partition(&layout));
            prop_assert_eq!(layout.len(), 20 + l);
            prop_assert_eq!(layout.latent_indices(), (20..20 + l).collect::<Vec<_>>());
        }

        #[test]
        fn one_frame_indices_lie_in_the_split(w in 1u32..65, h in 0u32..17, t in 0u32..9, k in any::<bool>()) {
            let kis = Kisekae { history_index: h, target_index: t, ..Kisekae::default() };
            let layout = WindowLayout::one_frame(w, k.then_some(&kis));
            prop_assert!(is_partition(&layout));
            prop_assert_eq!(layout.latent_indices().len(), 1);
            prop_assert!(layout.latent_indices()[0] < w);
            for i in layout.clean_latent_2x_indices().unwrap_or(&[]) {
                prop_assert!(layout.segment(SegmentKind::Clean2x).unwrap().contains(i));
            }
            for i in layout.clean_latent_4x_indices().unwrap_or(&[]) {
                prop_assert!(layout.segment(SegmentKind::Clean4x).unwrap().contains(i));
            }
        }

        #[test]
        fn token_counts_match_spec_formulas(h in 1u32..200, w in 1u32..200) {
            let latent = LatentSize::from_pixels(16 * h, 16 * w).unwrap();
            let (lh, lw) = (u64::from(latent.height), u64::from(latent.width));
            let t = WindowLayout::inverted(9, 9).tokens(latent);
            prop_assert_eq!(t.noisy, 9 * (lh / 2) * (lw / 2));
            prop_assert_eq!(t.clean, 2 * (lh / 2) * (lw / 2));
            prop_assert_eq!(t.clean_2x, lh.div_ceil(4) * lw.div_ceil(4));
            prop_assert_eq!(t.clean_4x, 4 * lh.div_ceil(8) * lw.div_ceil(8));
        }
    }
}
