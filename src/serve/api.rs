//! The HTTP API: JSON in and out, errors as 4xx with a JSON body naming the field, the
//! OpenAPI document generated from these types at `/api/openapi.json`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{OpenApi, ToSchema};

use super::store::{JobState, JobView};
use super::worker::{JobEvent, Shared, OUTPUTS};
use super::Limits;
use crate::{Flavor, InputImage, Mode, Request, Resolution};

/// What the handlers share.
pub struct AppState {
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub lora_dir: Option<PathBuf>,
}

pub type App = Arc<AppState>;

/// An error answer: the status, the field at fault (when there is one) and a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, one line.
    pub error: String,
    /// The request field or part at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip)]
    status: StatusCode,
}

impl ApiError {
    fn new(status: StatusCode, field: Option<&str>, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: field.map(str::to_string),
            status,
        }
    }

    pub(crate) fn bad(field: &str, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(field), error)
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, format!("{what} not found"))
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, error.to_string())
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            None,
            "missing or wrong token (send `Authorization: Bearer TOKEN` or `?token=TOKEN`)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

/// A request error from the library: a bad request unless it is the server's own failure.
fn request_error(e: crate::Error) -> ApiError {
    use crate::Error as E;
    let field = match &e {
        E::InvalidArgument { argument, .. } => Some(argument.to_string()),
        E::PromptTooLong { .. } => Some("prompt".into()),
        E::ImageFormat { .. } | E::InvalidImage { .. } => Some("image".into()),
        E::Plan(_) => Some("request".into()),
        _ => None,
    };
    match field {
        Some(field) => ApiError::bad(&field, e.to_string()),
        None => ApiError::internal(e),
    }
}

/// A job's options, the JSON part `request` of a submission. Every field but `prompt` is
/// optional: a missing one takes FramePack's default (as `framepack generate` does).
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// What happens in the video.
    pub prompt: String,
    /// The negative prompt (used when `cfg` is not 1).
    pub negative_prompt: Option<String>,
    /// Prompts per section (sampling order: in inverted mode section 0 is the end).
    #[serde(default)]
    pub section_prompts: BTreeMap<u32, String>,
    /// Length in seconds (default 5).
    pub seconds: Option<f64>,
    /// Seed (default 31337).
    pub seed: Option<u64>,
    /// Sampler steps per section (default 25).
    pub steps: Option<usize>,
    /// Real CFG scale (default 1).
    pub cfg: Option<f64>,
    /// Distilled guidance (default 10).
    pub gs: Option<f64>,
    /// Guidance rescale (default 0).
    pub rs: Option<f64>,
    /// TeaCache threshold; `0` turns it off (default 0.15).
    pub teacache: Option<f64>,
    /// `inverted` (default), `f1` or `one-frame`.
    #[schema(value_type = Option<String>)]
    pub mode: Option<Mode>,
    /// A bucket base (`640`) or an exact `HEIGHTxWIDTH`.
    pub resolution: Option<String>,
    /// Section length in seconds: `1` (default) or `0.5` (eichi's short sections).
    pub section_length: Option<f64>,
    /// `framepack` (default) or `eichi`.
    #[schema(value_type = Option<String>)]
    pub flavor: Option<Flavor>,
    /// eichi's constant padding (inverted mode).
    pub padding: Option<f64>,
    /// eichi's image influence.
    pub image_influence: Option<f64>,
    /// A fixed shift instead of the automatic one.
    pub shift: Option<f64>,
    /// The end frame's strength (with an `end_image` part; default 1).
    pub end_strength: Option<f64>,
    /// LoRAs by file name in the server's LoRA folder.
    #[serde(default)]
    pub loras: Vec<LoraSpec>,
    /// Keep the first 256 tokens of a longer prompt instead of refusing it.
    #[serde(default)]
    pub allow_prompt_truncation: bool,
}

/// A LoRA of the server's folder and its strength.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// The file name in the LoRA folder (`name.safetensors`).
    pub name: String,
    /// Strength (default 1).
    pub strength: Option<f64>,
}

/// The answer to a submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    /// The new job's id.
    pub id: String,
    /// Frames the video will have.
    pub frames: u32,
    /// Sections it samples.
    pub sections: u32,
}

/// A re-run's changes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rerun {
    /// Another seed.
    pub seed: Option<u64>,
    /// Another prompt.
    pub prompt: Option<String>,
}

/// Which frames each section adds.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    /// `[height, width]` of the generation.
    pub size: [u32; 2],
    /// Frames of the video.
    pub frames: u32,
    /// Seconds at 30 fps.
    pub duration_s: f64,
    /// Per section (sampling order): the frames it adds, `[start, end)`.
    pub sections: Vec<[u32; 2]>,
}

/// The query of `/api/plan`.
#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
pub struct PlanQuery {
    /// The start image's width and height in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Seconds (default 5).
    pub seconds: Option<f64>,
    /// `inverted`, `f1`, `one-frame`.
    pub mode: Option<String>,
    /// `640` or `HEIGHTxWIDTH`.
    pub resolution: Option<String>,
    /// `1` or `0.5`.
    pub section_length: Option<f64>,
}

/// The job ids of this server: letters, digits and `_` (never a path).
fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found("job"))
    }
}

/// A new job id: the UTC time (as FramePack's) and a counter.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}_{:03}_{}",
        now.as_secs(),
        now.subsec_millis(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[utoipa::path(get, path = "/api/jobs", responses((status = 200, body = [JobView])))]
pub async fn list_jobs(State(app): State<App>) -> Result<Json<Vec<JobView>>, ApiError> {
    app.shared
        .store
        .list()
        .map(Json)
        .map_err(ApiError::internal)
}

#[utoipa::path(get, path = "/api/jobs/{id}",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, body = JobView), (status = 404, body = ApiError)))]
pub async fn get_job(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobView>, ApiError> {
    check_id(&id)?;
    app.shared
        .store
        .get(&id)
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job"))
}

/// Submits a job: multipart with a `request` part (JSON, [`JobSpec`]), an `image` part (the
/// start image), optionally `end_image` and `keyframe_N` parts (a keyframe for section N).
#[utoipa::path(post, path = "/api/jobs",
    request_body(content = String, content_type = "multipart/form-data",
        description = "`request`: JobSpec JSON; `image`: the start image; optional `end_image`, `keyframe_N`"),
    responses((status = 201, body = Submitted), (status = 400, body = ApiError),
        (status = 413, body = ApiError), (status = 429, body = ApiError)))]
pub async fn submit(
    State(app): State<App>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::bad("multipart", e.body_text()))?;
    let queued = app.shared.store.queued().map_err(ApiError::internal)?;
    if queued >= app.limits.max_queued {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            format!(
                "{queued} jobs are queued, the most this server takes; try again when some have run"
            ),
        ));
    }
    let mut spec: Option<JobSpec> = None;
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad("multipart", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::new(e.status(), Some(&name), e.body_text()))?;
        if name == "request" {
            let parsed = serde_json::from_slice::<JobSpec>(&bytes)
                .map_err(|e| ApiError::bad("request", format!("not a valid job: {e}")))?;
            spec = Some(parsed);
        } else if name == "image" || name == "end_image" || keyframe_section(&name).is_some() {
            if images.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad(&name, "given twice"));
            }
            images.push((name, bytes.to_vec()));
        } else {
            return Err(ApiError::bad(
                &name,
                "unknown part (expected request, image, end_image, keyframe_N)",
            ));
        }
    }
    let spec = spec.ok_or_else(|| ApiError::bad("request", "missing (a JSON part)"))?;
    if !images.iter().any(|(n, _)| n == "image") {
        return Err(ApiError::bad("image", "missing (the start image)"));
    }
    let id = new_id();
    let app2 = app.clone();
    let id2 = id.clone();
    // Decoding images and writing files is blocking work.
    let submitted = tokio::task::spawn_blocking(move || create_job(&app2, &id2, spec, images))
        .await
        .map_err(ApiError::internal)?;
    if submitted.is_err() {
        let _ = std::fs::remove_dir_all(app.shared.job_dir(&id));
    }
    let submitted = submitted?;
    app.shared.notify();
    Ok((StatusCode::CREATED, Json(submitted)))
}

fn keyframe_section(name: &str) -> Option<u32> {
    name.strip_prefix("keyframe_")?.parse().ok()
}

/// Checks the images and the options, writes the inputs into the job's folder, queues it.
fn create_job(
    app: &AppState,
    id: &str,
    spec: JobSpec,
    images: Vec<(String, Vec<u8>)>,
) -> Result<Submitted, ApiError> {
    let inputs = app.shared.job_dir(id).join("inputs");
    std::fs::create_dir_all(&inputs).map_err(ApiError::internal)?;
    let mut opened: BTreeMap<String, InputImage> = BTreeMap::new();
    for (name, bytes) in images {
        let path = inputs.join(format!(
            "{name}.{}",
            image_extension(&name, &bytes, &app.limits)?
        ));
        std::fs::write(&path, &bytes).map_err(ApiError::internal)?;
        let image = InputImage::open(&path).map_err(|e| ApiError::bad(&name, e.to_string()))?;
        opened.insert(name, image);
    }
    let start = opened
        .remove("image")
        .ok_or_else(|| ApiError::bad("image", "missing"))?;
    let request = build_request(app, spec, start, opened)?;
    let plan = request.plan().map_err(request_error)?;
    let json = serde_json::to_string(&request).map_err(ApiError::internal)?;
    app.shared
        .store
        .insert(id, request.prompt(), &json)
        .map_err(ApiError::internal)?;
    Ok(Submitted {
        id: id.to_string(),
        frames: plan.frames(),
        sections: plan.sections.sections(),
    })
}

/// The image's format from its bytes, after checking its pixel count from the header alone
/// (no decompression bombs).
fn image_extension(name: &str, bytes: &[u8], limits: &Limits) -> Result<&'static str, ApiError> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad(name, e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| ApiError::bad(name, "not an image (use PNG, JPEG or WebP)"))?;
    let extension = match format {
        image::ImageFormat::Png => "png",
        image::ImageFormat::Jpeg => "jpg",
        image::ImageFormat::WebP => "webp",
        other => {
            return Err(ApiError::bad(
                name,
                format!("{other:?} is not accepted (use PNG, JPEG or WebP)"),
            ))
        }
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::bad(name, e.to_string()))?;
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(name),
            format!(
                "{w}x{h} is more than the {} pixels this server accepts",
                limits.max_pixels
            ),
        ));
    }
    Ok(extension)
}

fn build_request(
    app: &AppState,
    spec: JobSpec,
    start: InputImage,
    mut images: BTreeMap<String, InputImage>,
) -> Result<Request, ApiError> {
    let bad_request = |e: crate::Error| request_error(e);
    let mut r = Request::new(start, spec.prompt);
    if let Some(v) = spec.negative_prompt {
        r = r.negative_prompt(v);
    }
    for (section, prompt) in spec.section_prompts {
        r = r.section_prompt(section, prompt);
    }
    if let Some(v) = spec.seconds {
        r = r.seconds(v);
    }
    if let Some(v) = spec.seed {
        r = r.seed(v);
    }
    if let Some(v) = spec.steps {
        r = r.steps(v);
    }
    if let Some(v) = spec.cfg {
        r = r.cfg(v);
    }
    if let Some(v) = spec.gs {
        r = r.gs(v);
    }
    if let Some(v) = spec.rs {
        r = r.rs(v);
    }
    if let Some(v) = spec.teacache {
        r = r.teacache((v > 0.0).then_some(v));
    }
    if let Some(v) = spec.mode {
        r = r.mode(v);
    }
    if let Some(v) = spec.resolution {
        let resolution: Resolution = v.parse().map_err(bad_request)?;
        r = r.resolution(resolution);
    }
    if let Some(v) = spec.section_length {
        r = r.window(section_window(v)?);
    }
    if let Some(v) = spec.flavor {
        r = r.flavor(v);
    }
    r = r
        .constant_padding(spec.padding)
        .image_influence(spec.image_influence)
        .shift(spec.shift)
        .allow_prompt_truncation(spec.allow_prompt_truncation);
    if let Some(end) = images.remove("end_image") {
        r = r.end_frame(end, spec.end_strength.unwrap_or(1.0));
    }
    for (name, image) in images {
        if let Some(section) = keyframe_section(&name) {
            r = r.keyframe(section, image);
        }
    }
    for lora in spec.loras {
        let path = lora_path(app, &lora.name)?;
        r = r.lora(path, lora.strength.unwrap_or(crate::DEFAULT_LORA_STRENGTH));
    }
    Ok(r)
}

/// The window of a section length in seconds: 1 (FramePack's window of 9 latents) or 0.5
/// (eichi's short sections); anything else is refused, for jobs and plans alike.
fn section_window(seconds: f64) -> Result<crate::WindowSize, ApiError> {
    if (seconds - 1.0).abs() < 1e-9 {
        Ok(crate::WindowSize::default())
    } else if (seconds - 0.5).abs() < 1e-9 {
        Ok(crate::WindowSize::HalfSecond)
    } else {
        Err(ApiError::bad(
            "section_length",
            format!("{seconds}: expected 1 or 0.5"),
        ))
    }
}

/// A LoRA file of the configured folder by name: clients never name server paths.
fn lora_path(app: &AppState, name: &str) -> Result<PathBuf, ApiError> {
    let dir = app
        .lora_dir
        .as_ref()
        .ok_or_else(|| ApiError::bad("loras", "this server has no LoRA folder (--lora-dir)"))?;
    let plain = Path::new(name).file_name().is_some_and(|f| f == name)
        && !name.starts_with('.')
        && name.ends_with(".safetensors");
    let path = dir.join(name);
    if !plain || !path.is_file() {
        return Err(ApiError::bad(
            "loras",
            format!("`{name}` is not a LoRA of this server (see /api/loras)"),
        ));
    }
    Ok(path)
}

#[utoipa::path(get, path = "/api/loras", responses((status = 200, body = [String])))]
pub async fn list_loras(State(app): State<App>) -> Json<Vec<String>> {
    let mut names: Vec<String> = app
        .lora_dir
        .as_ref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors") && !n.starts_with('.'))
        .collect();
    names.sort();
    Json(names)
}

#[utoipa::path(post, path = "/api/jobs/{id}/cancel",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, body = JobView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn cancel(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobView>, ApiError> {
    check_id(&id)?;
    let before = app
        .shared
        .store
        .cancel_queued(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    match before {
        JobState::Queued => {
            let _ = app.shared.events.send(JobEvent::State {
                job: id.clone(),
                state: JobState::Cancelled,
                error: None,
            });
        }
        JobState::Running => {
            if let Some(token) = app
                .shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
            {
                token.cancel();
            }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                None,
                format!("the job is {} already", state_name(other)),
            ))
        }
    }
    get_job(State(app), UrlPath(id)).await
}

fn state_name(state: JobState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[utoipa::path(delete, path = "/api/jobs/{id}",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_job(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let job = app
        .shared
        .store
        .get(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if !job.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            None,
            "cancel the job before deleting it",
        ));
    }
    app.shared.store.delete(&id).map_err(ApiError::internal)?;
    let _ = std::fs::remove_dir_all(app.shared.job_dir(&id));
    Ok(StatusCode::NO_CONTENT)
}

/// Queues the job again from its stored request, with the changes given (a new seed, a new
/// prompt); its input images are copied into the new job's folder.
#[utoipa::path(post, path = "/api/jobs/{id}/rerun",
    params(("id" = String, Path, description = "The job id")),
    request_body = Rerun,
    responses((status = 201, body = Submitted), (status = 404, body = ApiError)))]
pub async fn rerun(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    check_id(&id)?;
    let changes: Rerun = if body.iter().all(u8::is_ascii_whitespace) {
        Rerun::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad("rerun", format!("not a valid change: {e}")))?
    };
    let json = app
        .shared
        .store
        .request_json(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let new = new_id();
    let (app2, new2) = (app.clone(), new.clone());
    let submitted = tokio::task::spawn_blocking(move || -> Result<Submitted, ApiError> {
        let shared = &app2.shared;
        let (old_inputs, new_inputs) = (
            shared.job_dir(&id).join("inputs"),
            shared.job_dir(&new2).join("inputs"),
        );
        std::fs::create_dir_all(&new_inputs).map_err(ApiError::internal)?;
        for entry in std::fs::read_dir(&old_inputs).map_err(ApiError::internal)? {
            let entry = entry.map_err(ApiError::internal)?;
            std::fs::copy(entry.path(), new_inputs.join(entry.file_name()))
                .map_err(ApiError::internal)?;
        }
        // The stored request names its images by path: point them at the copies.
        let old = serde_json::to_string(&old_inputs).map_err(ApiError::internal)?;
        let moved = serde_json::to_string(&new_inputs).map_err(ApiError::internal)?;
        let json = json.replace(old.trim_matches('"'), moved.trim_matches('"'));
        let mut request: Request = serde_json::from_str(&json).map_err(ApiError::internal)?;
        request.reload_images().map_err(request_error)?;
        if let Some(seed) = changes.seed {
            request = request.seed(seed);
        }
        if let Some(prompt) = changes.prompt {
            request.prompt = prompt;
        }
        let plan = request.plan().map_err(request_error)?;
        let json = serde_json::to_string(&request).map_err(ApiError::internal)?;
        shared
            .store
            .insert(&new2, request.prompt(), &json)
            .map_err(ApiError::internal)?;
        Ok(Submitted {
            id: new2,
            frames: plan.frames(),
            sections: plan.sections.sections(),
        })
    })
    .await
    .map_err(ApiError::internal)??;
    app.shared.notify();
    Ok((StatusCode::CREATED, Json(submitted)))
}

/// Server-sent events of one job: first its current state (`kind: "snapshot"`), then each
/// [`JobEvent`]; the stream ends after the job's final state.
#[utoipa::path(get, path = "/api/jobs/{id}/events",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, description = "text/event-stream of JobEvent JSON"),
        (status = 404, body = ApiError)))]
pub async fn events(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    check_id(&id)?;
    // Subscribe first, then read the state: no event falls between the two.
    let receiver = app.shared.events.subscribe();
    let job = app
        .shared
        .store
        .get(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let finished = job.state.is_final();
    let snapshot = serde_json::json!({ "kind": "snapshot", "job": job });
    let first = stream::once(async move { Ok(Event::default().data(snapshot.to_string())) });
    // Each event of this job until its final state (lagging behind skips events: the next
    // step or state catches up).
    let updates = stream::unfold((receiver, finished), move |(mut receiver, done)| {
        let id = id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match receiver.recv().await {
                    Ok(e) if e.job() == id => {
                        let last = matches!(&e, JobEvent::State { state, .. } if state.is_final());
                        let json = serde_json::to_string(&e).ok()?;
                        return Some((Ok(Event::default().data(json)), (receiver, last)));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(first.chain(updates)).keep_alive(KeepAlive::default()))
}

/// A job's output by name (`video.mp4`, `image.png`, `preview.png`, `record.json`,
/// `latents.safetensors`). Outputs are renamed into place only when complete, so a
/// half-written file is never served.
#[utoipa::path(get, path = "/api/jobs/{id}/outputs/{name}",
    params(("id" = String, Path, description = "The job id"),
        ("name" = String, Path, description = "video.mp4, image.png, preview.png, record.json or latents.safetensors")),
    responses((status = 200, description = "the file"), (status = 404, body = ApiError)))]
pub async fn output(
    State(app): State<App>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    if !OUTPUTS.contains(&name.as_str()) {
        return Err(ApiError::not_found("output"));
    }
    let path = app.shared.job_dir(&id).join(&name);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::not_found("output"))?;
    let content_type = match name.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok((headers, bytes).into_response())
}

#[utoipa::path(get, path = "/api/plan", params(PlanQuery),
    responses((status = 200, body = PlanView), (status = 400, body = ApiError)))]
pub async fn plan(
    query: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PlanView>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    if q.width == 0 || q.height == 0 {
        return Err(ApiError::bad("width", "the size must be at least 1x1"));
    }
    // Only the aspect ratio matters for the bucket: a grey image of that shape, at most 1024
    // pixels on its long side (the nearest-bucket metric scales with the size).
    let scale = (1024.0 / f64::from(q.width.max(q.height))).min(1.0);
    let (w, h) = (
        ((f64::from(q.width) * scale).round() as u32).max(1),
        ((f64::from(q.height) * scale).round() as u32).max(1),
    );
    let image =
        InputImage::from_rgb8(w, h, vec![128; (w * h * 3) as usize]).map_err(request_error)?;
    let mut r = Request::new(image, "plan");
    if let Some(v) = q.seconds {
        r = r.seconds(v);
    }
    if let Some(v) = q.mode {
        let mode: Mode = v
            .parse()
            .map_err(|e: framepack_core::Error| ApiError::bad("mode", e.to_string()))?;
        r = r.mode(mode);
    }
    if let Some(v) = q.resolution {
        r = r.resolution(v.parse().map_err(request_error)?);
    }
    if let Some(v) = q.section_length {
        r = r.window(section_window(v)?);
    }
    let plan = r.plan().map_err(request_error)?;
    let sections = (0..plan.sections.sections())
        .map(|s| {
            let range = plan.section_frames(s);
            [range.start, range.end]
        })
        .collect();
    Ok(Json(PlanView {
        size: [plan.bucket.height, plan.bucket.width],
        frames: plan.frames(),
        duration_s: plan.duration(),
        sections,
    }))
}

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "framepack serve",
        description = "FramePack image-to-video jobs over HTTP"
    ),
    paths(
        list_jobs, get_job, submit, cancel, delete_job, rerun, events, output, plan, list_loras
    ),
    components(schemas(
        JobView, JobState, JobSpec, LoraSpec, Submitted, Rerun, PlanView, ApiError, JobEvent
    ))
)]
/// The OpenAPI document of the API (served at `/api/openapi.json`).
pub struct ApiDoc;
