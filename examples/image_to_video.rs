//! Image to video in about twenty lines: a pipeline, a request, a video saved as MP4 with its
//! latents and run record.
//!
//! ```text
//! cargo run --release --example image_to_video -- [IMAGE] [OUT.mp4]
//! ```
//!
//! It runs the tiny random-weight model (seconds on any CPU; the output is noise). For the
//! real model build the pipeline with `Pipeline::builder().download(true).build()?` (about 40
//! GB of checkpoints) on a GPU (`--features cuda`).

use framepack::{InputImage, Outputs, Pipeline, Request, Resolution};

fn main() -> Result<(), framepack::Error> {
    let mut args = std::env::args().skip(1);
    let image = match args.next() {
        Some(path) => InputImage::open(path)?,
        None => InputImage::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.png"))?,
    };
    let out = args
        .next()
        .unwrap_or_else(|| "outputs/image_to_video.mp4".into());

    let mut pipeline = Pipeline::builder()
        .tiny_random(0)
        .dtype(framepack::DType::F32)
        .build()?;
    let request = Request::new(image, "an orange ball rolls across the grass")
        .seconds(2.0)
        .steps(4)
        .resolution(Resolution::Exact {
            height: 64,
            width: 64,
        });
    let video = pipeline.generate(&request, |_| {})?;
    let record = video.save(&Outputs::beside(&out))?;
    println!(
        "{out}: {} frames at {} fps",
        record.result.frames,
        video.fps()
    );
    Ok(())
}
