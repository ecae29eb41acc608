//! Choosing the backend and device at run time: `DeviceChoice` parses what a user typed
//! (`cpu`, `cuda`, `cuda:1`, `wgpu`), and each backend this build has gets its own pipeline
//! type. A choice the build lacks is a clear error.
//!
//! ```text
//! cargo run --release --example choose_device -- cpu
//! cargo run --release --features cuda --example choose_device -- cuda:0
//! ```

use framepack::{DeviceChoice, Error, FramePackBackend, InputImage, Pipeline, Request, Resolution};

/// Runs a tiny job on backend `B` and device `device`.
fn run<B: FramePackBackend>(device: B::Device) -> Result<(), Error> {
    let mut pipeline = Pipeline::<B>::builder_for()
        .device(device)
        .tiny_random(0)
        .build()?;
    println!(
        "{} on {:?}, dtypes {}",
        B::name(pipeline.device()),
        pipeline.device(),
        pipeline.dtypes()
    );
    let image = InputImage::from_rgb8(32, 32, vec![128; 32 * 32 * 3])?;
    let request = Request::new(image, "a test")
        .seconds(1.0)
        .steps(2)
        .resolution(Resolution::Exact {
            height: 32,
            width: 32,
        });
    let video = pipeline.generate(&request, |_| {})?;
    println!(
        "{} frames in {:.2} s",
        video.frames.len(),
        video.record.timing.total_s
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let choice: DeviceChoice = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("cpu")
        .parse()?;
    let missing = |feature: &str| Error::DeviceUnavailable {
        device: choice.to_string(),
        reason: format!("this build has no {feature} backend; rebuild with `--features {feature}`"),
    };
    match choice {
        #[cfg(feature = "cpu")]
        DeviceChoice::Cpu => run::<framepack::framepack_models::CpuBackend>(Default::default()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(index) => run::<framepack::framepack_models::cuda::CudaBackend>(
            framepack::framepack_models::cuda::CudaDevice { index },
        ),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => run::<burn::backend::Wgpu>(Default::default()),
        #[allow(unreachable_patterns)]
        DeviceChoice::Cpu => Err(missing("cpu")),
        #[allow(unreachable_patterns)]
        DeviceChoice::Cuda(_) => Err(missing("cuda")),
        #[allow(unreachable_patterns)]
        DeviceChoice::Wgpu => Err(missing("wgpu")),
    }
}
