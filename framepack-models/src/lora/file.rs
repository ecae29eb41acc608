//! One LoRA file, parsed once into a map from FramePack module to low-rank factors.
//!
//! Key conventions (detected from the names, as FramePack-eichi's `merge_lora_to_state_dict`
//! in `webui/lora_utils/lora_utils.py` does):
//! - kohya / musubi-tuner: `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`,
//!   `.alpha` (musubi-tuner's `networks/lora.py` flattens the module path with underscores).
//! - diffusers / diffusion-pipe: `diffusion_model.<module>.lora_A.weight` and `.lora_B.weight`
//!   (or the prefix `transformer.`, or an adapter name before `.weight`), without alpha, so
//!   alpha = rank (musubi-tuner's `convert_lora.py`, `convert_from_diffusers`); an
//!   `<module>.alpha` key and `lora_down`/`lora_up` spellings are accepted too.
//!
//! The module names may be FramePack's or HunyuanVideo's ([`super::names`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::tensor::DType;

use super::names::{resolve, Vocabulary};
use super::{LoraError, UnmatchedReason};
use crate::weights::CheckpointFiles;

/// How a LoRA file spells its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `lora_unet_<flattened module>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    Kohya,
    /// `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (or prefix `transformer.`).
    Diffusers,
}

/// Which model's module names a LoRA file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleNames {
    /// FramePack's (= diffusers' HunyuanVideo) names.
    FramePack,
    /// Original HunyuanVideo names (`double_blocks`, `single_blocks`, ...).
    HunyuanVideo,
    /// Both.
    Mixed,
}

/// The detected format of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraFormat {
    /// Key spelling.
    pub keys: KeyStyle,
    /// Module vocabulary.
    pub modules: ModuleNames,
}

impl std::fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match self.keys {
            KeyStyle::Kohya => "kohya/musubi keys",
            KeyStyle::Diffusers => "diffusers/diffusion-pipe keys",
        };
        let modules = match self.modules {
            ModuleNames::FramePack => "FramePack module names",
            ModuleNames::HunyuanVideo => "HunyuanVideo module names",
            ModuleNames::Mixed => "FramePack and HunyuanVideo module names",
        };
        write!(f, "{keys}, {modules}")
    }
}

/// The factors of one LoRA module as they apply to one FramePack module.
#[derive(Debug, Clone)]
pub(crate) struct Patch {
    /// The `down` key (`[rank, in, ...]`).
    pub down_key: String,
    /// The `up` key (`[rows, rank, 1...]`).
    pub up_key: String,
    /// Stored shape of `down`.
    pub down_shape: Vec<usize>,
    /// Stored shape of `up`.
    pub up_shape: Vec<usize>,
    /// The rows of `up` this module takes, in order.
    pub rows: Vec<Range<usize>>,
    /// `alpha` (the rank when the file has none).
    pub alpha: f32,
}

impl Patch {
    pub fn rank(&self) -> usize {
        self.down_shape[0]
    }

    /// How many rows of `up` this module takes.
    pub fn out_rows(&self) -> usize {
        self.rows.iter().map(|r| r.len()).sum()
    }

    /// The `up` key with the rows it takes when those are not all of them.
    pub fn up_label(&self) -> String {
        if self.rows.len() == 1 && self.rows[0] == (0..self.up_shape[0]) {
            self.up_key.clone()
        } else {
            let rows: Vec<String> = self
                .rows
                .iter()
                .map(|r| format!("{}..{}", r.start, r.end))
                .collect();
            format!("{}[rows {}]", self.up_key, rows.join(", "))
        }
    }
}

/// A LoRA key or module that patches nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// The LoRA file.
    pub file: PathBuf,
    /// The key (or LoRA module name).
    pub key: String,
    /// Why it is unused.
    pub reason: UnmatchedReason,
}

/// The keys of one LoRA module, gathered while parsing.
#[derive(Default)]
struct Group {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

impl Group {
    fn keys(&self) -> impl Iterator<Item = &String> {
        [&self.down, &self.up, &self.alpha].into_iter().flatten()
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// A parsed LoRA file: its detected format and, for every FramePack module it patches, the
/// keys and geometry of the factors.
///
/// The tensors themselves stay in the memory-mapped file until a merge or an adapter needs
/// them, so a parsed LoRA costs only its header.
pub struct LoraFile {
    path: PathBuf,
    files: CheckpointFiles,
    format: LoraFormat,
    patches: BTreeMap<String, Vec<Patch>>,
    unmatched: Vec<Unmatched>,
}

impl std::fmt::Debug for LoraFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("modules", &self.patches.len())
            .field("unmatched", &self.unmatched.len())
            .finish()
    }
}

impl LoraFile {
    /// Opens and parses a LoRA `.safetensors` file.
    ///
    /// Errors: the format is not recognized ([`LoraError::UnknownFormat`], with sample keys),
    /// no module is a FramePack/HunyuanVideo layer ([`LoraError::NoTargets`]), a module's
    /// factors are inconsistent ([`LoraError::RankMismatch`], [`LoraError::FusedSplit`],
    /// [`LoraError::BadAlpha`]). Keys that match no module are kept in [`LoraFile::unmatched`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoraError> {
        let path = path.as_ref().to_path_buf();
        let files = CheckpointFiles::open(&path)?;
        let keys = files.keys();
        let Some(style) = detect(&keys) else {
            return Err(LoraError::UnknownFormat {
                path,
                count: keys.len(),
                sample: keys.into_iter().take(6).collect(),
            });
        };

        let mut unmatched = Vec::new();
        let mut skip = |key: &str, reason: UnmatchedReason| {
            unmatched.push(Unmatched {
                file: path.clone(),
                key: key.to_string(),
                reason,
            })
        };
        // LoRA module name (as spelled in the file) -> its keys.
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for key in &keys {
            let parsed = match style {
                KeyStyle::Kohya => parse_kohya(key),
                KeyStyle::Diffusers => parse_diffusers(key),
            };
            let (module, role) = match parsed {
                Ok(parsed) => parsed,
                Err(reason) => {
                    skip(key, reason);
                    continue;
                }
            };
            let group = groups.entry(module).or_default();
            let slot = match role {
                Role::Down => &mut group.down,
                Role::Up => &mut group.up,
                Role::Alpha => &mut group.alpha,
            };
            if slot.is_some() {
                skip(key, UnmatchedReason::Duplicate);
            } else {
                *slot = Some(key.clone());
            }
        }

        let mut patches: BTreeMap<String, Vec<Patch>> = BTreeMap::new();
        let (mut framepack, mut hunyuan) = (false, false);
        for (module, group) in &groups {
            let (Some(down_key), Some(up_key)) = (&group.down, &group.up) else {
                for key in group.keys() {
                    skip(key, UnmatchedReason::IncompletePair);
                }
                continue;
            };
            let Some((vocabulary, targets)) = resolve(strip_style_prefix(style, module)) else {
                for key in group.keys() {
                    skip(key, UnmatchedReason::NoSuchModule);
                }
                continue;
            };
            match vocabulary {
                Vocabulary::FramePack => framepack = true,
                Vocabulary::HunyuanVideo => hunyuan = true,
            }
            let down_shape = files.stored_shape(down_key)?;
            let up_shape = files.stored_shape(up_key)?;
            check_rank(&path, down_key, &down_shape, up_key, &up_shape)?;
            let rank = down_shape[0];
            let alpha = match &group.alpha {
                Some(key) => read_alpha(&files, &path, key)?,
                None => rank as f32,
            };
            for target in targets {
                let rows = target
                    .rows
                    .ranges(up_shape[0], down_shape[1])
                    .map_err(|reason| LoraError::FusedSplit {
                        path: path.clone(),
                        key: up_key.clone(),
                        rows: up_shape[0],
                        reason,
                    })?;
                if target.rows.is_split() && down_shape[2..].iter().any(|&d| d != 1) {
                    return Err(LoraError::FusedSplit {
                        path: path.clone(),
                        key: down_key.clone(),
                        rows: up_shape[0],
                        reason: format!(
                            "a fused linear projection needs a matrix down factor, not {down_shape:?}"
                        ),
                    });
                }
                patches.entry(target.module).or_default().push(Patch {
                    down_key: down_key.clone(),
                    up_key: up_key.clone(),
                    down_shape: down_shape.clone(),
                    up_shape: up_shape.clone(),
                    rows,
                    alpha,
                });
            }
        }

        if patches.is_empty() {
            let mut sample: Vec<String> = groups.keys().take(6).cloned().collect();
            if sample.is_empty() {
                sample = keys.into_iter().take(6).collect();
            }
            return Err(LoraError::NoTargets { path, sample });
        }
        let modules = match (framepack, hunyuan) {
            (true, true) => ModuleNames::Mixed,
            (false, true) => ModuleNames::HunyuanVideo,
            _ => ModuleNames::FramePack,
        };
        Ok(Self {
            path,
            files,
            format: LoraFormat {
                keys: style,
                modules,
            },
            patches,
            unmatched,
        })
    }

    /// The file this LoRA was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The detected format.
    pub fn format(&self) -> LoraFormat {
        self.format
    }

    /// The FramePack modules this LoRA patches (checkpoint keys without `.weight`), sorted.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.patches.keys().map(String::as_str)
    }

    /// Whether this LoRA patches `module`.
    pub fn patches(&self, module: &str) -> bool {
        self.patches.contains_key(module)
    }

    /// The rank of each LoRA factor pair patching `module` (several when more than one module
    /// of the file lands on it).
    pub fn ranks(&self, module: &str) -> Vec<usize> {
        self.patches
            .get(module)
            .map(|p| p.iter().map(Patch::rank).collect())
            .unwrap_or_default()
    }

    /// Keys of the file that patch no module, and why (found while parsing; modules absent
    /// from the model being loaded are reported by [`super::LoraSource::finish`]).
    pub fn unmatched(&self) -> &[Unmatched] {
        &self.unmatched
    }

    pub(crate) fn patches_of(&self, module: &str) -> &[Patch] {
        self.patches.get(module).map(Vec::as_slice).unwrap_or(&[])
    }

    pub(crate) fn all_patches(&self) -> impl Iterator<Item = (&str, &Patch)> {
        self.patches
            .iter()
            .flat_map(|(m, ps)| ps.iter().map(move |p| (m.as_str(), p)))
    }

    /// Reads a factor as fp32 values in its stored (row-major) layout.
    pub(crate) fn read_f32(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, LoraError> {
        let data = self.files.read_data(key, shape, DType::F32)?;
        Ok(data.into_vec::<f32>().unwrap_or_default())
    }
}

/// Kohya when some key starts with `lora_unet_`; diffusers when some key has `lora_A` (or
/// `lora_B`) under the prefix `diffusion_model.` or `transformer.`; otherwise unknown.
fn detect(keys: &[String]) -> Option<KeyStyle> {
    if keys.iter().any(|k| k.starts_with("lora_unet_")) {
        return Some(KeyStyle::Kohya);
    }
    let diffusers = keys.iter().any(|k| {
        let prefixed = k.starts_with("diffusion_model.") || k.starts_with("transformer.");
        prefixed && (k.contains(".lora_A.") || k.contains(".lora_B."))
    });
    diffusers.then_some(KeyStyle::Diffusers)
}

/// `lora_unet_<flat>.{lora_down.weight, lora_up.weight, alpha}` -> (`lora_unet_<flat>`, role).
fn parse_kohya(key: &str) -> Result<(String, Role), UnmatchedReason> {
    let (name, suffix) = key.split_once('.').ok_or(UnmatchedReason::NotLora)?;
    if !name.starts_with("lora_unet_") {
        return Err(UnmatchedReason::NotTransformer);
    }
    let role = match suffix {
        "lora_down.weight" => Role::Down,
        "lora_up.weight" => Role::Up,
        "alpha" => Role::Alpha,
        _ => return Err(UnmatchedReason::Unsupported),
    };
    Ok((name.to_string(), role))
}

/// `{diffusion_model|transformer}.<module>.lora_A[.<adapter>].weight` (B, lora_down,
/// lora_up) or `.<module>.alpha` -> (`<prefix>.<module>`, role).
fn parse_diffusers(key: &str) -> Result<(String, Role), UnmatchedReason> {
    let (prefix, body) = key.split_once('.').ok_or(UnmatchedReason::NotLora)?;
    if prefix != "diffusion_model" && prefix != "transformer" {
        return Err(UnmatchedReason::NotTransformer);
    }
    if let Some(module) = body.strip_suffix(".alpha") {
        return Ok((format!("{prefix}.{module}"), Role::Alpha));
    }
    for (marker, role) in [
        (".lora_A.", Role::Down),
        (".lora_B.", Role::Up),
        (".lora_down.", Role::Down),
        (".lora_up.", Role::Up),
    ] {
        if let Some(at) = body.find(marker) {
            let rest = &body[at + marker.len()..];
            // `weight`, or `<adapter name>.weight` (PEFT's `lora_A.default.weight`).
            let plain = rest == "weight"
                || rest
                    .strip_suffix(".weight")
                    .is_some_and(|adapter| !adapter.contains('.'));
            if !plain {
                return Err(UnmatchedReason::Unsupported);
            }
            return Ok((format!("{prefix}.{}", &body[..at]), role));
        }
    }
    Err(UnmatchedReason::Unsupported)
}

/// The module part of a group name: without `lora_unet_` or the diffusers prefix.
fn strip_style_prefix(style: KeyStyle, module: &str) -> &str {
    match style {
        KeyStyle::Kohya => module.strip_prefix("lora_unet_").unwrap_or(module),
        KeyStyle::Diffusers => module.split_once('.').map_or(module, |(_, m)| m),
    }
}

/// down `[rank, in, 1...]` or `[rank, in, k...]` (a conv), up `[out, rank, 1...]`.
fn check_rank(
    path: &Path,
    down_key: &str,
    down: &[usize],
    up_key: &str,
    up: &[usize],
) -> Result<(), LoraError> {
    let ok = down.len() >= 2
        && up.len() >= 2
        && down[0] > 0
        && up[1] == down[0]
        && up[2..].iter().all(|&d| d == 1);
    if ok {
        Ok(())
    } else {
        Err(LoraError::RankMismatch {
            path: path.to_path_buf(),
            down_key: down_key.to_string(),
            down_shape: down.to_vec(),
            up_key: up_key.to_string(),
            up_shape: up.to_vec(),
        })
    }
}

fn read_alpha(files: &CheckpointFiles, path: &Path, key: &str) -> Result<f32, LoraError> {
    let shape = files.stored_shape(key)?;
    if shape.iter().product::<usize>() != 1 {
        return Err(LoraError::BadAlpha {
            path: path.to_path_buf(),
            key: key.to_string(),
            shape,
        });
    }
    let value = files
        .read_data(key, &shape, DType::F32)?
        .into_vec::<f32>()
        .unwrap_or_default();
    Ok(value.first().copied().unwrap_or(f32::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn formats_are_detected_from_key_names() {
        assert_eq!(
            detect(&keys(&["lora_unet_transformer_blocks_0_attn_to_q.alpha"])),
            Some(KeyStyle::Kohya)
        );
        assert_eq!(
            detect(&keys(&[
                "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight"
            ])),
            Some(KeyStyle::Diffusers)
        );
        assert_eq!(
            detect(&keys(&[
                "transformer.transformer_blocks.0.attn.to_q.lora_B.default.weight"
            ])),
            Some(KeyStyle::Diffusers)
        );
        // lora_A without a transformer prefix (e.g. a text-encoder LoRA), or other families.
        assert_eq!(
            detect(&keys(&["text_encoder.layers.0.q.lora_A.weight"])),
            None
        );
        assert_eq!(detect(&keys(&["blocks.0.hada_w1_a"])), None);
    }

    #[test]
    fn keys_parse_into_module_and_role() {
        let (m, r) = parse_kohya("lora_unet_single_blocks_3_linear1.lora_up.weight").unwrap();
        assert_eq!(m, "lora_unet_single_blocks_3_linear1");
        assert!(matches!(r, Role::Up));
        assert_eq!(
            parse_kohya("lora_te_text_model.lora_up.weight").unwrap_err(),
            UnmatchedReason::NotTransformer
        );
        assert_eq!(
            parse_kohya("lora_unet_x.dora_scale").unwrap_err(),
            UnmatchedReason::Unsupported
        );
        let (m, r) =
            parse_diffusers("transformer.transformer_blocks.0.attn.to_q.lora_A.default.weight")
                .unwrap();
        assert_eq!(m, "transformer.transformer_blocks.0.attn.to_q");
        assert!(matches!(r, Role::Down));
        let (m, r) = parse_diffusers("diffusion_model.single_blocks.1.linear1.alpha").unwrap();
        assert_eq!(m, "diffusion_model.single_blocks.1.linear1");
        assert!(matches!(r, Role::Alpha));
        assert_eq!(
            parse_diffusers("text_encoder.x.lora_A.weight").unwrap_err(),
            UnmatchedReason::NotTransformer
        );
    }
}
