//! FramePack's tensor-free core: resolution buckets, section schedules, context packing,
//! FramePack-eichi chains and soft-append weights.
//!
//! Everything here is plain data computed by pure functions; the sampling and pipeline crates
//! apply it to tensors. The modules follow the spec (`spec/pipeline.md`) and, where it differs,
//! the reference code (lllyasviel/FramePack `97fe5db`, git-ai-code/FramePack-eichi `b8f2740`):
//!
//! - [`bucket`]: the bucket tables, the nearest-bucket choice and the resize-and-crop geometry.
//! - [`schedule`]: a [`GenerationRequest`] validated into a [`SectionPlan`] of [`Window`]s.
//! - [`packing`]: the RoPE index layout of a window, its history sources, token counts.
//! - [`chain`]: eichi's per-window anchor, end frame, prompt and image influence.
//! - [`blend`]: what each section decodes and how it is cross-faded into the clip.
//! - [`error`]: the one error type.
//!
//! ```
//! use framepack_core::{BucketTable, CropGeometry, GenerationRequest, ImageSize, LatentSize};
//!
//! let bucket = BucketTable::framepack().nearest(512, 512)?;
//! let crop = CropGeometry::new(ImageSize::new(512, 512), bucket)?;
//! let latent = LatentSize::from_bucket(bucket)?;
//! let plan = GenerationRequest::new(5.0).validate()?;
//!
//! assert_eq!((bucket.height, bucket.width), (640, 608));
//! assert_eq!(crop.resized, ImageSize::new(640, 640));
//! assert_eq!(plan.sections(), 4);
//! for window in plan.windows() {
//!     assert_eq!(window.layout.tokens(latent).total(), 17_500);
//! }
//! # Ok::<(), framepack_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod blend;
pub mod bucket;
pub mod chain;
pub mod error;
pub mod packing;
pub mod schedule;

pub use blend::{LatentSpan, SectionDecode};
pub use bucket::{Bucket, BucketTable, CropBox, CropGeometry, ImageSize};
pub use chain::{Anchor, Chain, Conditioning, ImageInfluence, ImageRole, PromptChoice};
pub use error::{Error, Result};
pub use packing::{HistoryPlan, Kisekae, LatentSize, TokenCounts, WindowLayout};
pub use schedule::{Flavor, GenerationRequest, Mode, Padding, SectionPlan, Window, WindowSize};
