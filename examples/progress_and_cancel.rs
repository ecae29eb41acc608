//! Progress, previews and cancellation, as a GUI or server would use them: the pipeline runs on
//! a worker thread (it is `Send`), reports each step and section over a channel, writes a
//! preview PNG of every finished section, and the main thread cancels the job after the second
//! section.
//!
//! ```text
//! cargo run --release --example progress_and_cancel
//! ```

use std::sync::mpsc;

use framepack::{CancelToken, Error, InputImage, Pipeline, Progress, Request, Resolution};

enum Report {
    Step {
        section: u32,
        step: usize,
        steps: usize,
    },
    Section {
        section: u32,
        frames: usize,
    },
}

fn main() -> Result<(), Error> {
    let image = InputImage::from_rgb8(64, 64, [30u8, 160, 90].repeat(64 * 64))?;
    let request = Request::new(image, "a green lantern swings")
        .seconds(4.0)
        .steps(3)
        .resolution(Resolution::Exact {
            height: 32,
            width: 32,
        });
    std::fs::create_dir_all("outputs").map_err(|e| Error::InvalidArgument {
        argument: "outputs",
        reason: e.to_string(),
    })?;
    let cancel = CancelToken::new();
    let (reports, received) = mpsc::channel();
    let worker = {
        let (cancel, request) = (cancel.clone(), request.clone());
        std::thread::spawn(move || -> Result<(), Error> {
            let mut pipeline = Pipeline::builder()
                .tiny_random(0)
                .dtype(framepack::DType::F32)
                .build()?;
            let result = pipeline.generate_cancellable(&request, &cancel, |p| match p {
                Progress::Step(s) => {
                    let _ = reports.send(Report::Step {
                        section: s.section,
                        step: s.step,
                        steps: s.steps,
                    });
                }
                Progress::Section(s) => {
                    // A preview of the newest frame, for a UI to show.
                    let path = format!("outputs/preview_section_{}.png", s.section);
                    if s.preview().save(&path).is_ok() {
                        let _ = reports.send(Report::Section {
                            section: s.section,
                            frames: s.frames,
                        });
                    }
                }
                _ => {}
            });
            result.map(|_| ())
        })
    };
    for report in received {
        match report {
            Report::Step {
                section,
                step,
                steps,
            } => println!("section {section}: step {}/{steps}", step + 1),
            Report::Section { section, frames } => {
                println!("section {section} done, {frames} frames so far");
                if section == 1 {
                    cancel.cancel();
                }
            }
        }
    }
    match worker.join().expect("the worker thread") {
        Err(Error::Cancelled { section, .. }) => println!("cancelled in section {section}"),
        other => other?,
    }
    Ok(())
}
