//! The `framepack` binary: the tiny-random demo end to end, each bad input (one-line error,
//! non-zero exit, nothing written), Ctrl-C (nothing left behind), `plan`, `info`, `--replay`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{listing, png, read_mp4};

fn framepack() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_framepack"));
    // Keep the Hugging Face cache lookups away from the real home.
    c.env("HF_HOME", "/nonexistent-framepack-test")
        .env_remove("HF_HUB_CACHE");
    c
}

fn run(args: &[&str]) -> Output {
    framepack().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny-random generation's arguments (small size, few steps); `extra` flags replace the
/// defaults of the same name.
fn tiny_args(image: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--prompt", "a lantern sways in the wind"),
        ("--resolution", "32x48"),
        ("--seconds", "1"),
        ("--steps", "2"),
    ];
    let mut args: Vec<String> = [
        "generate",
        "--model",
        "tiny-random",
        "--image",
        image,
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec();
    for (flag, value) in defaults {
        let given = extra
            .iter()
            .any(|e| *e == flag || e.starts_with(&format!("{flag}=")));
        if !given {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn demo_generates_a_video_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "lantern.png", 120, 80, 3);
    let out_dir = dir.path().join("out");
    let out = out_dir.join("lantern.mp4");
    let (image_s, out_s) = (image.to_str().unwrap(), out.to_str().unwrap());
    let started = Instant::now();
    let o = run(&refs(&tiny_args(image_s, out_s, &[])));
    assert!(o.status.success(), "{}", stderr(&o));
    println!("tiny demo run: {:.1} s", started.elapsed().as_secs_f64());
    assert!(stderr(&o).contains("NOISE"), "{}", stderr(&o));
    // Outputs beside each other, no temporaries, the preview removed.
    assert_eq!(
        listing(&out_dir),
        vec!["lantern.json", "lantern.latents.safetensors", "lantern.mp4"]
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("lantern.mp4"), "{stdout}");
    let mp4 = read_mp4(&out);
    assert_eq!((mp4.width, mp4.height, mp4.frames.len()), (48, 32, 37));

    // --replay repeats the run exactly (same decoded frames).
    let again = out_dir.join("again.mp4");
    let o = run(&[
        "generate",
        "--replay",
        out_dir.join("lantern.json").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_mp4(&again).frames, mp4.frames);
    let a = framepack::RunRecord::read(out_dir.join("lantern.json")).unwrap();
    let b = framepack::RunRecord::read(out_dir.join("again.json")).unwrap();
    assert_eq!(a.request, b.request);
    assert_eq!(a.models, b.models);
}

/// Runs a command that must fail: exit status 1, one `error:` line naming the problem, and
/// nothing written into `out_dir`.
fn assert_refused(args: &[&str], out_dir: &Path, expected: &str) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(expected),
        "{args:?}: `{expected}` not in {err:?}"
    );
    assert!(
        listing(out_dir).is_empty(),
        "{args:?} wrote {:?}",
        listing(out_dir)
    );
}

#[test]
fn bad_inputs_give_one_line_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("v.mp4");
    let out_s = out.to_str().unwrap();
    let good = png(dir.path(), "good.png", 64, 64, 1);
    let good_s = good.to_str().unwrap();

    let refuse = |image: &str, extra: &[&str], expected: &str| {
        assert_refused(&refs(&tiny_args(image, out_s, extra)), &out_dir, expected)
    };
    // Missing image.
    let missing = dir.path().join("missing.png");
    refuse(missing.to_str().unwrap(), &[], "does not exist");
    // Unreadable image (a folder).
    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    refuse(folder.to_str().unwrap(), &[], "cannot read image");
    // Unsupported formats: text, and a BMP (no BMP decoder is built in).
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    refuse(text.to_str().unwrap(), &[], "not a supported image");
    let bmp = dir.path().join("picture.bmp");
    let mut bytes = b"BM".to_vec();
    bytes.extend([0u8; 60]);
    std::fs::write(&bmp, bytes).unwrap();
    refuse(bmp.to_str().unwrap(), &[], "not a supported image");
    // Images of different buckets (start square, end frame 16:9), on the real bucket table.
    let wide = png(dir.path(), "wide.png", 192, 108, 2);
    let wide_s = wide.to_str().unwrap();
    refuse(
        good_s,
        &["--end-image", wide_s, "--resolution", "640"],
        "maps to bucket",
    );
    // A keyframe of another bucket, named as such.
    let key = format!("0={wide_s}");
    refuse(
        good_s,
        &["--keyframe", &key, "--resolution", "640"],
        "keyframe of section 0",
    );
    // Prompt too long.
    let long = "word ".repeat(80);
    refuse(good_s, &["--prompt", &long], "too long");
    // Impossible lengths.
    for seconds in ["0", "-2", "1e9", "nan"] {
        let value = format!("--seconds={seconds}");
        refuse(good_s, &[&value], "seconds");
    }
    // A keyframe past the last section.
    let key = format!("5={good_s}");
    refuse(good_s, &["--keyframe", &key], "past the last section");
    // No GPU (this build has no CUDA backend, or the machine has no device).
    refuse(good_s, &["--device", "cuda"], "device `cuda");
    // Bad option values.
    refuse(good_s, &["--crf", "60"], "crf");
    refuse(good_s, &["--resolution", "30x48"], "multiple of 16");
    refuse(good_s, &["--mode", "backwards"], "mode");
    // Real weights that are not there: the message says where it looked and how to fetch them.
    let args = [
        "generate",
        "--image",
        good_s,
        "--prompt",
        "x",
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out_s,
    ];
    assert_refused(&args, &out_dir, "framepack download");
}

#[test]
fn ctrl_c_stops_cleanly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "x.png", 64, 64, 4);
    let out_dir = dir.path().join("out");
    let out = out_dir.join("long.mp4");
    let args = tiny_args(
        image.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--seconds", "20", "--steps", "25", "--resolution", "32x32"],
    );
    let mut child = framepack()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first section's preview: the run is under way.
    let preview = out_dir.join("long.preview.png");
    let started = Instant::now();
    while !preview.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no preview appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    // No video, record, latents, preview or temporary file.
    assert!(listing(&out_dir).is_empty(), "left {:?}", listing(&out_dir));
}

#[test]
fn plan_prints_the_schedule_without_models() {
    let o = run(&["plan", "--size", "1080x1920", "--seconds", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("480x832"), "{text}");
    assert!(text.contains("4 section(s)"), "{text}");
    assert!(text.contains("145 frames"), "{text}");
    // Section 0 (sampled first) is the end of the video.
    assert!(text.contains("112..145"), "{text}");
    assert!(text.contains("0..40"), "{text}");
    assert!(text.contains("17966"), "{text}");
    let o = run(&[
        "plan",
        "--size",
        "512x512",
        "--seconds",
        "1",
        "--mode",
        "f1",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("640x608"));
    let o = run(&["plan", "--seconds", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: "));
}

#[test]
fn info_lists_backends_devices_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["info", "--model-dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "backends:",
        "cpu",
        "devices:",
        "memory",
        "transformer",
        "not found",
        "image_encoder",
        "tiny-random",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from {text}");
    }
}
