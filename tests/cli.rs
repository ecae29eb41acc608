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
    // No --device: `auto` picked the best device this build has and the record says so (the
    // CI build has only the CPU backend).
    let auto = framepack::DeviceChoice::Auto.resolve().unwrap().to_string();
    assert_eq!(
        (a.runtime.device.as_str(), a.runtime.device_auto),
        (auto.as_str(), true)
    );
    assert!(
        stderr(&o).contains(&format!("on {auto} (auto)")),
        "{}",
        stderr(&o)
    );
    // Named, it is not automatic.
    let named = out_dir.join("named.mp4");
    let r = generate_ok(&image, &named, &["--device", "cpu"]);
    assert_eq!(
        (r.runtime.device.as_str(), r.runtime.device_auto),
        ("cpu", false)
    );
    assert!(a.runtime.kernels.tuned_kernels && !a.runtime.kernels.fp8_tensor_cores);

    // Kernel choices are the pipeline's runtime options, kept in the record: FP8 tensor cores
    // imply FP8 block weights (on the CPU the products fall back to expanded weights, so the
    // frames are the --fp8 run's), and the portable kernels replace the tuned ones.
    let fp8 = out_dir.join("fp8.mp4");
    let r8 = generate_ok(&image, &fp8, &["--fp8"]);
    let tc = out_dir.join("tensor_cores.mp4");
    let rtc = generate_ok(&image, &tc, &["--fp8-tensor-cores", "--portable-kernels"]);
    assert_eq!(r8.runtime.block_weights, framepack::WeightFormat::Fp8);
    assert_eq!(rtc.runtime.block_weights, framepack::WeightFormat::Fp8);
    assert!(rtc.runtime.kernels.fp8_tensor_cores && !rtc.runtime.kernels.tuned_kernels);
    assert!(!r8.runtime.kernels.fp8_tensor_cores);
    assert_eq!(read_mp4(&tc).frames, read_mp4(&fp8).frames);
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
    // Values the argument parser refuses: one line too, naming the flag.
    refuse(good_s, &["--device", "tpu"], "--device");
    refuse(good_s, &["--dtype", "f8"], "--dtype");
    refuse(good_s, &["--memory", "lots"], "--memory");
    refuse(good_s, &["--lora-mode", "blend"], "--lora-mode");
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
        "what --device auto, the default, picks",
        "transformer",
        "not found",
        "image_encoder",
        "tiny-random",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from {text}");
    }
}

/// Runs a tiny-random generation of `image` into `out` that must succeed; its record.
fn generate_ok(image: &Path, out: &Path, extra: &[&str]) -> framepack::RunRecord {
    let args = tiny_args(image.to_str().unwrap(), out.to_str().unwrap(), extra);
    let o = run(&refs(&args));
    assert!(o.status.success(), "{}: {}", out.display(), stderr(&o));
    framepack::RunRecord::read(out.with_extension("json")).unwrap()
}

/// `framepack generate --replay record --out out`.
fn replay(record: &Path, out: &Path) -> Output {
    run(&[
        "generate",
        "--replay",
        record.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// A LoRA file for the tiny transformer (hidden 32, MLP 128) with `modules` patched at rank 2:
/// kohya/musubi keys (`lora_unet_…`, with alpha) or diffusers keys (`diffusion_model.…`).
fn write_lora(path: &Path, kohya: bool, modules: &[(&str, [usize; 2])], seed: u32) {
    use safetensors::{tensor::TensorView, Dtype};
    let rank = 2;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let values = |n: usize, salt: u32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let x = ((i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(salt * 40_503)
                    % 1000) as f32;
                (x / 1000.0 * 0.6 - 0.3).to_le_bytes()
            })
            .collect()
    };
    for (i, (module, [out, input])) in modules.iter().enumerate() {
        let salt = seed * 10 + i as u32;
        let (down, up) = (values(rank * input, salt), values(out * rank, salt + 5));
        if kohya {
            let name = format!("lora_unet_{}", module.replace('.', "_"));
            tensors.push((format!("{name}.lora_down.weight"), vec![rank, *input], down));
            tensors.push((format!("{name}.lora_up.weight"), vec![*out, rank], up));
            tensors.push((
                format!("{name}.alpha"),
                vec![],
                1.5f32.to_le_bytes().to_vec(),
            ));
        } else {
            let name = format!("diffusion_model.{module}");
            tensors.push((format!("{name}.lora_A.weight"), vec![rank, *input], down));
            tensors.push((format!("{name}.lora_B.weight"), vec![*out, rank], up));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, shape, bytes)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The latent history of a run, as f32 values.
fn latents(path: &Path) -> Vec<f32> {
    let (history, _) = framepack::LatentHistory::load(path).unwrap();
    history.values().to_vec()
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (diff / norm).sqrt()
}

/// `--lora A:0.8 --lora B:0.5` with two files in two key styles: the output changes, merging
/// at load equals keeping them as adapters (two independent code paths) to 1e-5 in fp32, the
/// record holds both files with their hashes and strengths, a replay gives the same frames,
/// and a LoRA file changed since the run stops the replay.
#[test]
fn loras_from_the_command_line_are_merged_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "lamp.png", 120, 80, 5);
    let kohya = dir.path().join("style.safetensors");
    let diffusers = dir.path().join("motion.safetensors");
    write_lora(
        &kohya,
        true,
        &[
            ("transformer_blocks.0.attn.to_q", [32, 32]),
            ("transformer_blocks.1.ff.net.0.proj", [128, 32]),
            ("single_transformer_blocks.0.proj_mlp", [128, 32]),
        ],
        1,
    );
    write_lora(
        &diffusers,
        false,
        &[
            ("transformer_blocks.0.attn.to_k", [32, 32]),
            ("single_transformer_blocks.1.attn.to_q", [32, 32]),
        ],
        2,
    );
    let (style, motion) = (
        format!("{}:0.8", kohya.display()),
        format!("{}:0.5", diffusers.display()),
    );
    let lora_args = ["--lora", style.as_str(), "--lora", motion.as_str()];
    let out = |name: &str| dir.path().join(name);
    generate_ok(&image, &out("base.mp4"), &[]);
    generate_ok(&image, &out("merged.mp4"), &lora_args);
    let adapters = [&lora_args[..], &["--lora-mode", "adapters"]].concat();
    generate_ok(&image, &out("adapters.mp4"), &adapters);

    let base = latents(&out("base.latents.safetensors"));
    let merged = latents(&out("merged.latents.safetensors"));
    let adapted = latents(&out("adapters.latents.safetensors"));
    let change = relative_l2(&merged, &base);
    let paths = relative_l2(&adapted, &merged);
    println!("LoRA vs none: {change:.3e}; adapters vs merged: {paths:.3e}");
    assert!(change > 1e-3, "the LoRAs changed nothing: {change:.3e}");
    assert!(paths <= 1e-5, "adapters vs merged: {paths:.3e} > 1e-5");

    let record = framepack::RunRecord::read(out("merged.json")).unwrap();
    let loras = record.request.loras();
    assert_eq!(loras.len(), 2);
    assert_eq!(
        (loras[0].path.as_path(), loras[0].strength),
        (kohya.as_path(), 0.8)
    );
    assert_eq!(
        (loras[1].path.as_path(), loras[1].strength),
        (diffusers.as_path(), 0.5)
    );
    for lora in loras {
        let hash = lora.sha256.as_deref().unwrap_or_default();
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hash}"
        );
    }
    assert_eq!(record.runtime.lora_mode, framepack::LoraMode::Merge);
    let adapters_record = framepack::RunRecord::read(out("adapters.json")).unwrap();
    assert_eq!(
        adapters_record.runtime.lora_mode,
        framepack::LoraMode::Adapters
    );

    let o = replay(&out("merged.json"), &out("replay.mp4"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_mp4(&out("replay.mp4")).frames,
        read_mp4(&out("merged.mp4")).frames
    );
    assert_eq!(latents(&out("replay.latents.safetensors")), merged);

    // The same file name with other weights is not the recorded LoRA.
    write_lora(
        &kohya,
        true,
        &[("transformer_blocks.0.attn.to_q", [32, 32])],
        9,
    );
    let o = replay(&out("merged.json"), &out("changed.mp4"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("changed since the run was recorded"),
        "{}",
        stderr(&o)
    );
    assert!(!out("changed.mp4").exists());
}

/// `--section-length 0.5` (eichi's half-second sections) and `--flavor eichi` reach the plan,
/// the record and the replay: 2 s in F1 mode are 4 eichi sections (60 frames / 15) but 3
/// FramePack ones (60 / 18, rounded), each section sampling 5 latents.
#[test]
fn half_second_sections_and_the_eichi_flavor_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "kite.png", 120, 80, 7);
    let out = |name: &str| dir.path().join(name);
    let generate = |name: &str, extra: &[&str]| generate_ok(&image, &out(name), extra);
    let half = ["--section-length", "0.5", "--seconds", "2", "--mode", "f1"];
    let eichi = generate("eichi.mp4", &[&half[..], &["--flavor", "eichi"]].concat());
    let framepack = generate("framepack.mp4", &half);
    let whole = generate("whole.mp4", &["--seconds", "2", "--mode", "f1"]);
    assert_eq!(eichi.result.sections, 4);
    assert_eq!(framepack.result.sections, 3);
    assert_eq!(whole.result.sections, 2);
    let json = std::fs::read_to_string(out("eichi.json")).unwrap();
    assert!(json.contains(r#""window": "half-second""#), "{json}");
    assert!(json.contains(r#""flavor": "eichi""#), "{json}");
    for (name, record) in [("eichi.mp4", &eichi), ("framepack.mp4", &framepack)] {
        // Every F1 section appends its 5 new latents (17 frames less the overlap).
        assert_eq!(
            record.result.latent_frames,
            1 + 5 * record.result.sections,
            "{name}"
        );
        assert_eq!(
            read_mp4(&out(name)).frames.len() as u32,
            record.result.frames,
            "{name}"
        );
    }
    let o = replay(&out("eichi.json"), &out("again.mp4"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_mp4(&out("again.mp4")).frames,
        read_mp4(&out("eichi.mp4")).frames
    );
    // Only 1 and 0.5 are section lengths.
    let args = tiny_args(
        image.to_str().unwrap(),
        out("bad.mp4").to_str().unwrap(),
        &["--section-length", "2"],
    );
    let o = run(&refs(&args));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("section-length"), "{}", stderr(&o));
}

/// Decoded RGB pixels of a PNG.
fn png_pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

/// One-frame kisekaeichi from the command line: a reference image changes the frame, masks
/// change it again, the record keeps the reference, masks and indices, and a replay gives the
/// same pixels.
#[test]
fn kisekae_reference_and_masks_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "person.png", 120, 80, 11);
    let reference = png(dir.path(), "dress.png", 90, 90, 2);
    let mask = dir.path().join("mask.png");
    // Left half kept, right half zeroed.
    image::RgbImage::from_fn(120, 80, |x, _| {
        image::Rgb(if x < 60 { [255; 3] } else { [0; 3] })
    })
    .save(&mask)
    .unwrap();
    let out = |name: &str| dir.path().join(name);
    let generate = |name: &str, extra: &[&str]| {
        generate_ok(
            &image,
            &out(name),
            &[&["--mode", "one-frame"], extra].concat(),
        );
        png_pixels(&out(name))
    };
    let reference_arg = reference.to_str().unwrap();
    let plain = generate("plain.png", &[]);
    let dressed = generate("dressed.png", &["--reference-image", reference_arg]);
    let masked = generate(
        "masked.png",
        &[
            "--reference-image",
            reference_arg,
            "--input-mask",
            mask.to_str().unwrap(),
            "--reference-mask",
            mask.to_str().unwrap(),
        ],
    );
    let indexed = generate(
        "indexed.png",
        &[
            "--reference-image",
            reference_arg,
            "--target-index",
            "5",
            "--no-clean-4x",
        ],
    );
    assert_ne!(dressed, plain, "the reference changed nothing");
    assert_ne!(masked, dressed, "the masks changed nothing");
    assert_ne!(indexed, dressed, "the indices changed nothing");

    let json = std::fs::read_to_string(out("masked.json")).unwrap();
    assert!(
        json.contains("dress.png") && json.contains("mask.png"),
        "{json}"
    );
    let record = framepack::RunRecord::read(out("indexed.json")).unwrap();
    let request = record.request().unwrap();
    let plan = request.plan().unwrap();
    let window = plan.sections.windows().next().unwrap();
    // eichi's layout: the reference at its history index, the frame at the target index.
    assert_eq!(window.layout.clean_latent_indices(), vec![0, 13]);
    assert_eq!(window.layout.latent_indices(), vec![5]);

    let o = replay(&out("masked.json"), &out("again.png"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_pixels(&out("again.png")), masked);

    // A mask without a reference is refused before anything runs.
    let args = tiny_args(
        image.to_str().unwrap(),
        out("bad.png").to_str().unwrap(),
        &[
            "--mode",
            "one-frame",
            "--input-mask",
            mask.to_str().unwrap(),
        ],
    );
    let o = run(&refs(&args));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--reference-image"), "{}", stderr(&o));
    assert!(!out("bad.png").exists());
}

/// MagCache from the command line: without a ratio table the run calibrates (every call
/// computed, the ratios recorded); with the calibration run's record as the table, calls are
/// skipped, the output stays close to the uncached one, and a replay is identical.
#[test]
fn magcache_calibrates_then_skips_calls() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(dir.path(), "tree.png", 120, 80, 13);
    let out = |name: &str| dir.path().join(name);
    let generate = |name: &str, extra: &[&str]| {
        generate_ok(&image, &out(name), &[&["--steps", "10"], extra].concat())
    };
    let none = generate("none.mp4", &["--cache", "none"]);
    assert_eq!(none.result.model_calls_skipped, 0);
    let calibration = generate("calibrate.mp4", &["--cache", "magcache"]);
    assert_eq!(calibration.result.model_calls_skipped, 0);
    let ratios = calibration
        .result
        .magcache_ratios
        .clone()
        .expect("recorded ratios");
    assert_eq!(ratios.len(), 10, "one ratio per call of a window");
    assert!(
        ratios.iter().all(|r| r.is_finite() && *r > 0.0),
        "{ratios:?}"
    );
    // The calibration run computes what the uncached run computes.
    assert_eq!(
        latents(&out("calibrate.latents.safetensors")),
        latents(&out("none.latents.safetensors"))
    );

    let table = out("calibrate.json");
    let cached = generate(
        "cached.mp4",
        &[
            "--cache",
            "magcache",
            "--magcache-ratios",
            table.to_str().unwrap(),
            "--magcache-threshold",
            "0.5",
        ],
    );
    let skipped = cached.result.model_calls_skipped;
    assert!(skipped > 0, "MagCache skipped nothing");
    let magcache = cached.request.clone();
    let json = serde_json::to_string(&magcache).unwrap();
    assert!(json.contains(r#""magcache":{"threshold":0.5"#), "{json}");
    let error = relative_l2(
        &latents(&out("cached.latents.safetensors")),
        &latents(&out("none.latents.safetensors")),
    );
    println!(
        "MagCache: {skipped} of {} calls skipped, {error:.3e} from uncached",
        cached.result.model_calls
    );
    assert!(error > 0.0 && error < 0.2, "{error:.3e}");

    let o = replay(&out("cached.json"), &out("again.mp4"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_mp4(&out("again.mp4")).frames,
        read_mp4(&out("cached.mp4")).frames
    );
    // A table that is not one.
    std::fs::write(out("bad.json"), "{\"ratios\": 3}").unwrap();
    let args = tiny_args(
        image.to_str().unwrap(),
        out("bad.mp4").to_str().unwrap(),
        &[
            "--cache",
            "magcache",
            "--magcache-ratios",
            out("bad.json").to_str().unwrap(),
        ],
    );
    let o = run(&refs(&args));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("magcache-ratios"), "{}", stderr(&o));
}
