//! The packed transformer as a [`VelocityModel`]: encoded conditions, per-window prompt
//! choice, and an optional step cache around the block stack.

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};
use framepack_core::PromptChoice;
use framepack_models::transformer::{ContextGroup, FramePackTransformer, TransformerInputs};
use framepack_models::FramePackBackend;

use crate::cache::{CacheMode, CacheStats, StepCache};
use crate::denoiser::{Branch, ContextLatents, ModelCall, VelocityModel};
use crate::error::{Result, SamplingError};

/// One encoded prompt: LLaMA features, their valid length, and the CLIP pooled vector.
#[derive(Debug, Clone)]
pub struct PromptEmbedding<B: Backend> {
    /// LLaMA `hidden_states[-3]` after the template, `[1, tokens, 4096]` (padding allowed
    /// after `length`).
    pub text: Tensor<B, 3>,
    /// Valid tokens at the front of `text` (the mask's prefix length).
    pub length: usize,
    /// CLIP-L `pooler_output`, `[1, 768]`.
    pub pooled: Tensor<B, 2>,
}

/// Everything a job is conditioned on besides latents, already encoded.
#[derive(Debug, Clone)]
pub struct Conditions<B: Backend> {
    prompt: PromptEmbedding<B>,
    section_prompts: BTreeMap<u32, PromptEmbedding<B>>,
    negative: Option<PromptEmbedding<B>>,
    image_embeddings: Tensor<B, 3>,
}

impl<B: Backend> Conditions<B> {
    /// The main prompt and the SigLIP `last_hidden_state` of the start image (`[1, 729, 1152]`;
    /// eichi uses the start image's embedding in every window, keyframes included).
    pub fn new(prompt: PromptEmbedding<B>, image_embeddings: Tensor<B, 3>) -> Self {
        Self {
            prompt,
            section_prompts: BTreeMap::new(),
            negative: None,
            image_embeddings,
        }
    }

    /// The prompt of one section (eichi section prompts; see `PromptChoice::Section`).
    pub fn section_prompt(mut self, section: u32, prompt: PromptEmbedding<B>) -> Self {
        self.section_prompts.insert(section, prompt);
        self
    }

    /// The negative prompt, needed when real CFG is on (`cfg != 1`).
    pub fn negative(mut self, prompt: PromptEmbedding<B>) -> Self {
        self.negative = Some(prompt);
        self
    }

    fn embedding(&self, choice: PromptChoice, branch: Branch) -> Result<&PromptEmbedding<B>> {
        match (branch, choice) {
            (Branch::Negative, _) => self.negative.as_ref().ok_or_else(|| {
                SamplingError::missing(
                    "negative prompt",
                    "real CFG (cfg != 1) runs a negative-prompt call",
                )
            }),
            (Branch::Positive, PromptChoice::Main) => Ok(&self.prompt),
            (Branch::Positive, PromptChoice::Section(s)) => {
                self.section_prompts.get(&s).ok_or_else(|| {
                    SamplingError::missing(
                        format!("section prompt {s}"),
                        "the plan gives this section its own prompt",
                    )
                })
            }
        }
    }
}

/// The transformer with its conditions and step cache, as a [`VelocityModel`].
pub struct FramePackModel<'m, B: FramePackBackend> {
    transformer: &'m FramePackTransformer<B>,
    conditions: Conditions<B>,
    cache: StepCache<B>,
}

impl<'m, B: FramePackBackend> FramePackModel<'m, B> {
    /// The transformer conditioned on `conditions`, without a step cache.
    pub fn new(transformer: &'m FramePackTransformer<B>, conditions: Conditions<B>) -> Self {
        Self {
            transformer,
            conditions,
            cache: StepCache::new(CacheMode::Off),
        }
    }

    /// Runs with a step cache (TeaCache is the reference's default; off here unless asked for).
    pub fn cache(mut self, mode: CacheMode) -> Self {
        self.cache = StepCache::new(mode);
        self
    }

    /// The step cache state.
    pub fn step_cache(&self) -> &StepCache<B> {
        &self.cache
    }

    /// Model calls made, computed and skipped so far.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The transformer inputs of one call.
    pub fn inputs(&self, call: &ModelCall<'_, B>) -> Result<TransformerInputs<B>> {
        let prompt = self.conditions.embedding(call.window.prompt, call.branch)?;
        let group = |g: &Option<ContextLatents<B>>| {
            g.as_ref().map(|g| ContextGroup {
                latents: g.latents.clone(),
                indices: g.indices.iter().map(|&i| i as f32).collect(),
            })
        };
        Ok(TransformerInputs {
            latents: call.x.clone(),
            latent_indices: call
                .window
                .latent_indices
                .iter()
                .map(|&i| i as f32)
                .collect(),
            timestep: vec![call.timestep],
            guidance: vec![call.guidance],
            text: prompt.text.clone(),
            text_lengths: vec![prompt.length],
            pooled_text: prompt.pooled.clone(),
            image_embeddings: self.conditions.image_embeddings.clone(),
            clean: group(&call.window.clean),
            clean_2x: group(&call.window.clean_2x),
            clean_4x: group(&call.window.clean_4x),
        })
    }
}

impl<B: FramePackBackend> VelocityModel<B> for FramePackModel<'_, B> {
    fn begin_window(&mut self, _window: &crate::WindowContext<B>, steps: usize) -> Result<()> {
        self.cache.begin_window(steps);
        Ok(())
    }

    fn velocity(&mut self, call: ModelCall<'_, B>) -> Result<Tensor<B, 5>> {
        let inputs = self.inputs(&call)?;
        let prepared = self.transformer.prepare(&inputs)?;
        let image = self.cache.run(self.transformer, &prepared)?;
        Ok(self.transformer.project_out(&prepared, image))
    }
}
