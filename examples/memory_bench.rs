//! Memory and speed of a whole generation on CUDA with full-size random-weight networks (the
//! published architectures; the checkpoints are not needed): peak GPU memory, peak host RSS,
//! and the time per sampler step, in one memory mode per run.
//!
//! ```text
//! cargo build --release --no-default-features --features cuda --example memory_bench
//! memory_bench --memory low-vram --seconds 5 --steps 25
//! memory_bench --memory resident --seconds 1 --steps 4
//! memory_bench --memory low-vram --seconds 5 --steps 25 --fp8   # FP8 block weights
//! ```
//!
//! GPU memory is the device's used memory (`total - free`, this process and the CUDA context
//! included), sampled every 50 ms by a watcher thread. Prints a table last.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use framepack::framepack_models::cuda::{pool_usage, CudaBackend, CudaDevice};
use framepack::{
    DeviceChoice, FramePackBackend, InputImage, MemoryMode, Pipeline, Progress, Request,
    Resolution, WeightFormat,
};

type B = CudaBackend;

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Peak resident set of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn used(device: &CudaDevice) -> u64 {
    B::device_memory(device).map_or(0, |m| m.used())
}

fn median(mut v: Vec<Duration>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let memory: MemoryMode = arg("--memory")
        .unwrap_or_else(|| "low-vram".into())
        .parse()?;
    let seconds: f64 = arg("--seconds").map_or(Ok(5.0), |v| v.parse())?;
    // `--size HxW`: an exact size instead of the 640 bucket table.
    let size: Option<(u32, u32)> = arg("--size").and_then(|v| {
        let (h, w) = v.split_once('x')?;
        Some((h.parse().ok()?, w.parse().ok()?))
    });
    let steps: usize = arg("--steps").map_or(Ok(25), |v| v.parse())?;
    let device = CudaDevice { index: 0 };
    let mut rows: Vec<(String, String)> = Vec::new();
    let baseline = used(&device);
    // The watcher: the largest device use seen since the last `swap(0)`.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, done, device) = (peak.clone(), done.clone(), device.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(used(&device), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    rows.push(("GPU in use before loading".into(), gib(baseline)));

    let start = Instant::now();
    eprintln!("building ({memory} mode) ...");
    let mut pipeline = Pipeline::builder()
        .device(DeviceChoice::Cuda(device.index))
        .full_size_random(0)
        .memory(memory)
        .block_weights(if args.iter().any(|a| a == "--fp8") {
            WeightFormat::Fp8
        } else {
            WeightFormat::Dense
        })
        .build()?;
    let build = start.elapsed().as_secs_f64();
    let after_build = used(&device);
    let build_peak = peak.swap(0, Ordering::Relaxed);
    rows.push((
        format!("build ({} mode)", pipeline.memory()),
        format!(
            "{build:.1} s; GPU peak {}, in use after {}; peak RSS {}",
            gib(build_peak),
            gib(after_build),
            gib(peak_rss())
        ),
    ));

    // A 640x608 input: the 640 table's square bucket (640 tall, 608 wide).
    let pixels: Vec<u8> = (0..640 * 640 * 3).map(|i| (i % 251) as u8).collect();
    let image = InputImage::from_rgb8(640, 640, pixels)?;
    let request = Request::new(image, "a cat walks across a sunny garden, cinematic")
        .resolution(match size {
            Some((height, width)) => Resolution::Exact { height, width },
            None => Resolution::Base(640),
        })
        .seconds(seconds)
        .steps(steps)
        .teacache(None);
    let plan = request.plan()?;

    let mut peak_pool = pool_usage(&device);
    let mut step_times = Vec::new();
    let mut first_steps = Vec::new();
    let mut stage_peaks: Vec<(String, u64)> = Vec::new();
    let mut stage = String::from("start");
    // Device-use peaks: of the stage under way, of the whole job, of the intervals ending at a
    // sampler step (its forward) and of those ending at a section (its decode, which runs
    // after the section's last step).
    let (mut stage_peak, mut job_peak, mut steps_peak, mut decode_peak) = (0, 0, 0, 0);
    let t = Instant::now();
    let video = pipeline.generate(&request, |p| {
        let now = used(&device);
        let pool = pool_usage(&device);
        peak_pool = (peak_pool.0.max(pool.0), peak_pool.1.max(pool.1));
        let since = peak.swap(now, Ordering::Relaxed).max(now);
        stage_peak = stage_peak.max(since);
        job_peak = job_peak.max(since);
        match p {
            Progress::Stage(s) => {
                eprintln!(
                    "{:7.1} s  {s:?} begins; GPU {} (peak of the previous stage {})",
                    t.elapsed().as_secs_f64(),
                    gib(now),
                    gib(stage_peak)
                );
                stage_peaks.push((std::mem::take(&mut stage), stage_peak));
                stage_peak = now;
                stage = match s {
                    framepack::Stage::Sampling { .. } => "Sampling".into(),
                    other => format!("{other:?}"),
                };
            }
            Progress::Step(s) => {
                steps_peak = steps_peak.max(since);
                eprintln!(
                    "{:7.1} s  section {} step {}: {:.3} s, GPU {}",
                    t.elapsed().as_secs_f64(),
                    s.section,
                    s.step,
                    s.step_time.as_secs_f64(),
                    gib(now)
                );
                if s.step == 0 {
                    first_steps.push(s.step_time)
                } else {
                    step_times.push(s.step_time)
                }
            }
            Progress::Section(s) => {
                decode_peak = decode_peak.max(since);
                eprintln!(
                    "section {}/{}: {:.1} s, GPU {} (peak of its decode {})",
                    s.section + 1,
                    s.sections,
                    s.section_time.as_secs_f64(),
                    gib(now),
                    gib(since)
                )
            }
            _ => {}
        }
    })?;
    let total = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(20));
    done.store(true, Ordering::Relaxed);
    watcher.join().ok();
    let last = peak.load(Ordering::Relaxed);
    job_peak = job_peak.max(last);
    stage_peaks.push((stage, stage_peak.max(last)));

    rows.push((
        "job".into(),
        format!(
            "{}x{} bucket, {seconds} s = {} sections x {steps} steps, {} frames, TeaCache off",
            plan.bucket.height,
            plan.bucket.width,
            plan.sections.sections(),
            video.frames.len()
        ),
    ));
    rows.push((
        "step time".into(),
        format!(
            "median {:.3} s over {} steps (first step of each section {:.3} s)",
            median(step_times.clone()),
            step_times.len(),
            median(first_steps)
        ),
    ));
    let r = &video.record.timing;
    rows.push((
        "generation".into(),
        format!(
            "{total:.1} s: text {:.1} s, images {:.1} s, sampling {:.1} s, decode {:.1} s",
            r.text_s, r.images_s, r.sampling_s, r.decode_s
        ),
    ));
    for (name, bytes) in stage_peaks {
        rows.push((format!("GPU peak during {name}"), gib(bytes)));
    }
    rows.push((
        "GPU peak during the sampler's steps".into(),
        gib(steps_peak),
    ));
    rows.push((
        "GPU peak during the section decodes".into(),
        gib(decode_peak),
    ));
    rows.push((
        "GPU peak during the job (device used)".into(),
        format!(
            "{} ({} above the idle device)",
            gib(job_peak),
            gib(job_peak - baseline.min(job_peak))
        ),
    ));
    rows.push((
        "burn pool peak (in use / reserved)".into(),
        format!("{} / {}", gib(peak_pool.0), gib(peak_pool.1)),
    ));
    rows.push(("peak RSS (VmHWM)".into(), gib(peak_rss())));
    println!("\n| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
