//! Sources around sources: one that can be read again later ([`SharedSource`]), and one that
//! reads a network's keys from under another root ([`Rerooted`]).

use std::borrow::Cow;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::{CheckpointFiles, RandomSource, SafetensorsSource, TensorSource, WeightError};
use crate::fp8::{Fp8Host, Fp8Weight};
use crate::load::KeyRoot;

/// A source's tensors, readable again at any later time and from any thread: what a network
/// whose layers stream from their source keeps (LLaMA in the streamed mode reads each decoder
/// layer during each call). Made by [`TensorSource::shared`]; a clone is cheap (the mapped
/// files are shared).
pub struct SharedSource<B: Backend>(Shared<B>);

enum Shared<B: Backend> {
    /// A checkpoint's mapped files.
    Files(SafetensorsSource<B>),
    /// Random weights.
    Random(RandomSource<B>),
}

impl<B: Backend> SharedSource<B> {
    pub(super) fn files(src: SafetensorsSource<B>) -> Self {
        Self(Shared::Files(src))
    }

    pub(super) fn random(src: RandomSource<B>) -> Self {
        Self(Shared::Random(src))
    }
}

impl<B: Backend> Clone for SharedSource<B> {
    fn clone(&self) -> Self {
        Self(match &self.0 {
            Shared::Files(src) => Shared::Files(src.reader()),
            Shared::Random(src) => Shared::Random(src.clone()),
        })
    }
}

impl<B: Backend> std::fmt::Debug for SharedSource<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Shared::Files(src) => write!(f, "SharedSource({})", src.files().location().display()),
            Shared::Random(_) => write!(f, "SharedSource(random)"),
        }
    }
}

/// `$body` with `$src` bound to the inner source, whichever it is.
macro_rules! inner {
    ($self:ident, $src:ident => $body:expr) => {
        match &mut $self.0 {
            Shared::Files($src) => $body,
            Shared::Random($src) => $body,
        }
    };
}

impl<B: Backend> TensorSource<B> for SharedSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        inner!(self, src => src.tensor(key, shape, dtype))
    }

    fn device(&self) -> &B::Device {
        match &self.0 {
            Shared::Files(src) => src.device(),
            Shared::Random(src) => src.device(),
        }
    }

    fn host_data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        inner!(self, src => src.host_data(key, shape, dtype))
    }

    fn fp8_host(&mut self, key: &str, shape: [usize; 2]) -> Result<Fp8Host, WeightError> {
        inner!(self, src => src.fp8_host(key, shape))
    }

    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        inner!(self, src => src.fp8_weight(key, shape, dtype))
    }

    fn shared(&self) -> Option<SharedSource<B>> {
        Some(self.clone())
    }
}

/// Reads the keys a network asks for under the root `published` from under `stored` instead;
/// other keys pass through. For checkpoints whose exporter named the modules from another root
/// (CLIP and SigLIP saved by transformers ≥ 5 have no `text_model.` / `vision_model.`);
/// [`CheckpointFiles::prefix_of`](super::CheckpointFiles::prefix_of) tells which.
///
/// ```
/// use burn::tensor::DType;
/// use framepack_models::weights::{ManifestRecorder, Rerooted, TensorSource};
/// use framepack_models::CpuBackend as B;
/// let mut recorder = ManifestRecorder::<B>::new(&Default::default());
/// let mut src = Rerooted::new(&mut recorder, "text_model.", "");
/// src.tensor::<1>("text_model.final_layer_norm.bias", [4], DType::F32).unwrap();
/// assert_eq!(recorder.into_entries()[0].key, "final_layer_norm.bias");
/// ```
pub struct Rerooted<S> {
    inner: S,
    published: String,
    stored: String,
}

impl<S> Rerooted<S> {
    /// Reads `{published}…` from `inner` as `{stored}…`.
    pub fn new(inner: S, published: impl Into<String>, stored: impl Into<String>) -> Self {
        Self {
            inner,
            published: published.into(),
            stored: stored.into(),
        }
    }

    /// `inner` reading a network's published keys, under `root`, from under the root `files`
    /// store them under: `root` itself, or none when the files hold `{probe}` and not
    /// `{root}{probe}` (e.g. [`crate::text::ClipTextEncoder::KEY_ROOT`]).
    pub fn detect(inner: S, files: &CheckpointFiles, (root, probe): KeyRoot) -> Self {
        let stored = files.prefix_of(probe, root, "");
        Self::new(inner, root, stored)
    }

    /// The wrapped source.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        match key.strip_prefix(self.published.as_str()) {
            Some(rest) if self.published != self.stored => {
                Cow::Owned(format!("{}{rest}", self.stored))
            }
            _ => Cow::Borrowed(key),
        }
    }
}

impl<B: Backend, S: TensorSource<B>> TensorSource<B> for Rerooted<S> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>, WeightError> {
        let key = self.key(key).into_owned();
        self.inner.tensor(&key, shape, dtype)
    }

    fn device(&self) -> &B::Device {
        self.inner.device()
    }

    fn host_data(
        &mut self,
        key: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, WeightError> {
        let key = self.key(key).into_owned();
        self.inner.host_data(&key, shape, dtype)
    }

    fn fp8_host(&mut self, key: &str, shape: [usize; 2]) -> Result<Fp8Host, WeightError> {
        let key = self.key(key).into_owned();
        self.inner.fp8_host(&key, shape)
    }

    fn fp8_weight(
        &mut self,
        key: &str,
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Fp8Weight<B>, WeightError> {
        let key = self.key(key).into_owned();
        self.inner.fp8_weight(&key, shape, dtype)
    }

    /// The inner source's, where no key is renamed.
    fn shared(&self) -> Option<SharedSource<B>> {
        (self.published == self.stored)
            .then(|| self.inner.shared())
            .flatten()
    }
}
