//! The eichi chain: which image, end frame, prompt and start-image influence each window uses.
//!
//! FramePack-eichi's standard app (`endframe_ichi.py`) turns the inverted sampler into a
//! keyframe animator by changing, per window, what goes into the `pre` and `post` slots and
//! which prompt embedding is used (features.md part (b)). Images are not handled here: a window
//! names its anchor by role ([`Anchor::Start`] or the keyframe of a section), and the caller maps
//! that to the latent it encoded.
//!
//! Windows are numbered in sampling order. In inverted mode window 0 produces the **end** of the
//! video, so "section i" of the eichi UI is the i-th window generated, counting from the end.

use core::fmt;
use std::collections::{BTreeMap, BTreeSet};

use crate::bucket::{Bucket, BucketTable, ImageSize};
use crate::error::{Error, Result};

/// Which latent a window puts in its `pre` slot (`clean_latents_pre` / F1's start slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// The start image's latent.
    Start,
    /// The latent of the keyframe configured for `section`.
    Keyframe {
        /// The section the keyframe was configured for.
        section: u32,
    },
}

/// Which prompt embedding a window is sampled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptChoice {
    /// The main prompt.
    Main,
    /// The prompt configured for this section (see [`Chain::section_prompt`]).
    Section(u32),
}

/// eichi F1's "image influence" (`endframe_ichi_f1.py`, slider 100 %..102 %).
///
/// A value `v` is passed to the sampler as `initial_latent = start latent`,
/// `strength = max(0.01, 1/v)`: the whole sigma schedule is scaled by `strength` and sampling
/// starts from `start·(1 − σ₀) + noise·σ₀`, so each window starts slightly denoised towards the
/// start image. `v = 1.0` is stock F1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageInfluence {
    value: f64,
}

impl ImageInfluence {
    /// The smallest value eichi's slider offers (100 %).
    pub const MIN: f64 = 1.0;
    /// The largest value eichi's slider offers (102 %).
    pub const MAX: f64 = 1.02;

    /// An influence of `value` (1.0 = 100 %), which must lie in `MIN..=MAX`.
    ///
    /// ```
    /// use framepack_core::ImageInfluence;
    /// let i = ImageInfluence::new(1.02)?;
    /// assert!((i.sigma_scale() - 1.0 / 1.02).abs() < 1e-15);
    /// assert!(ImageInfluence::new(0.9).is_err());
    /// # Ok::<(), framepack_core::Error>(())
    /// ```
    pub fn new(value: f64) -> Result<Self> {
        if !(Self::MIN..=Self::MAX).contains(&value) {
            return Err(Error::InvalidImageInfluence {
                value,
                min: Self::MIN,
                max: Self::MAX,
            });
        }
        Ok(Self { value })
    }

    /// The value it was made from.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The sampler's `strength`: `max(0.01, 1/value)`, the factor on every sigma.
    pub fn sigma_scale(&self) -> f64 {
        (1.0 / self.value).max(0.01)
    }
}

/// What one window is conditioned on, besides its [`WindowLayout`](crate::WindowLayout).
///
/// The SigLIP image embedding is not chosen per window: eichi encodes only the start image with
/// SigLIP and uses it in every window, keyframes included (musubi-tuner, by contrast, encodes
/// each section image).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditioning {
    /// The latent for the `pre` / start slot.
    pub anchor: Anchor,
    /// `Some(strength)` when, **before** this window is sampled, the end-frame latent times
    /// `strength` must be written into `history[0]` (the first inverted window only). It then
    /// feeds this window's `post` slot and drifts into the 2x/4x context of later windows; it is
    /// never decoded.
    pub end_frame: Option<f64>,
    /// The prompt embedding (LLaMA vector, mask and CLIP pooler) to use. The negative prompt is
    /// shared by all windows.
    pub prompt: PromptChoice,
    /// F1 image influence: start the sampler from the start latent with scaled sigmas.
    pub image_influence: Option<ImageInfluence>,
}

/// Names an image in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageRole {
    /// The start image.
    Start,
    /// The end frame.
    EndFrame,
    /// The keyframe of a section.
    Keyframe {
        /// The section it was configured for.
        section: u32,
    },
}

impl fmt::Display for ImageRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Start => f.write_str("the start image"),
            Self::EndFrame => f.write_str("the end frame"),
            Self::Keyframe { section } => write!(f, "the keyframe of section {section}"),
        }
    }
}

/// The validated chain of a plan: keyframe sections, end frame and section prompts.
///
/// Made by [`GenerationRequest::validate`](crate::GenerationRequest::validate); read it through
/// [`SectionPlan::chain`](crate::SectionPlan::chain) or the per-window
/// [`Conditioning`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chain {
    keyframes: BTreeSet<u32>,
    end_frame: Option<f64>,
    prompts: BTreeMap<u32, String>,
}

impl Chain {
    pub(crate) fn new(
        keyframes: BTreeSet<u32>,
        end_frame: Option<f64>,
        prompts: BTreeMap<u32, String>,
    ) -> Self {
        Self {
            keyframes,
            end_frame,
            prompts,
        }
    }

    /// The anchor of window `window`: the keyframe of the lowest-numbered configured section
    /// `>= window`, else the start image.
    ///
    /// So a keyframe anchors its own window and every earlier-sampled one (later in video time)
    /// down to the previous keyframe. A keyframe on the last window replaces the start image as
    /// that window's anchor, but the start latent is still prepended as frame 0.
    pub fn anchor(&self, window: u32) -> Anchor {
        self.keyframes
            .range(window..)
            .next()
            .map_or(Anchor::Start, |&section| Anchor::Keyframe { section })
    }

    /// The end-frame strength to write into `history[0]` before window `window` (window 0 only).
    pub fn end_frame(&self, window: u32) -> Option<f64> {
        self.end_frame.filter(|_| window == 0)
    }

    /// The prompt of window `window`: its own section prompt when one is set and not blank,
    /// else the main prompt (only an exact section number matches, unlike keyframes).
    pub fn prompt(&self, window: u32) -> PromptChoice {
        match self.prompts.get(&window) {
            Some(text) if !text.trim().is_empty() => PromptChoice::Section(window),
            _ => PromptChoice::Main,
        }
    }

    /// The text of the prompt configured for `section`, if any.
    pub fn section_prompt(&self, section: u32) -> Option<&str> {
        self.prompts.get(&section).map(String::as_str)
    }

    /// The sections that have a keyframe, ascending.
    pub fn keyframes(&self) -> impl Iterator<Item = u32> + '_ {
        self.keyframes.iter().copied()
    }

    /// The end-frame strength, if an end frame is set.
    pub fn end_frame_strength(&self) -> Option<f64> {
        self.end_frame
    }
}

/// Checks that the end frame and keyframes map to the start image's bucket, and returns it.
///
/// eichi buckets every image on its own aspect ratio; an image that lands in another bucket
/// gives a latent of another shape, which cannot be written into the history or the `pre` slot
/// (eichi aborts with a tensor-size error). Here that is caught up front, naming the image.
///
/// ```
/// use framepack_core::{Bucket, BucketTable, ImageRole, ImageSize, chain::shared_bucket};
/// let table = BucketTable::framepack();
/// let ok = shared_bucket(&table, ImageSize::new(512, 512), &[(ImageRole::EndFrame, ImageSize::new(1000, 1000))]);
/// assert_eq!(ok, Ok(Bucket::new(640, 608)));
/// let bad = shared_bucket(&table, ImageSize::new(512, 512), &[(ImageRole::Keyframe { section: 2 }, ImageSize::new(1080, 1920))]);
/// assert!(bad.unwrap_err().to_string().starts_with("the keyframe of section 2"));
/// ```
pub fn shared_bucket(
    table: &BucketTable,
    start: ImageSize,
    others: &[(ImageRole, ImageSize)],
) -> Result<Bucket> {
    let expected = table.nearest(start.height, start.width)?;
    for &(image, size) in others {
        let bucket = table.nearest(size.height, size.width)?;
        if bucket != expected {
            return Err(Error::BucketMismatch {
                image,
                size,
                bucket,
                expected,
            });
        }
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(keys: &[u32], end: Option<f64>, prompts: &[(u32, &str)]) -> Chain {
        Chain::new(
            keys.iter().copied().collect(),
            end,
            prompts.iter().map(|&(s, p)| (s, p.to_string())).collect(),
        )
    }

    #[test]
    fn anchor_is_lowest_keyframe_at_or_after_the_window() {
        let c = chain(&[1, 4], None, &[]);
        let got: Vec<Anchor> = (0..7).map(|i| c.anchor(i)).collect();
        let k = |section| Anchor::Keyframe { section };
        assert_eq!(
            got,
            vec![k(1), k(1), k(4), k(4), k(4), Anchor::Start, Anchor::Start]
        );
        assert_eq!(chain(&[], None, &[]).anchor(0), Anchor::Start);
    }

    #[test]
    fn end_frame_only_before_the_first_window() {
        let c = chain(&[], Some(0.5), &[]);
        assert_eq!(c.end_frame(0), Some(0.5));
        assert_eq!(c.end_frame(1), None);
        assert_eq!(chain(&[], None, &[]).end_frame(0), None);
    }

    #[test]
    fn prompts_match_exactly_and_skip_blank_ones() {
        let c = chain(&[], None, &[(1, "a cat"), (3, "   ")]);
        assert_eq!(c.prompt(0), PromptChoice::Main);
        assert_eq!(c.prompt(1), PromptChoice::Section(1));
        assert_eq!(c.prompt(2), PromptChoice::Main);
        assert_eq!(c.prompt(3), PromptChoice::Main);
        assert_eq!(c.section_prompt(1), Some("a cat"));
    }

    #[test]
    fn bucket_mismatch_names_the_image() {
        let t = BucketTable::framepack();
        let err = shared_bucket(
            &t,
            ImageSize::new(1080, 1920),
            &[
                (
                    ImageRole::Keyframe { section: 0 },
                    ImageSize::new(720, 1280),
                ),
                (ImageRole::EndFrame, ImageSize::new(1920, 1080)),
            ],
        );
        assert_eq!(
            err,
            Err(Error::BucketMismatch {
                image: ImageRole::EndFrame,
                size: ImageSize::new(1920, 1080),
                bucket: Bucket::new(832, 480),
                expected: Bucket::new(480, 832),
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "the end frame (1920x1080) maps to bucket 832x480, but the start image maps to \
             480x832; use an image of the same aspect ratio"
        );
    }

    #[test]
    fn image_influence_range() {
        assert_eq!(ImageInfluence::new(1.0).unwrap().sigma_scale(), 1.0);
        assert!(ImageInfluence::new(f64::NAN).is_err());
        assert!(ImageInfluence::new(1.03).is_err());
        assert_eq!(ImageInfluence::new(1.01).unwrap().value(), 1.01);
    }
}
