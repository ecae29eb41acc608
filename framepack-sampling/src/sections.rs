//! The section loops: inverted anti-drifting, F1 forward and eichi's one-frame inference
//! (spec §2–§4, features.md part (b)).
//!
//! framepack-core decides everything about a window as data (its [`WindowLayout`] of RoPE
//! indices and history slots, its [`Conditioning`]: anchor, end frame, prompt, image influence,
//! and what it adds to the history); this module applies that data to tensors:
//!
//! 1. before the first inverted window, the end frame (times its strength) is written into
//!    `history[0]`;
//! 2. `clean_latents` is stacked from the window's anchor (the start image or a keyframe), the
//!    history slots and the kisekaeichi reference; the 2x/4x groups are history slices;
//! 3. the noise for `(frames + 3)/4` latent frames is drawn from the job's one generator, and
//!    with F1 image influence the sampler starts from `anchor·(1 − σ₀) + noise·σ₀` on a scaled
//!    schedule;
//! 4. UniPC runs against the [`Denoiser`]; its x0 becomes the window's latents, with the start
//!    latent in front for the last inverted window;
//! 5. the latents go into the history (prepended or appended) and a [`SectionEvent`] reports
//!    them.
//!
//! [`WindowLayout`]: framepack_core::WindowLayout
//! [`Conditioning`]: framepack_core::Conditioning

use std::collections::BTreeMap;
use std::time::Instant;

use core::ops::ControlFlow;

use burn::tensor::{backend::Backend, DType, Tensor};
use framepack_core::packing::LatentSource;
use framepack_core::{Anchor, Mode, SectionPlan, Window};

use crate::denoiser::{ContextLatents, Denoiser, WindowContext};
use crate::error::{Result, SamplingError};
use crate::guidance::Guidance;
use crate::history::{GenerationParams, History};
use crate::noise::NoiseGenerator;
use crate::progress::{CancelToken, Event, SectionEvent, StepEvent};
use crate::sigmas::{seq_len, Shift, SigmaSchedule};
use crate::unipc::{CoefficientPrecision, Sampled, UniPc};

/// The encoded latents a job is conditioned on (`[1, 16, 1, h, w]` each, `f32`).
#[derive(Debug, Clone)]
pub struct SectionInputs<B: Backend> {
    start: Tensor<B, 5>,
    end_frame: Option<Tensor<B, 5>>,
    keyframes: BTreeMap<u32, Tensor<B, 5>>,
    reference: Option<Tensor<B, 5>>,
    input_mask: Option<Tensor<B, 2>>,
    reference_mask: Option<Tensor<B, 2>>,
}

impl<B: Backend> SectionInputs<B> {
    /// The start image's latent.
    pub fn new(start_latent: Tensor<B, 5>) -> Self {
        Self {
            start: start_latent,
            end_frame: None,
            keyframes: BTreeMap::new(),
            reference: None,
            input_mask: None,
            reference_mask: None,
        }
    }

    /// The end frame's latent (inverted mode; the plan carries its strength).
    pub fn end_frame(mut self, latent: Tensor<B, 5>) -> Self {
        self.end_frame = Some(latent);
        self
    }

    /// The keyframe latent of `section` (inverted mode, sampling order: 0 = end of the video).
    pub fn keyframe(mut self, section: u32, latent: Tensor<B, 5>) -> Self {
        self.keyframes.insert(section, latent);
        self
    }

    /// The kisekaeichi reference latent (one-frame mode).
    pub fn reference(mut self, latent: Tensor<B, 5>) -> Self {
        self.reference = Some(latent);
        self
    }

    /// kisekaeichi masks at latent size `[h, w]` (1 = keep, 0 = zero): multiplied into the
    /// input latent and the reference latent of the one-frame window.
    pub fn masks(mut self, input: Option<Tensor<B, 2>>, reference: Option<Tensor<B, 2>>) -> Self {
        self.input_mask = input;
        self.reference_mask = reference;
        self
    }

    /// The start latent.
    pub fn start(&self) -> &Tensor<B, 5> {
        &self.start
    }

    /// Checks that every latent has the start latent's shape `[batch, channels, 1, h, w]` and
    /// every mask is `[h, w]`, so that stacking them cannot fail.
    fn check(&self) -> Result<()> {
        let [b, c, f, h, w] = self.start.dims();
        if f != 1 || b == 0 || c == 0 || h == 0 || w == 0 {
            return Err(SamplingError::invalid(
                "start latent",
                format!(
                    "shape {:?}, expected [batch, channels, 1, h, w]",
                    self.start.dims()
                ),
            ));
        }
        let same = |what: String, t: &Tensor<B, 5>| {
            if t.dims() == [b, c, 1, h, w] {
                Ok(())
            } else {
                Err(SamplingError::InvalidArgument {
                    argument: "latent",
                    reason: format!(
                        "{what} has shape {:?}, the start latent {:?} (images of one job share its bucket)",
                        t.dims(),
                        self.start.dims()
                    ),
                })
            }
        };
        if let Some(e) = &self.end_frame {
            same("the end frame".into(), e)?;
        }
        if let Some(r) = &self.reference {
            same("the reference".into(), r)?;
        }
        for (section, k) in &self.keyframes {
            same(format!("the keyframe of section {section}"), k)?;
        }
        for (name, mask) in [
            ("input mask", &self.input_mask),
            ("reference mask", &self.reference_mask),
        ] {
            if let Some(m) = mask {
                if m.dims() != [h, w] {
                    return Err(SamplingError::InvalidArgument {
                        argument: "mask",
                        reason: format!("the {name} is {:?}, the latents are [{h}, {w}]", m.dims()),
                    });
                }
            }
        }
        Ok(())
    }

    fn anchor(&self, anchor: Anchor) -> Result<&Tensor<B, 5>> {
        match anchor {
            Anchor::Start => Ok(&self.start),
            Anchor::Keyframe { section } => self.keyframes.get(&section).ok_or_else(|| {
                SamplingError::missing(
                    format!("keyframe latent of section {section}"),
                    "the plan anchors a window on it",
                )
            }),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every window ran.
    Complete,
    /// Cancelled; the history holds the windows before `section`, whose sampling stopped after
    /// `steps_done` steps (0: before it started) and was discarded.
    Cancelled {
        /// The window that was interrupted.
        section: u32,
        /// Its steps that had run.
        steps_done: usize,
    },
}

/// What a job returns.
#[derive(Debug, Clone)]
pub struct SectionOutput<B: Backend> {
    /// The latent history: every finished window, nothing of an interrupted one.
    pub history: History<B>,
    /// Windows finished.
    pub completed_sections: u32,
    /// Whether the job finished or was cancelled (then the result is partial).
    pub completion: Completion,
}

impl<B: Backend> SectionOutput<B> {
    /// Whether every window ran.
    pub fn is_complete(&self) -> bool {
        self.completion == Completion::Complete
    }
}

/// Runs the windows of a [`SectionPlan`] against a [`Denoiser`].
///
/// ```
/// use core::ops::ControlFlow;
/// use burn::tensor::Tensor;
/// use framepack_core::GenerationRequest;
/// use framepack_models::CpuBackend as B;
/// use framepack_sampling::{CancelToken, Denoiser, SectionInputs, SectionSampler, WindowContext};
///
/// // A stand-in that predicts the data mean 0 everywhere.
/// struct Zero;
/// impl Denoiser<B> for Zero {
///     fn x0(&mut self, x: Tensor<B, 5>, _: f32, _: &WindowContext<B>) -> framepack_sampling::Result<Tensor<B, 5>> {
///         Ok(x.zeros_like())
///     }
/// }
/// let plan = GenerationRequest::new(5.0).validate()?; // 4 inverted windows
/// let start = Tensor::<B, 5>::ones([1, 16, 1, 2, 2], &Default::default());
/// let out = SectionSampler::new(&plan).steps(3).seed(31337)
///     .run(&mut Zero, &SectionInputs::new(start), &CancelToken::new(), |_| {})?;
/// assert!(out.is_complete());
/// assert_eq!(out.history.generated(), 37);
/// assert_eq!(out.history.valid().dims(), [1, 16, 37, 2, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SectionSampler<'p> {
    plan: &'p SectionPlan,
    steps: usize,
    seed: u64,
    shift: Shift,
    precision: CoefficientPrecision,
}

impl<'p> SectionSampler<'p> {
    /// A sampler for `plan` with the demo's defaults: 25 steps, seed 31337, automatic shift,
    /// reference coefficient precision.
    pub fn new(plan: &'p SectionPlan) -> Self {
        Self {
            plan,
            steps: 25,
            seed: 31337,
            shift: Shift::Auto,
            precision: CoefficientPrecision::Reference,
        }
    }

    /// Sampler steps (model calls, without CFG) per window.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// The job's seed: one generator for the whole job, drawn window after window.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The schedule's shift.
    pub fn shift(mut self, shift: Shift) -> Self {
        self.shift = shift;
        self
    }

    /// How the UniPC coefficients are evaluated.
    pub fn precision(mut self, precision: CoefficientPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// The parameters to store with a saved history of this job.
    pub fn params(
        &self,
        guidance: &Guidance,
        output: &SectionOutput<impl Backend>,
    ) -> GenerationParams {
        GenerationParams {
            mode: self.plan.mode().to_string(),
            seed: self.seed,
            steps: self.steps,
            window: self.plan.latents_per_section(),
            sections: self.plan.sections(),
            completed_sections: output.completed_sections,
            distilled_guidance: guidance.distilled_scale(),
            cfg: guidance.cfg_scale(),
            guidance_rescale: guidance.rescale_factor(),
            shift: match self.shift {
                Shift::Auto => None,
                Shift::Fixed(s) => Some(s),
            },
            extra: BTreeMap::new(),
        }
    }

    /// Runs every window from a fresh history.
    pub fn run<B, D, F>(
        &self,
        denoiser: &mut D,
        inputs: &SectionInputs<B>,
        cancel: &CancelToken,
        on_event: F,
    ) -> Result<SectionOutput<B>>
    where
        B: Backend,
        D: Denoiser<B>,
        F: FnMut(Event<'_, B>),
    {
        let history = History::new(self.plan.history(), &inputs.start)?;
        self.run_from(history, denoiser, inputs, cancel, on_event)
    }

    /// Runs every window into an existing history: a loaded one to extend (F1 appends after
    /// it; inverted prepends earlier content before it), or one joined from clips.
    pub fn run_from<B, D, F>(
        &self,
        history: History<B>,
        denoiser: &mut D,
        inputs: &SectionInputs<B>,
        cancel: &CancelToken,
        mut on_event: F,
    ) -> Result<SectionOutput<B>>
    where
        B: Backend,
        D: Denoiser<B>,
        F: FnMut(Event<'_, B>),
    {
        let expected = self.plan.history();
        if history.plan().growth != expected.growth {
            return Err(SamplingError::invalid(
                "history",
                format!(
                    "it grows by {:?}, the plan's mode {} by {:?}",
                    history.plan().growth,
                    self.plan.mode(),
                    expected.growth
                ),
            ));
        }
        inputs.check()?;
        let [batch, channels, _, height, width] = inputs.start.dims();
        let [hb, hc, _, hh, hw] = history.latents().dims();
        if (hb, hc, hh, hw) != (batch, channels, height, width) {
            return Err(SamplingError::invalid(
                "history",
                format!(
                    "shape {:?} does not match the start latent {:?}",
                    history.latents().dims(),
                    inputs.start.dims()
                ),
            ));
        }
        let mut history = history;
        let mut noise = NoiseGenerator::new(self.seed);
        let sampler = UniPc::new(self.precision);
        let job_start = Instant::now();
        let sections = self.plan.sections();
        let mut completed = 0;
        for window in self.plan.windows() {
            if cancel.is_cancelled() {
                return Ok(self.partial(history, completed, window.index, 0));
            }
            let section_start = Instant::now();
            if let Some(strength) = window.conditioning.end_frame {
                let end = inputs.end_frame.as_ref().ok_or_else(|| {
                    SamplingError::missing("end frame latent", "the plan has an end frame")
                })?;
                history.set_front(end.clone().cast(DType::F32).mul_scalar(strength as f32))?;
            }
            let context = self.window_context(&window, inputs, &history)?;
            // `(frames + 3) // 4` in the reference.
            let latent_frames = (window.frames as usize).div_ceil(4);
            if latent_frames != window.layout.noisy_frames() as usize {
                return Err(SamplingError::invalid(
                    "plan",
                    format!(
                        "window {} samples {latent_frames} latents but indexes {}",
                        window.index,
                        window.layout.noisy_frames()
                    ),
                ));
            }
            let device = inputs.start.device();
            let mut x = noise
                .randn_tensor::<B, 5>([batch, channels, latent_frames, height, width], &device);
            let mut schedule = SigmaSchedule::new(self.steps).shift(self.shift);
            if let Some(influence) = window.conditioning.image_influence {
                schedule = schedule.strength(influence.sigma_scale());
            }
            let sigmas = schedule.sigmas(seq_len(latent_frames, height, width))?;
            if window.conditioning.image_influence.is_some() {
                // `initial_latent·(1 − σ₀) + noise·σ₀`, the anchor broadcast over the frames.
                let s0 = sigmas[0];
                let anchor = inputs
                    .anchor(window.conditioning.anchor)?
                    .clone()
                    .cast(DType::F32)
                    .expand([batch, channels, latent_frames, height, width]);
                x = anchor.mul_scalar(1.0 - s0) + x.mul_scalar(s0);
            }
            denoiser.begin_window(&context, &sigmas)?;
            let mut last_step = Instant::now();
            let sampled = sampler.sample(
                x,
                &sigmas,
                |x, sigma| denoiser.x0(x, sigma, &context),
                |step| {
                    let now = Instant::now();
                    on_event(Event::Step(StepEvent {
                        section: window.index,
                        sections,
                        step: step.index,
                        steps: step.steps,
                        sigma: step.sigma,
                        x0: step.denoised,
                        step_time: now - last_step,
                        elapsed: now - job_start,
                    }));
                    last_step = now;
                    if cancel.is_cancelled() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )?;
            let x0 = match sampled {
                Sampled::Complete(x0) => x0,
                Sampled::Stopped { steps_done } => {
                    return Ok(self.partial(history, completed, window.index, steps_done));
                }
            };
            let latents = if window.history.prepend_start_latent {
                Tensor::cat(vec![inputs.start.clone().cast(DType::F32), x0], 2)
            } else {
                x0
            };
            history.push(latents.clone())?;
            completed += 1;
            on_event(Event::Section(SectionEvent {
                window: &window,
                sections,
                latents: &latents,
                history: &history,
                section_time: section_start.elapsed(),
                elapsed: job_start.elapsed(),
            }));
        }
        Ok(SectionOutput {
            history,
            completed_sections: completed,
            completion: Completion::Complete,
        })
    }

    fn partial<B: Backend>(
        &self,
        history: History<B>,
        completed: u32,
        section: u32,
        steps_done: usize,
    ) -> SectionOutput<B> {
        SectionOutput {
            history,
            completed_sections: completed,
            completion: Completion::Cancelled {
                section,
                steps_done,
            },
        }
    }

    /// Stacks the window's context tensors as its layout describes.
    fn window_context<B: Backend>(
        &self,
        window: &Window,
        inputs: &SectionInputs<B>,
        history: &History<B>,
    ) -> Result<WindowContext<B>> {
        let layout = &window.layout;
        let anchor = inputs
            .anchor(window.conditioning.anchor)?
            .clone()
            .cast(DType::F32);
        let has_reference = layout
            .clean_latents()
            .iter()
            .any(|c| c.source == LatentSource::Reference);
        // Shapes were checked by `SectionInputs::check`.
        let masked = |latent: Tensor<B, 5>, mask: &Option<Tensor<B, 2>>| match mask {
            None => latent,
            Some(m) => {
                let [h, w] = m.dims();
                latent * m.clone().cast(DType::F32).reshape([1, 1, 1, h, w])
            }
        };
        let anchor = if has_reference && self.plan.mode() == Mode::OneFrame {
            masked(anchor, &inputs.input_mask)
        } else {
            anchor
        };
        let mut frames = Vec::with_capacity(layout.clean_latents().len());
        for frame in layout.clean_latents() {
            frames.push(match frame.source {
                LatentSource::Anchor => anchor.clone(),
                LatentSource::History(slice) => history.slice(slice)?,
                LatentSource::Reference => {
                    let reference = inputs.reference.as_ref().ok_or_else(|| {
                        SamplingError::missing(
                            "reference latent",
                            "the plan places a kisekaeichi reference",
                        )
                    })?;
                    masked(reference.clone().cast(DType::F32), &inputs.reference_mask)
                }
            });
        }
        let clean = (!frames.is_empty()).then(|| ContextLatents {
            latents: Tensor::cat(frames, 2),
            indices: layout.clean_latent_indices(),
        });
        let group = |g: Option<&framepack_core::packing::ContextGroup>| -> Result<Option<ContextLatents<B>>> {
            g.map(|g| {
                Ok(ContextLatents {
                    latents: history.slice(g.source)?,
                    indices: g.indices.clone(),
                })
            })
            .transpose()
        };
        Ok(WindowContext {
            section: window.index,
            latent_indices: layout.latent_indices().to_vec(),
            clean,
            clean_2x: group(layout.clean_latents_2x())?,
            clean_4x: group(layout.clean_latents_4x())?,
            prompt: window.conditioning.prompt,
        })
    }
}
