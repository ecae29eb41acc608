//! One job on a loaded [`ModelSet`]: the stages of FramePack's worker, each a function.
//!
//! 1. **text**: the prompts (main, negative when `cfg != 1`, per section) through LLaMA and
//!    CLIP;
//! 2. **images**: the start image (and end frame, keyframes, kisekae reference) resized to the
//!    bucket, VAE-encoded, and the start image SigLIP-encoded;
//! 3. **sampling**: the sections (UniPC, the step cache, the inverted/F1/one-frame loop), each
//!    decoded as it finishes and cross-faded into the clip in fp16;
//! 4. **record**: the frames, the latent history and every parameter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::tensor::{DType, Tensor};
use framepack_core::blend::LatentSpan;
use framepack_models::vae::{HunyuanVideoVae, VaeTiling};
use framepack_models::FramePackBackend;
use framepack_sampling::{
    CacheMode, CancelToken, Completion, Conditions, Event, FlowDenoiser, FramePackModel,
    PromptEmbedding, SectionEvent, SectionInputs, SectionSampler, Shift, TeaCache,
};
use half::f16;

use super::models::{Family, ModelSet, Source};
use super::output::Video;
use super::progress::{Progress, SectionProgress, Stage, StepProgress};
use crate::error::{Error, Result};
use crate::frames::Clip;
use crate::input::InputImage;
use crate::kisekae;
use crate::record::{
    ModelKind, ModelsRecord, OutputsRecord, ResultRecord, RunRecord, RuntimeRecord, TimingRecord,
    RECORD_FORMAT, RECORD_VERSION,
};
use crate::request::{JobPlan, PromptRole, Request};
use crate::tiny::Scale;
use crate::video::FPS;
use crate::DeviceChoice;

/// The encoded prompts of a job.
struct Prompts<B: FramePackBackend> {
    positive: PromptEmbedding<B>,
    negative: Option<PromptEmbedding<B>>,
    sections: BTreeMap<u32, PromptEmbedding<B>>,
}

/// Where the job runs, for its record.
pub(crate) struct Place {
    pub(crate) device: DeviceChoice,
    pub(crate) device_auto: bool,
}

/// Runs `request` on `models`, reporting to `on_progress`, stopping at the next step boundary
/// once `cancel` is cancelled.
pub(crate) fn run<B: FramePackBackend>(
    models: &mut ModelSet<B>,
    place: &Place,
    request: &Request,
    cancel: &CancelToken,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<Video> {
    let started = Instant::now();
    let plan = request.plan()?;
    let cancelled = || Error::Cancelled {
        section: 0,
        steps_done: 0,
    };
    let loras = models.prepare_transformer(Family::of(plan.sections.mode()), &request.loras)?;
    let mut warnings = Vec::new();
    let mut timing = TimingRecord::default();

    on_progress(Progress::Stage(Stage::Text));
    let t = Instant::now();
    let prompts = encode_prompts(models, request, &plan, &mut warnings)?;
    for w in &warnings {
        on_progress(Progress::Warning(w));
    }
    models.release_encoders();
    timing.text_s = t.elapsed().as_secs_f64();
    if cancel.is_cancelled() {
        return Err(cancelled());
    }

    on_progress(Progress::Stage(Stage::Images));
    let t = Instant::now();
    let (inputs, siglip) = encode_images(models, request, &plan)?;
    models.release_encoders();
    timing.images_s = t.elapsed().as_secs_f64();
    if cancel.is_cancelled() {
        return Err(cancelled());
    }

    let mut conditions = Conditions::new(prompts.positive, siglip);
    for (s, emb) in prompts.sections {
        conditions = conditions.section_prompt(s, emb);
    }
    if let Some(n) = prompts.negative {
        conditions = conditions.negative(n);
    }
    let sampled = sample(
        models,
        request,
        &plan,
        conditions,
        &inputs,
        cancel,
        &mut on_progress,
    )?;
    timing.decode_s = sampled.decode_time.as_secs_f64();
    timing.sampling_s = sampled.sampling_time.as_secs_f64();

    let frames = sampled.clip.to_frames();
    if frames.len() != plan.frames() as usize {
        return Err(Error::TensorData {
            what: "decoded video",
            reason: format!(
                "{} frames decoded, the plan has {}",
                frames.len(),
                plan.frames()
            ),
        });
    }
    timing.total_s = started.elapsed().as_secs_f64();
    let mut recorded = request.clone();
    recorded.loras = loras;
    let latents = sampled.history.to_host()?;
    let mut record = record(models, place, &recorded, &plan, latents.generated(), timing);
    record.warnings = warnings;
    record.result.model_calls = sampled.stats.calls as u64;
    record.result.model_calls_skipped = sampled.stats.skipped as u64;
    record.result.magcache_ratios = sampled.magcache_ratios;
    Ok(Video {
        frames,
        latents,
        record,
    })
}

/// Stage 1: every prompt the request needs, encoded (or read from the prompt cache).
fn encode_prompts<B: FramePackBackend>(
    models: &mut ModelSet<B>,
    request: &Request,
    plan: &JobPlan,
    warnings: &mut Vec<String>,
) -> Result<Prompts<B>> {
    let mut positive = None;
    let mut negative = None;
    let mut sections = BTreeMap::new();
    for (role, text) in request.prompts_to_encode(plan) {
        let which = role.to_string();
        let embedding = models.encode_prompt(request, text, &which, warnings)?;
        match role {
            PromptRole::Main => positive = Some(embedding),
            PromptRole::Negative => negative = Some(embedding),
            PromptRole::Section(s) => {
                sections.insert(s, embedding);
            }
        }
    }
    Ok(Prompts {
        positive: positive.ok_or_else(|| Error::invalid("prompt", "not encoded"))?,
        negative,
        sections,
    })
}

/// Stage 2: the images as latents (start, end frame, keyframes, kisekae reference and masks)
/// and the start image's SigLIP features.
fn encode_images<B: FramePackBackend>(
    models: &mut ModelSet<B>,
    request: &Request,
    plan: &JobPlan,
) -> Result<(SectionInputs<B>, Tensor<B, 3>)> {
    let bucket = plan.bucket;
    let (bw, bh) = (bucket.width as usize, bucket.height as usize);
    let latent = |models: &ModelSet<B>, image: &InputImage| {
        let rgb = image.to_bucket(bucket)?;
        models.encode_latent(&rgb, bw, bh)
    };
    let start_rgb = request.image.to_bucket(bucket)?;
    let start_latent = models.encode_latent(&start_rgb, bw, bh)?;
    let siglip = models.encode_siglip(&start_rgb, bw, bh)?;
    let mut inputs = SectionInputs::new(start_latent);
    if let Some(end) = &request.end_frame {
        inputs = inputs.end_frame(latent(models, &end.image)?);
    }
    for (&section, image) in &request.keyframes {
        inputs = inputs.keyframe(section, latent(models, image)?);
    }
    if let Some(k) = &request.kisekae {
        inputs = inputs.reference(latent(models, &k.image)?);
        let grid = [bh / 8, bw / 8];
        let mask = |m: &Option<InputImage>| {
            m.as_ref()
                .map(|m| kisekae::mask_tensor::<B>(m, grid, &models.device))
                .transpose()
        };
        inputs = inputs.masks(mask(&k.input_mask)?, mask(&k.reference_mask)?);
    }
    Ok((inputs, siglip))
}

/// What the sampling stage hands back.
struct Sampled<B: FramePackBackend> {
    clip: Clip,
    history: framepack_sampling::History<B>,
    stats: framepack_sampling::CacheStats,
    magcache_ratios: Option<Vec<f64>>,
    sampling_time: Duration,
    decode_time: Duration,
}

/// Stage 3: the sections, each decoded and joined to the clip as soon as it is sampled.
fn sample<B: FramePackBackend>(
    models: &ModelSet<B>,
    request: &Request,
    plan: &JobPlan,
    conditions: Conditions<B>,
    inputs: &SectionInputs<B>,
    cancel: &CancelToken,
    on_progress: &mut impl FnMut(Progress<'_>),
) -> Result<Sampled<B>> {
    let sections = plan.sections.sections();
    on_progress(Progress::Stage(Stage::Sampling {
        sections,
        steps: request.steps,
    }));
    let t = Instant::now();
    let cache = match (request.teacache, &request.magcache) {
        (Some(threshold), _) => CacheMode::TeaCache(TeaCache::default().threshold(threshold)),
        (None, Some(m)) => CacheMode::MagCache(m.cache()),
        (None, None) => CacheMode::Off,
    };
    let model = FramePackModel::new(models.transformer()?, conditions).cache(cache);
    let mut denoiser = FlowDenoiser::new(model, request.guidance());
    let shift = request.shift.map_or(Shift::Auto, Shift::Fixed);
    let sampler = SectionSampler::new(&plan.sections)
        .steps(request.steps)
        .seed(request.seed)
        .shift(shift);
    let job_cancel = CancelToken::new();
    let vae = &models.vae;
    let (low_vram, device) = (models.memory.is_low_vram(), &models.device);
    // Resident mode decodes untiled, as the reference's high-VRAM mode, unless the free
    // memory is short of the decode's estimate: then with spatial tiles (same weights).
    let tiled_vae = if vae.tiling().use_tiling {
        None
    } else {
        let mut tiled = vae.clone();
        tiled.set_tiling(VaeTiling {
            use_tiling: true,
            ..vae.tiling().clone()
        })?;
        Some(tiled)
    };
    let mut clip = Clip::default();
    let mut failure: Option<Error> = None;
    let mut decode_time = Duration::ZERO;
    let output = sampler.run(&mut denoiser, inputs, &job_cancel, |event| {
        if cancel.is_cancelled() {
            job_cancel.cancel();
        }
        match event {
            Event::Step(s) => on_progress(Progress::Step(StepProgress {
                section: s.section,
                sections: s.sections,
                step: s.step,
                steps: s.steps,
                step_time: s.step_time,
                elapsed: s.elapsed,
                x0: s.x0,
            })),
            Event::Section(s) => {
                if failure.is_some() {
                    return;
                }
                let t = Instant::now();
                // The sampler's buffers (streamed blocks, activations) go back before the
                // decode's own.
                B::memory_cleanup(device);
                if let Err(e) = decode_section(vae, tiled_vae.as_ref(), device, &s, &mut clip) {
                    failure = Some(e);
                    job_cancel.cancel();
                    return;
                }
                decode_time += t.elapsed();
                if low_vram {
                    // The decode's buffers have this section's sizes: return them.
                    B::memory_cleanup(device);
                }
                on_progress(Progress::Section(SectionProgress {
                    section: s.window.index,
                    sections: s.sections,
                    frames: clip.len(),
                    section_time: s.section_time + t.elapsed(),
                    elapsed: s.elapsed + t.elapsed(),
                    clip: &clip,
                }));
                if cancel.is_cancelled() {
                    job_cancel.cancel();
                }
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Completion::Cancelled {
        section,
        steps_done,
    } = output.completion
    {
        return Err(Error::Cancelled {
            section,
            steps_done,
        });
    }
    Ok(Sampled {
        clip,
        history: output.history,
        stats: denoiser.model().stats(),
        magcache_ratios: denoiser.model().step_cache().calibrated_ratios(),
        sampling_time: t.elapsed() - decode_time,
        decode_time,
    })
}

/// Stage 4: the run record of a finished job (the result's counters are filled by the caller).
fn record<B: FramePackBackend>(
    models: &ModelSet<B>,
    place: &Place,
    request: &Request,
    plan: &JobPlan,
    latent_frames: u32,
    timing: TimingRecord,
) -> RunRecord {
    let models_record = match &models.source {
        Source::Random { seed, scale } => ModelsRecord {
            kind: match scale {
                Scale::Tiny => ModelKind::TinyRandom,
                Scale::Full => ModelKind::FullSizeRandom,
            },
            seed: Some(*seed),
            revisions: BTreeMap::new(),
        },
        Source::Pretrained(_) => ModelsRecord {
            kind: ModelKind::Framepack,
            seed: None,
            revisions: models.revisions.clone(),
        },
    };
    RunRecord {
        format: RECORD_FORMAT.into(),
        version: RECORD_VERSION,
        framepack_rs: env!("CARGO_PKG_VERSION").into(),
        request: request.clone(),
        models: models_record,
        runtime: RuntimeRecord {
            backend: B::name(&models.device),
            device: place.device.to_string(),
            device_auto: place.device_auto,
            dtypes: models.dtypes,
            block_weights: models.block_weights,
            memory: models.memory,
            lora_mode: models.lora_mode,
            kernels: models.runtime.clone(),
        },
        result: ResultRecord {
            size: [plan.bucket.height, plan.bucket.width],
            sections: plan.sections.sections(),
            latent_frames,
            frames: plan.frames(),
            fps: FPS,
            duration_s: plan.duration(),
            model_calls: 0,
            model_calls_skipped: 0,
            magcache_ratios: None,
        },
        timing,
        warnings: Vec::new(),
        outputs: OutputsRecord::default(),
    }
}

/// Decodes the latents a finished section names (spec §2.5) and joins them to the clip; with
/// `tiled` (the VAE with spatial tiling) when the device's free memory is below `vae`'s
/// estimate for an untiled decode.
fn decode_section<B: FramePackBackend>(
    vae: &HunyuanVideoVae<B>,
    tiled: Option<&HunyuanVideoVae<B>>,
    device: &B::Device,
    event: &SectionEvent<'_, B>,
    clip: &mut Clip,
) -> Result<()> {
    let d = event.window.decode;
    let valid = event.history.valid();
    let total = valid.dims()[2];
    let n = d.latents as usize;
    if n > total {
        return Err(Error::TensorData {
            what: "section latents",
            reason: format!("the section decodes {n} latents, the history has {total}"),
        });
    }
    let latents = match d.span {
        LatentSpan::All => valid,
        LatentSpan::Front(_) => valid.narrow(2, 0, n),
        LatentSpan::Back(_) => valid.narrow(2, total - n, n),
    };
    let vae = match (tiled, B::device_memory(device)) {
        (Some(tiled), Some(memory)) if memory.free < vae.untiled_decode_bytes(latents.dims()) => {
            tiled
        }
        _ => vae,
    };
    let pixels = vae.decode(vae.unscale_latents(latents))?;
    let dims = pixels.dims();
    let values: Vec<f16> = if pixels.dtype() == DType::F16 {
        pixels.into_data().into_vec::<f16>()
    } else {
        pixels
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map(|v| v.into_iter().map(f16::from_f32).collect())
    }
    .map_err(|e| Error::TensorData {
        what: "decoded pixels",
        reason: format!("{e:?}"),
    })?;
    let current = Clip::from_decoded(values, dims)?;
    if current.len() != d.decoded_frames as usize {
        return Err(Error::TensorData {
            what: "decoded pixels",
            reason: format!(
                "{} frames decoded from {n} latents, expected {}",
                current.len(),
                d.decoded_frames
            ),
        });
    }
    clip.join(current, d.join, d.overlap as usize)
}
