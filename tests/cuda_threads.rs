//! The tiny pipeline on CUDA from several threads: the tuned path binds its context on every
//! thread that calls it (raw driver calls use the calling thread's context). Needs an NVIDIA
//! GPU: built only with `--features cuda` and run on the GPU machine (docs/performance.md).
#![cfg(feature = "cuda")]

mod common;

use common::small_request;
use framepack::{DeviceChoice, Frames, Pipeline};

/// `Pipeline` is `Send` in a build with the CUDA backend (its model set may be CUDA's).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Pipeline>();
};

fn cuda_pipeline() -> Pipeline {
    Pipeline::builder()
        .device(DeviceChoice::Cuda(0))
        .tiny_random(0)
        .build()
        .expect("the tiny pipeline on CUDA")
}

fn frames(pipeline: &mut Pipeline) -> Frames {
    pipeline
        .generate(&small_request(2.0), |_| {})
        .expect("a tiny job on CUDA")
        .frames
}

/// Two pipelines on two threads at once, and one pipeline moved from thread to thread, give
/// the frames of a pipeline that stayed on the test's thread.
#[test]
fn pipelines_on_other_threads_give_the_same_frames() {
    let mut here = cuda_pipeline();
    let expected = frames(&mut here);
    assert_eq!(
        frames(&mut here),
        expected,
        "a second job on the same thread"
    );

    let at_once: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| frames(&mut cuda_pipeline())))
        .collect();
    for (n, thread) in at_once.into_iter().enumerate() {
        let got = thread.join().expect("a pipeline thread");
        assert!(got == expected, "thread {n} of two at once");
    }

    let mut moved = here;
    for n in 0..2 {
        let (pipeline, got) = std::thread::spawn(move || {
            let got = frames(&mut moved);
            (moved, got)
        })
        .join()
        .expect("the moved pipeline's thread");
        assert!(got == expected, "the moved pipeline on thread {n}");
        moved = pipeline;
    }
    println!("threads: 2 at once and 1 moved twice, frames identical");
}
