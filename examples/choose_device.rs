//! Choosing the backend and device at run time: `DeviceChoice` parses what a user typed
//! (`auto`, `cpu`, `cuda`, `cuda:1`, `wgpu`); `auto` (the builder's default) takes the first
//! CUDA GPU when the build has `cuda`, else a wgpu adapter when it has `wgpu`, else the CPU.
//! A choice the build lacks, or a GPU that is not there, is a clear error.
//!
//! ```text
//! cargo run --release --example choose_device -- auto
//! cargo run --release --features cuda --example choose_device -- cuda:0
//! ```

use framepack::{DeviceChoice, Error, InputImage, Pipeline, Request, Resolution};

fn main() -> Result<(), Error> {
    let choice: DeviceChoice = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("auto")
        .parse()?;
    let mut pipeline = Pipeline::builder().device(choice).tiny_random(0).build()?;
    println!(
        "asked for {choice}: running on {} ({} backend), dtypes {}",
        pipeline.device(),
        pipeline.backend(),
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
        "{} frames in {:.2} s; the record says {} (auto: {})",
        video.frames.len(),
        video.record.timing.total_s,
        video.record.runtime.device,
        video.record.runtime.device_auto
    );
    Ok(())
}
