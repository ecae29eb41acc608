//! `framepack`: FramePack image-to-video from the command line.
//!
//! ```text
//! framepack generate --model tiny-random --image in.png --prompt "a cat" --out out.mp4
//! framepack generate --image in.png --prompt "a cat" --download --device cuda
//! framepack plan --size 1080x1920 --seconds 10
//! framepack info
//! framepack download
//! ```
//!
//! Errors are one line on stderr (`error: …`) with exit status 1; Ctrl-C stops at the next step
//! boundary, removes everything this run wrote and exits with status 130 (a second Ctrl-C
//! exits at once, after removing temporary files).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use framepack::framepack_core::{Flavor, WindowSize};
use framepack::hub::{self, Component, ModelLocations};
use framepack::memory::dtype_name;
use framepack::{
    CancelToken, DType, DeviceChoice, Dtypes, Error, InputImage, KisekaeReference, LoraChoice,
    LoraMode, MagCacheSettings, MemoryMode, Mode, ModelKind, Outputs, Pipeline, Progress, Request,
    Resolution, RunRecord, RuntimeOptions, Stage, WeightFormat,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "framepack",
    version,
    about = "FramePack image-to-video (next-frame-section prediction) in native Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from an image and a prompt.
    Generate(Box<GenerateArgs>),
    /// Download the checkpoints from the Hugging Face Hub.
    Download(DownloadArgs),
    /// Show backends, devices, memory, and which model files are found and valid.
    Info(InfoArgs),
    /// Print the section schedule of a request without running any model.
    Plan(Box<PlanArgs>),
    /// Serve the web app and HTTP API: the models loaded once, a persistent job queue.
    #[cfg(feature = "serve")]
    Serve(Box<ServeArgs>),
}

/// `framepack serve`.
#[cfg(feature = "serve")]
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// The address to listen on. Loopback by default; any other address needs --token.
    #[arg(long, default_value = "127.0.0.1:7860")]
    listen: std::net::SocketAddr,
    /// A token every request must carry (`Authorization: Bearer TOKEN`, or `?token=TOKEN` in
    /// the page's URL).
    #[arg(long)]
    token: Option<String>,
    /// The server's folder: the job queue (queue.sqlite) and each job's inputs and outputs.
    #[arg(long, default_value = "outputs/serve")]
    dir: PathBuf,
    /// A folder of LoRA files (.safetensors) that clients may pick by name.
    #[arg(long)]
    lora_dir: Option<PathBuf>,
    /// The most jobs waiting at once; more are refused (HTTP 429).
    #[arg(long, default_value_t = 100)]
    max_queued: u32,
    /// The most pixels of one uploaded image (read from its header before decoding).
    #[arg(long, default_value_t = 40_000_000)]
    max_pixels: u64,
    /// The most bytes of one submission, in MiB.
    #[arg(long, default_value_t = 64)]
    max_upload_mib: usize,
}

/// What to generate (every control of FramePack and FramePack-eichi).
#[derive(Args, Clone)]
struct RequestArgs {
    /// The start image (PNG, JPEG or WebP).
    #[arg(short, long)]
    image: Option<PathBuf>,
    /// What happens in the video.
    #[arg(short, long)]
    prompt: Option<String>,
    /// Negative prompt (used only with --cfg other than 1).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// An end frame (inverted mode): the video converges to it.
    #[arg(long)]
    end_image: Option<PathBuf>,
    /// How strongly the end frame pulls, 0..=1.
    #[arg(long, default_value_t = 1.0)]
    end_strength: f64,
    /// A keyframe for a section, SECTION=PATH (repeatable). Sections count in sampling order:
    /// in inverted mode 0 is the END of the video; `framepack plan` shows each section's frames.
    #[arg(long, value_name = "SECTION=PATH")]
    keyframe: Vec<String>,
    /// A prompt for one section, SECTION=TEXT (repeatable; sampling order, as --keyframe).
    #[arg(long, value_name = "SECTION=TEXT")]
    section_prompt: Vec<String>,
    /// Video length in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seed of the noise.
    #[arg(long, default_value_t = 31337)]
    seed: u64,
    /// Sampler steps per section.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Real classifier-free guidance scale (1 = off, one model call per step).
    #[arg(long, default_value_t = 1.0)]
    cfg: f64,
    /// Distilled guidance scale.
    #[arg(long, default_value_t = 10.0)]
    gs: f64,
    /// CFG rescale, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    rs: f64,
    /// Turn TeaCache off (it is on by default, as in FramePack); the same as --cache none.
    #[arg(long, conflicts_with = "cache")]
    no_teacache: bool,
    /// The step cache that skips transformer calls: teacache (FramePack's), magcache
    /// (FramePack-Studio's; without --magcache-ratios the run calibrates, computing every call
    /// and recording its ratios), or none.
    #[arg(long, value_enum, default_value_t = CacheArg::Teacache)]
    cache: CacheArg,
    /// TeaCache threshold (higher skips more model calls).
    #[arg(long, default_value_t = 0.15)]
    teacache_threshold: f64,
    /// MagCache: accumulated-error threshold (higher skips more).
    #[arg(long, default_value_t = 0.1)]
    magcache_threshold: f64,
    /// MagCache: most skipped calls in a row.
    #[arg(long, default_value_t = 2)]
    magcache_max_skips: usize,
    /// MagCache: the fraction of each window's first calls that are always computed.
    #[arg(long, default_value_t = 0.2)]
    magcache_retention: f64,
    /// MagCache: the ratio table, a JSON array or the run record of a calibration run.
    #[arg(long, value_name = "FILE")]
    magcache_ratios: Option<PathBuf>,
    /// inverted (anti-drifting), f1 (forward) or one-frame.
    #[arg(long, default_value_t = Mode::Inverted)]
    mode: Mode,
    /// A bucket table base (640 = FramePack's; 384..2160 = eichi's) or an exact HEIGHTxWIDTH
    /// (multiples of 16). Default: 640, or about 1/10 of the bucket with --model tiny-random.
    #[arg(long)]
    resolution: Option<String>,
    /// Latent frames per section (one-frame mode: eichi's RoPE value).
    #[arg(long, default_value_t = 9)]
    window: u32,
    /// Seconds per section, 1 (FramePack's window of 9 latents, 33 frames) or 0.5
    /// (FramePack-eichi's half-second sections: 17 frames each). Overrides --window.
    #[arg(long, value_name = "1|0.5")]
    section_length: Option<f64>,
    /// Whose conventions to follow where they differ: framepack, or eichi (its F1 section
    /// count divides by 4·window − 3 frames; its last 0.5 s section decodes 11 latents).
    #[arg(long, default_value_t = Flavor::FramePack)]
    flavor: Flavor,
    /// eichi's constant padding 0..=3 for every inverted section but the last, instead of the
    /// reference schedule.
    #[arg(long)]
    padding: Option<f64>,
    /// eichi F1 image influence, 1.0..=1.02 (f1 mode).
    #[arg(long)]
    image_influence: Option<f64>,
    /// A fixed flow shift (default: automatic, 7 at every 640 bucket).
    #[arg(long)]
    shift: Option<f64>,
    /// Keep the first 256 tokens of an over-long prompt (FramePack's silent behaviour)
    /// instead of refusing it.
    #[arg(long)]
    allow_prompt_truncation: bool,
    /// A LoRA for the transformer, PATH or PATH:STRENGTH (repeatable; strength 1 when not
    /// given; kohya/musubi, diffusers or HunyuanVideo keys). Recorded with the file's SHA-256.
    #[arg(long, value_name = "PATH[:STRENGTH]")]
    lora: Vec<LoraChoice>,
    /// One-frame mode: eichi's kisekaeichi reference image, whose look the frame takes on.
    #[arg(long, value_name = "PATH")]
    reference_image: Option<PathBuf>,
    /// With --reference-image: a mask of the start image (white keeps, black zeroes).
    #[arg(long, value_name = "PATH", requires = "reference_image")]
    input_mask: Option<PathBuf>,
    /// With --reference-image: a mask of the reference image (white keeps, black zeroes).
    #[arg(long, value_name = "PATH", requires = "reference_image")]
    reference_mask: Option<PathBuf>,
    /// With --reference-image: the reference latent's RoPE time index (eichi's history index).
    #[arg(long, default_value_t = 13, requires = "reference_image")]
    history_index: u32,
    /// With --reference-image: the generated frame's RoPE time index (eichi's target index;
    /// clamped to window − 1).
    #[arg(long, default_value_t = 1, requires = "reference_image")]
    target_index: u32,
    /// With --reference-image: drop the 2x context group.
    #[arg(long, requires = "reference_image")]
    no_clean_2x: bool,
    /// With --reference-image: drop the 4x context group.
    #[arg(long, requires = "reference_image")]
    no_clean_4x: bool,
}

/// `--model`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModelArg {
    /// The published checkpoints.
    Framepack,
    /// Small random-weight networks of the real architectures (output is noise).
    TinyRandom,
}

/// `--dtype`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    /// Chosen for the device.
    Auto,
    F32,
    F16,
    Bf16,
}

/// `--cache`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CacheArg {
    /// FramePack's TeaCache.
    Teacache,
    /// FramePack-Studio's MagCache.
    Magcache,
    /// Every call computed.
    None,
}

/// Which weights, where, on which device.
#[derive(Args, Clone)]
struct ModelArgs {
    /// `framepack` (the published checkpoints) or `tiny-random` (a small random-weight model
    /// of the same architecture: runs anywhere in seconds, its output is NOISE).
    #[arg(long, value_enum, default_value_t = ModelArg::Framepack)]
    model: ModelArg,
    /// Seed of the tiny-random weights.
    #[arg(long, default_value_t = 0)]
    tiny_seed: u64,
    #[command(flatten)]
    locations: LocationArgs,
    /// Download missing checkpoints (about 40 GB).
    #[arg(long)]
    download: bool,
    /// auto (the first CUDA GPU when built with cuda, else the wgpu adapter when built with
    /// wgpu, else the CPU), cpu, cuda, cuda:N or wgpu.
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// auto (CUDA: bf16 transformer + fp16 encoders; wgpu: f16 where the adapter has it, else
    /// f32; the CPU: f32), f32, f16 or bf16.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    dtype: DtypeArg,
    /// Keep prompt embeddings on disk here (a repeated prompt skips the text encoders).
    #[arg(long)]
    prompt_cache: Option<PathBuf>,
    /// auto (resident with 60 GiB free, else low-vram), resident, or low-vram (transformer
    /// blocks streamed from host memory, encoders loaded per job, tiled VAE decode).
    #[arg(long, default_value_t = MemoryMode::Auto)]
    memory: MemoryMode,
    /// Keep the transformer blocks' weights as FP8 (e4m3, one scale per row): half their
    /// memory (GPU, or pinned host memory in low-vram mode), a small error against the
    /// checkpoint's weights.
    #[arg(long)]
    fp8: bool,
    /// With FP8 block weights, run their products on FP8 tensor cores (Hopper-class GPUs;
    /// activations rounded to e4m3 per token): faster, a little less exact. Implies --fp8.
    #[arg(long)]
    fp8_tensor_cores: bool,
    /// Run every operation on burn's portable kernels instead of the tuned CUDA ones (to
    /// compare the two; also FRAMEPACK_PORTABLE_OPS=1). Slower; no effect on the CPU.
    #[arg(long)]
    portable_kernels: bool,
    /// How LoRAs are applied: merge (into the weights while they load; works with --fp8 and
    /// low-vram) or adapters (beside the weights: no merge, a little slower per step; resident
    /// memory only).
    #[arg(long, default_value_t = LoraMode::Merge)]
    lora_mode: LoraMode,
}

#[derive(Args, Clone, Default)]
struct LocationArgs {
    /// A Hugging Face hub cache holding the checkpoints (searched first; downloads go here).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// A local copy of lllyasviel/FramePackI2V_HY.
    #[arg(long)]
    transformer_dir: Option<PathBuf>,
    /// A local copy of lllyasviel/FramePack_F1_I2V_HY_20250503.
    #[arg(long)]
    transformer_f1_dir: Option<PathBuf>,
    /// A local copy of hunyuanvideo-community/HunyuanVideo.
    #[arg(long)]
    hunyuan_dir: Option<PathBuf>,
    /// A local copy of lllyasviel/flux_redux_bfl.
    #[arg(long)]
    redux_dir: Option<PathBuf>,
}

impl LocationArgs {
    fn locations(&self, download: bool) -> ModelLocations {
        ModelLocations {
            cache_dir: self.model_dir.clone(),
            transformer: self.transformer_dir.clone(),
            transformer_f1: self.transformer_f1_dir.clone(),
            hunyuan_video: self.hunyuan_dir.clone(),
            flux_redux: self.redux_dir.clone(),
            download,
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    models: ModelArgs,
    /// The video (`.mp4`; `.png` for one-frame mode). Default: outputs/<time>_<seed>.mp4. The
    /// run record (`.json`) and latents (`.latents.safetensors`) are written beside it.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// MP4 quality: OpenH264's fixed quantiser 0..=51 (lower is better; below 12 acts as 12).
    #[arg(long, default_value_t = framepack::video::DEFAULT_CRF)]
    crf: u8,
    /// Also write every frame as PNG into this new folder.
    #[arg(long)]
    frames_dir: Option<PathBuf>,
    /// Do not write the latent history.
    #[arg(long)]
    no_latents: bool,
    /// Repeat a run from its record (`.json`): request and model taken from it; --out and the
    /// device options apply.
    #[arg(long, value_name = "RUN.json", conflicts_with_all = ["image", "prompt"])]
    replay: Option<PathBuf>,
}

#[derive(Args)]
struct DownloadArgs {
    #[command(flatten)]
    locations: LocationArgs,
    /// Also the F1 transformer.
    #[arg(long)]
    f1: bool,
    /// Only the F1 transformer and the shared models (not the inverted transformer).
    #[arg(long, conflicts_with = "f1")]
    only_f1: bool,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    locations: LocationArgs,
    /// Only list where the files are; do not check them.
    #[arg(long)]
    no_check: bool,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// The input size HEIGHTxWIDTH, instead of --image.
    #[arg(long)]
    size: Option<String>,
    /// Plan for the tiny-random model's default resolution.
    #[arg(long, value_enum, default_value_t = ModelArg::Framepack)]
    model: ModelArg,
}

/// How a run ended.
enum Failure {
    Error(Error),
    Cancelled(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Cancelled { .. } => Self::Cancelled(e),
            e => Self::Error(e),
        }
    }
}

fn invalid(argument: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        argument,
        reason: reason.into(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(e),
    };
    let result = match cli.command {
        Command::Generate(args) => generate(*args),
        Command::Download(args) => download(args).map_err(Failure::from),
        Command::Info(args) => info(args).map_err(Failure::from),
        Command::Plan(args) => plan(*args).map_err(Failure::from),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve(*args).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Cancelled(e)) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(Failure::Error(e)) => {
            let message = e.to_string().replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refused: `--help` and `--version` as clap prints them; anything else
/// as the one `error:` line (status 1) every other refusal gives.
fn argument_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let line = parts.join(" ");
    eprintln!(
        "{}",
        if line.starts_with("error:") {
            line
        } else {
            format!("error: {line}")
        }
    );
    ExitCode::FAILURE
}

/// `KEY=VALUE` with a section number key.
fn section_pair(arg: &'static str, s: &str) -> Result<(u32, String), Error> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| invalid(arg, format!("`{s}` is not SECTION=VALUE")))?;
    let section = k
        .trim()
        .parse()
        .map_err(|_| invalid(arg, format!("`{k}` in `{s}` is not a section number")))?;
    Ok((section, v.to_string()))
}

fn parse_size(s: &str) -> Result<(u32, u32), Error> {
    match s.parse::<Resolution>() {
        Ok(Resolution::Exact { height, width }) if height > 0 && width > 0 => Ok((height, width)),
        _ => Err(invalid(
            "size",
            format!("`{s}` is not HEIGHTxWIDTH (e.g. 1080x1920)"),
        )),
    }
}

/// The tiny model's default resolution: about a tenth of the bucket, rounded to multiples of
/// 16 (640×608 → 64×64, 480×832 → 48×80).
fn tiny_resolution(image: &InputImage) -> Result<Resolution, Error> {
    let bucket = Resolution::Base(640).bucket_for(image.size())?;
    let r = |v: u32| ((f64::from(v) / 160.0).round().max(1.0) as u32) * 16;
    Ok(Resolution::Exact {
        height: r(bucket.height),
        width: r(bucket.width),
    })
}

/// Builds the request from the arguments (reading every image).
fn build_request(a: &RequestArgs, image: InputImage, tiny: bool) -> Result<Request, Error> {
    let prompt = a
        .prompt
        .clone()
        .ok_or_else(|| invalid("prompt", "missing (--prompt TEXT)"))?;
    let resolution = match &a.resolution {
        Some(s) => s.parse()?,
        None if tiny => tiny_resolution(&image)?,
        None => Resolution::default(),
    };
    let mut r = Request::new(image, prompt)
        .negative_prompt(a.negative_prompt.clone())
        .seconds(a.seconds)
        .seed(a.seed)
        .steps(a.steps)
        .cfg(a.cfg)
        .gs(a.gs)
        .rs(a.rs)
        .teacache((a.cache == CacheArg::Teacache && !a.no_teacache).then_some(a.teacache_threshold))
        .magcache(match a.cache {
            CacheArg::Magcache => Some(MagCacheSettings {
                threshold: a.magcache_threshold,
                max_skips: a.magcache_max_skips,
                retention: a.magcache_retention,
                ratios: a
                    .magcache_ratios
                    .as_ref()
                    .map(framepack::read_ratios)
                    .transpose()?,
            }),
            _ => None,
        })
        .mode(a.mode)
        .resolution(resolution)
        .window(section_window(a.section_length, a.window)?)
        .flavor(a.flavor)
        .constant_padding(a.padding)
        .image_influence(a.image_influence)
        .shift(a.shift)
        .allow_prompt_truncation(a.allow_prompt_truncation);
    for lora in &a.lora {
        r = r.lora(lora.path.clone(), lora.strength);
    }
    if let Some(reference) = &a.reference_image {
        let mut k = KisekaeReference::new(InputImage::open(reference)?)
            .history_index(a.history_index)
            .target_index(a.target_index)
            .context_groups(!a.no_clean_2x, !a.no_clean_4x);
        if let Some(mask) = &a.input_mask {
            k = k.input_mask(InputImage::open(mask)?);
        }
        if let Some(mask) = &a.reference_mask {
            k = k.reference_mask(InputImage::open(mask)?);
        }
        r = r.kisekae(k);
    }
    if let Some(end) = &a.end_image {
        r = r.end_frame(InputImage::open(end)?, a.end_strength);
    }
    for k in &a.keyframe {
        let (section, path) = section_pair("keyframe", k)?;
        r = r.keyframe(section, InputImage::open(path)?);
    }
    for p in &a.section_prompt {
        let (section, text) = section_pair("section-prompt", p)?;
        r = r.section_prompt(section, text);
    }
    Ok(r)
}

/// The window of `--section-length` (1 s: `--window`'s latents; 0.5 s: eichi's half-second
/// sections).
fn section_window(length: Option<f64>, window: u32) -> Result<WindowSize, Error> {
    match length {
        None | Some(1.0) => Ok(WindowSize::Latents(window)),
        Some(0.5) => Ok(WindowSize::HalfSecond),
        Some(l) => Err(invalid(
            "section-length",
            format!("{l}: expected 1 or 0.5 (seconds per section)"),
        )),
    }
}

fn start_image(a: &RequestArgs) -> Result<InputImage, Error> {
    let path = a
        .image
        .as_ref()
        .ok_or_else(|| invalid("image", "missing (--image PATH)"))?;
    InputImage::open(path)
}

/// The dtypes `--dtype` names; `None` (auto on a GPU): [`Dtypes::for_device`] once the device
/// is open. Auto on the CPU is fp32: half precision is emulated there, so fp32 is faster.
fn dtypes_for(arg: DtypeArg, device: DeviceChoice) -> Option<Dtypes> {
    match arg {
        DtypeArg::Auto if device == DeviceChoice::Cpu => Some(Dtypes::all(DType::F32)),
        DtypeArg::Auto => None,
        DtypeArg::F32 => Some(Dtypes::all(DType::F32)),
        DtypeArg::F16 => Some(Dtypes::all(DType::F16)),
        DtypeArg::Bf16 => Some(Dtypes::all(DType::BF16)),
    }
}

/// The UTC time as `YYMMDD_HHMMSS_mmm`, like FramePack's job ids.
fn job_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{:02}{m:02}{d:02}_{:02}{:02}{:02}_{:03}",
        y % 100,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

static PREVIEW: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();

fn remove_preview() {
    if let Some(lock) = PREVIEW.get() {
        if let Ok(mut p) = lock.lock() {
            if let Some(path) = p.take() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let device = args.models.device.resolve()?;
    let mut dtypes = dtypes_for(args.models.dtype, device);
    let mut tiny = (args.models.model == ModelArg::TinyRandom).then_some(args.models.tiny_seed);
    let request = match &args.replay {
        Some(path) => {
            let record = RunRecord::read(path)?;
            if record.models.kind == ModelKind::TinyRandom {
                tiny = Some(record.models.seed.unwrap_or(0));
            } else if tiny.is_some() {
                return Err(invalid(
                    "replay",
                    "the record was made with the published checkpoints, not tiny-random",
                )
                .into());
            }
            if args.models.dtype == DtypeArg::Auto {
                dtypes = Some(record.runtime.dtypes);
            }
            record.request()?
        }
        None => {
            let image = start_image(&args.request)?;
            build_request(&args.request, image, tiny.is_some())?
        }
    };
    // Everything about the request is checked before any model is loaded.
    let plan = request.plan()?;
    if args.crf > framepack::video::MAX_CRF {
        return Err(invalid(
            "crf",
            format!("{} is outside 0..={}", args.crf, framepack::video::MAX_CRF),
        )
        .into());
    }
    let one_frame = plan.sections.mode() == Mode::OneFrame;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => PathBuf::from("outputs").join(format!(
            "{}_{}.{}",
            job_id(),
            request.seed_value(),
            if one_frame { "png" } else { "mp4" }
        )),
    };
    if out.is_dir() {
        return Err(invalid("out", format!("`{}` is a folder", out.display())).into());
    }
    if let Some(dir) = &args.frames_dir {
        let non_empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if dir.is_file() || non_empty {
            return Err(invalid(
                "frames-dir",
                format!("`{}` exists and is not an empty folder", dir.display()),
            )
            .into());
        }
    }
    let mut outputs = Outputs::beside(&out);
    outputs.crf = args.crf;
    outputs.frames_dir = args.frames_dir.clone();
    if args.no_latents {
        outputs.latents = None;
    }
    let job = Job {
        request,
        plan_frames: plan.frames(),
        outputs,
        tiny,
        device,
        dtypes,
        args: &args,
    };
    run(job)
}

struct Job<'a> {
    request: Request,
    plan_frames: u32,
    outputs: Outputs,
    tiny: Option<u64>,
    device: DeviceChoice,
    /// `None`: chosen for the device ([`Dtypes::for_device`]).
    dtypes: Option<Dtypes>,
    args: &'a GenerateArgs,
}

/// Progress bars on stderr (hidden when stderr is not a terminal; then stage notes are plain
/// lines).
struct Ui {
    multi: MultiProgress,
    sections: ProgressBar,
    steps: ProgressBar,
}

impl Ui {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let sections = multi.add(ProgressBar::hidden());
        let steps = multi.add(ProgressBar::hidden());
        Self {
            multi,
            sections,
            steps,
        }
    }

    fn note(&self, message: &str) {
        if self.multi.is_hidden() {
            eprintln!("{message}");
        } else {
            let _ = self.multi.println(message);
        }
    }

    fn start_sampling(&mut self, sections: u32, steps: usize) {
        let style = |t: &str| {
            ProgressStyle::with_template(t)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        self.sections.set_length(u64::from(sections));
        self.sections.set_style(style(
            "sections [{bar:30}] {pos}/{len}  {elapsed_precise} elapsed, ETA {eta_precise}",
        ));
        self.sections.set_draw_target(ProgressDrawTarget::stderr());
        self.steps.set_length(steps as u64);
        self.steps.set_style(style(
            "{prefix:>8} [{bar:30}] {pos}/{len} steps  {per_sec}, ETA {eta}",
        ));
        self.steps.set_draw_target(ProgressDrawTarget::stderr());
        self.steps.set_prefix("section 0");
    }

    fn finish(&self) {
        self.steps.finish_and_clear();
        self.sections.finish_and_clear();
    }
}

/// A pipeline builder for the model options (`tiny`: the tiny-random seed; `dtypes`: `None`
/// for the device's).
fn pipeline_builder(
    models: &ModelArgs,
    tiny: Option<u64>,
    dtypes: Option<Dtypes>,
) -> framepack::PipelineBuilder {
    // The builder resolves `auto` again, so that the record says the choice was automatic.
    let mut builder = Pipeline::builder()
        .device(models.device)
        .memory(models.memory)
        .block_weights(if models.fp8 || models.fp8_tensor_cores {
            WeightFormat::Fp8
        } else {
            WeightFormat::Dense
        })
        .runtime(kernels(models))
        .lora_mode(models.lora_mode);
    if let Some(dtypes) = dtypes {
        builder = builder.dtypes(dtypes);
    }
    if let Some(seed) = tiny {
        return builder.tiny_random(seed);
    }
    let locations = models.locations.locations(models.download);
    if let Some(d) = &locations.cache_dir {
        builder = builder.model_dir(d);
    }
    if let Some(dir) = &locations.transformer {
        builder = builder.transformer_dir(dir);
    }
    if let Some(dir) = &locations.transformer_f1 {
        builder = builder.transformer_f1_dir(dir);
    }
    if let Some(dir) = &locations.hunyuan_video {
        builder = builder.hunyuan_video_dir(dir);
    }
    if let Some(dir) = &locations.flux_redux {
        builder = builder.flux_redux_dir(dir);
    }
    builder = builder.download(locations.download);
    if let Some(dir) = &models.prompt_cache {
        builder = builder.prompt_cache_dir(dir);
    }
    builder
}

/// What is being loaded, for the user.
fn loading_note(
    models: &ModelArgs,
    tiny: Option<u64>,
    device: DeviceChoice,
    dtypes: Option<Dtypes>,
) -> String {
    let auto = if models.device == DeviceChoice::Auto {
        " (auto)"
    } else {
        ""
    };
    match tiny {
        Some(seed) => format!(
            "model: tiny-random (seed {seed}) on {device}{auto}: random weights, the output is NOISE"
        ),
        None => format!(
            "loading the FramePack models on {device}{auto}{} ...",
            dtypes.map_or(String::new(), |d| format!(
                " ({} transformer)",
                dtype_name(d.transformer)
            ))
        ),
    }
}

/// The kernel choices the model options name, on top of the environment's.
fn kernels(models: &ModelArgs) -> RuntimeOptions {
    let env = RuntimeOptions::from_env();
    let tuned = env.tuned_kernels && !models.portable_kernels;
    env.fp8_tensor_cores(models.fp8_tensor_cores)
        .tuned_kernels(tuned)
}

fn run(job: Job<'_>) -> Result<(), Failure> {
    let Job {
        request,
        plan_frames,
        outputs,
        tiny,
        device,
        dtypes,
        args,
    } = job;
    let cancel = CancelToken::new();
    let handler_token = cancel.clone();
    let presses = Mutex::new(0u32);
    let _ = ctrlc::set_handler(move || {
        let mut n = presses.lock().map(|mut n| {
            *n += 1;
            *n
        });
        if let Ok(ref mut count) = n {
            if *count > 1 {
                framepack::video::remove_temporaries();
                remove_preview();
                eprintln!("interrupted");
                std::process::exit(130);
            }
        }
        handler_token.cancel();
        eprintln!("stopping after the current step (Ctrl-C again to quit at once)");
    });

    let mut ui = Ui::new();
    let started = Instant::now();
    let builder = pipeline_builder(&args.models, tiny, dtypes)
        .mode(request.mode_value())
        .loras(request.loras());
    let loading = loading_note(&args.models, tiny, device, dtypes);
    // The prompts are checked with the tokenizer alone, before the long model load.
    builder.check(&request)?;
    ui.note(&loading);
    let mut pipeline = builder.build()?;
    ui.note(&format!(
        "models ready in {:.1} s ({} memory; {}); {plan_frames} frames to generate",
        started.elapsed().as_secs_f64(),
        pipeline.memory(),
        pipeline.dtypes()
    ));
    if cancel.is_cancelled() {
        return Err(Failure::Cancelled(Error::Cancelled {
            section: 0,
            steps_done: 0,
        }));
    }

    let preview_path = {
        let mut s = outputs
            .video
            .clone()
            .or_else(|| outputs.image.clone())
            .unwrap_or_else(|| PathBuf::from("framepack"))
            .with_extension("")
            .into_os_string();
        s.push(".preview.png");
        PathBuf::from(s)
    };
    let preview_cell = PREVIEW.get_or_init(|| Mutex::new(None));
    let mut preview_error: Option<Error> = None;
    let result = pipeline.generate_cancellable(&request, &cancel, |p| match p {
        Progress::Stage(Stage::Text) => ui.note("encoding the prompts ..."),
        Progress::Stage(Stage::Images) => ui.note("encoding the images ..."),
        Progress::Stage(Stage::Sampling { sections, steps }) => {
            ui.note(&format!(
                "sampling {sections} section(s) of {steps} steps ..."
            ));
            ui.start_sampling(sections, steps);
        }
        Progress::Stage(_) => {}
        Progress::Step(s) => {
            if s.step == 0 {
                ui.steps.reset();
                ui.steps
                    .set_prefix(format!("section {}/{}", s.section + 1, s.sections));
            }
            ui.steps.set_position(s.step as u64 + 1);
        }
        Progress::Section(s) => {
            ui.sections.set_position(u64::from(s.section) + 1);
            match framepack::video::write_png(&preview_path, &s.preview()) {
                Ok(_) => {
                    if let Ok(mut p) = preview_cell.lock() {
                        *p = Some(preview_path.clone());
                    }
                }
                Err(e) => {
                    if preview_error.is_none() {
                        preview_error = Some(e);
                    }
                }
            }
            ui.note(&format!(
                "section {}/{} done in {:.1} s: {} frames so far (preview: {})",
                s.section + 1,
                s.sections,
                s.section_time.as_secs_f64(),
                s.frames,
                preview_path.display()
            ));
        }
        Progress::Warning(w) => ui.note(&format!("warning: {w}")),
        _ => {}
    });
    ui.finish();
    if let Some(e) = preview_error {
        ui.note(&format!("warning: could not write the preview: {e}"));
    }
    let video = match result {
        Ok(v) => v,
        Err(e) => {
            remove_preview();
            return Err(e.into());
        }
    };
    let saved = video.save(&outputs);
    remove_preview();
    let record = saved?;
    let written: Vec<String> = outputs
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    eprintln!(
        "done in {}: {} frames of {}x{} ({:.2} s at 30 fps); {} model calls ({} skipped by TeaCache)",
        human(started.elapsed()),
        video.frames.len(),
        video.frames.width(),
        video.frames.height(),
        record.result.duration_s,
        record.result.model_calls,
        record.result.model_calls_skipped
    );
    for w in written {
        println!("{w}");
    }
    Ok(())
}

#[cfg(feature = "serve")]
fn serve(args: ServeArgs) -> Result<(), Error> {
    use framepack::serve::{Limits, ServeOptions};
    let device = args.models.device.resolve()?;
    let dtypes = dtypes_for(args.models.dtype, device);
    let tiny = (args.models.model == ModelArg::TinyRandom).then_some(args.models.tiny_seed);
    let options = ServeOptions {
        listen: args.listen,
        token: args.token.clone(),
        dir: args.dir.clone(),
        lora_dir: args.lora_dir.clone(),
        limits: Limits {
            max_queued: args.max_queued,
            max_upload_bytes: args.max_upload_mib << 20,
            max_pixels: args.max_pixels,
        },
    };
    // A bad address or a missing token is refused before the long model load.
    framepack::serve::check(&options)?;
    eprintln!("{}", loading_note(&args.models, tiny, device, dtypes));
    let builder = pipeline_builder(&args.models, tiny, dtypes);
    framepack::serve::serve(builder, options, |url| {
        println!("framepack serve: open {url}");
    })
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{}m{:02.0}s", (s / 60.0) as u64, s % 60.0)
    }
}

fn plan(args: PlanArgs) -> Result<(), Error> {
    let tiny = args.model == ModelArg::TinyRandom;
    let image = match (&args.request.image, &args.size) {
        (Some(_), Some(_)) => return Err(invalid("size", "give --image or --size, not both")),
        (Some(_), None) => start_image(&args.request)?,
        (None, Some(s)) => {
            let (h, w) = parse_size(s)?;
            let bytes = (h as usize)
                .checked_mul(w as usize)
                .and_then(|n| n.checked_mul(3))
                .filter(|&n| n <= 1 << 30)
                .ok_or_else(|| invalid("size", format!("{s} is too large")))?;
            InputImage::from_rgb8(w, h, vec![0; bytes])?
        }
        (None, None) => return Err(invalid("image", "give --image PATH or --size HxW")),
    };
    let mut a = args.request.clone();
    if a.prompt.is_none() {
        a.prompt = Some(String::new());
    }
    let request = build_request(&a, image, tiny)?;
    let p = request.plan()?;
    let s = &p.sections;
    println!(
        "input {} (h x w) -> {} {} (resized to {}, crop x {}..{}, y {}..{})",
        request.image().size(),
        match request.resolution_value() {
            Resolution::Base(b) => format!("bucket of the {b} table:"),
            Resolution::Exact { .. } => "exact size".to_string(),
        },
        p.bucket,
        p.crop.resized,
        p.crop.crop.left,
        p.crop.crop.right,
        p.crop.crop.top,
        p.crop.crop.bottom
    );
    println!(
        "mode {}, {} section(s) of {} latent(s), {} latent frames, {} frames = {:.3} s at 30 fps",
        s.mode(),
        s.sections(),
        s.latents_per_section(),
        s.total_latent_frames(),
        p.frames(),
        p.duration()
    );
    println!("sections in sampling order (inverted mode samples the end of the video first):");
    println!("  section  padding  frames          seconds          anchor           prompt");
    for w in s.windows() {
        let r = p.section_frames(w.index);
        let anchor = match w.conditioning.anchor {
            framepack::framepack_core::Anchor::Start => "start image".to_string(),
            framepack::framepack_core::Anchor::Keyframe { section } => {
                format!("keyframe {section}")
            }
        };
        let prompt = match w.conditioning.prompt {
            framepack::framepack_core::PromptChoice::Main => "main".to_string(),
            framepack::framepack_core::PromptChoice::Section(i) => format!("section {i}"),
        };
        let end = if w.conditioning.end_frame.is_some() {
            " + end frame"
        } else {
            ""
        };
        println!(
            "  {:>7}  {:>7}  {:>5}..{:<6}  {:>6.2}..{:<6.2}  {:<15}  {prompt}",
            w.index,
            w.padding,
            r.start,
            r.end,
            f64::from(r.start) / 30.0,
            f64::from(r.end) / 30.0,
            format!("{anchor}{end}"),
        );
    }
    if let Some(w) = s.windows().next() {
        let t = w.layout.tokens(p.latent);
        println!(
            "image tokens per model call: {} ({} noisy + {} context)",
            t.total(),
            t.noisy,
            t.context()
        );
    }
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

fn info(args: InfoArgs) -> Result<(), Error> {
    println!("framepack-rs {}", env!("CARGO_PKG_VERSION"));
    let built = |on: bool| if on { "built" } else { "not built" };
    println!("backends:");
    println!(
        "  cpu   (burn-flex)             {}",
        built(cfg!(feature = "cpu"))
    );
    println!(
        "  cuda  (burn-cuda + kernels)   {}",
        built(cfg!(feature = "cuda"))
    );
    println!(
        "  wgpu  (burn-wgpu)             {}",
        built(cfg!(feature = "wgpu"))
    );
    println!(
        "  download (Hugging Face Hub)   {}",
        built(cfg!(feature = "download"))
    );
    println!("devices:");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    match meminfo() {
        Some((total, avail)) => println!(
            "  cpu      {threads} threads, memory {} total, {} available",
            gib(total),
            gib(avail)
        ),
        None => println!("  cpu      {threads} threads"),
    }
    cuda_devices();
    match DeviceChoice::Auto.resolve() {
        Ok(device) => println!("  default  {device} (what --device auto, the default, picks)"),
        Err(e) => println!("  default  none: {e}"),
    }
    let locations = args.locations.locations(false);
    println!(
        "model files (searched: explicit folders, --model-dir, then the Hugging Face caches):"
    );
    for c in Component::ALL {
        let name = c.folder().display_name();
        match locations.find(c) {
            Err(_) => println!("  {:<18} not found    ({name})", c.name()),
            Ok(found) => {
                let status = if args.no_check {
                    "found".to_string()
                } else {
                    match hub::check(c, &found.path) {
                        Ok(r) if r.tensors > 0 => {
                            format!(
                                "valid ({} tensors, {:.1} GB)",
                                r.tensors,
                                r.bytes as f64 / 1e9
                            )
                        }
                        Ok(_) => "valid".to_string(),
                        Err(e) => format!("INVALID: {}", e.to_string().replace('\n', " ")),
                    }
                };
                println!(
                    "  {:<18} {status}\n  {:<18}   {} ({})",
                    c.name(),
                    "",
                    found.path.display(),
                    found.revision
                );
            }
        }
    }
    println!("  tiny-random        built in (random weights, no files; output is noise)");
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_devices() {
    let mut any = false;
    for i in 0..16 {
        if let Some((name, used, total)) = framepack_models::cuda::device_report(i) {
            any = true;
            println!(
                "  cuda:{i}   {name}, memory {} total, {} used",
                gib(total as u64),
                gib(used as u64)
            );
        }
    }
    if !any {
        println!("  cuda     no device found");
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() {
    println!("  cuda     (not built)");
}

fn download(args: DownloadArgs) -> Result<(), Error> {
    let locations = args.locations.locations(true);
    let mut wanted = Component::needed_for(Mode::Inverted);
    if args.f1 {
        wanted.push(Component::TransformerF1);
    }
    if args.only_f1 {
        wanted = Component::needed_for(Mode::F1);
    }
    for c in wanted {
        let name = c.folder().display_name();
        match locations.find(c) {
            Ok(found) => println!("{:<18} present: {}", c.name(), found.path.display()),
            Err(_) => {
                eprintln!("{:<18} downloading {name} ...", c.name());
                let found = locations.download(c)?;
                println!("{:<18} downloaded: {}", c.name(), found.path.display());
            }
        }
    }
    Ok(())
}
