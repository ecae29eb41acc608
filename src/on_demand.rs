//! Networks that the low-VRAM mode loads when a job needs them and drops when it is done, so
//! the 15 GB text encoder never shares the device with the transformer's working set.

use framepack_models::text::{PromptEmbeddings, PromptEncoder};
use framepack_models::{FramePackBackend, ModelError};

/// Builds a network (from its mapped checkpoint files, or from a random seed).
/// `Send`, so that a pipeline holding one can move to a worker thread.
pub(crate) type Loader<T> = Box<dyn Fn() -> Result<T, ModelError> + Send>;

/// A network that is either always loaded, or loaded on first use and droppable.
pub(crate) struct OnDemand<T> {
    loaded: Option<T>,
    /// `None`: resident (loaded at build time, never dropped).
    loader: Option<Loader<T>>,
}

impl<T> OnDemand<T> {
    /// A network loaded now that stays for the pipeline's life.
    pub(crate) fn resident(value: T) -> Self {
        Self {
            loaded: Some(value),
            loader: None,
        }
    }

    /// A network loaded by `loader` when first used.
    pub(crate) fn lazy(loader: Loader<T>) -> Self {
        Self {
            loaded: None,
            loader: Some(loader),
        }
    }

    /// The network, loading it if needed.
    pub(crate) fn get(&mut self) -> Result<&mut T, ModelError> {
        if self.loaded.is_none() {
            let loader = self
                .loader
                .as_ref()
                .ok_or_else(|| missing("dropped, and there is no way to load it again"))?;
            self.loaded = Some(loader()?);
        }
        // Just loaded if it was missing.
        self.loaded.as_mut().ok_or_else(|| missing("not loaded"))
    }

    /// Drops a lazily loaded network (its device memory returns to the backend's pool).
    /// Returns whether anything was dropped; resident networks stay.
    pub(crate) fn release(&mut self) -> bool {
        self.loader.is_some() && self.loaded.take().is_some()
    }
}

fn missing(reason: &str) -> ModelError {
    ModelError::Input {
        argument: "network",
        reason: reason.into(),
    }
}

/// The text encoders (LLaMA + CLIP) behind the prompt cache, resident or on demand. The
/// revision is known without loading anything, so cache hits never load the 15 GB encoder.
pub(crate) struct TextSlot<B: FramePackBackend> {
    pub(crate) revision: String,
    pub(crate) encoders: OnDemand<Box<dyn PromptEncoder<B> + Send>>,
}

impl<B: FramePackBackend> PromptEncoder<B> for TextSlot<B> {
    fn revision(&self) -> String {
        self.revision.clone()
    }

    fn encode(&mut self, prompt: &str) -> Result<PromptEmbeddings<B>, ModelError> {
        self.encoders.get()?.encode(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn lazy_networks_load_once_per_use_and_release() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counter = loads.clone();
        let mut slot = OnDemand::lazy(Box::new(move || {
            Ok(counter.fetch_add(1, Ordering::SeqCst) + 1)
        }));
        assert_eq!(
            loads.load(Ordering::SeqCst),
            0,
            "nothing loads before first use"
        );
        assert_eq!(*slot.get().unwrap(), 1);
        assert_eq!(*slot.get().unwrap(), 1, "a loaded network is reused");
        assert!(slot.release());
        assert!(!slot.release(), "nothing left to drop");
        assert_eq!(*slot.get().unwrap(), 2, "loaded again after a release");
    }

    #[test]
    fn resident_networks_are_never_dropped() {
        let mut slot = OnDemand::resident(7);
        assert!(!slot.release());
        assert_eq!(*slot.get().unwrap(), 7);
    }
}
