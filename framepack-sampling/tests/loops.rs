//! The section loops on the tiny transformer: frame counts and index layouts against
//! framepack-core, the history bookkeeping, eichi's controls, events, cancellation, and the
//! latent-history file.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::{DType, Tensor};
use common::*;
use framepack_core::{
    Anchor, GenerationRequest, Kisekae, Mode, Padding, PromptChoice, SectionPlan,
};
use framepack_sampling::{
    CancelToken, Completion, Denoiser, Event, FlowDenoiser, FramePackModel, GenerationParams,
    Guidance, History, ModelCall, SamplingError, SectionInputs, SectionSampler, VelocityModel,
    WindowContext,
};

const H: usize = 2;
const W: usize = 2;

/// What a window looked like from the model's side.
#[derive(Debug, Clone)]
struct Seen {
    section: u32,
    latent_indices: Vec<u32>,
    clean_indices: Vec<u32>,
    clean_2x: Option<Vec<u32>>,
    clean_4x: Option<Vec<u32>>,
    clean: Vec<f32>,
    clean_4x_values: Vec<f32>,
    prompt: PromptChoice,
    steps: usize,
    calls: usize,
    first_x: Option<Vec<f32>>,
}

/// Wraps a velocity model and records every window it is asked to sample.
struct Recording<M> {
    inner: M,
    seen: Rc<RefCell<Vec<Seen>>>,
}

impl<M: VelocityModel<B>> VelocityModel<B> for Recording<M> {
    fn begin_window(
        &mut self,
        w: &WindowContext<B>,
        steps: usize,
    ) -> framepack_sampling::Result<()> {
        self.seen.borrow_mut().push(Seen {
            section: w.section,
            latent_indices: w.latent_indices.clone(),
            clean_indices: w
                .clean
                .as_ref()
                .map(|c| c.indices.clone())
                .unwrap_or_default(),
            clean_2x: w.clean_2x.as_ref().map(|c| c.indices.clone()),
            clean_4x: w.clean_4x.as_ref().map(|c| c.indices.clone()),
            clean: w
                .clean
                .as_ref()
                .map(|c| values(c.latents.clone()))
                .unwrap_or_default(),
            clean_4x_values: w
                .clean_4x
                .as_ref()
                .map(|c| values(c.latents.clone()))
                .unwrap_or_default(),
            prompt: w.prompt,
            steps,
            calls: 0,
            first_x: None,
        });
        self.inner.begin_window(w, steps)
    }

    fn velocity(&mut self, call: ModelCall<'_, B>) -> framepack_sampling::Result<Tensor<B, 5>> {
        {
            let mut seen = self.seen.borrow_mut();
            let last = seen.last_mut().expect("begin_window first");
            last.calls += 1;
            if last.first_x.is_none() {
                last.first_x = Some(values(call.x.clone()));
            }
        }
        self.inner.velocity(call)
    }
}

fn frame(values: &[f32], frames: usize, index: usize) -> Vec<f32> {
    // [1, 16, frames, H, W] -> the [16, H, W] slice of one frame.
    let hw = H * W;
    (0..16)
        .flat_map(|c| values[(c * frames + index) * hw..(c * frames + index + 1) * hw].to_vec())
        .collect()
}

struct Run {
    seen: Vec<Seen>,
    section_latents: Vec<Vec<f32>>,
    added: Vec<usize>,
    steps_reported: usize,
    output: framepack_sampling::SectionOutput<B>,
}

fn run(
    plan: &SectionPlan,
    inputs: &SectionInputs<B>,
    steps: usize,
    cancel_after: Option<usize>,
) -> Run {
    let transformer = tiny_transformer(DType::F32);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let model = Recording {
        inner: FramePackModel::new(
            &transformer,
            tiny_conditions().section_prompt(2, prompt(4, 30)),
        ),
        seen: seen.clone(),
    };
    let mut denoiser = FlowDenoiser::new(model, Guidance::default());
    let cancel = CancelToken::new();
    let mut section_latents = Vec::new();
    let mut added = Vec::new();
    let mut steps_reported = 0;
    let output = SectionSampler::new(plan)
        .steps(steps)
        .seed(31337)
        .run(&mut denoiser, inputs, &cancel, |event| match event {
            Event::Step(s) => {
                steps_reported += 1;
                assert_eq!(
                    s.x0.dims(),
                    [1, 16, plan.latents_per_section() as usize, H, W]
                );
                if Some(steps_reported) == cancel_after {
                    cancel.cancel();
                }
            }
            Event::Section(s) => {
                added.push(s.latents.dims()[2]);
                assert_eq!(s.latents.dims()[2] as u32, s.window.history.added);
                assert_eq!(s.history.generated(), s.window.history.generated_after);
                section_latents.push(values(s.latents.clone()));
            }
        })
        .expect("sampling runs");
    let seen = seen.borrow().clone();
    Run {
        seen,
        section_latents,
        added,
        steps_reported,
        output,
    }
}

fn plan(seconds: f64, mode: Mode) -> SectionPlan {
    GenerationRequest::new(seconds)
        .mode(mode)
        .validate()
        .unwrap()
}

fn check_layouts(plan: &SectionPlan, run: &Run, steps: usize) {
    let windows: Vec<_> = plan.windows().collect();
    assert_eq!(run.seen.len(), windows.len());
    for (w, s) in windows.iter().zip(&run.seen) {
        assert_eq!(s.section, w.index);
        assert_eq!(s.latent_indices, w.layout.latent_indices());
        assert_eq!(s.clean_indices, w.layout.clean_latent_indices());
        assert_eq!(s.clean_2x.as_deref(), w.layout.clean_latent_2x_indices());
        assert_eq!(s.clean_4x.as_deref(), w.layout.clean_latent_4x_indices());
        assert_eq!(
            (s.steps, s.calls),
            (steps, steps),
            "one model call per step (cfg = 1)"
        );
    }
    let out = &run.output;
    assert!(out.is_complete());
    assert_eq!(out.completed_sections, plan.sections());
    assert_eq!(out.history.generated(), plan.total_latent_frames());
    let last = windows.last().unwrap();
    assert_eq!(out.history.len(), last.history.history_len_after);
    assert_eq!(
        out.history.valid().dims(),
        [1, 16, plan.total_latent_frames() as usize, H, W]
    );
    assert_eq!(run.steps_reported, steps * windows.len());
    let added: Vec<usize> = windows.iter().map(|w| w.history.added as usize).collect();
    assert_eq!(run.added, added);
}

#[test]
fn inverted_loop_matches_core_for_1_2_5_8_sections() {
    let start = latent(H, W, 1);
    for (seconds, sections) in [(1.0, 1), (2.0, 2), (6.0, 5), (10.0, 8)] {
        let plan = plan(seconds, Mode::Inverted);
        assert_eq!(plan.sections(), sections);
        let r = run(&plan, &SectionInputs::new(start.clone()), 2, None);
        check_layouts(&plan, &r, 2);
        // Window 0 reads the zero history; every later one reads the previous window's first
        // frame (the nearest future latent) into its post slot.
        assert!(frame(&r.seen[0].clean, 2, 1).iter().all(|&v| v == 0.0));
        for k in 1..r.seen.len() {
            let post = frame(&r.seen[k].clean, 2, 1);
            let previous = frame(&r.section_latents[k - 1], 9, 0);
            assert_eq!(post, previous, "{sections} sections, window {k}");
        }
        // The last window carries the start latent in front, and the valid history starts
        // with it: the video begins with the input image.
        let valid = values(r.output.history.valid());
        assert_eq!(
            frame(&valid, plan.total_latent_frames() as usize, 0),
            values(start.clone())
        );
        assert_eq!(*r.added.last().unwrap(), 10);
        println!(
            "inverted, {sections} sections: {} latents, history {} frames",
            r.output.history.generated(),
            r.output.history.len()
        );
    }
}

#[test]
fn f1_loop_matches_core_for_1_2_5_8_sections() {
    let start = latent(H, W, 2);
    for (seconds, sections) in [(1.0, 1), (2.0, 2), (6.0, 5), (10.0, 8)] {
        let plan = plan(seconds, Mode::F1);
        assert_eq!(plan.sections(), sections);
        let r = run(&plan, &SectionInputs::new(start.clone()), 2, None);
        check_layouts(&plan, &r, 2);
        // The first window's clean latents are [start, start] (history[-1] is the start latent).
        let s = values(start.clone());
        assert_eq!(frame(&r.seen[0].clean, 2, 0), s);
        assert_eq!(frame(&r.seen[0].clean, 2, 1), s);
        for k in 1..r.seen.len() {
            assert_eq!(frame(&r.seen[k].clean, 2, 0), s, "start slot");
            let newest = frame(&r.section_latents[k - 1], 9, 8);
            assert_eq!(frame(&r.seen[k].clean, 2, 1), newest, "1x slot, window {k}");
        }
        // F1 appends: the valid history starts with the start latent and ends with the last
        // window's output.
        let n = plan.total_latent_frames() as usize;
        let valid = values(r.output.history.valid());
        assert_eq!(frame(&valid, n, 0), s);
        let last = r.section_latents.last().unwrap();
        assert_eq!(frame(&valid, n, n - 1), frame(last, 9, 8));
    }
}

#[test]
fn end_frame_keyframes_section_prompts_and_padding() {
    let start = latent(H, W, 3);
    let end = latent(H, W, 4);
    let key1 = latent(H, W, 5);
    let plan = GenerationRequest::new(6.0)
        .end_frame(0.5)
        .keyframe(1)
        .section_prompt(2, "turns around")
        .padding(Padding::Constant(1.0))
        .validate()
        .unwrap();
    let inputs = SectionInputs::new(start.clone())
        .end_frame(end.clone())
        .keyframe(1, key1.clone());
    let r = run(&plan, &inputs, 2, None);
    check_layouts(&plan, &r, 2);
    let windows: Vec<_> = plan.windows().collect();
    // The end frame times its strength is window 0's post latent...
    let scaled: Vec<f32> = values(end.clone().mul_scalar(0.5f32));
    assert_eq!(frame(&r.seen[0].clean, 2, 1), scaled);
    // ...and, after 9 prepended latents, the 7th frame of window 1's 4x context (history[9]).
    assert_eq!(frame(&r.seen[1].clean_4x_values, 16, 6), scaled);
    // Keyframe 1 anchors windows 0 and 1; the start image the rest.
    for (w, s) in windows.iter().zip(&r.seen) {
        let want = match w.conditioning.anchor {
            Anchor::Start => values(start.clone()),
            Anchor::Keyframe { section } => {
                assert_eq!(section, 1);
                values(key1.clone())
            }
        };
        assert_eq!(frame(&s.clean, 2, 0), want, "window {}", w.index);
        assert_eq!(s.prompt, w.conditioning.prompt);
    }
    assert_eq!(r.seen[2].prompt, PromptChoice::Section(2));
    assert_eq!(plan.padding_sizes(), vec![9, 9, 9, 9, 0]);
    // The last window still prepends the start latent (not the keyframe).
    let n = plan.total_latent_frames() as usize;
    assert_eq!(
        frame(&values(r.output.history.valid()), n, 0),
        values(start)
    );
}

#[test]
fn missing_inputs_are_named() {
    let transformer = tiny_transformer(DType::F32);
    let start = latent(H, W, 3);
    let keyed = GenerationRequest::new(2.0).keyframe(0).validate().unwrap();
    let mut d = FlowDenoiser::new(
        FramePackModel::new(&transformer, tiny_conditions()),
        Guidance::default(),
    );
    let e = SectionSampler::new(&keyed)
        .steps(1)
        .run(
            &mut d,
            &SectionInputs::new(start.clone()),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(&e, SamplingError::MissingInput { input, .. } if input.contains("keyframe")),
        "{e}"
    );

    let ended = GenerationRequest::new(2.0)
        .end_frame(1.0)
        .validate()
        .unwrap();
    let e = SectionSampler::new(&ended)
        .steps(1)
        .run(
            &mut d,
            &SectionInputs::new(start.clone()),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("end frame"), "{e}");

    let prompted = GenerationRequest::new(2.0)
        .section_prompt(1, "x")
        .validate()
        .unwrap();
    let e = SectionSampler::new(&prompted)
        .steps(1)
        .run(
            &mut d,
            &SectionInputs::new(start.clone()),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("section prompt 1"), "{e}");

    // Real CFG needs the negative prompt.
    let plain = GenerationRequest::new(1.0).validate().unwrap();
    let c = framepack_sampling::Conditions::new(prompt(5, 10), tiny_conditions_siglip());
    let mut d = FlowDenoiser::new(
        FramePackModel::new(&transformer, c),
        Guidance::default().cfg(2.0),
    );
    let e = SectionSampler::new(&plain)
        .steps(1)
        .run(
            &mut d,
            &SectionInputs::new(start),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("negative prompt"), "{e}");
}

fn tiny_conditions_siglip() -> Tensor<B, 3> {
    let c = framepack_models::transformer::TransformerConfig::tiny();
    Tensor::from_data(
        burn::tensor::TensorData::new(filler(6 * c.image_proj_dim, 99), [1, 6, c.image_proj_dim]),
        (&device(), DType::F32),
    )
}

#[test]
fn real_cfg_makes_two_calls_per_step() {
    let plan = plan(1.0, Mode::Inverted);
    let transformer = tiny_transformer(DType::F32);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let model = Recording {
        inner: FramePackModel::new(&transformer, tiny_conditions()),
        seen: seen.clone(),
    };
    let mut d = FlowDenoiser::new(model, Guidance::default().cfg(2.5).rescale(0.5));
    let out = SectionSampler::new(&plan)
        .steps(3)
        .run(
            &mut d,
            &SectionInputs::new(latent(H, W, 1)),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    assert!(out.is_complete());
    assert_eq!(seen.borrow()[0].calls, 6);
}

#[test]
fn f1_image_influence_starts_from_the_anchor_on_a_scaled_schedule() {
    let plan = GenerationRequest::new(1.0)
        .mode(Mode::F1)
        .image_influence(1.02)
        .validate()
        .unwrap();
    let start = latent(H, W, 6);
    let r = run(&plan, &SectionInputs::new(start.clone()), 2, None);
    let s0 = (1.0f64 / 1.02) as f32;
    let noise = framepack_sampling::NoiseGenerator::new(31337).randn(16 * 9 * H * W);
    let anchor = values(start.expand([1, 16, 9, H, W]));
    let want: Vec<f32> = anchor
        .iter()
        .zip(&noise)
        .map(|(a, n)| half::bf16::from_f32(a * (1.0 - s0) + n * s0).to_f32())
        .collect();
    assert_eq!(r.seen[0].first_x.as_ref().unwrap(), &want);
    // Without influence the window starts from pure noise.
    let plain = run(&plan_f1(), &SectionInputs::new(latent(H, W, 6)), 2, None);
    let pure: Vec<f32> = noise
        .iter()
        .map(|n| half::bf16::from_f32(*n).to_f32())
        .collect();
    assert_eq!(plain.seen[0].first_x.as_ref().unwrap(), &pure);
}

fn plan_f1() -> SectionPlan {
    plan(1.0, Mode::F1)
}

#[test]
fn one_frame_kisekaeichi_places_the_reference() {
    let kisekae = Kisekae::default();
    let plan = GenerationRequest::one_frame()
        .kisekae(kisekae)
        .validate()
        .unwrap();
    let start = latent(H, W, 7);
    let reference = latent(H, W, 8);
    let mask = Tensor::<B, 2>::from_data([[1.0f32, 0.0], [0.0, 1.0]], &device());
    let inputs = SectionInputs::new(start.clone())
        .reference(reference.clone())
        .masks(None, Some(mask.clone()));
    let r = run(&plan, &inputs, 3, None);
    check_layouts(&plan, &r, 3);
    let s = &r.seen[0];
    assert_eq!(s.latent_indices, vec![1]);
    assert_eq!(s.clean_indices, vec![0, 13]);
    assert_eq!(s.clean_2x.as_deref(), Some(&[12][..]));
    assert_eq!(s.clean_4x.as_deref(), Some(&[28][..]));
    assert_eq!(frame(&s.clean, 2, 0), values(start));
    let masked = values(reference * mask.reshape([1, 1, 1, H, W]));
    assert_eq!(frame(&s.clean, 2, 1), masked);
    assert_eq!(r.output.history.generated(), 1);
    assert_eq!(r.output.history.valid().dims(), [1, 16, 1, H, W]);

    // Without a reference: the sampled frame sits at W − 1 and clean_latents is the anchor only.
    let plain = GenerationRequest::one_frame().window(9).validate().unwrap();
    let r = run(&plain, &SectionInputs::new(latent(H, W, 7)), 2, None);
    check_layouts(&plain, &r, 2);
    assert_eq!(r.seen[0].latent_indices, vec![8]);
    assert_eq!(r.seen[0].clean_indices, vec![0]);
}

#[test]
fn cancellation_returns_the_finished_windows() {
    let plan = plan(5.0, Mode::Inverted);
    // Cancel during the second window's second step.
    let r = run(&plan, &SectionInputs::new(latent(H, W, 1)), 3, Some(5));
    assert_eq!(
        r.output.completion,
        Completion::Cancelled {
            section: 1,
            steps_done: 2
        }
    );
    assert!(!r.output.is_complete());
    assert_eq!(r.output.completed_sections, 1);
    assert_eq!(r.output.history.generated(), 9);
    assert_eq!(r.section_latents.len(), 1);
    assert_eq!(r.steps_reported, 5);

    // Cancelled before it starts: nothing sampled.
    let transformer = tiny_transformer(DType::F32);
    let mut d = FlowDenoiser::new(
        FramePackModel::new(&transformer, tiny_conditions()),
        Guidance::default(),
    );
    let token = CancelToken::new();
    token.cancel();
    let out = SectionSampler::new(&plan)
        .steps(3)
        .run(&mut d, &SectionInputs::new(latent(H, W, 1)), &token, |_| {
            panic!("no events")
        })
        .unwrap();
    assert_eq!(
        out.completion,
        Completion::Cancelled {
            section: 0,
            steps_done: 0
        }
    );
    assert_eq!(out.history.generated(), 0);
}

#[test]
fn history_round_trips_through_safetensors_and_extends() {
    let plan = plan(2.0, Mode::F1);
    let r = run(&plan, &SectionInputs::new(latent(H, W, 9)), 2, None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.safetensors");
    let sampler = SectionSampler::new(&plan).steps(2).seed(31337);
    let mut params = sampler.params(&Guidance::default(), &r.output);
    params.extra.insert("prompt".into(), "a cat".into());
    r.output.history.save(&path, &params).unwrap();
    let (loaded, back): (History<B>, GenerationParams) = History::load(&path, &device()).unwrap();
    assert_eq!(back, params);
    assert_eq!(
        (back.mode.as_str(), back.seed, back.steps, back.sections),
        ("f1", 31337, 2, 2)
    );
    assert_eq!(loaded.generated(), r.output.history.generated());
    assert_eq!(loaded.plan(), r.output.history.plan());
    assert_eq!(
        values(loaded.latents().clone()),
        values(r.output.history.latents().clone())
    );

    // Extend the loaded F1 video by one more window.
    let more = super_plan_f1(1.0);
    let transformer = tiny_transformer(DType::F32);
    let mut d = FlowDenoiser::new(
        FramePackModel::new(&transformer, tiny_conditions()),
        Guidance::default(),
    );
    let out = SectionSampler::new(&more)
        .steps(2)
        .seed(7)
        .run_from(
            loaded,
            &mut d,
            &SectionInputs::new(latent(H, W, 9)),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    assert_eq!(out.history.generated(), 19 + 9);
    // The old frames are untouched at the front of the valid part.
    let old = values(r.output.history.valid());
    let new = values(out.history.valid());
    for f in 0..19 {
        assert_eq!(frame(&new, 28, f), frame(&old, 19, f));
    }

    // A mode mismatch and malformed files are errors naming what is wrong.
    let inverted = plan_inverted(1.0);
    let (loaded, _) = History::<B>::load(&path, &device()).unwrap();
    let e = SectionSampler::new(&inverted)
        .run_from(
            loaded,
            &mut d,
            &SectionInputs::new(latent(H, W, 9)),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("history"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    assert!(matches!(
        History::<B>::load(&junk, &device()),
        Err(SamplingError::BadHistoryFile { .. })
    ));
    let missing = dir.path().join("missing.safetensors");
    assert!(matches!(
        History::<B>::load(&missing, &device()),
        Err(SamplingError::Io { .. })
    ));
}

fn super_plan_f1(seconds: f64) -> SectionPlan {
    plan(seconds, Mode::F1)
}

fn plan_inverted(seconds: f64) -> SectionPlan {
    plan(seconds, Mode::Inverted)
}

#[test]
fn a_stand_in_denoiser_drives_the_loop_without_a_transformer() {
    // The loop only needs the Denoiser trait: the Gaussian stand-in samples a whole job.
    let mut flow = GaussianFlow::new(vec![0.25; 16], vec![0.0; 16]);
    flow.std = 0.0;
    let plan = plan(5.0, Mode::Inverted);
    let out = SectionSampler::new(&plan)
        .steps(4)
        .run(
            &mut flow,
            &SectionInputs::new(latent(H, W, 1)),
            &CancelToken::new(),
            |_| {},
        )
        .unwrap();
    assert_eq!(flow.calls, 16);
    // Data with zero variance: every generated latent is the mean.
    let valid = values(out.history.valid());
    let n = plan.total_latent_frames() as usize;
    for f in 1..n {
        assert!(frame(&valid, n, f).iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
    let _: &dyn Denoiser<B> = &flow;
}
