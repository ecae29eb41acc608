//! Shared test helpers: fixture readers, analytic stand-in models, the tiny transformer.
#![allow(dead_code)]

use std::collections::HashMap;

use burn::tensor::{DType, Tensor, TensorData};
use framepack_models::transformer::{FramePackTransformer, LoadOptions, TransformerConfig};
use framepack_models::weights::SafetensorsSource;
use framepack_models::CpuBackend;
use framepack_sampling::{
    Branch, Conditions, Denoiser, ModelCall, PromptEmbedding, VelocityModel, WindowContext,
};

pub type B = CpuBackend;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// Every tensor of a safetensors fixture, as (shape, f32 values).
pub fn read_tensors(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture present");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (k, (v.shape().to_vec(), values))
        })
        .collect()
}

pub fn read_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture present");
    serde_json::from_str(&text).expect("valid json")
}

pub fn tensor5(shape: &[usize], values: &[f32]) -> Tensor<B, 5> {
    let shape: [usize; 5] = shape.try_into().expect("5-D");
    Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        (&device(), DType::F32),
    )
}

pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().into_vec::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (d / n).sqrt()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

/// Data `x0 ~ N(m_c, s²)` independently per element, `m_c` per channel: the exact flow
/// velocity, as the reference fixture's stand-in transformer computes it (f32, same order).
///
/// As a [`VelocityModel`] it reads σ from the bf16 timestep and `s = guidance/10000`, like the
/// Python stand-in; as a [`Denoiser`] it is the exact posterior mean `E[x0 | x_σ]` with the
/// true σ and a fixed `s`, for convergence studies.
#[derive(Debug, Clone)]
pub struct GaussianFlow {
    pub positive: Vec<f32>,
    pub negative: Vec<f32>,
    pub std: f32,
    pub calls: usize,
}

impl GaussianFlow {
    pub fn new(positive: Vec<f32>, negative: Vec<f32>) -> Self {
        Self {
            positive,
            negative,
            std: 1.0,
            calls: 0,
        }
    }

    fn means(&self, branch: Branch) -> Tensor<B, 5> {
        let m = match branch {
            Branch::Positive => &self.positive,
            Branch::Negative => &self.negative,
        };
        Tensor::from_data(
            TensorData::new(m.clone(), [1, m.len(), 1, 1, 1]),
            (&device(), DType::F32),
        )
    }

    /// `E[x0 | x]` for noise level `sigma` and data std `s`.
    pub fn posterior_mean(
        &self,
        x: Tensor<B, 5>,
        sigma: f32,
        s: f32,
        branch: Branch,
    ) -> Tensor<B, 5> {
        let a = 1.0 - sigma;
        let var = a * a * s * s + sigma * sigma;
        let coef = a * s * s / var;
        let m = self.means(branch);
        (x - m.clone().mul_scalar(a)).mul_scalar(coef) + m
    }

    /// The exact solution of the probability-flow ODE from `noise` (σ = 1) to `sigma`.
    pub fn exact_sample(&self, noise: &[f32], hw: usize, sigma: f64) -> Vec<f32> {
        let s = f64::from(self.std);
        let scale = ((1.0 - sigma).powi(2) * s * s + sigma * sigma).sqrt();
        noise
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let m = f64::from(self.positive[(i / hw) % self.positive.len()]);
                ((1.0 - sigma) * m + scale * f64::from(z)) as f32
            })
            .collect()
    }
}

impl VelocityModel<B> for GaussianFlow {
    fn velocity(&mut self, call: ModelCall<'_, B>) -> framepack_sampling::Result<Tensor<B, 5>> {
        self.calls += 1;
        let sigma = call.timestep / 1000.0;
        let s = call.guidance / 10000.0;
        let x0 = self.posterior_mean(call.x.clone(), sigma, s, call.branch);
        Ok((call.x - x0).div_scalar(sigma))
    }
}

impl Denoiser<B> for GaussianFlow {
    fn x0(
        &mut self,
        x: Tensor<B, 5>,
        sigma: f32,
        _: &WindowContext<B>,
    ) -> framepack_sampling::Result<Tensor<B, 5>> {
        self.calls += 1;
        Ok(self.posterior_mean(x, sigma, self.std, Branch::Positive))
    }
}

pub fn empty_window() -> WindowContext<B> {
    WindowContext {
        section: 0,
        latent_indices: vec![0],
        clean: None,
        clean_2x: None,
        clean_4x: None,
        prompt: framepack_core::PromptChoice::Main,
    }
}

/// The tiny transformer of framepack-models' parity fixture (diffusers-initialised weights).
pub fn tiny_transformer(dtype: DType) -> FramePackTransformer<B> {
    let mut src = SafetensorsSource::<B>::open(
        format!("{FIXTURES}/transformer_tiny.safetensors"),
        &device(),
    )
    .expect("tiny transformer fixture");
    FramePackTransformer::load(
        &mut src,
        TransformerConfig::tiny(),
        &LoadOptions::new(dtype),
    )
    .expect("loads")
    .0
}

/// Deterministic pseudo-random values (not a test of anything; just inputs).
pub fn filler(n: usize, seed: u64) -> Vec<f32> {
    let mut g = framepack_sampling::NoiseGenerator::new(seed);
    g.randn(n).into_iter().map(|v| v * 0.5).collect()
}

pub fn prompt(tokens: usize, seed: u64) -> PromptEmbedding<B> {
    let c = TransformerConfig::tiny();
    PromptEmbedding {
        text: Tensor::from_data(
            TensorData::new(
                filler(tokens * c.text_embed_dim, seed),
                [1, tokens, c.text_embed_dim],
            ),
            (&device(), DType::F32),
        ),
        length: tokens,
        pooled: Tensor::from_data(
            TensorData::new(
                filler(c.pooled_projection_dim, seed + 1),
                [1, c.pooled_projection_dim],
            ),
            (&device(), DType::F32),
        ),
    }
}

/// Main prompt, a negative prompt, and a SigLIP stand-in of 6 tokens.
pub fn tiny_conditions() -> Conditions<B> {
    let c = TransformerConfig::tiny();
    let siglip = Tensor::from_data(
        TensorData::new(filler(6 * c.image_proj_dim, 99), [1, 6, c.image_proj_dim]),
        (&device(), DType::F32),
    );
    Conditions::new(prompt(5, 10), siglip).negative(prompt(3, 20))
}

/// A latent `[1, 16, 1, h, w]`.
pub fn latent(h: usize, w: usize, seed: u64) -> Tensor<B, 5> {
    tensor5(&[1, 16, 1, h, w], &filler(16 * h * w, seed))
}
