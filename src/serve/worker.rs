//! The worker: one thread that owns the [`Pipeline`] (models loaded once, kept warm between
//! jobs), takes queued jobs in order, runs them, and writes their outputs into the job's
//! folder. Progress goes to the queue (for polling clients and restarts) and to the event
//! channel (for server-sent events).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use super::store::{JobState, JobStore, Progress as StoredProgress};
use crate::pipeline::{Outputs, Pipeline, Progress, Stage};
use crate::{CancelToken, Request};

/// A job's outputs, by the names clients use (never paths).
pub const OUTPUTS: [&str; 5] = [
    "video.mp4",
    "image.png",
    "preview.png",
    "record.json",
    "latents.safetensors",
];

/// What a job reports while it runs (sent as server-sent events, `data:` JSON).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job's state changed.
    State {
        /// The job.
        job: String,
        /// The new state.
        state: JobState,
        /// Why it failed.
        error: Option<String>,
    },
    /// A stage began (`text`, `images`, `sampling`).
    Stage {
        /// The job.
        job: String,
        /// The stage.
        stage: String,
    },
    /// A sampler step finished.
    Step {
        /// The job.
        job: String,
        /// Section (sampling order) and sections.
        section: u32,
        /// Sections in the job.
        sections: u32,
        /// Step (1-based) and steps per section.
        step: usize,
        /// Steps per section.
        steps: usize,
        /// Seconds left, estimated from the pace so far.
        eta_s: f64,
    },
    /// A section finished; its preview is at `preview`.
    Section {
        /// The job.
        job: String,
        /// Section (sampling order).
        section: u32,
        /// Sections in the job.
        sections: u32,
        /// Frames decoded so far.
        frames: usize,
        /// The preview's URL (relative to the server).
        preview: String,
    },
}

impl JobEvent {
    /// The job the event is about.
    pub fn job(&self) -> &str {
        match self {
            Self::State { job, .. }
            | Self::Stage { job, .. }
            | Self::Step { job, .. }
            | Self::Section { job, .. } => job,
        }
    }
}

/// What the HTTP side and the worker share.
pub struct Shared {
    pub store: JobStore,
    /// The folder holding `jobs/<id>/`.
    pub dir: PathBuf,
    pub events: broadcast::Sender<JobEvent>,
    /// Cancel tokens of the running job(s).
    pub running: Mutex<HashMap<String, CancelToken>>,
    /// Wakes the worker when a job is queued.
    pub wake: (Mutex<bool>, Condvar),
}

impl Shared {
    /// The folder of job `id` (ids are checked by the API before they reach a path).
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join("jobs").join(id)
    }

    /// Tells the worker there is work.
    pub fn notify(&self) {
        let (lock, condvar) = &self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        condvar.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let (lock, condvar) = &self.wake;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut woken, _) = condvar
            .wait_timeout_while(guard, timeout, |w| !*w)
            .unwrap_or_else(|e| e.into_inner());
        *woken = false;
    }

    fn send(&self, event: JobEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// Runs queued jobs until the process ends.
pub fn run(shared: Arc<Shared>, mut pipeline: Pipeline) {
    loop {
        let next = match shared.store.claim() {
            Ok(next) => next,
            Err(e) => {
                eprintln!("worker: {e}");
                shared.wait(Duration::from_secs(1));
                continue;
            }
        };
        let Some((id, request_json)) = next else {
            shared.wait(Duration::from_secs(1));
            continue;
        };
        let cancel = CancelToken::new();
        shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), cancel.clone());
        shared.send(JobEvent::State {
            job: id.clone(),
            state: JobState::Running,
            error: None,
        });
        let outcome = run_job(&shared, &mut pipeline, &id, &request_json, &cancel);
        shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let (state, error) = match outcome {
            Ok(()) => (JobState::Done, None),
            Err(crate::Error::Cancelled { .. }) => (JobState::Cancelled, None),
            Err(e) => (JobState::Failed, Some(e.to_string())),
        };
        if let Err(e) = shared.store.finish(&id, state, error.as_deref()) {
            eprintln!("worker: {e}");
        }
        shared.send(JobEvent::State {
            job: id,
            state,
            error,
        });
    }
}

/// The outputs of a job in its folder, by the names of [`OUTPUTS`] (FramePack's default
/// quality).
pub fn outputs_in(dir: &Path, one_frame: bool) -> Outputs {
    let mut outputs = Outputs::beside(dir.join(if one_frame { "image.png" } else { "video.mp4" }));
    outputs.record = Some(dir.join("record.json"));
    outputs.latents = Some(dir.join("latents.safetensors"));
    outputs
}

fn run_job(
    shared: &Shared,
    pipeline: &mut Pipeline,
    id: &str,
    request_json: &str,
    cancel: &CancelToken,
) -> crate::Result<()> {
    let dir = shared.job_dir(id);
    let mut request: Request = serde_json::from_str(request_json).map_err(|e| {
        crate::Error::Serve(format!("job {id}: its stored request does not parse: {e}"))
    })?;
    // The uploaded images are read back from the job's folder (and checked against their
    // hashes): a job queued before a restart runs exactly as submitted.
    request.reload_images()?;
    let plan = request.plan()?;
    let one_frame = plan.sections.mode() == crate::Mode::OneFrame;
    let started = Instant::now();
    let mut sampling_started: Option<Instant> = None;
    let mut stored = StoredProgress {
        sections: plan.sections.sections(),
        ..Default::default()
    };
    let mut last_store = Instant::now() - Duration::from_secs(1);
    let preview = dir.join("preview.png");
    let mut preview_error = None;
    let video = pipeline.generate_cancellable(&request, cancel, |p| match p {
        Progress::Stage(stage) => {
            let name = match stage {
                Stage::Text => "text",
                Stage::Images => "images",
                Stage::Sampling { .. } => {
                    sampling_started = Some(Instant::now());
                    "sampling"
                }
            };
            shared.send(JobEvent::Stage {
                job: id.to_string(),
                stage: name.into(),
            });
        }
        Progress::Step(s) => {
            let done = f64::from(s.section) * s.steps as f64 + s.step as f64 + 1.0;
            let total = f64::from(s.sections) * s.steps as f64;
            let elapsed = sampling_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            stored.step = s.step as u32 + 1;
            stored.steps = s.steps as u32;
            if last_store.elapsed() > Duration::from_millis(250) {
                last_store = Instant::now();
                let _ = shared.store.progress(id, stored);
            }
            shared.send(JobEvent::Step {
                job: id.to_string(),
                section: s.section,
                sections: s.sections,
                step: s.step + 1,
                steps: s.steps,
                eta_s: elapsed / done * (total - done),
            });
        }
        Progress::Section(s) => {
            stored.sections_done = s.section + 1;
            let _ = shared.store.progress(id, stored);
            if let Err(e) = crate::video::write_png(&preview, &s.preview()) {
                preview_error.get_or_insert(e);
            }
            shared.send(JobEvent::Section {
                job: id.to_string(),
                section: s.section,
                sections: s.sections,
                frames: s.frames,
                preview: format!("/api/jobs/{id}/outputs/preview.png"),
            });
        }
        Progress::Warning(w) => eprintln!("job {id}: warning: {w}"),
    })?;
    if let Some(e) = preview_error {
        eprintln!("job {id}: could not write the preview: {e}");
    }
    video.save(&outputs_in(&dir, one_frame))?;
    eprintln!(
        "job {id}: {} frames in {:.1} s",
        video.frames.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
