//! Joining decoded sections into one clip (spec §2.5): which latents each section decodes, how
//! many pixel frames overlap, and the cross-fade weights of `soft_append_bcthw`.
//!
//! Every section after the first is decoded together with the previous section's latents, so
//! the causal VAE sees a continuous run; the overlapping `4L − 3` frames are then cross-faded
//! with the clip decoded so far. Each middle section adds `4L` frames, the inverted last one
//! `4L + 4` (it also carries the start latent), and in total a plan of `S` sections gives
//! `4LS + 1` frames (`36S + 1` for `L = 9`), in both modes.

use crate::schedule::{Flavor, Mode, WindowSize};

/// Pixel frames a causal-VAE decode of `latents` latent frames gives: `4(T − 1) + 1`.
///
/// ```
/// assert_eq!(framepack_core::blend::decoded_frames(9), 33);
/// assert_eq!(framepack_core::blend::decoded_frames(1), 1);
/// ```
pub const fn decoded_frames(latents: u32) -> u32 {
    if latents == 0 {
        0
    } else {
        4 * (latents - 1) + 1
    }
}

/// The cross-fade weights of `soft_append_bcthw(earlier, later, n)`: `w_i = 1 − i/(n − 1)`, as
/// `torch.linspace(1, 0, n)` computes them.
///
/// The blended frame `i` is `w_i · earlier[−n + i] + (1 − w_i) · later[i]`. torch evaluates the
/// first half as `1 + i·step` and the second as `0 − (n − 1 − i)·step`; that is reproduced here
/// in `f32`. The reference builds the weights in the clip's dtype (fp16): for `n − 1` a power of
/// two (`n = 33` for `L = 9`, `n = 17` for eichi's 0.5 s sections) every weight is a dyadic
/// fraction, exact in both types. For other `n`, torch's fp16 arithmetic may differ from these
/// values in the last fp16 bit. `n = 1` gives `[1.0]` (torch's single-point linspace).
///
/// ```
/// let w = framepack_core::blend::soft_append_weights(33);
/// assert_eq!((w[0], w[16], w[32]), (1.0, 0.5, 0.0));
/// assert_eq!(w[1], 31.0 / 32.0);
/// ```
pub fn soft_append_weights(n: u32) -> Vec<f32> {
    match n {
        0 => Vec::new(),
        1 => vec![1.0],
        _ => {
            let step = -1.0f32 / (n - 1) as f32;
            let halfway = n / 2;
            (0..n)
                .map(|i| {
                    if i < halfway {
                        1.0 + step * i as f32
                    } else {
                        0.0 - step * (n - 1 - i) as f32
                    }
                })
                .collect()
        }
    }
}

/// The length of `soft_append_bcthw(earlier, later, overlap)`: `earlier + later − overlap`.
pub const fn soft_append_len(earlier: u32, later: u32, overlap: u32) -> u32 {
    earlier + later - overlap
}

/// Which latents of the valid history (`real_history_latents`) a section decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatentSpan {
    /// All of them (the first section).
    All,
    /// The first `n` (`real_history_latents[:, :, :n]`, inverted).
    Front(u32),
    /// The last `n` (`real_history_latents[:, :, -n:]`, F1).
    Back(u32),
}

/// How a section's decoded frames join the clip so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Join {
    /// The first section: its frames are the clip.
    First,
    /// The new frames are earlier in time: `soft_append(current, clip, overlap)` (inverted;
    /// note the argument order).
    Before,
    /// The new frames are later in time: `soft_append(clip, current, overlap)` (F1).
    After,
}

/// The decode and join of one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectionDecode {
    /// Which latents are decoded.
    pub span: LatentSpan,
    /// How many latents that is.
    pub latents: u32,
    /// Pixel frames the decode gives.
    pub decoded_frames: u32,
    /// Frames cross-faded with the clip so far (0 for the first section).
    pub overlap: u32,
    /// Frames the clip grows by.
    pub frames_added: u32,
    /// How the frames join the clip.
    pub join: Join,
}

/// The decode of window `index` of a `sections`-section plan.
///
/// Follows the reference loops: the inverted first section decodes all valid latents (`L`, or
/// `L + 1` when it is also the last), later ones the first `2L` (`2L + 1` in the last, which
/// carries the start latent); F1's first section decodes its `1 + L` latents, later ones the
/// last `2L`; the overlap is `4L − 3`. One-frame inference decodes its single latent.
///
/// eichi quirk, reproduced for [`Flavor::Eichi`] only: with F1 and 0.5 s sections,
/// `endframe_ichi_f1.py` decodes the last **11** latents in the last section (a copy of the
/// inverted rule, where the extra latent is the start latent). The decoded run then starts one
/// latent earlier than the overlap assumes, and the clip gets 4 more frames than
/// `4·latents − 3`.
///
/// ```
/// use framepack_core::{Flavor, Mode, WindowSize};
/// use framepack_core::blend::{section_decode, LatentSpan};
/// let last = section_decode(Mode::Inverted, Flavor::FramePack, WindowSize::Latents(9), 3, 4);
/// assert_eq!((last.span, last.decoded_frames, last.frames_added), (LatentSpan::Front(19), 73, 40));
/// ```
pub fn section_decode(
    mode: Mode,
    flavor: Flavor,
    window: WindowSize,
    index: u32,
    sections: u32,
) -> SectionDecode {
    let l = window.latents();
    let is_last = index + 1 >= sections;
    let (span, latents, join) = match (mode, index) {
        (Mode::OneFrame, _) => (LatentSpan::All, 1, Join::First),
        (Mode::Inverted, 0) => (LatentSpan::All, l + u32::from(is_last), Join::First),
        (Mode::F1, 0) => (LatentSpan::All, 1 + l, Join::First),
        (Mode::Inverted, _) => {
            let n = 2 * l + u32::from(is_last);
            (LatentSpan::Front(n), n, Join::Before)
        }
        (Mode::F1, _) => {
            let quirk = flavor == Flavor::Eichi && window == WindowSize::HalfSecond && is_last;
            let n = 2 * l + u32::from(quirk);
            (LatentSpan::Back(n), n, Join::After)
        }
    };
    let decoded = decoded_frames(latents);
    let overlap = if join == Join::First {
        0
    } else {
        window.pixel_frames().min(decoded)
    };
    SectionDecode {
        span,
        latents,
        decoded_frames: decoded,
        overlap,
        frames_added: decoded - overlap,
        join,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn added(mode: Mode, flavor: Flavor, window: WindowSize, sections: u32) -> Vec<u32> {
        (0..sections)
            .map(|i| section_decode(mode, flavor, window, i, sections).frames_added)
            .collect()
    }

    #[test]
    fn weights_for_33() {
        let w = soft_append_weights(33);
        assert_eq!(w.len(), 33);
        for (i, &x) in w.iter().enumerate() {
            assert_eq!(x, 1.0 - i as f32 / 32.0);
        }
        assert_eq!(soft_append_weights(1), vec![1.0]);
        assert!(soft_append_weights(0).is_empty());
        assert_eq!(soft_append_weights(2), vec![1.0, 0.0]);
        let w17 = soft_append_weights(17);
        assert_eq!((w17[1], w17[15]), (15.0 / 16.0, 1.0 / 16.0));
    }

    #[test]
    fn spec_2_5_counts() {
        let w9 = WindowSize::Latents(9);
        let first = section_decode(Mode::Inverted, Flavor::FramePack, w9, 0, 4);
        assert_eq!(
            (first.latents, first.decoded_frames, first.frames_added),
            (9, 33, 33)
        );
        let mid = section_decode(Mode::Inverted, Flavor::FramePack, w9, 1, 4);
        assert_eq!(
            (
                mid.span,
                mid.decoded_frames,
                mid.overlap,
                mid.frames_added,
                mid.join
            ),
            (LatentSpan::Front(18), 69, 33, 36, Join::Before)
        );
        let only = section_decode(Mode::Inverted, Flavor::FramePack, w9, 0, 1);
        assert_eq!((only.latents, only.decoded_frames), (10, 37));
        let f1_first = section_decode(Mode::F1, Flavor::FramePack, w9, 0, 4);
        assert_eq!((f1_first.latents, f1_first.frames_added), (10, 37));
        let f1_mid = section_decode(Mode::F1, Flavor::FramePack, w9, 3, 4);
        assert_eq!(
            (f1_mid.span, f1_mid.frames_added, f1_mid.join),
            (LatentSpan::Back(18), 36, Join::After)
        );
        assert_eq!(
            added(Mode::Inverted, Flavor::FramePack, w9, 4),
            vec![33, 36, 36, 40]
        );
        assert_eq!(
            added(Mode::F1, Flavor::FramePack, w9, 4),
            vec![37, 36, 36, 36]
        );
    }

    #[test]
    fn eichi_half_second_sections() {
        let h = WindowSize::HalfSecond;
        assert_eq!(added(Mode::Inverted, Flavor::Eichi, h, 3), vec![17, 20, 24]);
        assert_eq!(
            section_decode(Mode::Inverted, Flavor::Eichi, h, 2, 3).span,
            LatentSpan::Front(11)
        );
        // The F1 quirk: 11 latents decoded in the last section, 4 surplus frames.
        assert_eq!(added(Mode::F1, Flavor::Eichi, h, 3), vec![21, 20, 24]);
        assert_eq!(added(Mode::F1, Flavor::FramePack, h, 3), vec![21, 20, 20]);
        assert_eq!(added(Mode::F1, Flavor::Eichi, h, 1), vec![21]);
    }

    #[test]
    fn one_frame_decodes_one_latent() {
        let d = section_decode(Mode::OneFrame, Flavor::Eichi, WindowSize::Latents(9), 0, 1);
        assert_eq!(
            (d.latents, d.decoded_frames, d.frames_added, d.join),
            (1, 1, 1, Join::First)
        );
    }

    proptest! {
        #[test]
        fn sums_give_4ls_plus_1(s in 1u32..300, l in 1u32..65, f1 in any::<bool>(), eichi in any::<bool>()) {
            let mode = if f1 { Mode::F1 } else { Mode::Inverted };
            let flavor = if eichi { Flavor::Eichi } else { Flavor::FramePack };
            let total: u32 = added(mode, flavor, WindowSize::Latents(l), s).iter().sum();
            prop_assert_eq!(total, 4 * l * s + 1);
            if l == 9 {
                prop_assert_eq!(total, 36 * s + 1);
            }
        }

        #[test]
        fn weights_fall_from_one_to_zero(n in 2u32..200) {
            let w = soft_append_weights(n);
            prop_assert_eq!(w.len() as u32, n);
            prop_assert_eq!(w[0], 1.0);
            prop_assert_eq!(w[n as usize - 1], 0.0);
            prop_assert!(w.windows(2).all(|p| p[1] <= p[0]));
        }
    }
}
