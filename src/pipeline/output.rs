//! A finished generation ([`Video`]) and where it is written ([`Outputs`]): MP4, PNG, frames,
//! latents and the run record, each staged to a temporary file and renamed when all are done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use framepack_core::Mode;
use framepack_sampling::{GenerationParams, LatentHistory};

use crate::error::{Error, Result};
use crate::frames::Frames;
use crate::record::{OutputsRecord, RunRecord};
use crate::video::{self, Staged, DEFAULT_CRF, FPS};

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Video {
    /// The frames, 8-bit RGB, 30 fps.
    pub frames: Frames,
    /// The latent history in host memory (what was decoded; can be saved, loaded and
    /// extended).
    pub latents: LatentHistory,
    /// Every parameter, the model revisions, timings.
    pub record: RunRecord,
}

/// Where [`Video::save`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// The MP4.
    pub video: Option<PathBuf>,
    /// The MP4 quantiser (see [`video`](crate::video)); FramePack's default is 16.
    pub crf: u8,
    /// A PNG of the first frame (the result of one-frame inference).
    pub image: Option<PathBuf>,
    /// The JSON run record.
    pub record: Option<PathBuf>,
    /// The latent history (safetensors, loadable with `LatentHistory::load` or `History::load`).
    pub latents: Option<PathBuf>,
    /// A new folder of PNG frames.
    pub frames_dir: Option<PathBuf>,
}

impl Outputs {
    /// `NAME.mp4` (or `NAME.png` for a path ending in `.png`), with the record `NAME.json` and
    /// the latents `NAME.latents.safetensors` beside it.
    pub fn beside(main: impl Into<PathBuf>) -> Self {
        let main = main.into();
        let stem = main.with_extension("");
        let with = |suffix: &str| {
            let mut s = stem.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        let is_png = main
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        Self {
            video: (!is_png).then(|| main.clone()),
            crf: DEFAULT_CRF,
            image: is_png.then(|| main.clone()),
            record: Some(with(".json")),
            latents: Some(with(".latents.safetensors")),
            frames_dir: None,
        }
    }

    /// Every path that would be written.
    pub fn paths(&self) -> Vec<&Path> {
        [
            &self.video,
            &self.image,
            &self.record,
            &self.latents,
            &self.frames_dir,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect()
    }
}

impl Video {
    /// Frames per second.
    pub fn fps(&self) -> u32 {
        FPS
    }

    /// Writes the outputs. Everything is written to temporary files first and renamed into
    /// place only when all of them are complete; on error nothing new is left behind. Returns
    /// the record as written (with its `outputs` filled in).
    pub fn save(&self, outputs: &Outputs) -> Result<RunRecord> {
        if outputs.crf > video::MAX_CRF {
            return Err(Error::invalid(
                "crf",
                format!("{} is outside 0..={}", outputs.crf, video::MAX_CRF),
            ));
        }
        let mut record = self.record.clone();
        record.outputs = OutputsRecord::default();
        let mut staged: Vec<Staged> = Vec::new();
        if let Some(path) = &outputs.video {
            staged.push(video::stage_mp4(path, &self.frames, FPS, outputs.crf)?);
            record.outputs.video = Some(path.clone());
            record.outputs.crf = Some(outputs.crf);
            record.outputs.encoder = Some(format!(
                "OpenH264 (openh264 crate {}), fixed QP, Baseline",
                OPENH264_CRATE
            ));
        }
        if let Some(path) = &outputs.image {
            staged.push(video::stage_png(path, &self.frames.image(0))?);
            record.outputs.image = Some(path.clone());
        }
        if let Some(dir) = &outputs.frames_dir {
            staged.push(video::stage_png_frames(dir, &self.frames)?);
            record.outputs.frames_dir = Some(dir.clone());
        }
        if let Some(path) = &outputs.latents {
            let stage = Staged::new(path)?;
            self.latents
                .save(stage.path(), &self.params())
                .map_err(|e| Error::write(path, e))?;
            std::fs::File::open(stage.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::write(path, e))?;
            staged.push(stage);
            record.outputs.latents = Some(path.clone());
        }
        if let Some(path) = &outputs.record {
            staged.push(record.stage(path)?);
        }
        // All complete: move them into place.
        for s in staged {
            let target = s.target().to_path_buf();
            s.commit().map_err(|e| Error::write(target, e))?;
        }
        Ok(record)
    }

    /// The parameters stored in the latent file.
    fn params(&self) -> GenerationParams {
        let r = &self.record.request;
        let mut extra = BTreeMap::new();
        extra.insert("prompt".to_string(), r.prompt.clone());
        extra.insert("models".to_string(), self.record.models.kind.to_string());
        extra.insert("framepack_rs".to_string(), self.record.framepack_rs.clone());
        extra.insert("flavor".to_string(), r.flavor.to_string());
        GenerationParams {
            mode: r.mode.to_string(),
            seed: r.seed,
            steps: r.steps,
            // Latent frames sampled per window (5 for eichi's 0.5 s sections).
            window: if r.mode == Mode::OneFrame {
                1
            } else {
                r.window.latents()
            },
            sections: self.record.result.sections,
            completed_sections: self.record.result.sections,
            distilled_guidance: r.gs,
            cfg: r.cfg,
            guidance_rescale: r.rs,
            shift: r.shift,
            extra,
        }
    }
}

/// The version of the openh264 crate (for records).
const OPENH264_CRATE: &str = "0.9";
