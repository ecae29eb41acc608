//! Prints the generation plan FramePack would follow for an input image size and a length:
//! the bucket, the crop, the sections, and per window the padding, index layout and tokens.
//!
//! ```text
//! cargo run --example plan -- --height 1080 --width 1920 --seconds 5 --mode f1 --window 9
//! ```
//!
//! All arguments are optional; the default is a 512x512 input, 5 s, inverted, window 9.

use std::ops::Range;
use std::process::ExitCode;

use framepack_core::blend::{Join, LatentSpan};
use framepack_core::packing::{HistoryEnd, LatentSource, Segment, SegmentKind};
use framepack_core::{
    BucketTable, CropGeometry, GenerationRequest, ImageSize, LatentSize, Mode, SectionPlan, Window,
};

const USAGE: &str = "\
usage: plan [--height H] [--width W] [--seconds S] [--mode inverted|f1|oneframe] [--window L] [--base B]

  --height H    input image height in pixels (default 512)
  --width W     input image width in pixels (default 512)
  --seconds S   video length in seconds (default 5)
  --mode M      inverted (default), f1, or oneframe
  --window L    latent window size, 1..=64 (default 9)
  --base B      use FramePack-eichi's bucket table for base resolution B
                (384, 512, 640, 768, 960, 1080, 1280, 1536, 1920, 2160);
                default: the official 640 table";

struct Args {
    height: u32,
    width: u32,
    seconds: f64,
    mode: Mode,
    window: u32,
    base: Option<u32>,
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} expects a number, got {value:?}"))
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        height: 512,
        width: 512,
        seconds: 5.0,
        mode: Mode::Inverted,
        window: 9,
        base: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let known = [
            "--height",
            "--width",
            "--seconds",
            "--mode",
            "--window",
            "--base",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = it.next().ok_or_else(|| format!("{flag} expects a value"))?;
        match flag.as_str() {
            "--height" => args.height = parse_number(&flag, &value)?,
            "--width" => args.width = parse_number(&flag, &value)?,
            "--seconds" => args.seconds = parse_number(&flag, &value)?,
            "--window" => args.window = parse_number(&flag, &value)?,
            "--base" => args.base = Some(parse_number(&flag, &value)?),
            _ => {
                args.mode = match value.to_ascii_lowercase().as_str() {
                    "inverted" => Mode::Inverted,
                    "f1" => Mode::F1,
                    "oneframe" | "one-frame" => Mode::OneFrame,
                    _ => {
                        return Err(format!(
                            "--mode expects inverted, f1 or oneframe, got {value:?}"
                        ))
                    }
                }
            }
        }
    }
    Ok(Some(args))
}

fn indices(r: &Range<u32>) -> String {
    match r.end - r.start {
        0 => "-".to_string(),
        1 => format!("[{}]", r.start),
        _ => format!("{}..{}", r.start, r.end),
    }
}

fn list(v: &[u32]) -> String {
    match v {
        [] => "-".to_string(),
        [one] => format!("[{one}]"),
        [first, .., last] if v.windows(2).all(|p| p[1] == p[0] + 1) => {
            format!("{first}..{}", last + 1)
        }
        _ => format!("{v:?}"),
    }
}

fn segment_name(s: &Segment) -> &'static str {
    match s.kind {
        SegmentKind::Pre => "pre",
        SegmentKind::Blank => "blank",
        SegmentKind::Noisy => "latent",
        SegmentKind::Post => "post",
        SegmentKind::Clean2x => "2x",
        SegmentKind::Clean4x => "4x",
        SegmentKind::Start => "start",
        SegmentKind::Clean1x => "1x",
    }
}

fn source(s: &LatentSource) -> String {
    match s {
        LatentSource::Anchor => "anchor".to_string(),
        LatentSource::Reference => "reference".to_string(),
        LatentSource::History(h) => match h.from {
            HistoryEnd::Front => format!("history[{}..{}]", h.offset, h.offset + h.len),
            HistoryEnd::Back if h.offset == h.len => format!("history[-{}..]", h.offset),
            HistoryEnd::Back => format!("history[-{}..-{}]", h.offset, h.offset - h.len),
        },
    }
}

fn print_window(plan: &SectionPlan, w: &Window, latent: LatentSize) {
    let mut tags = Vec::new();
    if w.is_first {
        tags.push("first");
    }
    if w.is_last {
        tags.push("last");
    }
    let tags = if tags.is_empty() {
        String::new()
    } else {
        format!(" ({})", tags.join(", "))
    };
    println!();
    println!("window {}{tags}", w.index);
    if plan.mode() == Mode::Inverted {
        println!(
            "  padding   {} -> {} blank slots",
            w.padding, w.padding_size
        );
    }
    let split: Vec<String> = w
        .layout
        .segments()
        .iter()
        .map(|s| format!("{} {}", segment_name(s), indices(&s.range)))
        .collect();
    println!("  split     {}", split.join(" | "));
    println!("  latent    {}", list(w.layout.latent_indices()));
    let clean: Vec<String> = w
        .layout
        .clean_latents()
        .iter()
        .map(|c| format!("{} <- {}", c.index, source(&c.source)))
        .collect();
    println!("  clean     {}", clean.join(", "));
    for (name, group) in [
        ("2x", w.layout.clean_latents_2x()),
        ("4x", w.layout.clean_latents_4x()),
    ] {
        match group {
            Some(g) => println!(
                "  {name}        {} <- {}",
                list(&g.indices),
                source(&LatentSource::History(g.source))
            ),
            None => println!("  {name}        -"),
        }
    }
    println!("  anchor    {:?}", w.conditioning.anchor);
    let t = w.layout.tokens(latent);
    println!(
        "  tokens    noisy {} + clean {} + 2x {} + 4x {} = {}",
        t.noisy,
        t.clean,
        t.clean_2x,
        t.clean_4x,
        t.total()
    );
    println!(
        "  history   sample {} latents{}, {} generated, history length {}",
        w.history.sampled,
        if w.history.prepend_start_latent {
            " + start latent in front"
        } else {
            ""
        },
        w.history.generated_after,
        w.history.history_len_after
    );
    let span = match w.decode.span {
        LatentSpan::All => format!("all {} latents", w.decode.latents),
        LatentSpan::Front(n) => format!("first {n} latents"),
        LatentSpan::Back(n) => format!("last {n} latents"),
    };
    let join = match w.decode.join {
        Join::First => String::new(),
        Join::Before => format!(", cross-fade {} before the clip", w.decode.overlap),
        Join::After => format!(", cross-fade {} after the clip", w.decode.overlap),
    };
    println!(
        "  decode    {span} -> {} frames{join}, +{} frames",
        w.decode.decoded_frames, w.decode.frames_added
    );
}

fn run(args: &Args) -> Result<(), framepack_core::Error> {
    let (table, table_name) = match args.base {
        Some(base) => (
            BucketTable::eichi(base)?,
            format!("FramePack-eichi {base} table"),
        ),
        None => (BucketTable::framepack(), "official 640 table".to_string()),
    };
    let input = ImageSize::new(args.height, args.width);
    let bucket = table.nearest(input.height, input.width)?;
    let crop = CropGeometry::new(input, bucket)?;
    let latent = LatentSize::from_bucket(bucket)?;
    let plan = GenerationRequest::new(args.seconds)
        .mode(args.mode)
        .window(args.window)
        .validate()?;

    println!("FramePack generation plan");
    println!("input      {input} (height x width)");
    println!("bucket     {bucket} ({table_name})");
    if crop.is_identity() {
        println!("crop       none (the input has the bucket size)");
    } else {
        println!(
            "crop       resize to {} (LANCZOS), keep columns {}..{} and rows {}..{}",
            crop.resized, crop.crop.left, crop.crop.right, crop.crop.top, crop.crop.bottom
        );
    }
    println!("latent     {}x{}", latent.height, latent.width);
    println!(
        "mode       {}, window {} latents ({} frames sampled per section)",
        plan.mode(),
        plan.latents_per_section(),
        plan.frames_per_section()
    );
    println!(
        "sections   {} ({} s requested)",
        plan.sections(),
        plan.seconds()
    );
    if plan.mode() == Mode::Inverted {
        let paddings: Vec<String> = plan.latent_paddings().iter().map(f64::to_string).collect();
        println!("paddings   [{}]", paddings.join(", "));
    }
    println!(
        "output     {} latents, {} frames, {:.3} s at 30 fps",
        plan.total_latent_frames(),
        plan.total_pixel_frames(),
        plan.duration()
    );
    for window in plan.windows() {
        print_window(&plan, &window, latent);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
