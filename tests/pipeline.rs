//! The whole pipeline on the tiny random-weight model (CPU): encode, sample every section,
//! decode and join, write MP4 / latents / record, read them back.

mod common;

use std::time::Instant;

use common::{listing, psnr, psnr_2x2, read_mp4, small_request, tiny_pipeline};
use framepack::{
    CancelToken, Error, InputImage, LatentHistory, MemoryMode, Mode, Outputs, Progress, Request,
    Resolution, RunRecord, RuntimeOptions, WeightFormat,
};

#[test]
fn whole_pipeline_writes_a_decodable_mp4_and_a_reproducible_record() {
    let mut pipeline = tiny_pipeline();
    let inputs = tempfile::tempdir().unwrap();
    let png = common::png(inputs.path(), "pond.png", 96, 64, 4);
    let request = Request::new(InputImage::open(&png).unwrap(), "a paper boat drifts")
        .resolution(Resolution::Exact {
            height: 32,
            width: 48,
        })
        .seconds(2.0)
        .steps(3)
        .seed(7);
    let plan = request.plan().unwrap();
    assert_eq!(plan.sections.sections(), 2);
    assert_eq!(plan.frames(), 73);

    let started = Instant::now();
    let (mut steps, mut sections, mut stages) = (0, Vec::new(), 0);
    let video = pipeline
        .generate(&request, |p| match p {
            Progress::Stage(_) => stages += 1,
            Progress::Step(s) => {
                steps += 1;
                if s.step == 0 {
                    let preview = s.preview().unwrap();
                    // 9 latent frames of 4x6 side by side.
                    assert_eq!(preview.dimensions(), (9 * 6, 4));
                }
            }
            Progress::Section(s) => {
                assert_eq!(s.preview().height(), 32);
                assert!(s.frame(s.frames - 1).is_some() && s.frame(s.frames).is_none());
                sections.push((s.section, s.frames));
            }
            _ => {}
        })
        .unwrap();
    println!(
        "2 sections x 3 steps, 32x48: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stages, 3);
    assert_eq!(steps, 2 * 3);
    // Inverted: the first section decodes 9 latents (33 frames), the last adds 40.
    assert_eq!(sections, vec![(0, 33), (1, 73)]);
    assert_eq!(video.frames.len(), 73);
    assert_eq!((video.frames.width(), video.frames.height()), (48, 32));
    assert_eq!(video.latents.generated(), 19);
    assert_eq!(video.record.result.frames, 73);
    assert_eq!(video.record.result.model_calls, 6);
    // The frames are not a constant image.
    let first = video.frames.frame(0);
    assert!(first.iter().any(|&v| v != first[0]));

    let dir = tempfile::tempdir().unwrap();
    let outputs = Outputs::beside(dir.path().join("boat.mp4"));
    let record = video.save(&outputs).unwrap();
    assert_eq!(
        listing(dir.path()),
        vec!["boat.json", "boat.latents.safetensors", "boat.mp4"]
    );

    // The MP4 decodes to every frame at the right size and 30 fps, close to the frames.
    let mp4 = read_mp4(&dir.path().join("boat.mp4"));
    assert_eq!((mp4.width, mp4.height), (48, 32));
    assert_eq!(mp4.samples, 73);
    assert_eq!(mp4.frames.len(), 73);
    assert!((mp4.fps - 30.0).abs() < 1e-6, "fps {}", mp4.fps);
    // Random-weight output is noise, whose colour 4:2:0 subsampling cannot keep: the bound is
    // loose, but a swapped channel, a flipped frame or a wrong order falls far below it.
    let mut matched = 0.0;
    let mut shifted = 0.0;
    for (i, decoded) in mp4.frames.iter().enumerate() {
        let db = psnr_2x2(decoded, video.frames.frame(i), 48, 32);
        println!(
            "frame {i}: {db:.1} dB (full resolution {:.1} dB)",
            psnr(decoded, video.frames.frame(i))
        );
        assert!(db > 24.0, "frame {i}: PSNR {db:.1} dB");
        matched += db;
        shifted += psnr_2x2(decoded, video.frames.frame((i + 20) % 73), 48, 32);
    }
    assert!(matched > shifted + 5.0 * 73.0, "{matched} vs {shifted}");

    // The record round-trips through JSON, and names the outputs.
    let read = RunRecord::read(dir.path().join("boat.json")).unwrap();
    assert_eq!(read, record);
    assert_eq!(read.outputs.crf, Some(16));
    assert_eq!(read.models.kind, framepack::ModelKind::TinyRandom);
    // The record's JSON names them as the command line does.
    let json = std::fs::read_to_string(dir.path().join("boat.json")).unwrap();
    assert!(json.contains(r#""kind": "tiny-random""#), "{json}");
    assert!(json.contains(r#""transformer": "f32""#), "{json}");
    assert_eq!(read.request, request);
    assert_eq!(
        RunRecord::from_json(&read.to_json(), dir.path()).unwrap(),
        read
    );

    // The latents load back with their parameters.
    let (history, params) =
        LatentHistory::load(dir.path().join("boat.latents.safetensors")).unwrap();
    assert_eq!(history.generated(), 19);
    assert_eq!(history, video.latents);
    assert_eq!((params.seed, params.steps, params.sections), (7, 3, 2));

    // Replaying the record gives the same frames, bit for bit.
    let replay = read.request().unwrap();
    let again = pipeline.generate(&replay, |_| {}).unwrap();
    assert_eq!(again.frames, video.frames);

    // A changed input image is caught.
    common::png(inputs.path(), "pond.png", 96, 64, 5);
    let e = read.request().unwrap_err();
    assert!(e.to_string().contains("changed since the run"), "{e}");
    // A record given in memory cannot be replayed from its JSON alone.
    let in_memory = RunRecord {
        request: small_request(1.0),
        ..read.clone()
    };
    let in_memory = RunRecord::from_json(&in_memory.to_json(), dir.path()).unwrap();
    assert!(in_memory
        .request()
        .unwrap_err()
        .to_string()
        .contains("in memory"));
}

#[test]
fn f1_and_one_frame_modes() {
    let mut pipeline = tiny_pipeline();
    let f1 = pipeline
        .generate(&small_request(2.0).mode(Mode::F1), |_| {})
        .unwrap();
    assert_eq!(f1.frames.len(), 73);
    assert_eq!(f1.latents.generated(), 19);

    let one = pipeline
        .generate(&small_request(1.0).mode(Mode::OneFrame), |_| {})
        .unwrap();
    assert_eq!(one.frames.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    one.save(&Outputs::beside(dir.path().join("still.png")))
        .unwrap();
    assert_eq!(
        listing(dir.path()),
        vec!["still.json", "still.latents.safetensors", "still.png"]
    );
    let png = image::open(dir.path().join("still.png")).unwrap().to_rgb8();
    assert_eq!(png.as_raw().as_slice(), one.frames.frame(0));
}

#[test]
fn eichi_controls_and_real_cfg() {
    let mut pipeline = tiny_pipeline();
    let request = small_request(4.0) // 3 sections
        .end_frame(common::image(96, 64, 2), 0.7)
        .keyframe(1, common::image(96, 64, 3))
        .section_prompt(2, "the boat tips over")
        .cfg(2.0)
        .negative_prompt("blurry")
        .rs(0.5)
        .constant_padding(Some(1.5))
        .teacache(None)
        .steps(2);
    let plan = request.plan().unwrap();
    assert_eq!(plan.sections.latent_paddings(), &[1.5, 1.5, 0.0]);
    let video = pipeline.generate(&request, |_| {}).unwrap();
    assert_eq!(video.frames.len(), 109);
    // Real CFG: two model calls per step; no cache.
    assert_eq!(video.record.result.model_calls, 2 * 2 * 3);
    assert_eq!(video.record.result.model_calls_skipped, 0);

    // Without the end frame and keyframe, the same seed gives another video.
    let plain = small_request(4.0)
        .section_prompt(2, "the boat tips over")
        .cfg(2.0)
        .negative_prompt("blurry")
        .rs(0.5)
        .constant_padding(Some(1.5))
        .teacache(None)
        .steps(2);
    let other = pipeline.generate(&plain, |_| {}).unwrap();
    assert_ne!(other.frames, video.frames);
}

#[test]
fn cancelling_stops_at_a_step_boundary() {
    let mut pipeline = tiny_pipeline();
    let cancel = CancelToken::new();
    let mut sections_seen = 0;
    let result = pipeline.generate_cancellable(&small_request(3.0), &cancel, |p| {
        if let Progress::Section(_) = p {
            sections_seen += 1;
            cancel.cancel();
        }
    });
    match result {
        Err(Error::Cancelled {
            section,
            steps_done,
        }) => assert_eq!((section, steps_done), (1, 0)),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert_eq!(sections_seen, 1);
    // Cancelled before anything ran.
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(
        pipeline.generate_cancellable(&small_request(1.0), &cancel, |_| {}),
        Err(Error::Cancelled { .. })
    ));
}

#[test]
fn bad_requests_are_refused_before_any_model_runs() {
    let mut pipeline = tiny_pipeline();
    // Images of different buckets.
    let wide = common::image(1920, 1080, 1);
    let tall = common::image(1080, 1920, 2);
    let r = Request::new(wide, "x").end_frame(tall, 1.0);
    let e = pipeline.generate(&r, |_| {}).unwrap_err();
    assert!(matches!(e, Error::Plan(_)), "{e}");
    assert!(e.to_string().contains("maps to bucket"), "{e}");

    // Impossible lengths.
    for seconds in [0.0, -1.0, f64::NAN, 1e9] {
        let e = small_request(seconds).plan().unwrap_err();
        assert!(
            e.to_string().contains("seconds") || e.to_string().contains("sections"),
            "{e}"
        );
    }
    // Steps, guidance, resolution.
    assert!(small_request(1.0).steps(0).plan().is_err());
    assert!(small_request(1.0).rs(1.5).plan().is_err());
    let e = small_request(1.0)
        .resolution(Resolution::Exact {
            height: 30,
            width: 48,
        })
        .plan()
        .unwrap_err();
    assert!(e.to_string().contains("multiple of 16"), "{e}");
    assert!(small_request(1.0)
        .resolution(Resolution::Base(700))
        .plan()
        .is_err());

    // A prompt longer than the text encoder reads.
    let long = "a ".repeat(200);
    let e = pipeline
        .generate(
            &Request::new(common::image(64, 64, 1), long.clone())
                .resolution(Resolution::Exact {
                    height: 32,
                    width: 32,
                })
                .seconds(1.0)
                .steps(1),
            |_| {},
        )
        .unwrap_err();
    match &e {
        Error::PromptTooLong { tokens, max, .. } => assert_eq!((*tokens, *max), (401, 256)),
        other => panic!("{other:?}"),
    }
    // ... unless truncation is allowed, with a warning.
    let mut warned = false;
    pipeline
        .generate(
            &Request::new(common::image(64, 64, 1), long)
                .resolution(Resolution::Exact {
                    height: 32,
                    width: 32,
                })
                .seconds(1.0)
                .steps(1)
                .allow_prompt_truncation(true),
            |p| {
                if let Progress::Warning(w) = p {
                    warned |= w.contains("dropped");
                }
            },
        )
        .unwrap();
    assert!(warned);
}

#[test]
fn low_vram_mode_gives_the_resident_video() {
    let build = |memory| {
        framepack::Pipeline::builder()
            .tiny_random(0)
            .dtype(framepack::DType::F32)
            .memory(memory)
            .build()
            .unwrap()
    };
    let mut resident = build(MemoryMode::Auto);
    assert_eq!(
        resident.memory(),
        MemoryMode::Resident,
        "the CPU reports no device memory: auto keeps everything resident"
    );
    let mut low = build(MemoryMode::LowVram);
    assert_eq!(low.memory(), MemoryMode::LowVram);

    let request = small_request(2.0).seed(11);
    let expected = resident.generate(&request, |_| {}).unwrap();
    // Twice: the encoders are dropped after each job's text and image stages and must load
    // again for the next one.
    for run in 0..2 {
        let video = low.generate(&request, |_| {}).unwrap();
        assert_eq!(
            video.frames.as_bytes(),
            expected.frames.as_bytes(),
            "run {run}: streamed blocks and on-demand encoders change no pixel"
        );
        assert_eq!(video.record.runtime.memory, MemoryMode::LowVram);
    }
}

#[test]
fn fp8_blocks_give_a_close_video_and_are_recorded() {
    let build_with = |format, memory, runtime| {
        framepack::Pipeline::builder()
            .tiny_random(0)
            .dtype(framepack::DType::F32)
            .memory(memory)
            .block_weights(format)
            .runtime(runtime)
            .build()
    };
    let build = |format, memory| build_with(format, memory, RuntimeOptions::default());
    let mut dense = build(WeightFormat::Dense, MemoryMode::Auto).unwrap();
    let mut fp8 = build(WeightFormat::Fp8, MemoryMode::Auto).unwrap();
    let request = small_request(1.0).seed(5);
    let expected = dense.generate(&request, |_| {}).unwrap();
    let video = fp8.generate(&request, |_| {}).unwrap();
    assert_ne!(
        video.frames.as_bytes(),
        expected.frames.as_bytes(),
        "FP8 weights were not used"
    );
    let db = psnr(video.frames.as_bytes(), expected.frames.as_bytes());
    println!("fp8 vs dense tiny video: {db:.1} dB");
    assert!(db >= 30.0, "{db:.1} dB");
    assert_eq!(video.record.runtime.block_weights, WeightFormat::Fp8);
    assert_eq!(expected.record.runtime.block_weights, WeightFormat::Dense);
    // Streamed FP8 blocks give the resident FP8 video exactly.
    let mut low = build(WeightFormat::Fp8, MemoryMode::LowVram).unwrap();
    assert_eq!(low.memory(), MemoryMode::LowVram);
    let streamed = low.generate(&request, |_| {}).unwrap();
    assert_eq!(streamed.frames.as_bytes(), video.frames.as_bytes());
    // FP8 tensor-core products need a GPU with them: on the CPU they fall back to the
    // expanded weights, the FP8 video exactly, and the record says what was asked for.
    let asked = RuntimeOptions::default().fp8_tensor_cores(true);
    let mut tensor_cores = build_with(WeightFormat::Fp8, MemoryMode::Auto, asked.clone()).unwrap();
    assert_eq!(tensor_cores.runtime(), &asked);
    let fallback = tensor_cores.generate(&request, |_| {}).unwrap();
    assert_eq!(fallback.frames.as_bytes(), video.frames.as_bytes());
    assert_eq!(fallback.record.runtime.block_weights, WeightFormat::Fp8);
    assert_eq!(fallback.record.runtime.kernels, asked);
    assert!(!video.record.runtime.kernels.fp8_tensor_cores);
}

/// `Pipeline` is `Send`: a server or GUI keeps it on a worker thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<framepack::Pipeline>();
};

/// A pipeline moved to a worker thread runs a job there while the main thread cancels it, and
/// once moved back it gives the frames a pipeline that never left the main thread gives.
#[test]
fn a_worker_thread_runs_the_pipeline_and_the_main_thread_cancels() {
    let request = small_request(2.0);
    let expected = tiny_pipeline().generate(&request, |_| {}).unwrap().frames;

    let cancel = CancelToken::new();
    let (sections, seen) = std::sync::mpsc::channel();
    let worker = {
        let (cancel, request) = (cancel.clone(), request.clone());
        std::thread::spawn(move || {
            let mut pipeline = tiny_pipeline();
            let result = pipeline.generate_cancellable(&request, &cancel, |p| {
                if let Progress::Section(s) = p {
                    let _ = sections.send(s.section);
                    // Wait for the main thread's cancel, so the job cannot finish first.
                    while !cancel.is_cancelled() {
                        std::thread::yield_now();
                    }
                }
            });
            (pipeline, result.map(|v| v.frames))
        })
    };
    assert_eq!(seen.recv().unwrap(), 0, "the first finished section");
    cancel.cancel();
    let (mut pipeline, result) = worker.join().expect("the worker thread");
    assert!(
        matches!(result, Err(Error::Cancelled { section: 1, .. })),
        "{result:?}"
    );
    let frames = std::thread::spawn(move || pipeline.generate(&request, |_| {}).map(|v| v.frames))
        .join()
        .expect("a second worker thread")
        .unwrap();
    assert_eq!(frames, expected, "a pipeline that moved between threads");
}
