//! `framepack serve` as a client meets it: the binary started on the tiny model, driven over
//! HTTP (jobs, events, outputs, errors, limits, the token), killed and restarted.
#![cfg(feature = "serve")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::png;
use framepack::{InputImage, LatentHistory, Request, Resolution};
use reqwest::blocking::{multipart, Client, Response};
use serde_json::{json, Value};

/// A running server; killed when dropped.
struct Server {
    child: Child,
    url: String,
    client: Client,
}

impl Server {
    /// Starts `framepack serve --model tiny-random --listen 127.0.0.1:0 --dir DIR` plus
    /// `extra`, and waits for the URL it prints.
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_framepack"))
            .args(["serve", "--model", "tiny-random", "--listen", "127.0.0.1:0"])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .env("HF_HOME", "/nonexistent-framepack-test")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the framepack binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        let url = line
            .trim()
            .strip_prefix("framepack serve: open ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let base = url.split("/?").next().unwrap_or(&url).trim_end_matches('/');
        Self {
            child,
            url: base.to_string(),
            client: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap()
    }

    fn submit(&self, spec: Value, images: &[(&str, &Path)]) -> Response {
        let mut form = multipart::Form::new().text("request", spec.to_string());
        for (name, path) in images {
            form = form.part(
                name.to_string(),
                multipart::Part::bytes(std::fs::read(path).unwrap()).file_name("image.png"),
            );
        }
        self.client
            .post(format!("{}/api/jobs", self.url))
            .multipart(form)
            .send()
            .unwrap()
    }

    /// Submits and returns the new job's id.
    fn submit_ok(&self, spec: Value, image: &Path) -> String {
        let r = self.submit(spec, &[("image", image)]);
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Polls a job until it ends; its final view.
    fn wait(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let job: Value = self.get(&format!("/api/jobs/{id}")).json().unwrap();
            if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "job {id} hangs"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(seed: u64) -> Value {
    json!({"prompt": "a lantern sways", "seconds": 2, "steps": 2, "seed": seed,
           "resolution": "32x48"})
}

/// The same job run by the library in this process: the server must give its latents.
fn library_latents(image: &Path, seed: u64) -> LatentHistory {
    let request = Request::new(InputImage::open(image).unwrap(), "a lantern sways")
        .seconds(2.0)
        .steps(2)
        .seed(seed)
        .resolution(Resolution::Exact {
            height: 32,
            width: 48,
        });
    common::tiny_pipeline()
        .generate(&request, |_| {})
        .unwrap()
        .latents
}

/// A job's latents as the server wrote them.
fn served_latents(server: &Server, id: &str, dir: &Path) -> LatentHistory {
    let bytes = server
        .get(&format!("/api/jobs/{id}/outputs/latents.safetensors"))
        .bytes()
        .unwrap();
    let path = dir.join(format!("{id}.latents.safetensors"));
    std::fs::write(&path, &bytes).unwrap();
    LatentHistory::load(&path).unwrap().0
}

fn error_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn jobs_run_over_http_with_events_outputs_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "start.png", 96, 64, 1);
    let server = Server::start(&dir.path().join("server"), &["--max-pixels", "100000"]);

    // The page and the OpenAPI document.
    let page = server.get("/").text().unwrap();
    assert!(
        page.contains("FramePack") && page.contains("日本語"),
        "{page}"
    );
    let openapi: Value = server.get("/api/openapi.json").json().unwrap();
    for path in [
        "/api/jobs",
        "/api/jobs/{id}/events",
        "/api/jobs/{id}/outputs/{name}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} missing");
    }

    // A job: submitted behind a longer one (so that it is still queued when the events are
    // subscribed), and followed over server-sent events to the end.
    let ahead = server.submit_ok(
        json!({"prompt": "ahead", "seconds": 2, "steps": 6, "resolution": "32x48"}),
        &image,
    );
    let id = server.submit_ok(spec(7), &image);
    let events = server.get(&format!("/api/jobs/{id}/events"));
    assert_eq!(events.status(), 200);
    let mut kinds = Vec::new();
    for line in BufReader::new(events).lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            kinds.push(event["kind"].as_str().unwrap().to_string());
            if event["kind"] == "section" {
                assert!(event["preview"].as_str().unwrap().ends_with("preview.png"));
            }
        }
    }
    // The stream ends after the final state; steps and both sections came first.
    assert_eq!(kinds.first().map(String::as_str), Some("snapshot"));
    assert_eq!(kinds.last().map(String::as_str), Some("state"));
    assert_eq!(
        kinds.iter().filter(|k| *k == "section").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "step").count() >= 4,
        "{kinds:?}"
    );
    let job = server.wait(&id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(server.wait(&ahead)["state"], "done");
    assert_eq!(
        (job["sections_done"].as_u64(), job["sections"].as_u64()),
        (Some(2), Some(2))
    );

    // Its outputs, by name: the frames of the library's run of the same request.
    let mp4 = server.get(&format!("/api/jobs/{id}/outputs/video.mp4"));
    assert_eq!(mp4.headers()["content-type"], "video/mp4");
    let path = dir.path().join("served.mp4");
    std::fs::write(&path, mp4.bytes().unwrap()).unwrap();
    assert_eq!(common::read_mp4(&path).frames.len(), 73);
    assert_eq!(
        served_latents(&server, &id, dir.path()),
        library_latents(&image, 7)
    );
    let record: Value = server
        .get(&format!("/api/jobs/{id}/outputs/record.json"))
        .json()
        .unwrap();
    assert_eq!(record["request"]["seed"], 7);

    // Re-run with another seed: a new job from the stored request and copied inputs.
    let r = server
        .client
        .post(format!("{}/api/jobs/{id}/rerun", server.url))
        .json(&json!({"seed": 8}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let again = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait(&again)["state"], "done");
    assert_eq!(
        served_latents(&server, &again, dir.path()),
        library_latents(&image, 8)
    );

    // Bad requests: 4xx with a JSON body naming the field; nothing queued.
    let before = server.get("/api/jobs").json::<Vec<Value>>().unwrap().len();
    let cases: Vec<(Response, u16, &str)> = vec![
        (server.submit(spec(1), &[]), 400, "image"),
        (
            server.submit(json!({"seconds": 2}), &[("image", &image)]),
            400,
            "request",
        ),
        (
            server.submit(json!({"prompt": "x", "colour": 1}), &[("image", &image)]),
            400,
            "request",
        ),
        (
            server.submit(
                json!({"prompt": "x", "resolution": "big"}),
                &[("image", &image)],
            ),
            400,
            "resolution",
        ),
        (
            server.submit(json!({"prompt": "x", "steps": 0}), &[("image", &image)]),
            400,
            "steps",
        ),
        (
            server.submit(spec(1), &[("image", Path::new("Cargo.toml"))]),
            400,
            "image",
        ),
        (
            server.submit(spec(1), &[("image", &image), ("video", &image)]),
            400,
            "video",
        ),
        (
            server.submit(
                json!({"prompt": "x", "loras": [{"name": "../../etc/passwd"}]}),
                &[("image", &image)],
            ),
            400,
            "loras",
        ),
    ];
    for (i, (response, status, field)) in cases.into_iter().enumerate() {
        let (got, body) = error_of(response);
        assert_eq!(got, status, "case {i}: {body}");
        assert_eq!(body["field"], field, "case {i}: {body}");
        assert!(!body["error"].as_str().unwrap().is_empty(), "case {i}");
    }
    // Too many pixels (read from the header): 413.
    let large = png(dir.path(), "large.png", 400, 300, 2);
    let (status, body) = error_of(server.submit(spec(1), &[("image", &large)]));
    assert_eq!((status, &body["field"]), (413, &json!("image")), "{body}");
    assert_eq!(
        server.get("/api/jobs").json::<Vec<Value>>().unwrap().len(),
        before
    );
    // Not JSON at all, and no multipart: still 4xx with a message.
    let r = server
        .client
        .post(format!("{}/api/jobs", server.url))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(error_of(r).0, 400);

    // Paths never reach the file system.
    for path in [
        "/api/jobs/..%2F..%2Fetc/outputs/video.mp4".to_string(),
        format!("/api/jobs/{id}/outputs/queue.sqlite"),
        format!("/api/jobs/{id}/outputs/..%2F..%2Fqueue.sqlite"),
        "/api/jobs/nope".to_string(),
        "/etc/passwd".to_string(),
    ] {
        let (status, body) = error_of(server.get(&path));
        assert_eq!(status, 404, "{path}: {body}");
    }

    // Delete: the job and its folder are gone.
    let r = server
        .client
        .delete(format!("{}/api/jobs/{again}", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(server.get(&format!("/api/jobs/{again}")).status(), 404);
    assert!(!dir.path().join("server/jobs").join(&again).exists());
}

#[test]
fn the_queue_is_capped_and_queued_jobs_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "start.png", 96, 64, 1);
    let server = Server::start(&dir.path().join("server"), &["--max-queued", "1"]);
    let long = json!({"prompt": "x", "seconds": 4, "steps": 8, "resolution": "32x48"});
    let statuses: Vec<(u16, Value)> = (0..3)
        .map(|_| error_of(server.submit(long.clone(), &[("image", &image)])))
        .collect();
    // The worker takes the first at once or soon; with one waiting job allowed, at least one
    // of the next two is refused, with a message.
    let refused: Vec<&Value> = statuses
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, b)| b)
        .collect();
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(refused[0]["error"].as_str().unwrap().contains("queued"));
    assert!(statuses.iter().all(|(s, _)| *s == 201 || *s == 429));
    let ids: Vec<String> = statuses
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["id"].as_str().unwrap().to_string())
        .collect();
    // Cancel everything: the running job stops at a step boundary, a queued one at once.
    for id in &ids {
        let r = server
            .client
            .post(format!("{}/api/jobs/{id}/cancel", server.url))
            .send()
            .unwrap();
        assert!(r.status() == 200 || r.status() == 409, "{}", r.status());
    }
    for id in &ids {
        assert_eq!(server.wait(id)["state"], "cancelled");
    }
    // Cancelling a finished job is a conflict.
    let (status, _) = error_of(
        server
            .client
            .post(format!("{}/api/jobs/{}/cancel", server.url, ids[0]))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 409);
}

#[test]
fn the_token_is_required_and_other_addresses_need_one() {
    // Without a token, only loopback: one line, exit status 1.
    let o = Command::new(env!("CARGO_BIN_EXE_framepack"))
        .args(["serve", "--model", "tiny-random", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--token"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), &["--token", "s3cret"]);
    assert_eq!(server.get("/api/jobs").status(), 401);
    assert_eq!(server.get("/").status(), 401);
    assert_eq!(server.get("/api/jobs?token=wrong").status(), 401);
    assert_eq!(server.get("/api/jobs?token=s3cret").status(), 200);
    let r = server
        .client
        .get(format!("{}/api/jobs", server.url))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn queued_and_running_jobs_survive_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "start.png", 96, 64, 1);
    let server_dir: PathBuf = dir.path().join("server");
    let ids: Vec<String> = {
        let mut server = Server::start(&server_dir, &[]);
        let ids = (0..2)
            .map(|i| server.submit_ok(spec(20 + i), &image))
            .collect();
        // kill -9 while the first job runs (or is about to).
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        ids
    };
    let server = Server::start(&server_dir, &[]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(server.wait(id)["state"], "done", "job {id}");
        assert_eq!(
            served_latents(&server, id, dir.path()),
            library_latents(&image, 20 + i as u64),
            "job {id} after the restart"
        );
    }
}
