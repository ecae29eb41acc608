//! What one generation asks for ([`Request`]) and what it will do ([`JobPlan`]), before any model
//! runs.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use framepack_core::chain::shared_bucket;
use framepack_core::{
    Bucket, BucketTable, CropGeometry, Flavor, GenerationRequest, ImageRole, LatentSize, Mode,
    Padding, SectionPlan, WindowSize,
};
use framepack_sampling::Guidance;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::InputImage;
use crate::kisekae::KisekaeReference;
use crate::lora::LoraChoice;
use crate::magcache::MagCacheSettings;

/// The resolution a generation runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The bucket table of a base resolution: the input is matched to the bucket of nearest
    /// aspect ratio (spec §1.2). `640` is FramePack's official table (no 640×640: a square
    /// input runs at 640 tall × 608 wide); the other bases (384, 512, 768, 960, 1080, 1280,
    /// 1536, 1920, 2160) are FramePack-eichi's tables.
    Base(u32),
    /// An exact size, both sides multiples of 16 (the input is resized to cover it and
    /// centre-cropped, as for a bucket). Used by the tiny demo model; the published weights were
    /// trained on the 640 buckets.
    Exact {
        /// Height in pixels.
        height: u32,
        /// Width in pixels.
        width: u32,
    },
}

impl Default for Resolution {
    fn default() -> Self {
        Self::Base(640)
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base(b) => write!(f, "{b}"),
            Self::Exact { height, width } => write!(f, "{height}x{width}"),
        }
    }
}

impl FromStr for Resolution {
    type Err = Error;

    /// `640` (a base) or `HEIGHTxWIDTH` (an exact size, e.g. `64x96`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "resolution",
                format!(
                    "`{s}` is neither a base resolution (e.g. 640) nor HEIGHTxWIDTH (e.g. 64x96)"
                ),
            )
        };
        match s.split_once(['x', 'X']) {
            Some((h, w)) => Ok(Self::Exact {
                height: h.trim().parse().map_err(|_| bad())?,
                width: w.trim().parse().map_err(|_| bad())?,
            }),
            None => Ok(Self::Base(s.trim().parse().map_err(|_| bad())?)),
        }
    }
}

impl Resolution {
    /// The bucket a `size` image runs at (the table lookup, or the exact size).
    pub fn bucket_for(&self, size: framepack_core::ImageSize) -> Result<Bucket> {
        match *self {
            Self::Base(_) => Ok(self.table()?.nearest(size.height, size.width)?),
            Self::Exact { height, width } => {
                LatentSize::from_pixels(height, width)?;
                Ok(Bucket::new(height, width))
            }
        }
    }

    fn table(&self) -> Result<BucketTable> {
        match *self {
            Self::Base(640) => Ok(BucketTable::framepack()),
            Self::Base(base) => Ok(BucketTable::eichi(base)?),
            Self::Exact { .. } => Err(Error::invalid("resolution", "an exact size has no table")),
        }
    }
}

/// An end frame and how strongly it pulls (inverted mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndFrame {
    /// The image the video should converge to.
    pub image: InputImage,
    /// The latent is multiplied by this (`0..=1`, eichi's slider) before conditioning.
    pub strength: f64,
}

/// Everything one image-to-video generation asks for. Defaults are those of FramePack's demo
/// (spec §0): 5 s, seed 31337, 25 steps, `cfg = 1`, `gs = 10`, `rs = 0`, TeaCache 0.15, inverted
/// anti-drifting sampling, the 640 buckets, window 9.
///
/// Sections are numbered in **sampling order**, as in FramePack-eichi: in inverted mode section
/// 0 is the *end* of the video (it is generated first). [`JobPlan::section_frames`] gives the
/// frames each section covers; `framepack plan` prints them.
///
/// ```
/// use framepack::{InputImage, Request, Resolution};
/// let image = InputImage::from_rgb8(512, 512, vec![90; 512 * 512 * 3])?;
/// let request = Request::new(image, "a cat turns its head")
///     .seconds(3.0)
///     .seed(7)
///     .section_prompt(0, "the cat yawns");
/// let plan = request.plan()?;
/// assert_eq!((plan.bucket.height, plan.bucket.width), (640, 608));
/// assert_eq!(plan.sections.sections(), 2); // round-half-even: 2.5 -> 2
/// assert_eq!(plan.frames(), 73);
/// # Ok::<(), framepack::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub(crate) image: InputImage,
    pub(crate) prompt: String,
    #[serde(default)]
    pub(crate) negative_prompt: String,
    #[serde(default)]
    pub(crate) section_prompts: BTreeMap<u32, String>,
    #[serde(default)]
    pub(crate) end_frame: Option<EndFrame>,
    #[serde(default)]
    pub(crate) keyframes: BTreeMap<u32, InputImage>,
    pub(crate) seconds: f64,
    pub(crate) seed: u64,
    pub(crate) steps: usize,
    pub(crate) cfg: f64,
    pub(crate) gs: f64,
    pub(crate) rs: f64,
    pub(crate) teacache: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) magcache: Option<MagCacheSettings>,
    pub(crate) mode: Mode,
    pub(crate) resolution: Resolution,
    pub(crate) window: WindowSize,
    #[serde(default)]
    pub(crate) flavor: Flavor,
    #[serde(default)]
    pub(crate) constant_padding: Option<f64>,
    #[serde(default)]
    pub(crate) image_influence: Option<f64>,
    #[serde(default)]
    pub(crate) shift: Option<f64>,
    #[serde(default)]
    pub(crate) allow_prompt_truncation: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) loras: Vec<LoraChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kisekae: Option<KisekaeReference>,
}

/// The largest step count accepted (the demo's slider stops at 100).
pub const MAX_STEPS: usize = 1000;

impl Request {
    /// A request to animate `image` as `prompt` describes, with the demo's defaults.
    pub fn new(image: InputImage, prompt: impl Into<String>) -> Self {
        Self {
            image,
            prompt: prompt.into(),
            negative_prompt: String::new(),
            section_prompts: BTreeMap::new(),
            end_frame: None,
            keyframes: BTreeMap::new(),
            seconds: 5.0,
            seed: 31337,
            steps: 25,
            cfg: 1.0,
            gs: 10.0,
            rs: 0.0,
            teacache: Some(framepack_sampling::TeaCache::THRESHOLD),
            magcache: None,
            mode: Mode::Inverted,
            resolution: Resolution::default(),
            window: WindowSize::default(),
            flavor: Flavor::default(),
            constant_padding: None,
            image_influence: None,
            shift: None,
            allow_prompt_truncation: false,
            loras: Vec::new(),
            kisekae: None,
        }
    }

    /// Video length in seconds (sections = `round(seconds·30 / (4·window))`, at least 1).
    pub fn seconds(mut self, seconds: f64) -> Self {
        self.seconds = seconds;
        self
    }

    /// The seed of the job's noise generator (PyTorch's CPU `randn` stream).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sampler steps per section.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Real classifier-free guidance scale (`1` = off: no negative-prompt pass).
    pub fn cfg(mut self, cfg: f64) -> Self {
        self.cfg = cfg;
        self
    }

    /// Distilled guidance scale `gs` (the demo's "Distilled CFG Scale", default 10).
    pub fn gs(mut self, gs: f64) -> Self {
        self.gs = gs;
        self
    }

    /// CFG rescale `rs` in `0..=1`.
    pub fn rs(mut self, rs: f64) -> Self {
        self.rs = rs;
        self
    }

    /// The negative prompt (used only when `cfg != 1`).
    pub fn negative_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.negative_prompt = prompt.into();
        self
    }

    /// A prompt for exactly `section` (sampling order; blank falls back to the main prompt).
    pub fn section_prompt(mut self, section: u32, prompt: impl Into<String>) -> Self {
        self.section_prompts.insert(section, prompt.into());
        self
    }

    /// An end frame with its strength in `0..=1` (inverted mode).
    pub fn end_frame(mut self, image: InputImage, strength: f64) -> Self {
        self.end_frame = Some(EndFrame { image, strength });
        self
    }

    /// A keyframe anchoring `section` and the sections sampled before it down to the previous
    /// keyframe (inverted mode, sampling order).
    pub fn keyframe(mut self, section: u32, image: InputImage) -> Self {
        self.keyframes.insert(section, image);
        self
    }

    /// TeaCache with its threshold (`Some(0.15)`, the default), or off (`None`).
    pub fn teacache(mut self, threshold: Option<f64>) -> Self {
        self.teacache = threshold;
        self
    }

    /// MagCache instead of TeaCache (`Some`; needs `teacache(None)`), or none. See
    /// [`MagCacheSettings`]: without a ratio table the job is a calibration run.
    pub fn magcache(mut self, settings: Option<MagCacheSettings>) -> Self {
        self.magcache = settings;
        self
    }

    /// Inverted (anti-drifting, default), F1 (forward) or one-frame inference.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The resolution (bucket table base, or an exact size).
    pub fn resolution(mut self, resolution: Resolution) -> Self {
        self.resolution = resolution;
        self
    }

    /// Latent frames per section (`9`; one-frame mode: eichi's "RoPE value"), or eichi's 0.5 s
    /// sections (`WindowSize::HalfSecond`: 17 frames each, counted with a window of 4.5).
    pub fn window(mut self, window: impl Into<WindowSize>) -> Self {
        self.window = window.into();
        self
    }

    /// Whose conventions to follow where FramePack and FramePack-eichi differ (eichi's F1
    /// section count divides by `4·window − 3` frames; its last 0.5 s section decodes 11
    /// latents).
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// eichi's constant ("all-") padding `p` in `0..=3` for every inverted section but the last,
    /// instead of the reference schedule `[3, 2, …, 2, 1, 0]`.
    pub fn constant_padding(mut self, padding: Option<f64>) -> Self {
        self.constant_padding = padding;
        self
    }

    /// eichi F1's image influence in `1.0..=1.02` (F1 mode).
    pub fn image_influence(mut self, influence: Option<f64>) -> Self {
        self.image_influence = influence;
        self
    }

    /// A fixed flow shift instead of the reference's automatic one (which is 7 at every 640
    /// bucket).
    pub fn shift(mut self, shift: Option<f64>) -> Self {
        self.shift = shift;
        self
    }

    /// Keep the first 256 tokens of an over-long prompt, as FramePack does silently, instead of
    /// refusing it ([`Error::PromptTooLong`]).
    pub fn allow_prompt_truncation(mut self, allow: bool) -> Self {
        self.allow_prompt_truncation = allow;
        self
    }

    /// A LoRA file at `strength` (repeatable: LoRAs add up). Read in kohya/musubi,
    /// diffusers/diffusion-pipe and HunyuanVideo key styles; how the pipeline applies them is
    /// its [`LoraMode`](crate::LoraMode).
    pub fn lora(mut self, path: impl Into<PathBuf>, strength: f64) -> Self {
        self.loras.push(LoraChoice::new(path, strength));
        self
    }

    /// eichi's kisekaeichi reference (one-frame mode): the frame takes on the reference
    /// image's look.
    pub fn kisekae(mut self, kisekae: KisekaeReference) -> Self {
        self.kisekae = Some(kisekae);
        self
    }

    /// The LoRAs, in the order given.
    pub fn loras(&self) -> &[LoraChoice] {
        &self.loras
    }

    /// The start image.
    pub fn image(&self) -> &InputImage {
        &self.image
    }

    /// The prompt.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The seed.
    pub fn seed_value(&self) -> u64 {
        self.seed
    }

    /// The generation mode.
    pub fn mode_value(&self) -> Mode {
        self.mode
    }

    /// The resolution setting.
    pub fn resolution_value(&self) -> Resolution {
        self.resolution
    }

    /// The guidance settings (validated by [`plan`](Self::plan)).
    pub fn guidance(&self) -> Guidance {
        Guidance::default()
            .distilled(self.gs)
            .cfg(self.cfg)
            .rescale(self.rs)
    }

    /// Reads the pixels of images that came from a run record (see [`InputImage::reload`]).
    pub fn reload_images(&mut self) -> Result<()> {
        self.image.reload()?;
        if let Some(end) = &mut self.end_frame {
            end.image.reload()?;
        }
        for image in self.keyframes.values_mut() {
            image.reload()?;
        }
        if let Some(k) = &mut self.kisekae {
            for image in k.images_mut() {
                image.reload()?;
            }
        }
        Ok(())
    }

    fn generation_request(&self) -> GenerationRequest {
        let mut g = GenerationRequest::new(self.seconds)
            .mode(self.mode)
            .window(self.window)
            .flavor(self.flavor);
        if let Some(p) = self.constant_padding {
            g = g.padding(Padding::Constant(p));
        }
        if let Some(end) = &self.end_frame {
            g = g.end_frame(end.strength);
        }
        for &section in self.keyframes.keys() {
            g = g.keyframe(section);
        }
        for (&section, prompt) in &self.section_prompts {
            g = g.section_prompt(section, prompt.clone());
        }
        if let Some(v) = self.image_influence {
            g = g.image_influence(v);
        }
        if let Some(k) = &self.kisekae {
            g = g.kisekae(k.layout());
        }
        g
    }

    fn check_numbers(&self) -> Result<()> {
        for lora in &self.loras {
            lora.check()?;
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::invalid(
                "steps",
                format!("{} is outside 1..={MAX_STEPS}", self.steps),
            ));
        }
        if !(self.gs.is_finite() && self.gs > 0.0) {
            return Err(Error::invalid(
                "gs",
                format!("{} must be a finite number greater than 0", self.gs),
            ));
        }
        self.guidance().validate()?;
        if let Some(m) = &self.magcache {
            if self.teacache.is_some() {
                return Err(Error::invalid(
                    "magcache",
                    "TeaCache is on too: choose one step cache (`teacache(None)`, `--cache magcache`)",
                ));
            }
            m.check()?;
        }
        if let Some(t) = self.teacache {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::invalid(
                    "teacache",
                    format!("threshold {t} must be a finite number >= 0"),
                ));
            }
        }
        if let Some(s) = self.shift {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::invalid(
                    "shift",
                    format!("{s} must be a finite number greater than 0"),
                ));
            }
        }
        Ok(())
    }

    /// Validates everything that can be checked without models, and computes the plan: the
    /// bucket (every image must map to the start image's), the crop, the sections and frames.
    ///
    /// Errors name the argument: length (`seconds`), `steps`, guidance values, window, padding,
    /// end-frame strength, options outside their mode, keyframes or section prompts past the
    /// last section, an unknown resolution, images of different buckets, images not loaded.
    pub fn plan(&self) -> Result<JobPlan> {
        self.check_numbers()?;
        let sections = self.generation_request().validate()?;
        let bucket = match self.resolution {
            Resolution::Base(_) => {
                let mut others = Vec::new();
                if let Some(end) = &self.end_frame {
                    others.push((ImageRole::EndFrame, end.image.size()));
                }
                for (&section, image) in &self.keyframes {
                    others.push((ImageRole::Keyframe { section }, image.size()));
                }
                shared_bucket(&self.resolution.table()?, self.image.size(), &others)?
            }
            Resolution::Exact { .. } => self.resolution.bucket_for(self.image.size())?,
        };
        let latent = LatentSize::from_bucket(bucket)?;
        let crop = CropGeometry::new(self.image.size(), bucket)?;
        // Every image must be readable before anything runs.
        self.image.rgb()?;
        if let Some(end) = &self.end_frame {
            end.image.rgb()?;
        }
        for image in self.kisekae.iter().flat_map(|k| k.images()) {
            image.rgb()?;
        }
        for image in self.keyframes.values() {
            image.rgb()?;
        }
        Ok(JobPlan {
            bucket,
            latent,
            crop,
            sections,
        })
    }
}

/// Which prompt of a request (for messages), and its section when it is a section prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PromptRole {
    Main,
    Negative,
    Section(u32),
}

impl fmt::Display for PromptRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Main => f.write_str("the prompt"),
            Self::Negative => f.write_str("the negative prompt"),
            Self::Section(s) => write!(f, "the prompt of section {s}"),
        }
    }
}

impl Request {
    /// The prompts a generation encodes: the main one, the negative one when real CFG is on,
    /// and the section prompts the plan uses.
    pub(crate) fn prompts_to_encode(&self, plan: &JobPlan) -> Vec<(PromptRole, &str)> {
        let mut v = vec![(PromptRole::Main, self.prompt.as_str())];
        if self.guidance().uses_negative_prompt() {
            v.push((PromptRole::Negative, self.negative_prompt.as_str()));
        }
        for window in plan.sections.windows() {
            if let framepack_core::PromptChoice::Section(s) = window.conditioning.prompt {
                if let Some(text) = self.section_prompts.get(&s) {
                    v.push((PromptRole::Section(s), text.as_str()));
                }
            }
        }
        v
    }
}

/// What a [`Request`] will do: the bucket, the crop of the start image, and the section plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// The generation size in pixels.
    pub bucket: Bucket,
    /// The latent size (`bucket / 8`).
    pub latent: LatentSize,
    /// How the start image is resized and cropped to the bucket.
    pub crop: CropGeometry,
    /// The sections, in sampling order.
    pub sections: SectionPlan,
}

impl JobPlan {
    /// Pixel frames of the result (`36·S + 1` at window 9).
    pub fn frames(&self) -> u32 {
        self.sections.total_pixel_frames()
    }

    /// Length of the result in seconds at 30 fps.
    pub fn duration(&self) -> f64 {
        self.sections.duration()
    }

    /// The frames of the final video whose content section `index` (sampling order) adds:
    /// in inverted mode the sections are laid out backwards in time. The first frames of each
    /// range are cross-faded with the neighbouring section's decode.
    pub fn section_frames(&self, index: u32) -> Range<u32> {
        let added: Vec<u32> = self
            .sections
            .windows()
            .map(|w| w.decode.frames_added)
            .collect();
        let i = index as usize;
        if i >= added.len() {
            return 0..0;
        }
        let start: u32 = match self.sections.mode() {
            Mode::Inverted => added[i + 1..].iter().sum(),
            Mode::F1 | Mode::OneFrame => added[..i].iter().sum(),
        };
        start..start + added[i]
    }
}
