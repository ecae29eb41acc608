//! The pipeline: a model set in memory, and [`Pipeline::generate`], which runs one [`Request`]
//! from the input image to decoded frames (spec §1–§2.5, §7).
//!
//! - [`builder`]: what to load, where, how ([`PipelineBuilder`]);
//! - [`models`]: the loaded networks of one backend, residency and checkpoint switching;
//! - [`job`]: one request's stages (text, images, sampling with per-section decode, record);
//! - [`progress`]: what a job reports while it runs;
//! - [`output`]: the finished [`Video`] and where it is written.
//!
//! The backend is chosen at run time ([`DeviceChoice`]): [`Pipeline`] holds the model set of
//! the backend its device needs, and hands back host data ([`Video`]), so no public type names
//! a backend.

mod builder;
mod job;
mod models;
mod output;
mod progress;

pub use builder::PipelineBuilder;
pub use framepack_models::nn::WeightFormat;
pub use output::{Outputs, Video};
pub use progress::{Progress, SectionProgress, Stage, StepProgress};

use framepack_models::failure::catch;
use framepack_models::runtime::RuntimeOptions;
use framepack_models::FramePackBackend;
use framepack_sampling::CancelToken;

use crate::error::{Error, Result};
use crate::memory::{Dtypes, MemoryMode};
use crate::request::Request;
use crate::DeviceChoice;
use job::Place;
use models::{sized, ModelSet, Settings};

/// The model set of the backend a device needs.
enum Engine {
    #[cfg(feature = "cpu")]
    Cpu(Box<ModelSet<framepack_models::CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<ModelSet<framepack_models::cuda::CudaBackend>>),
    #[cfg(feature = "wgpu")]
    Wgpu(Box<ModelSet<burn::backend::Wgpu>>),
}

/// Runs `$body` with `$models` bound to the engine's model set, whatever its backend.
macro_rules! with_models {
    ($engine:expr, $models:ident => $body:expr) => {
        match $engine {
            #[cfg(feature = "cpu")]
            Engine::Cpu($models) => $body,
            #[cfg(feature = "cuda")]
            Engine::Cuda($models) => $body,
            #[cfg(feature = "wgpu")]
            Engine::Wgpu($models) => $body,
        }
    };
}

impl Engine {
    /// Loads the model set for `device` (already resolved: never `Auto`).
    fn load(settings: Settings, device: DeviceChoice) -> Result<Self> {
        match device {
            #[cfg(feature = "cpu")]
            DeviceChoice::Cpu => Ok(Self::Cpu(ModelSet::load(settings, Default::default())?)),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(index) => Ok(Self::Cuda(ModelSet::load(
                settings,
                framepack_models::cuda::CudaDevice { index },
            )?)),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Self::Wgpu(ModelSet::load(settings, Default::default())?)),
            #[allow(unreachable_patterns)]
            other => Err(Error::DeviceUnavailable {
                device: other.to_string(),
                reason: "not built into this binary".into(),
            }),
        }
    }
}

/// FramePack image-to-video with every model in memory: build it once, then run any number
/// of [`Request`]s with [`generate`](Self::generate). It is `Send`, so a worker thread can own
/// it.
///
/// ```
/// use framepack::{InputImage, Outputs, Pipeline, Progress, Request, Resolution};
///
/// // The tiny random-weight model runs anywhere; its output is noise.
/// let mut pipeline = Pipeline::builder()
///     .tiny_random(0)
///     .dtype(framepack::DType::F32)
///     .build()?;
/// let image = InputImage::from_rgb8(96, 64, vec![200; 96 * 64 * 3])?;
/// let request = Request::new(image, "a red ball bounces")
///     .resolution(Resolution::Exact { height: 32, width: 32 })
///     .seconds(1.0)
///     .steps(2);
/// let video = pipeline.generate(&request, |progress| {
///     if let Progress::Section(s) = progress {
///         println!("section {} of {}: {} frames so far", s.section + 1, s.sections, s.frames);
///     }
/// })?;
/// assert_eq!(video.frames.len(), 37); // one section of 9 latents + the start frame
/// assert_eq!((video.frames.width(), video.frames.height()), (32, 32));
///
/// let dir = tempfile::tempdir()?;
/// let record = video.save(&Outputs::beside(dir.path().join("ball.mp4")))?;
/// assert!(dir.path().join("ball.mp4").is_file());
/// assert_eq!(record.result.frames, 37);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline {
    engine: Engine,
    place: Place,
}

/// A server or GUI keeps the pipeline on a worker thread: it must stay `Send` whatever
/// backends the build has.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Pipeline>();
};

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("device", &self.place.device)
            .field("dtypes", &self.dtypes())
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A builder: the published checkpoints from the standard caches, on
    /// [`DeviceChoice::Auto`], with the dtypes of [`Dtypes::for_device`] and the memory mode
    /// chosen from the device's free memory.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// The device the models live on (resolved: never [`DeviceChoice::Auto`]).
    pub fn device(&self) -> DeviceChoice {
        self.place.device
    }

    /// The burn backend running the models (`cpu`, `cuda`, `wgpu`), as the run record names it.
    pub fn backend(&self) -> String {
        with_models!(&self.engine, m => backend_name(m))
    }

    /// The compute dtypes.
    pub fn dtypes(&self) -> Dtypes {
        with_models!(&self.engine, m => m.dtypes)
    }

    /// The kernel choices this pipeline runs with.
    pub fn runtime(&self) -> &RuntimeOptions {
        with_models!(&self.engine, m => &m.runtime)
    }

    /// The memory mode in use (never [`MemoryMode::Auto`]: that is resolved when the pipeline
    /// is built).
    pub fn memory(&self) -> MemoryMode {
        with_models!(&self.engine, m => m.memory)
    }

    /// Runs a generation; see [`generate_cancellable`](Self::generate_cancellable).
    pub fn generate<F>(&mut self, request: &Request, on_progress: F) -> Result<Video>
    where
        F: FnMut(Progress<'_>),
    {
        self.generate_cancellable(request, &CancelToken::new(), on_progress)
    }

    /// Runs a generation, reporting progress to `on_progress` and stopping at the next step
    /// boundary once `cancel` is cancelled ([`Error::Cancelled`]; nothing is written, since
    /// writing is [`Video::save`]'s job).
    pub fn generate_cancellable<F>(
        &mut self,
        request: &Request,
        cancel: &CancelToken,
        on_progress: F,
    ) -> Result<Video>
    where
        F: FnMut(Progress<'_>),
    {
        let place = &self.place;
        with_models!(&mut self.engine, m => run_caught(m, place, request, cancel, on_progress))
    }
}

fn backend_name<B: FramePackBackend>(models: &ModelSet<B>) -> String {
    B::name(&models.device)
}

/// Runs a job; burn's operations cannot return errors: a failing kernel unwinds, and is
/// turned back into [`Error::Backend`] here, so that a worker thread sees a failed job, not
/// a panic.
fn run_caught<B: FramePackBackend>(
    models: &mut ModelSet<B>,
    place: &Place,
    request: &Request,
    cancel: &CancelToken,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<Video> {
    let device = models.device.clone();
    let low_vram = models.memory.is_low_vram();
    let runtime = models.runtime.clone();
    catch(|| {
        runtime.scope(|| {
            sized::<B, _>(low_vram, &device, || {
                job::run(models, place, request, cancel, on_progress)
            })
        })
    })?
}
