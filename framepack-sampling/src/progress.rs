//! Progress events and cooperative cancellation of the section loops.
//!
//! The loops report after every sampler step (with the x0 estimate, which a UI turns into a
//! preview) and after every window (with the latents it added, which the pipeline decodes and
//! cross-fades into the clip). A [`CancelToken`] is checked before each window and after each
//! step; a cancelled job returns the history of the windows that finished.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::{backend::Backend, Tensor};
use framepack_core::Window;

use crate::history::History;

/// A cancellation flag shared between the caller and a running job.
///
/// ```
/// use framepack_sampling::CancelToken;
/// let token = CancelToken::new();
/// let handle = token.clone(); // e.g. moved into a UI thread
/// handle.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop at the next step boundary.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Reported after every sampler step.
#[derive(Debug)]
pub struct StepEvent<'a, B: Backend> {
    /// The window's position in sampling order.
    pub section: u32,
    /// Windows in the plan.
    pub sections: u32,
    /// The step index (0-based; the reference's progress shows `step + 1`).
    pub step: usize,
    /// Steps per window.
    pub steps: usize,
    /// σ of the step's model call.
    pub sigma: f32,
    /// The step's x0 estimate `[1, 16, frames, h, w]`: the preview latents.
    pub x0: &'a Tensor<B, 5>,
    /// Wall time of this step. On asynchronous backends this is the time to enqueue the work
    /// unless the denoiser reads results back (as the caches do).
    pub step_time: Duration,
    /// Wall time since the job started.
    pub elapsed: Duration,
}

/// Reported after every finished window.
#[derive(Debug)]
pub struct SectionEvent<'a, B: Backend> {
    /// The window.
    pub window: &'a Window,
    /// Windows in the plan.
    pub sections: u32,
    /// The latents the window added to the history (its sampled frames, with the start latent
    /// in front for the last inverted window).
    pub latents: &'a Tensor<B, 5>,
    /// The history after the window.
    pub history: &'a History<B>,
    /// Wall time of the window.
    pub section_time: Duration,
    /// Wall time since the job started.
    pub elapsed: Duration,
}

/// A progress event.
#[derive(Debug)]
pub enum Event<'a, B: Backend> {
    /// A sampler step finished.
    Step(StepEvent<'a, B>),
    /// A window finished.
    Section(SectionEvent<'a, B>),
}
