//! What [`Pipeline::generate`](super::Pipeline::generate) reports while it runs: the stage, each
//! sampler step (with a live latent preview), each finished section (with the clip so far).

use std::fmt;
use std::time::Duration;

use burn::tensor::{backend::Backend, DType, Tensor};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::frames::{latent_preview, Clip};

/// What a generation is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Encoding the prompts.
    Text,
    /// Resizing, VAE-encoding and SigLIP-encoding the images.
    Images,
    /// Sampling the sections (decoding each one as it finishes).
    Sampling {
        /// Sections to sample.
        sections: u32,
        /// Steps per section.
        steps: usize,
    },
}

/// A progress report from [`Pipeline::generate`](super::Pipeline::generate).
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// A stage begins.
    Stage(Stage),
    /// A sampler step finished.
    Step(StepProgress<'a>),
    /// A section finished and was decoded into the clip.
    Section(SectionProgress<'a>),
    /// Something the user should know (a prompt truncated for CLIP, ...).
    Warning(&'a str),
}

/// After every sampler step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// The section (sampling order).
    pub section: u32,
    /// Sections in the job.
    pub sections: u32,
    /// The step (0-based).
    pub step: usize,
    /// Steps per section.
    pub steps: usize,
    /// Time of this step.
    pub step_time: Duration,
    /// Time since sampling began.
    pub elapsed: Duration,
    pub(crate) x0: &'a dyn Latents,
}

impl StepProgress<'_> {
    /// FramePack's live preview: the step's x0 estimate through the latent-to-RGB projection
    /// (spec §7), the section's frames side by side at latent resolution (1/8 of the video).
    /// It copies the latents to the host, so it costs a device sync: call it when you show it.
    pub fn preview(&self) -> Result<RgbImage> {
        let (values, dims) = self.x0.to_host()?;
        latent_preview(&values, dims)
    }
}

/// Latents on whichever device the job runs on, readable on the host.
pub(crate) trait Latents {
    /// The values as `f32` and the shape `[batch, channels, frames, h, w]`.
    fn to_host(&self) -> Result<(Vec<f32>, [usize; 5])>;
}

impl<B: Backend> Latents for Tensor<B, 5> {
    fn to_host(&self) -> Result<(Vec<f32>, [usize; 5])> {
        let values = self
            .clone()
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| Error::TensorData {
                what: "preview latents",
                reason: format!("{e:?}"),
            })?;
        Ok((values, self.dims()))
    }
}

impl fmt::Debug for dyn Latents + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Latents")
    }
}

/// After every section, once it is decoded and joined to the clip.
#[derive(Debug)]
pub struct SectionProgress<'a> {
    /// The section (sampling order).
    pub section: u32,
    /// Sections in the job.
    pub sections: u32,
    /// Frames of the clip so far.
    pub frames: usize,
    /// Time of this section (sampling and decoding).
    pub section_time: Duration,
    /// Time since sampling began.
    pub elapsed: Duration,
    pub(crate) clip: &'a Clip,
}

impl SectionProgress<'_> {
    /// Four frames evenly spaced over the clip so far, side by side.
    pub fn preview(&self) -> RgbImage {
        self.clip.strip(4)
    }

    /// Frame `i` of the clip so far (`i < frames`).
    pub fn frame(&self, i: usize) -> Option<RgbImage> {
        (i < self.clip.len()).then(|| self.clip.image(i))
    }
}
