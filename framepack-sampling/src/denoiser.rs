//! The seam between the sampler and the network.
//!
//! The sampler knows nothing about transformers: the UniPC loop asks a [`Denoiser`] for the x0
//! estimate at `(x, σ)`, given the window it is sampling ([`WindowContext`]: the RoPE indices and
//! the context latents the section loop assembled, and which prompt the window uses).
//!
//! [`FlowDenoiser`] turns any [`VelocityModel`] (the transformer, or an analytic stand-in) into
//! a denoiser exactly as the reference's `fm_wrapper` does: `x` and the timestep are rounded to
//! bf16 before the call, real CFG makes the second call only when `cfg != 1`, guidance rescale
//! acts on the velocity, and `x0 = bf16(x) − v·σ` uses the **rounded** `x`.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use framepack_core::PromptChoice;

use crate::error::Result;
use crate::guidance::{classifier_free, host_values, rescale_guidance, Guidance};
use crate::sigmas::{model_guidance, model_timestep};

/// A group of context latents with their RoPE time indices.
#[derive(Debug, Clone)]
pub struct ContextLatents<B: Backend> {
    /// `[batch, channels, frames, h, w]`, `f32`.
    pub latents: Tensor<B, 5>,
    /// One RoPE time index per frame.
    pub indices: Vec<u32>,
}

/// Everything that stays fixed while one window is sampled.
#[derive(Debug, Clone)]
pub struct WindowContext<B: Backend> {
    /// The window's position in sampling order.
    pub section: u32,
    /// RoPE time index of each sampled frame (`latent_indices`).
    pub latent_indices: Vec<u32>,
    /// `clean_latents` (anchor and nearest history frame, or the kisekaeichi reference).
    pub clean: Option<ContextLatents<B>>,
    /// `clean_latents_2x`.
    pub clean_2x: Option<ContextLatents<B>>,
    /// `clean_latents_4x`.
    pub clean_4x: Option<ContextLatents<B>>,
    /// The prompt embedding the window uses (eichi section prompts).
    pub prompt: PromptChoice,
}

/// An x0-predictor: what the sampler calls once per step.
pub trait Denoiser<B: Backend> {
    /// Called once before the first step of every window (resets per-window state such as
    /// step caches). `sigmas` is the window's schedule (`steps + 1` values).
    fn begin_window(&mut self, window: &WindowContext<B>, sigmas: &[f32]) -> Result<()> {
        let _ = (window, sigmas);
        Ok(())
    }

    /// The x0 estimate for the `f32` sample `x` at noise level `sigma`.
    fn x0(
        &mut self,
        x: Tensor<B, 5>,
        sigma: f32,
        window: &WindowContext<B>,
    ) -> Result<Tensor<B, 5>>;
}

/// Which prompt a model call is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Branch {
    /// The window's prompt.
    Positive,
    /// The negative prompt (real CFG only).
    Negative,
}

/// One call of a velocity model, with the inputs already quantised as the reference does.
#[derive(Debug)]
pub struct ModelCall<'a, B: Backend> {
    /// The sample rounded to bf16 (held in `f32`).
    pub x: Tensor<B, 5>,
    /// `bf16(σ·1000)`.
    pub timestep: f32,
    /// `bf16(gs·1000)`.
    pub guidance: f32,
    /// Positive or negative prompt.
    pub branch: Branch,
    /// The window being sampled.
    pub window: &'a WindowContext<B>,
}

/// A network that predicts the flow velocity `v = ε − x0` (`x_σ = (1 − σ)·x0 + σ·ε`).
pub trait VelocityModel<B: Backend> {
    /// Called once before each window with its step count (TeaCache resets here).
    fn begin_window(&mut self, window: &WindowContext<B>, steps: usize) -> Result<()> {
        let _ = (window, steps);
        Ok(())
    }

    /// The velocity `[batch, channels, frames, h, w]` in `f32`.
    fn velocity(&mut self, call: ModelCall<'_, B>) -> Result<Tensor<B, 5>>;
}

/// The reference's `fm_wrapper`: a [`VelocityModel`] with guidance, as a [`Denoiser`].
///
/// ```
/// use burn::tensor::Tensor;
/// use framepack_core::PromptChoice;
/// use framepack_models::CpuBackend as B;
/// use framepack_sampling::{Denoiser, FlowDenoiser, Guidance, ModelCall, VelocityModel, WindowContext};
///
/// // A model that predicts v = x (so x0 = bf16(x)·(1 − σ)).
/// struct Identity;
/// impl VelocityModel<B> for Identity {
///     fn velocity(&mut self, call: ModelCall<'_, B>) -> framepack_sampling::Result<Tensor<B, 5>> {
///         Ok(call.x)
///     }
/// }
/// let window = WindowContext::<B> { section: 0, latent_indices: vec![0], clean: None, clean_2x: None,
///     clean_4x: None, prompt: PromptChoice::Main };
/// let mut d = FlowDenoiser::new(Identity, Guidance::default());
/// let x = Tensor::<B, 5>::full([1, 1, 1, 1, 1], 1.001, &Default::default());
/// let x0 = d.x0(x, 0.5, &window)?;
/// // bf16(1.001) = 1.0: the rounded x is used.
/// assert_eq!(x0.into_data().to_vec::<f32>().unwrap(), vec![0.5]);
/// # Ok::<(), framepack_sampling::SamplingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FlowDenoiser<M> {
    model: M,
    guidance: Guidance,
    quantize: bool,
}

impl<M> FlowDenoiser<M> {
    /// Wraps `model` with `guidance`; inputs are rounded to bf16 as in the reference.
    pub fn new(model: M, guidance: Guidance) -> Self {
        Self {
            model,
            guidance,
            quantize: true,
        }
    }

    /// Whether `x`, the timestep and the guidance are rounded to bf16 before the call (default
    /// true, as the reference, which always samples with `dtype=torch.bfloat16`). Turning it off
    /// is only useful for studying the sampler with analytic models.
    pub fn quantize_inputs(mut self, on: bool) -> Self {
        self.quantize = on;
        self
    }

    /// The guidance settings.
    pub fn guidance(&self) -> &Guidance {
        &self.guidance
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The wrapped model, mutably (e.g. to read or reset cache statistics).
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Unwraps the model.
    pub fn into_model(self) -> M {
        self.model
    }
}

impl<B: Backend, M: VelocityModel<B>> Denoiser<B> for FlowDenoiser<M> {
    fn begin_window(&mut self, window: &WindowContext<B>, sigmas: &[f32]) -> Result<()> {
        self.guidance.validate()?;
        self.model
            .begin_window(window, sigmas.len().saturating_sub(1))
    }

    fn x0(
        &mut self,
        x: Tensor<B, 5>,
        sigma: f32,
        window: &WindowContext<B>,
    ) -> Result<Tensor<B, 5>> {
        let (x, timestep, guidance) = if self.quantize {
            (
                round_to_bf16(x)?,
                model_timestep(sigma),
                model_guidance(self.guidance.distilled_scale()),
            )
        } else {
            (
                x,
                sigma * crate::sigmas::TIMESTEP_SCALE,
                (self.guidance.distilled_scale() * 1000.0) as f32,
            )
        };
        let call = |branch| ModelCall {
            x: x.clone(),
            timestep,
            guidance,
            branch,
            window,
        };
        let positive = self.model.velocity(call(Branch::Positive))?;
        let v = if self.guidance.uses_negative_prompt() {
            let negative = self.model.velocity(call(Branch::Negative))?;
            classifier_free(positive.clone(), negative, self.guidance.cfg_scale())
        } else {
            // cfg == 1: the reference's zero negative gives `0 + 1·(v_pos − 0)`, i.e. `v_pos`
            // exactly, without a second call.
            positive.clone()
        };
        // Applied even with cfg == 1, where it is `rs·v + (1 − rs)·v` (equal to `v` up to
        // rounding), because the reference does.
        let v = rescale_guidance(v, &positive, self.guidance.rescale_factor())?;
        Ok(x - v.mul_scalar(sigma))
    }
}

/// Rounds every element to the nearest bf16 value (ties to even), kept in `f32`: the
/// reference's `x.to(torch.bfloat16)`.
///
/// Done on the host rather than with `cast(BF16)`: burn-flex (the CPU backend) converts through
/// `f64` with `half::bf16::from_f64`, which drops the low bits of an `f32` before rounding and so
/// rounds some values just above a tie the wrong way (about one element in 8,000). The transfer
/// costs about a millisecond per step on a GPU, against about a second for the model call.
pub(crate) fn round_to_bf16<B: Backend>(x: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
    let shape = x.dims();
    let device = x.device();
    let values: Vec<f32> = host_values(x, "sample")?
        .into_iter()
        .map(|v| half::bf16::from_f32(v).to_f32())
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(values, shape),
        (&device, DType::F32),
    ))
}
