//! The section schedule: how many windows a video takes, their paddings, and everything each
//! window needs (spec §2, features.md part (b)).
//!
//! A [`GenerationRequest`] collects the options with builder methods; [`validate`] checks them
//! and returns a [`SectionPlan`], whose [`windows`] yield one [`Window`] per sampler run, in
//! sampling order, each with its index layout, conditioning, history step and decode.
//!
//! [`validate`]: GenerationRequest::validate
//! [`windows`]: SectionPlan::windows

use core::fmt;
use std::collections::{BTreeMap, BTreeSet};

use crate::blend::{section_decode, SectionDecode};
use crate::chain::{Chain, Conditioning, ImageInfluence};
use crate::error::{Error, Result};
use crate::packing::{Growth, HistoryPlan, HistoryStep, Kisekae, WindowLayout, CONTEXT_FRAMES};

/// Frames per second of every FramePack video (hard-coded in the reference).
pub const FPS: u32 = 30;

/// The largest latent window this crate plans (eichi's one-frame "RoPE value" goes up to 64;
/// the official hidden slider to 33).
pub const MAX_WINDOW: u32 = 64;

/// The most sections a plan may have (a guard against overflow; eichi's longest preset is 120 s,
/// i.e. 100 sections of 1.2 s).
pub const MAX_SECTIONS: u32 = 100_000;

/// The largest constant padding accepted (eichi's all-padding slider offers 0.2..=3.0).
pub const MAX_CONSTANT_PADDING: f64 = 3.0;

/// How the video is generated. Named by [`Mode::name`] everywhere (command line, run
/// records, latent files, serde).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The original anti-drifting sampler (`demo_gradio.py`): windows are generated backwards in
    /// time, from the end of the video to the start.
    #[default]
    Inverted,
    /// Forward next-section prediction (`demo_gradio_f1.py`).
    F1,
    /// eichi's one-frame inference (`oneframe_ichi.py`): a single latent frame, one image out.
    OneFrame,
}

impl Mode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [Mode; 3] = [Mode::Inverted, Mode::F1, Mode::OneFrame];

    /// The mode's name on the command line, in run records and in latent files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inverted => "inverted",
            Self::F1 => "f1",
            Self::OneFrame => "one-frame",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;

    /// [`Mode::name`], case-insensitive (`one_frame` and `oneframe` are accepted too).
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|m| m.name() == wanted || (wanted == "oneframe" && *m == Self::OneFrame))
            .ok_or_else(|| Error::UnknownName {
                what: "mode",
                value: s.to_string(),
                expected: "inverted, f1 or one-frame",
            })
    }
}

/// Which reference application's conventions to follow where FramePack and FramePack-eichi
/// differ. Everything not listed here is identical in both.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// lllyasviel/FramePack's demos.
    #[default]
    FramePack,
    /// FramePack-eichi (v1.9.5.3). Differences, all in F1 mode (`endframe_ichi_f1.py`):
    /// - the section count divides by `4L − 3` frames instead of `4L`
    ///   (`round(seconds·30 / 33)` for 1 s sections, `/ 15` for 0.5 s ones);
    /// - with 0.5 s sections, the last section decodes 11 latents instead of 10 (see
    ///   [`section_decode`]).
    Eichi,
}

/// The latent window: how many latent frames each section samples. In serde (run records) a
/// latent count is a number and the 0.5 s sections the string `"half-second"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowSize {
    /// `L` latent frames per section (`4L − 3` pixel frames sampled; FramePack's default is 9).
    Latents(u32),
    /// eichi's 0.5 s sections: `latent_window_size = 4.5`. The section count and padding sizes
    /// use 4.5 (`round(seconds·30/18)`, `int(p·4.5)`), but each section samples 17 pixel frames,
    /// i.e. 5 latents, and is indexed and decoded as a window of 5.
    HalfSecond,
}

impl Flavor {
    /// The flavor's name on the command line and in run records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FramePack => "framepack",
            Self::Eichi => "eichi",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Flavor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [Self::FramePack, Self::Eichi]
            .into_iter()
            .find(|f| f.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownName {
                what: "flavor",
                value: s.to_string(),
                expected: "framepack or eichi",
            })
    }
}

/// The serde name of [`WindowSize::HalfSecond`].
const HALF_SECOND: &str = "half-second";

impl serde::Serialize for WindowSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Latents(l) => s.serialize_u32(*l),
            Self::HalfSecond => s.serialize_str(HALF_SECOND),
        }
    }
}

impl<'de> serde::Deserialize<'de> for WindowSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Latents(u32),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Latents(l) => Ok(Self::Latents(l)),
            Repr::Name(n) if n == HALF_SECOND => Ok(Self::HalfSecond),
            Repr::Name(n) => Err(serde::de::Error::custom(format!(
                "window `{n}`: expected a latent count or `{HALF_SECOND}`"
            ))),
        }
    }
}

impl Default for WindowSize {
    fn default() -> Self {
        Self::Latents(9)
    }
}

impl From<u32> for WindowSize {
    fn from(latents: u32) -> Self {
        Self::Latents(latents)
    }
}

impl fmt::Display for WindowSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latents(l) => write!(f, "{l}"),
            Self::HalfSecond => f.write_str("4.5 (0.5 s)"),
        }
    }
}

impl WindowSize {
    /// The `latent_window_size` the reference computes section counts and padding sizes with
    /// (4.5 for [`HalfSecond`](Self::HalfSecond)).
    pub fn nominal(&self) -> f64 {
        match self {
            Self::Latents(l) => f64::from(*l),
            Self::HalfSecond => 4.5,
        }
    }

    /// Latent frames each section samples (5 for [`HalfSecond`](Self::HalfSecond)).
    pub fn latents(&self) -> u32 {
        match self {
            Self::Latents(l) => *l,
            Self::HalfSecond => 5,
        }
    }

    /// Pixel frames each section samples: `4·latents − 3` (the sampler's `frames` argument, and
    /// the soft-append overlap).
    pub fn pixel_frames(&self) -> u32 {
        (4 * self.latents()).saturating_sub(3)
    }

    fn check(&self) -> Result<()> {
        match self {
            Self::Latents(l) if *l == 0 || *l > MAX_WINDOW => Err(Error::InvalidWindow {
                value: *l,
                max: MAX_WINDOW,
            }),
            _ => Ok(()),
        }
    }
}

/// The padding schedule of inverted mode.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Padding {
    /// The reference schedule: `[S−1, …, 1, 0]` for `S <= 4` sections, else
    /// `[3, 2, …, 2, 1, 0]` (see [`inverted_paddings`]).
    #[default]
    Schedule,
    /// eichi's "all-padding": every window gets the same value `p` (rounded to one decimal,
    /// as `round(p, 1)`), i.e. `int(p·L)` blank slots; the last window is forced to 0.
    /// Larger values place the window further from its anchor: less motion per section.
    Constant(f64),
}

/// Python's `round(x)` of a float: nearest integer, halves to even.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// Python's `round(x, 1)`: the decimal with one fractional digit nearest to the exact binary
/// value of `x` (halves to even), read back as the nearest double. Rust's formatter rounds the
/// exact value the same way, so formatting and parsing reproduces it (e.g. 0.35 → 0.3, because
/// the double 0.35 lies just below it).
fn round_to_tenth(x: f64) -> f64 {
    format!("{x:.1}").parse().unwrap_or(x)
}

fn count_sections(seconds: f64, frames_per_section: f64) -> Result<u32> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(Error::InvalidSeconds { value: seconds });
    }
    let sections = round_half_even(seconds * f64::from(FPS) / frames_per_section).max(1.0);
    if sections > f64::from(MAX_SECTIONS) {
        return Err(Error::TooManySections {
            seconds,
            sections,
            max: MAX_SECTIONS,
        });
    }
    Ok(sections as u32)
}

/// The number of sections for `seconds` of video: `int(max(round(seconds·30 / (4L)), 1))` with
/// Python's half-to-even `round` and `L` = [`WindowSize::nominal`] (spec §2.1).
///
/// So 3.0 s gives 2.5 → **2** sections, and 5.4 s gives 4.5 → **4**.
///
/// ```
/// use framepack_core::{schedule::section_count, WindowSize};
/// assert_eq!(section_count(5.0, WindowSize::Latents(9))?, 4);
/// assert_eq!(section_count(3.0, WindowSize::Latents(9))?, 2);
/// assert_eq!(section_count(1.0, WindowSize::HalfSecond)?, 2);
/// assert!(section_count(0.0, WindowSize::Latents(9)).is_err());
/// # Ok::<(), framepack_core::Error>(())
/// ```
pub fn section_count(seconds: f64, window: WindowSize) -> Result<u32> {
    window.check()?;
    count_sections(seconds, 4.0 * window.nominal())
}

/// The reference padding schedule of inverted mode, in windows of `L` (spec §2.3):
/// `[S−1, …, 1, 0]` for `S <= 4`, else `[3] + [2]·(S−3) + [1, 0]` (the author found that
/// repeating 2 "looks better than expanding").
///
/// ```
/// use framepack_core::schedule::inverted_paddings;
/// assert_eq!(inverted_paddings(4), vec![3, 2, 1, 0]);
/// assert_eq!(inverted_paddings(6), vec![3, 2, 2, 2, 1, 0]);
/// ```
pub fn inverted_paddings(sections: u32) -> Vec<u32> {
    if sections <= 4 {
        (0..sections).rev().collect()
    } else {
        let mut v = Vec::with_capacity(sections as usize);
        v.push(3);
        v.extend(std::iter::repeat_n(2, sections as usize - 3));
        v.extend([1, 0]);
        v
    }
}

/// Everything a generation asks for, before validation.
///
/// ```
/// use framepack_core::{GenerationRequest, Mode};
/// let plan = GenerationRequest::new(5.0).mode(Mode::Inverted).window(9).validate()?;
/// assert_eq!(plan.sections(), 4);
/// assert_eq!(plan.latent_paddings(), &[3.0, 2.0, 1.0, 0.0]);
/// assert_eq!((plan.total_latent_frames(), plan.total_pixel_frames()), (37, 145));
/// for window in plan.windows() {
///     println!("window {} padding {} latents {:?}", window.index, window.padding_size,
///              window.layout.latent_indices());
/// }
/// # Ok::<(), framepack_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    seconds: f64,
    mode: Mode,
    flavor: Flavor,
    window: WindowSize,
    padding: Padding,
    keyframes: BTreeSet<u32>,
    end_frame: Option<f64>,
    prompts: BTreeMap<u32, String>,
    image_influence: Option<f64>,
    kisekae: Option<Kisekae>,
}

impl GenerationRequest {
    /// A request for `seconds` of video, with FramePack's defaults: inverted mode, window 9,
    /// the reference padding schedule, no keyframes, end frame or section prompts.
    pub fn new(seconds: f64) -> Self {
        Self {
            seconds,
            mode: Mode::default(),
            flavor: Flavor::default(),
            window: WindowSize::default(),
            padding: Padding::default(),
            keyframes: BTreeSet::new(),
            end_frame: None,
            prompts: BTreeMap::new(),
            image_influence: None,
            kisekae: None,
        }
    }

    /// A one-frame inference request (the length does not matter there).
    ///
    /// ```
    /// use framepack_core::{GenerationRequest, Kisekae};
    /// let plan = GenerationRequest::one_frame().kisekae(Kisekae::default()).validate()?;
    /// let w = plan.windows().next().unwrap();
    /// assert_eq!(w.layout.clean_latent_indices(), vec![0, 13]);
    /// # Ok::<(), framepack_core::Error>(())
    /// ```
    pub fn one_frame() -> Self {
        Self::new(1.0).mode(Mode::OneFrame)
    }

    /// The generation mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Whose conventions to follow where FramePack and eichi differ.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// The latent window: a latent count (`window(9)`) or [`WindowSize::HalfSecond`].
    /// In one-frame mode this is eichi's "RoPE value".
    pub fn window(mut self, window: impl Into<WindowSize>) -> Self {
        self.window = window.into();
        self
    }

    /// The padding schedule (inverted mode).
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// An end frame (inverted mode), its latent multiplied by `strength` in `0..=1` before it is
    /// written into `history[0]`.
    pub fn end_frame(mut self, strength: f64) -> Self {
        self.end_frame = Some(strength);
        self
    }

    /// A keyframe for `section` (inverted mode; 0 = the first window sampled = the end of the
    /// video). It anchors that window and every earlier-sampled one down to the previous
    /// keyframe.
    pub fn keyframe(mut self, section: u32) -> Self {
        self.keyframes.insert(section);
        self
    }

    /// A prompt for exactly `section` (inverted or F1). A blank prompt falls back to the main
    /// one, as in eichi. eichi's F1 app has no section prompts; here F1 windows use them too,
    /// numbered forwards in time.
    pub fn section_prompt(mut self, section: u32, prompt: impl Into<String>) -> Self {
        self.prompts.insert(section, prompt.into());
        self
    }

    /// eichi F1's image influence, `1.0..=1.02` (F1 mode).
    pub fn image_influence(mut self, value: f64) -> Self {
        self.image_influence = Some(value);
        self
    }

    /// kisekaeichi: a reference image in one-frame inference (one-frame mode).
    pub fn kisekae(mut self, kisekae: Kisekae) -> Self {
        self.kisekae = Some(kisekae);
        self
    }

    fn only_in(&self, option: &'static str, modes: &[Mode], given: bool) -> Result<()> {
        if given && !modes.contains(&self.mode) {
            return Err(Error::UnsupportedInMode {
                option,
                mode: self.mode,
            });
        }
        Ok(())
    }

    /// Checks every option and computes the plan.
    ///
    /// Errors: a non-positive, infinite or NaN length; window 0 or above [`MAX_WINDOW`]; an
    /// option the mode does not have (keyframes, end frame or constant padding outside inverted
    /// mode, image influence outside F1, a reference outside one-frame, section prompts in
    /// one-frame, 0.5 s sections in one-frame); a constant padding outside
    /// `0..=`[`MAX_CONSTANT_PADDING`]; an end-frame strength outside `0..=1`; an image influence
    /// outside `1.0..=1.02`; a keyframe or section prompt past the last section.
    pub fn validate(&self) -> Result<SectionPlan> {
        use Mode::*;
        self.window.check()?;
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            return Err(Error::InvalidSeconds {
                value: self.seconds,
            });
        }
        self.only_in("keyframe", &[Inverted], !self.keyframes.is_empty())?;
        self.only_in("end_frame", &[Inverted], self.end_frame.is_some())?;
        self.only_in(
            "constant padding",
            &[Inverted],
            matches!(self.padding, Padding::Constant(_)),
        )?;
        self.only_in("image_influence", &[F1], self.image_influence.is_some())?;
        self.only_in("kisekae", &[OneFrame], self.kisekae.is_some())?;
        self.only_in("section_prompt", &[Inverted, F1], !self.prompts.is_empty())?;
        self.only_in(
            "0.5 s sections",
            &[Inverted, F1],
            self.window == WindowSize::HalfSecond,
        )?;

        let sections = match (self.mode, self.flavor) {
            (OneFrame, _) => 1,
            (F1, Flavor::Eichi) => count_sections(self.seconds, 4.0 * self.window.nominal() - 3.0)?,
            _ => count_sections(self.seconds, 4.0 * self.window.nominal())?,
        };

        let paddings: Vec<f64> = match (self.mode, self.padding) {
            (Inverted, Padding::Schedule) => inverted_paddings(sections)
                .into_iter()
                .map(f64::from)
                .collect(),
            (Inverted, Padding::Constant(p)) => {
                if !(0.0..=MAX_CONSTANT_PADDING).contains(&p) {
                    return Err(Error::InvalidPadding {
                        value: p,
                        max: MAX_CONSTANT_PADDING,
                    });
                }
                let p = round_to_tenth(p);
                (0..sections)
                    .map(|i| if i + 1 == sections { 0.0 } else { p })
                    .collect()
            }
            _ => vec![0.0; sections as usize],
        };

        let end_frame = match self.end_frame {
            Some(s) if !(0.0..=1.0).contains(&s) => {
                return Err(Error::InvalidEndFrameStrength { value: s })
            }
            other => other,
        };
        let image_influence = self.image_influence.map(ImageInfluence::new).transpose()?;
        let last = sections - 1;
        if let Some(&section) = self.keyframes.range(sections..).next() {
            return Err(Error::KeyframeOutOfRange {
                section,
                last,
                sections,
            });
        }
        if let Some((&section, _)) = self.prompts.range(sections..).next() {
            return Err(Error::SectionPromptOutOfRange {
                section,
                last,
                sections,
            });
        }

        Ok(SectionPlan {
            seconds: self.seconds,
            mode: self.mode,
            flavor: self.flavor,
            window: self.window,
            sections,
            paddings,
            chain: Chain::new(self.keyframes.clone(), end_frame, self.prompts.clone()),
            image_influence,
            kisekae: self.kisekae,
        })
    }
}

/// A validated generation: the section count, the paddings, and the per-window data.
#[derive(Debug, Clone, PartialEq)]
pub struct SectionPlan {
    seconds: f64,
    mode: Mode,
    flavor: Flavor,
    window: WindowSize,
    sections: u32,
    paddings: Vec<f64>,
    chain: Chain,
    image_influence: Option<ImageInfluence>,
    kisekae: Option<Kisekae>,
}

/// One sampler run of a plan, with everything that differs between runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Position in sampling order (eichi's section number; in inverted mode 0 is the end of the
    /// video).
    pub index: u32,
    /// Whether this is the first window sampled.
    pub is_first: bool,
    /// Whether this is the last window sampled (inverted: the one that gets the start latent).
    pub is_last: bool,
    /// The padding value `p`, in windows (0 outside inverted mode).
    pub padding: f64,
    /// The blank RoPE slots between `pre` and the window: `int(p·L)` with `L` nominal.
    pub padding_size: u32,
    /// The sampler's `frames` argument (`4L − 3`, or 1 in one-frame mode); it draws
    /// `(frames + 3) / 4` latent frames of noise.
    pub frames: u32,
    /// The RoPE index layout and what feeds each group.
    pub layout: WindowLayout,
    /// Anchor, end frame, prompt and image influence.
    pub conditioning: Conditioning,
    /// What the window does to the latent history.
    pub history: HistoryStep,
    /// How its output is decoded and joined to the clip.
    pub decode: SectionDecode,
}

impl SectionPlan {
    /// The requested length in seconds.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// The generation mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The conventions followed.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The latent window.
    pub fn window(&self) -> WindowSize {
        self.window
    }

    /// Number of windows (sampler runs).
    pub fn sections(&self) -> u32 {
        self.sections
    }

    /// The padding value `p` of every window, in sampling order.
    pub fn latent_paddings(&self) -> &[f64] {
        &self.paddings
    }

    /// The blank slots of every window, `int(p·L)`, in sampling order.
    pub fn padding_sizes(&self) -> Vec<u32> {
        self.paddings
            .iter()
            .map(|&p| self.padding_size(p))
            .collect()
    }

    fn padding_size(&self, p: f64) -> u32 {
        // Python's `int(p * latent_window_size)`: truncation of the double product.
        (p * self.window.nominal()) as u32
    }

    /// Latent frames each window samples.
    pub fn latents_per_section(&self) -> u32 {
        match self.mode {
            Mode::OneFrame => 1,
            _ => self.window.latents(),
        }
    }

    /// The sampler's `frames` argument for every window.
    pub fn frames_per_section(&self) -> u32 {
        match self.mode {
            Mode::OneFrame => 1,
            _ => self.window.pixel_frames(),
        }
    }

    /// Latent frames of the result: `1 + L·S` (the start latent included) in the video modes,
    /// 1 in one-frame mode.
    pub fn total_latent_frames(&self) -> u32 {
        match self.mode {
            Mode::OneFrame => 1,
            _ => 1 + self.window.latents() * self.sections,
        }
    }

    /// Pixel frames of the result: the sum of what each window's decode adds. This is
    /// `4·latents − 3` (`36S + 1` for `L = 9`), except for the eichi F1 0.5 s quirk (+4).
    pub fn total_pixel_frames(&self) -> u32 {
        (0..self.sections)
            .map(|i| self.decode(i).frames_added)
            .sum()
    }

    /// The length of the result in seconds at [`FPS`].
    pub fn duration(&self) -> f64 {
        f64::from(self.total_pixel_frames()) / f64::from(FPS)
    }

    /// How the latent history starts and grows.
    pub fn history(&self) -> HistoryPlan {
        HistoryPlan {
            zero_frames: CONTEXT_FRAMES,
            starts_with_start_latent: self.mode == Mode::F1,
            growth: match self.mode {
                Mode::F1 => Growth::Append,
                Mode::Inverted | Mode::OneFrame => Growth::Prepend,
            },
        }
    }

    /// The keyframes, end frame and section prompts.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The kisekaeichi options, in one-frame mode with a reference.
    pub fn kisekae(&self) -> Option<&Kisekae> {
        self.kisekae.as_ref()
    }

    fn decode(&self, index: u32) -> SectionDecode {
        section_decode(self.mode, self.flavor, self.window, index, self.sections)
    }

    /// The windows in sampling order.
    pub fn windows(&self) -> impl Iterator<Item = Window> + '_ {
        let history = self.history();
        let mut generated = history.initial_generated();
        let mut len = history.initial_len();
        (0..self.sections).map(move |index| {
            let w = self.build_window(index, generated, len);
            generated = w.history.generated_after;
            len = w.history.history_len_after;
            w
        })
    }

    /// Window `index` (sampling order), or `None` past the last one.
    pub fn window_at(&self, index: u32) -> Option<Window> {
        self.windows().nth(index as usize)
    }

    fn build_window(&self, index: u32, generated_before: u32, len_before: u32) -> Window {
        let is_last = index + 1 == self.sections;
        let padding = self.paddings.get(index as usize).copied().unwrap_or(0.0);
        let padding_size = self.padding_size(padding);
        let latents = self.latents_per_section();
        let layout = match self.mode {
            Mode::Inverted => WindowLayout::inverted(padding_size, latents),
            Mode::F1 => WindowLayout::f1(latents),
            Mode::OneFrame => WindowLayout::one_frame(self.window.latents(), self.kisekae.as_ref()),
        };
        let prepend_start_latent = self.mode == Mode::Inverted && is_last;
        let added = latents + u32::from(prepend_start_latent);
        Window {
            index,
            is_first: index == 0,
            is_last,
            padding,
            padding_size,
            frames: self.frames_per_section(),
            layout,
            conditioning: Conditioning {
                anchor: self.chain.anchor(index),
                end_frame: self.chain.end_frame(index),
                prompt: self.chain.prompt(index),
                image_influence: self.image_influence,
            },
            history: HistoryStep {
                sampled: latents,
                prepend_start_latent,
                added,
                generated_after: generated_before + added,
                history_len_after: len_before + added,
            },
            decode: self.decode(index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blend::LatentSpan;
    use crate::chain::{Anchor, PromptChoice};
    use crate::packing::{LatentSource, SegmentKind};

    #[test]
    fn mode_names_round_trip_and_unknown_names_are_refused() {
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert_eq!("F1".parse::<Mode>(), Ok(Mode::F1));
        assert_eq!("one_frame".parse::<Mode>(), Ok(Mode::OneFrame));
        for window in [WindowSize::Latents(9), WindowSize::HalfSecond] {
            let json = serde_json::to_string(&window).unwrap();
            assert_eq!(serde_json::from_str::<WindowSize>(&json).unwrap(), window);
        }
        assert_eq!(serde_json::to_string(&WindowSize::Latents(7)).unwrap(), "7");
        assert!(serde_json::from_str::<WindowSize>("\"quarter\"").is_err());
        for flavor in [Flavor::FramePack, Flavor::Eichi] {
            assert_eq!(flavor.to_string().parse::<Flavor>(), Ok(flavor));
        }
        for mode in Mode::ALL {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
            assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), mode);
        }
        let err = "backwards".parse::<Mode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown mode `backwards`: expected inverted, f1 or one-frame"
        );
    }
    use proptest::prelude::*;

    fn plan(seconds: f64) -> SectionPlan {
        GenerationRequest::new(seconds).validate().unwrap()
    }

    #[test]
    fn spec_2_2_table() {
        // seconds, S, paddings, latents, frames, duration (ms)
        type Row = (f64, u32, &'static [u32], u32, u32, u32);
        let rows: &[Row] = &[
            (1.0, 1, &[0], 10, 37, 1233),
            (2.0, 2, &[1, 0], 19, 73, 2433),
            (2.5, 2, &[1, 0], 19, 73, 2433),
            (3.0, 2, &[1, 0], 19, 73, 2433),
            (4.0, 3, &[2, 1, 0], 28, 109, 3633),
            (5.0, 4, &[3, 2, 1, 0], 37, 145, 4833),
            (6.0, 5, &[3, 2, 2, 1, 0], 46, 181, 6033),
            (10.0, 8, &[3, 2, 2, 2, 2, 2, 1, 0], 73, 289, 9633),
        ];
        for &(s, n, pads, lat, frames, ms) in rows {
            let p = plan(s);
            assert_eq!(p.sections(), n, "{s} s");
            let want: Vec<f64> = pads.iter().map(|&x| f64::from(x)).collect();
            assert_eq!(p.latent_paddings(), want.as_slice(), "{s} s");
            assert_eq!(p.total_latent_frames(), lat, "{s} s");
            assert_eq!(p.total_pixel_frames(), frames, "{s} s");
            assert_eq!((p.duration() * 1000.0) as u32, ms, "{s} s");
        }
        let p = plan(60.0);
        assert_eq!(p.sections(), 50);
        let mut want = vec![3.0];
        want.extend([2.0; 47]);
        want.extend([1.0, 0.0]);
        assert_eq!(p.latent_paddings(), want.as_slice());
        assert_eq!(
            (p.total_latent_frames(), p.total_pixel_frames()),
            (451, 1801)
        );
    }

    #[test]
    fn half_even_ties() {
        assert_eq!(plan(1.8).sections(), 2); // 1.5 -> 2
        assert_eq!(plan(4.2).sections(), 4); // 3.5 -> 4
        assert_eq!(plan(5.4).sections(), 4); // 4.5 -> 4
        assert_eq!(plan(3.0).sections(), 2); // 2.5 -> 2
        assert_eq!(plan(0.1).sections(), 1); // max(.., 1)
    }

    #[test]
    fn invalid_requests_are_typed_errors() {
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = GenerationRequest::new(s).validate().unwrap_err();
            assert!(matches!(e, Error::InvalidSeconds { .. }), "{s}");
        }
        assert_eq!(
            GenerationRequest::new(5.0).window(0).validate(),
            Err(Error::InvalidWindow { value: 0, max: 64 })
        );
        assert_eq!(
            GenerationRequest::new(5.0).window(65).validate(),
            Err(Error::InvalidWindow { value: 65, max: 64 })
        );
        assert!(matches!(
            GenerationRequest::new(1e9).validate(),
            Err(Error::TooManySections { .. })
        ));
        assert_eq!(
            GenerationRequest::new(5.0).keyframe(4).validate(),
            Err(Error::KeyframeOutOfRange {
                section: 4,
                last: 3,
                sections: 4
            })
        );
        assert_eq!(
            GenerationRequest::new(5.0)
                .section_prompt(9, "x")
                .validate(),
            Err(Error::SectionPromptOutOfRange {
                section: 9,
                last: 3,
                sections: 4
            })
        );
        for s in [-0.1, 1.01, f64::NAN] {
            assert!(matches!(
                GenerationRequest::new(5.0).end_frame(s).validate(),
                Err(Error::InvalidEndFrameStrength { .. })
            ));
        }
        for p in [-0.5, 3.5, f64::NAN] {
            assert!(matches!(
                GenerationRequest::new(5.0)
                    .padding(Padding::Constant(p))
                    .validate(),
                Err(Error::InvalidPadding { .. })
            ));
        }
        assert!(matches!(
            GenerationRequest::new(5.0)
                .mode(Mode::F1)
                .image_influence(1.5)
                .validate(),
            Err(Error::InvalidImageInfluence { .. })
        ));
    }

    #[test]
    fn options_outside_their_mode_are_rejected() {
        let cases = [
            (
                GenerationRequest::new(5.0).mode(Mode::F1).keyframe(0),
                "keyframe",
            ),
            (
                GenerationRequest::new(5.0).mode(Mode::F1).end_frame(1.0),
                "end_frame",
            ),
            (
                GenerationRequest::new(5.0)
                    .mode(Mode::F1)
                    .padding(Padding::Constant(1.0)),
                "constant padding",
            ),
            (
                GenerationRequest::new(5.0).image_influence(1.0),
                "image_influence",
            ),
            (
                GenerationRequest::new(5.0).kisekae(Kisekae::default()),
                "kisekae",
            ),
            (
                GenerationRequest::one_frame().section_prompt(0, "x"),
                "section_prompt",
            ),
            (
                GenerationRequest::one_frame().window(WindowSize::HalfSecond),
                "0.5 s sections",
            ),
        ];
        for (req, option) in cases {
            match req.validate() {
                Err(Error::UnsupportedInMode { option: o, .. }) => assert_eq!(o, option),
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    #[test]
    fn windows_follow_spec_3_1() {
        let p = plan(5.0);
        let windows: Vec<Window> = p.windows().collect();
        assert_eq!(windows.len(), 4);
        let starts: Vec<u32> = windows
            .iter()
            .map(|w| w.layout.latent_indices()[0])
            .collect();
        assert_eq!(starts, vec![28, 19, 10, 1]);
        assert_eq!(
            windows.iter().map(|w| w.padding_size).collect::<Vec<_>>(),
            vec![27, 18, 9, 0]
        );
        assert!(windows[0].is_first && !windows[0].is_last);
        assert!(windows[3].is_last && windows[3].history.prepend_start_latent);
        assert_eq!(windows[3].history.added, 10);
        let generated: Vec<u32> = windows.iter().map(|w| w.history.generated_after).collect();
        assert_eq!(generated, vec![9, 18, 27, 37]);
        assert_eq!(windows[3].history.history_len_after, 19 + 37);
        assert_eq!(windows[3].decode.span, LatentSpan::Front(19));
        assert!(windows.iter().all(|w| w.frames == 33));
        assert_eq!(p.window_at(2), Some(windows[2].clone()));
        assert_eq!(p.window_at(4), None);
    }

    #[test]
    fn f1_windows_are_identical() {
        let p = GenerationRequest::new(5.0)
            .mode(Mode::F1)
            .validate()
            .unwrap();
        assert_eq!(p.sections(), 4);
        let windows: Vec<Window> = p.windows().collect();
        for w in &windows {
            assert_eq!(w.layout, windows[0].layout);
            assert_eq!(w.padding_size, 0);
            assert!(!w.history.prepend_start_latent);
        }
        assert_eq!(
            windows
                .iter()
                .map(|w| w.history.generated_after)
                .collect::<Vec<_>>(),
            vec![10, 19, 28, 37]
        );
        assert_eq!(
            windows[0].layout.latent_indices(),
            (20..29).collect::<Vec<_>>()
        );
        assert_eq!(p.history().initial_len(), 20);
        assert_eq!(p.history().growth, Growth::Append);
        assert_eq!(p.total_pixel_frames(), 145);
    }

    #[test]
    fn eichi_f1_counts_sections_by_4l_minus_3() {
        let eichi = |s: f64, w: WindowSize| {
            GenerationRequest::new(s)
                .mode(Mode::F1)
                .flavor(Flavor::Eichi)
                .window(w)
                .validate()
                .unwrap()
                .sections()
        };
        let w9 = WindowSize::Latents(9);
        assert_eq!(eichi(5.0, w9), 5); // 150/33 = 4.55
        assert_eq!(eichi(3.0, w9), 3); // 90/33 = 2.73
        assert_eq!(eichi(60.0, w9), 55);
        assert_eq!(eichi(1.0, WindowSize::HalfSecond), 2); // 30/15
        assert_eq!(eichi(5.0, WindowSize::HalfSecond), 10);
        // eichi's inverted app keeps the reference rule.
        let inv = GenerationRequest::new(5.0)
            .flavor(Flavor::Eichi)
            .validate()
            .unwrap();
        assert_eq!(inv.sections(), 4);
    }

    #[test]
    fn half_second_sections() {
        let counts: Vec<u32> = [1.0, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0, 60.0]
            .iter()
            .map(|&s| section_count(s, WindowSize::HalfSecond).unwrap())
            .collect();
        assert_eq!(counts, vec![2, 3, 3, 4, 5, 7, 8, 17, 100]);
        let p = GenerationRequest::new(5.0)
            .window(WindowSize::HalfSecond)
            .flavor(Flavor::Eichi)
            .validate()
            .unwrap();
        assert_eq!(p.sections(), 8);
        assert_eq!(p.latents_per_section(), 5);
        assert_eq!(p.frames_per_section(), 17);
        // paddings [3, 2×5, 1, 0] -> int(p·4.5) = 13, 9, 4, 0
        assert_eq!(p.padding_sizes(), vec![13, 9, 9, 9, 9, 9, 4, 0]);
        assert_eq!(p.total_latent_frames(), 41);
        assert_eq!(p.total_pixel_frames(), 161);
        let w0 = p.window_at(0).unwrap();
        assert_eq!(w0.layout.latent_indices(), (14..19).collect::<Vec<_>>());
        assert_eq!(w0.layout.len(), 1 + 13 + 5 + 19);
        // The eichi F1 decode quirk adds 4 frames.
        let f1 = GenerationRequest::new(5.0)
            .mode(Mode::F1)
            .window(WindowSize::HalfSecond)
            .flavor(Flavor::Eichi)
            .validate()
            .unwrap();
        assert_eq!((f1.sections(), f1.total_latent_frames()), (10, 51));
        assert_eq!(f1.total_pixel_frames(), 4 * 51 - 3 + 4);
    }

    #[test]
    fn constant_padding() {
        let p = GenerationRequest::new(5.0)
            .padding(Padding::Constant(1.0))
            .validate()
            .unwrap();
        assert_eq!(p.latent_paddings(), &[1.0, 1.0, 1.0, 0.0]);
        assert_eq!(p.padding_sizes(), vec![9, 9, 9, 0]);
        let p = GenerationRequest::new(5.0)
            .padding(Padding::Constant(0.35))
            .validate()
            .unwrap();
        assert_eq!(p.latent_paddings(), &[0.3, 0.3, 0.3, 0.0]); // round(0.35, 1) = 0.3
        assert_eq!(p.padding_sizes(), vec![2, 2, 2, 0]); // int(2.6999999999999997)
        let p = GenerationRequest::new(5.0)
            .window(WindowSize::HalfSecond)
            .padding(Padding::Constant(1.4))
            .validate()
            .unwrap();
        assert_eq!(p.padding_sizes()[0], 6); // int(6.3)
        let one = GenerationRequest::new(1.0)
            .padding(Padding::Constant(2.0))
            .validate()
            .unwrap();
        assert_eq!(one.latent_paddings(), &[0.0]);
    }

    #[test]
    fn round_to_tenth_matches_python() {
        let cases = [
            (0.25, 0.2),
            (0.35, 0.3),
            (0.15, 0.1),
            (0.45, 0.5),
            (2.675, 2.7),
            (0.05, 0.1),
            (1.25, 1.2),
            (2.95, 3.0),
        ];
        for (x, want) in cases {
            assert_eq!(round_to_tenth(x), want, "{x}");
        }
    }

    #[test]
    fn chain_in_windows() {
        let p = GenerationRequest::new(6.0)
            .keyframe(1)
            .keyframe(3)
            .end_frame(0.5)
            .section_prompt(2, "turns around")
            .validate()
            .unwrap();
        let c: Vec<Conditioning> = p.windows().map(|w| w.conditioning).collect();
        let k = |section| Anchor::Keyframe { section };
        assert_eq!(
            c.iter().map(|c| c.anchor).collect::<Vec<_>>(),
            vec![k(1), k(1), k(3), k(3), Anchor::Start]
        );
        assert_eq!(
            c.iter().map(|c| c.end_frame).collect::<Vec<_>>(),
            vec![Some(0.5), None, None, None, None]
        );
        assert_eq!(c[2].prompt, PromptChoice::Section(2));
        assert_eq!(c[1].prompt, PromptChoice::Main);
        assert_eq!(p.chain().section_prompt(2), Some("turns around"));
        let w0 = p.window_at(0).unwrap();
        assert_eq!(w0.layout.clean_latents()[0].source, LatentSource::Anchor);
    }

    #[test]
    fn f1_image_influence_reaches_every_window() {
        let p = GenerationRequest::new(3.0)
            .mode(Mode::F1)
            .image_influence(1.02)
            .validate()
            .unwrap();
        assert!(p
            .windows()
            .all(|w| w.conditioning.image_influence.map(|i| i.value()) == Some(1.02)));
    }

    #[test]
    fn one_frame_plan() {
        let p = GenerationRequest::one_frame().window(9).validate().unwrap();
        assert_eq!(p.sections(), 1);
        assert_eq!((p.total_latent_frames(), p.total_pixel_frames()), (1, 1));
        let w = p.window_at(0).unwrap();
        assert_eq!(w.frames, 1);
        assert_eq!(w.layout.latent_indices(), &[8]);
        assert!(w.is_first && w.is_last && !w.history.prepend_start_latent);
        assert_eq!(w.history.history_len_after, 20);
        assert_eq!(w.layout.segment(SegmentKind::Blank), None);
        // The RoPE value can go up to 64.
        let w64 = GenerationRequest::one_frame()
            .window(64)
            .validate()
            .unwrap();
        assert_eq!(w64.window_at(0).unwrap().layout.latent_indices(), &[63]);
    }

    proptest! {
        #[test]
        fn every_schedule_covers_its_frames(
            seconds in 0.05f64..400.0,
            l in 1u32..65,
            mode in prop_oneof![Just(Mode::Inverted), Just(Mode::F1)],
            eichi in any::<bool>(),
            half in any::<bool>(),
        ) {
            let window = if half { WindowSize::HalfSecond } else { WindowSize::Latents(l) };
            let flavor = if eichi { Flavor::Eichi } else { Flavor::FramePack };
            let p = GenerationRequest::new(seconds).mode(mode).window(window).flavor(flavor).validate().unwrap();
            let windows: Vec<Window> = p.windows().collect();
            prop_assert_eq!(windows.len() as u32, p.sections());
            let added: u32 = windows.iter().map(|w| w.decode.frames_added).sum();
            prop_assert_eq!(added, p.total_pixel_frames());
            let quirk = mode == Mode::F1 && eichi && half && p.sections() > 1;
            prop_assert_eq!(added, 4 * p.total_latent_frames() - 3 + if quirk { 4 } else { 0 });
            prop_assert_eq!(p.total_latent_frames(), 1 + window.latents() * p.sections());
            let last = windows.last().unwrap();
            prop_assert_eq!(last.history.generated_after, p.total_latent_frames());
            prop_assert_eq!(last.history.history_len_after, CONTEXT_FRAMES + p.total_latent_frames());
        }

        #[test]
        fn paddings_are_non_increasing_and_end_in_zero(
            seconds in 0.05f64..400.0,
            constant in prop::option::of(0.0f64..=3.0),
            half in any::<bool>(),
        ) {
            let window = if half { WindowSize::HalfSecond } else { WindowSize::Latents(9) };
            let padding = constant.map_or(Padding::Schedule, Padding::Constant);
            let p = GenerationRequest::new(seconds).window(window).padding(padding).validate().unwrap();
            let pads = p.latent_paddings();
            prop_assert_eq!(pads.len() as u32, p.sections());
            prop_assert!(pads.windows(2).all(|w| w[1] <= w[0]));
            prop_assert_eq!(*pads.last().unwrap(), 0.0);
            let sizes = p.padding_sizes();
            prop_assert!(sizes.windows(2).all(|w| w[1] <= w[0]));
            prop_assert_eq!(*sizes.last().unwrap(), 0);
            if constant.is_none() {
                prop_assert!(pads.iter().all(|&x| x <= 3.0));
            }
        }

        #[test]
        fn section_count_is_python_round(seconds in 0.01f64..10_000.0, l in 1u32..65) {
            let x = seconds * 30.0 / (4.0 * f64::from(l));
            let fl = x.floor();
            let want = if x - fl == 0.5 { if fl % 2.0 == 0.0 { fl } else { fl + 1.0 } } else { x.round() };
            prop_assert_eq!(section_count(seconds, WindowSize::Latents(l)).unwrap(), want.max(1.0) as u32);
        }
    }
}
