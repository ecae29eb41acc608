//! LoRA for the packed transformer: the formats FramePack-eichi accepts, merged while the
//! weights load or kept as switchable low-rank adapters.
//!
//! A LoRA patches a linear weight `W [out, in]` with `Σ m · (up @ down) · alpha / rank`, where
//! `down` is `[rank, in]`, `up` `[out, rank]`, `alpha` a number stored with them (the rank when
//! absent) and `m` the user's multiplier.
//!
//! - [`LoraFile::open`] parses a file once: the key convention (kohya/musubi `lora_unet_*` or
//!   diffusers/diffusion-pipe `lora_A`/`lora_B`) and the module names (FramePack's or
//!   HunyuanVideo's `double_blocks`/`single_blocks`, whose fused QKV and QKV+MLP projections
//!   are split by rows onto FramePack's separate ones) are detected from the keys; see
//!   [`names`] for the full mapping. Tensors stay in the memory-mapped file.
//! - [`LoraSet`] holds several LoRAs, one multiplier each.
//! - Merge: [`LoraSource`] wraps the checkpoint's [`crate::weights::TensorSource`] and merges as
//!   each weight loads (`loras` of [`crate::load::LoadOptions`], given to
//!   [`crate::transformer::FramePackTransformer::from_folder`] or `load`).
//! - Adapters: [`crate::transformer::FramePackTransformer::set_lora_adapters`] keeps the
//!   factors beside the base weights, to switch LoRAs between jobs without reloading.
//!
//! See `docs/lora.md`.

mod adapter;
mod error;
mod file;
pub mod names;
mod set;
mod source;

use std::fmt;

pub use adapter::LowRankAdapter;
pub use error::LoraError;
pub use file::{KeyStyle, LoraFile, LoraFormat, ModuleNames, Unmatched};
pub use set::LoraSet;
pub use source::LoraSource;

/// Why a LoRA key patches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnmatchedReason {
    /// The module name is neither a FramePack nor a HunyuanVideo linear layer.
    NoSuchModule,
    /// The module is a FramePack layer this model does not have (e.g. a block index beyond
    /// the config).
    NotInModel {
        /// The FramePack module.
        module: String,
    },
    /// The key belongs to another network (a text encoder: `lora_te_*`, `text_encoder.*`).
    NotTransformer,
    /// A `down` without its `up` (or the reverse).
    IncompletePair,
    /// A second key for the same module and role.
    Duplicate,
    /// A key kind that is not plain LoRA (DoRA `dora_scale`, LoHa, LoKr, ...).
    Unsupported,
    /// Not a `module.parameter` key.
    NotLora,
}

impl fmt::Display for UnmatchedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchModule => write!(f, "no FramePack or HunyuanVideo layer of this name"),
            Self::NotInModel { module } => write!(f, "`{module}` is not in this model"),
            Self::NotTransformer => write!(f, "not a transformer key"),
            Self::IncompletePair => write!(f, "lora_down/lora_up pair incomplete"),
            Self::Duplicate => write!(f, "duplicate key for the same module"),
            Self::Unsupported => write!(f, "unsupported LoRA key kind"),
            Self::NotLora => write!(f, "not a LoRA key"),
        }
    }
}

/// What a merge or an adapter attach did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// The FramePack modules that were patched, sorted.
    pub applied: Vec<String>,
    /// LoRA keys that patched nothing.
    pub unmatched: Vec<Unmatched>,
}

impl LoraReport {
    /// Prints the unmatched keys as a warning on stderr, if there are any.
    pub fn warn(&self) {
        if !self.unmatched.is_empty() {
            eprintln!("framepack: warning: {self}");
        }
    }
}

impl fmt::Display for LoraReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoRA patched {} module(s)", self.applied.len())?;
        if self.unmatched.is_empty() {
            return Ok(());
        }
        write!(f, "; {} LoRA key(s) match no module:", self.unmatched.len())?;
        const SHOWN: usize = 12;
        for u in self.unmatched.iter().take(SHOWN) {
            write!(f, "\n  {}: `{}` ({})", u.file.display(), u.key, u.reason)?;
        }
        if self.unmatched.len() > SHOWN {
            write!(f, "\n  ... and {} more", self.unmatched.len() - SHOWN)?;
        }
        Ok(())
    }
}
