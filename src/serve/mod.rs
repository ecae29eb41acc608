//! `framepack serve`: the models loaded once and kept warm, a persistent queue of jobs
//! (SQLite under the server's folder), an HTTP API (JSON, server-sent events, OpenAPI at
//! `/api/openapi.json`) and the web page, all from this one binary.
//!
//! - [`store`]: the queue (jobs and their state survive a restart);
//! - [`worker`]: the thread that owns the [`Pipeline`] and runs the jobs in order;
//! - [`api`]: the HTTP handlers;
//! - `page.html`: the web page (embedded; no Node toolchain).
//!
//! Safe by default: it listens on loopback; another address needs a token, checked on every
//! request; uploads are limited in bytes and in pixels (read from the image header before any
//! decoding); clients name LoRAs by file name in the configured folder and outputs by job id
//! and name, never server paths; the queue has a cap (429 beyond it).

mod api;
mod store;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Request as HttpRequest;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use api::{ApiDoc, JobSpec, LoraSpec};
pub use store::{JobState, JobView};
pub use worker::JobEvent;

use crate::error::{Error, Result};
use crate::pipeline::PipelineBuilder;

/// What the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs waiting at once; a submission beyond it is answered 429.
    pub max_queued: u32,
    /// Bytes of one submission (all images and the request together); beyond: 413.
    pub max_upload_bytes: usize,
    /// Pixels of one image (read from its header before decoding); beyond: 413.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queued: 100,
            max_upload_bytes: 64 << 20,
            max_pixels: 40_000_000,
        }
    }
}

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to listen on (`127.0.0.1:7860` by default; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The token every request must carry (`Authorization: Bearer TOKEN` or `?token=TOKEN`).
    /// Required to listen on anything but loopback.
    pub token: Option<String>,
    /// The server's folder: the queue (`queue.sqlite`) and each job's inputs and outputs
    /// (`jobs/ID/`).
    pub dir: PathBuf,
    /// The folder whose `.safetensors` files clients may pick as LoRAs (by name).
    pub lora_dir: Option<PathBuf>,
    /// Upload and queue limits.
    pub limits: Limits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7860)),
            token: None,
            dir: PathBuf::from("outputs/serve"),
            lora_dir: None,
            limits: Limits::default(),
        }
    }
}

/// Checks the options before anything loads: a non-loopback address needs a token.
pub fn check(options: &ServeOptions) -> Result<()> {
    if !options.listen.ip().is_loopback() && options.token.is_none() {
        return Err(Error::invalid(
            "listen",
            format!(
                "{} is reachable from other machines: give --token TOKEN (every request must \
                 carry it), or listen on 127.0.0.1",
                options.listen
            ),
        ));
    }
    if options.token.as_deref().is_some_and(str::is_empty) {
        return Err(Error::invalid("token", "empty"));
    }
    Ok(())
}

/// Loads the models with `builder`, opens the queue, and serves until the process is stopped
/// (Ctrl-C finishes the requests in flight; a running job is resumed from its start at the
/// next launch). `on_ready` gets the URL to open once the server listens.
pub fn serve(
    builder: PipelineBuilder,
    options: ServeOptions,
    on_ready: impl FnOnce(&str),
) -> Result<()> {
    check(&options)?;
    std::fs::create_dir_all(options.dir.join("jobs")).map_err(|e| Error::write(&options.dir, e))?;
    let store = store::JobStore::open(&options.dir.join("queue.sqlite"))?;
    let pipeline = builder.build()?;
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let shared = Arc::new(worker::Shared {
        store,
        dir: options.dir.clone(),
        events,
        running: Mutex::new(Default::default()),
        wake: (Mutex::new(false), Condvar::new()),
    });
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("framepack-worker".into())
            .spawn(move || worker::run(shared, pipeline))
            .map_err(|e| Error::Serve(format!("starting the worker thread: {e}")))?;
    }
    let app = Arc::new(api::AppState {
        shared,
        limits: options.limits,
        lora_dir: options.lora_dir.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Serve(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", options.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::Serve(e.to_string()))?;
        let url = match &options.token {
            Some(token) => format!("http://{address}/?token={token}"),
            None => format!("http://{address}/"),
        };
        on_ready(&url);
        let router = router(app, options.token.clone(), options.limits);
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Error::Serve(e.to_string()))
    })
}

fn router(app: api::App, token: Option<String>, limits: Limits) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/api/openapi.json", get(api::openapi))
        .route("/api/jobs", get(api::list_jobs).post(api::submit))
        .route("/api/jobs/{id}", get(api::get_job).delete(api::delete_job))
        .route("/api/jobs/{id}/cancel", post(api::cancel))
        .route("/api/jobs/{id}/rerun", post(api::rerun))
        .route("/api/jobs/{id}/events", get(api::events))
        .route("/api/jobs/{id}/outputs/{name}", get(api::output))
        .route("/api/plan", get(api::plan))
        .route("/api/loras", get(api::list_loras))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(limits.max_upload_bytes))
        .layer(middleware::from_fn_with_state(
            token.map(Arc::<str>::from),
            authorize,
        ))
        .with_state(app)
}

/// Every request carries the token when the server has one.
async fn authorize(
    State(token): State<Option<Arc<str>>>,
    request: HttpRequest<Body>,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let bearer = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = request.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("token="))
                .map(str::to_string)
        });
        let given = bearer.map(str::to_string).or(query);
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return api::ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
