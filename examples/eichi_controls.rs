//! FramePack-eichi's controls from the library: an end frame with a strength, a keyframe and a
//! prompt for one section, constant padding, and the section plan that says which frames each
//! section covers (sections count in sampling order: in inverted mode section 0 is the END).
//!
//! ```text
//! cargo run --release --example eichi_controls
//! ```
//!
//! Tiny random-weight model: the output is noise; the controls and the plan are real.

use framepack::{InputImage, Outputs, Pipeline, Request, Resolution};

/// A flat-coloured test image.
fn colour(rgb: [u8; 3]) -> Result<InputImage, framepack::Error> {
    InputImage::from_rgb8(96, 64, rgb.repeat(96 * 64))
}

fn main() -> Result<(), framepack::Error> {
    let request = Request::new(colour([200, 120, 40])?, "a fox walks through the snow")
        .seconds(3.0)
        .steps(3)
        .resolution(Resolution::Exact {
            height: 48,
            width: 64,
        })
        .end_frame(colour([240, 240, 250])?, 0.8)
        .keyframe(1, colour([90, 140, 200])?)
        .section_prompt(0, "the fox sits down")
        .constant_padding(Some(2.0));

    // The plan needs no model: check a request before loading anything.
    let plan = request.plan()?;
    for section in 0..plan.sections.sections() {
        let frames = plan.section_frames(section);
        println!("section {section}: frames {}..{}", frames.start, frames.end);
    }

    let mut pipeline = Pipeline::builder()
        .tiny_random(0)
        .dtype(framepack::DType::F32)
        .build()?;
    let video = pipeline.generate(&request, |_| {})?;
    let record = video.save(&Outputs::beside("outputs/eichi_controls.mp4"))?;
    println!(
        "{} frames, {} model calls",
        record.result.frames, record.result.model_calls
    );
    Ok(())
}
