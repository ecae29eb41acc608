//! Module names: FramePack's linear layers, and the HunyuanVideo names that land on them.
//!
//! LoRA files name the module they patch in one of two spellings: dotted (`transformer_blocks.0.
//! attn.to_q`, diffusers and diffusion-pipe) or flattened with underscores (`lora_unet_
//! transformer_blocks_0_attn_to_q`, kohya and musubi-tuner). Flattening loses the dots, so names
//! are matched in their flattened form against the tables below, which give back the dotted
//! FramePack name. Block indices are free (`{}`); whether the model has that block is only known
//! when it loads.
//!
//! Two vocabularies are understood:
//! - FramePack's own (= diffusers' `HunyuanVideoTransformer3DModel` plus FramePack's
//!   `clean_x_embedder` and `image_projection`), listed in [`FRAMEPACK_LINEARS`].
//! - The original HunyuanVideo names (`double_blocks`, `single_blocks`, ...), used by LoRAs
//!   trained with musubi-tuner or diffusion-pipe on HunyuanVideo, listed in [`HUNYUAN_LINEARS`].
//!   The table follows FramePack-eichi's `convert_hunyuan_to_framepack`
//!   (`webui/lora_utils/lora_utils.py`) for the blocks and diffusers'
//!   `scripts/convert_hunyuan_video_to_diffusers.py` for the rest; fused projections are split
//!   by rows of the LoRA's `up` factor (see [`Rows`]).

use std::ops::Range;

/// Every linear layer (and Conv3d patch embedding) of the packed transformer, by its checkpoint
/// name without `.weight`; `{}` is a block index.
pub const FRAMEPACK_LINEARS: &[&str] = &[
    "x_embedder.proj",
    "clean_x_embedder.proj",
    "clean_x_embedder.proj_2x",
    "clean_x_embedder.proj_4x",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "time_text_embed.text_embedder.linear_2",
    "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "context_embedder.time_text_embed.text_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2",
    "context_embedder.proj_in",
    "context_embedder.token_refiner.refiner_blocks.{}.attn.to_q",
    "context_embedder.token_refiner.refiner_blocks.{}.attn.to_k",
    "context_embedder.token_refiner.refiner_blocks.{}.attn.to_v",
    "context_embedder.token_refiner.refiner_blocks.{}.attn.to_out.0",
    "context_embedder.token_refiner.refiner_blocks.{}.ff.net.0.proj",
    "context_embedder.token_refiner.refiner_blocks.{}.ff.net.2",
    "context_embedder.token_refiner.refiner_blocks.{}.norm_out.linear",
    "image_projection.up",
    "image_projection.down",
    "transformer_blocks.{}.norm1.linear",
    "transformer_blocks.{}.norm1_context.linear",
    "transformer_blocks.{}.attn.to_q",
    "transformer_blocks.{}.attn.to_k",
    "transformer_blocks.{}.attn.to_v",
    "transformer_blocks.{}.attn.add_q_proj",
    "transformer_blocks.{}.attn.add_k_proj",
    "transformer_blocks.{}.attn.add_v_proj",
    "transformer_blocks.{}.attn.to_out.0",
    "transformer_blocks.{}.attn.to_add_out",
    "transformer_blocks.{}.ff.net.0.proj",
    "transformer_blocks.{}.ff.net.2",
    "transformer_blocks.{}.ff_context.net.0.proj",
    "transformer_blocks.{}.ff_context.net.2",
    "single_transformer_blocks.{}.norm.linear",
    "single_transformer_blocks.{}.attn.to_q",
    "single_transformer_blocks.{}.attn.to_k",
    "single_transformer_blocks.{}.attn.to_v",
    "single_transformer_blocks.{}.proj_mlp",
    "single_transformer_blocks.{}.proj_out",
    "norm_out.linear",
    "proj_out",
];

/// Which rows of a LoRA's `up` factor `[rows, rank]` belong to one FramePack module.
///
/// HunyuanVideo fuses projections that FramePack keeps apart; the fused weight stacks the parts
/// along its output rows, so `up @ down` splits the same way and each part is `up[rows] @ down`
/// with the shared `down` and `alpha`. Part sizes come from `down`'s input width `in` (the
/// hidden size, 3072 in FramePack): FramePack-eichi hard-codes 3072 and 21504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// All rows: the module is not fused.
    All,
    /// Part `0..3` (q, k, v) of a fused QKV projection with `3·in` rows.
    Qkv(usize),
    /// Part `0..4` (q, k, v, MLP) of a single block's `linear1` with `3·in + mlp` rows: q, k and v
    /// have `in` rows each, the MLP the rest (12288 in FramePack).
    QkvMlp(usize),
    /// The two halves swapped: HunyuanVideo's `final_layer.adaLN_modulation.1` outputs
    /// `[shift; scale]`, FramePack's `norm_out.linear` `[scale; shift]`.
    SwapHalves,
}

impl Rows {
    /// The row ranges of an `up` factor with `rows` rows, for a LoRA whose `down` reads `input`
    /// features; `Err` says what the fused tensor should look like.
    pub fn ranges(self, rows: usize, input: usize) -> Result<Vec<Range<usize>>, String> {
        match self {
            Rows::All => Ok(single(0..rows)),
            Rows::Qkv(part) => {
                if rows != 3 * input {
                    return Err(format!(
                        "a fused QKV projection of input width {input} needs {} rows (3 × {input})",
                        3 * input
                    ));
                }
                Ok(single(part * input..(part + 1) * input))
            }
            Rows::QkvMlp(part) => {
                if rows <= 3 * input {
                    return Err(format!(
                        "a fused QKV+MLP projection of input width {input} needs more than {} rows (3 × {input} + MLP)",
                        3 * input
                    ));
                }
                Ok(if part < 3 {
                    single(part * input..(part + 1) * input)
                } else {
                    single(3 * input..rows)
                })
            }
            Rows::SwapHalves => {
                if !rows.is_multiple_of(2) {
                    return Err("a [shift; scale] modulation needs an even number of rows".into());
                }
                let half = rows / 2;
                Ok(vec![half..rows, 0..half])
            }
        }
    }

    /// Whether the module takes a part of a fused tensor (its row count depends on `down`).
    pub fn is_split(self) -> bool {
        !matches!(self, Rows::All)
    }
}

/// A list of one row range.
fn single(rows: Range<usize>) -> Vec<Range<usize>> {
    std::iter::once(rows).collect()
}

/// One HunyuanVideo module and the FramePack module(s) it lands on.
pub struct HunyuanName {
    /// The HunyuanVideo name (dotted, `{}` = block index).
    pub hunyuan: &'static str,
    /// The FramePack module(s) and which rows of `up` each takes.
    pub framepack: &'static [(&'static str, Rows)],
}

const fn one(hunyuan: &'static str, framepack: &'static [(&'static str, Rows)]) -> HunyuanName {
    HunyuanName { hunyuan, framepack }
}

/// Every linear layer of HunyuanVideo's transformer and where it lands in FramePack.
///
/// Everything HunyuanVideo has maps somewhere: FramePack is HunyuanVideo plus two embedders
/// (`clean_x_embedder.*`, `image_projection.*`) that no HunyuanVideo LoRA can reach. Its norm
/// weights (`img_attn_q_norm`, `q_norm`, ...) are vectors, not LoRA targets; a LoRA key naming
/// them is reported as matching no module. FramePack-eichi converts the `double_blocks` and
/// `single_blocks` rows only and drops the others (no HunyuanVideo LoRA trainer targets them).
pub const HUNYUAN_LINEARS: &[HunyuanName] = &[
    one(
        "double_blocks.{}.img_mod.linear",
        &[("transformer_blocks.{}.norm1.linear", Rows::All)],
    ),
    one(
        "double_blocks.{}.img_attn_qkv",
        &[
            ("transformer_blocks.{}.attn.to_q", Rows::Qkv(0)),
            ("transformer_blocks.{}.attn.to_k", Rows::Qkv(1)),
            ("transformer_blocks.{}.attn.to_v", Rows::Qkv(2)),
        ],
    ),
    one(
        "double_blocks.{}.img_attn_proj",
        &[("transformer_blocks.{}.attn.to_out.0", Rows::All)],
    ),
    one(
        "double_blocks.{}.img_mlp.fc1",
        &[("transformer_blocks.{}.ff.net.0.proj", Rows::All)],
    ),
    one(
        "double_blocks.{}.img_mlp.fc2",
        &[("transformer_blocks.{}.ff.net.2", Rows::All)],
    ),
    one(
        "double_blocks.{}.txt_mod.linear",
        &[("transformer_blocks.{}.norm1_context.linear", Rows::All)],
    ),
    one(
        "double_blocks.{}.txt_attn_qkv",
        &[
            ("transformer_blocks.{}.attn.add_q_proj", Rows::Qkv(0)),
            ("transformer_blocks.{}.attn.add_k_proj", Rows::Qkv(1)),
            ("transformer_blocks.{}.attn.add_v_proj", Rows::Qkv(2)),
        ],
    ),
    one(
        "double_blocks.{}.txt_attn_proj",
        &[("transformer_blocks.{}.attn.to_add_out", Rows::All)],
    ),
    one(
        "double_blocks.{}.txt_mlp.fc1",
        &[("transformer_blocks.{}.ff_context.net.0.proj", Rows::All)],
    ),
    one(
        "double_blocks.{}.txt_mlp.fc2",
        &[("transformer_blocks.{}.ff_context.net.2", Rows::All)],
    ),
    one(
        "single_blocks.{}.linear1",
        &[
            ("single_transformer_blocks.{}.attn.to_q", Rows::QkvMlp(0)),
            ("single_transformer_blocks.{}.attn.to_k", Rows::QkvMlp(1)),
            ("single_transformer_blocks.{}.attn.to_v", Rows::QkvMlp(2)),
            ("single_transformer_blocks.{}.proj_mlp", Rows::QkvMlp(3)),
        ],
    ),
    one(
        "single_blocks.{}.linear2",
        &[("single_transformer_blocks.{}.proj_out", Rows::All)],
    ),
    one(
        "single_blocks.{}.modulation.linear",
        &[("single_transformer_blocks.{}.norm.linear", Rows::All)],
    ),
    one("img_in.proj", &[("x_embedder.proj", Rows::All)]),
    one(
        "time_in.mlp.0",
        &[("time_text_embed.timestep_embedder.linear_1", Rows::All)],
    ),
    one(
        "time_in.mlp.2",
        &[("time_text_embed.timestep_embedder.linear_2", Rows::All)],
    ),
    one(
        "guidance_in.mlp.0",
        &[("time_text_embed.guidance_embedder.linear_1", Rows::All)],
    ),
    one(
        "guidance_in.mlp.2",
        &[("time_text_embed.guidance_embedder.linear_2", Rows::All)],
    ),
    one(
        "vector_in.in_layer",
        &[("time_text_embed.text_embedder.linear_1", Rows::All)],
    ),
    one(
        "vector_in.out_layer",
        &[("time_text_embed.text_embedder.linear_2", Rows::All)],
    ),
    one(
        "txt_in.input_embedder",
        &[("context_embedder.proj_in", Rows::All)],
    ),
    one(
        "txt_in.t_embedder.mlp.0",
        &[(
            "context_embedder.time_text_embed.timestep_embedder.linear_1",
            Rows::All,
        )],
    ),
    one(
        "txt_in.t_embedder.mlp.2",
        &[(
            "context_embedder.time_text_embed.timestep_embedder.linear_2",
            Rows::All,
        )],
    ),
    one(
        "txt_in.c_embedder.linear_1",
        &[(
            "context_embedder.time_text_embed.text_embedder.linear_1",
            Rows::All,
        )],
    ),
    one(
        "txt_in.c_embedder.linear_2",
        &[(
            "context_embedder.time_text_embed.text_embedder.linear_2",
            Rows::All,
        )],
    ),
    one(
        "txt_in.individual_token_refiner.blocks.{}.self_attn_qkv",
        &[
            (
                "context_embedder.token_refiner.refiner_blocks.{}.attn.to_q",
                Rows::Qkv(0),
            ),
            (
                "context_embedder.token_refiner.refiner_blocks.{}.attn.to_k",
                Rows::Qkv(1),
            ),
            (
                "context_embedder.token_refiner.refiner_blocks.{}.attn.to_v",
                Rows::Qkv(2),
            ),
        ],
    ),
    one(
        "txt_in.individual_token_refiner.blocks.{}.self_attn_proj",
        &[(
            "context_embedder.token_refiner.refiner_blocks.{}.attn.to_out.0",
            Rows::All,
        )],
    ),
    one(
        "txt_in.individual_token_refiner.blocks.{}.mlp.fc1",
        &[(
            "context_embedder.token_refiner.refiner_blocks.{}.ff.net.0.proj",
            Rows::All,
        )],
    ),
    one(
        "txt_in.individual_token_refiner.blocks.{}.mlp.fc2",
        &[(
            "context_embedder.token_refiner.refiner_blocks.{}.ff.net.2",
            Rows::All,
        )],
    ),
    one(
        "txt_in.individual_token_refiner.blocks.{}.adaLN_modulation.1",
        &[(
            "context_embedder.token_refiner.refiner_blocks.{}.norm_out.linear",
            Rows::All,
        )],
    ),
    one("final_layer.linear", &[("proj_out", Rows::All)]),
    one(
        "final_layer.adaLN_modulation.1",
        &[("norm_out.linear", Rows::SwapHalves)],
    ),
];

/// Which vocabulary a LoRA module name resolved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary {
    /// FramePack / diffusers names.
    FramePack,
    /// Original HunyuanVideo names.
    HunyuanVideo,
}

/// A resolved FramePack module (checkpoint key without `.weight`) and its rows of `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The FramePack module.
    pub module: String,
    /// Which rows of the LoRA's `up` it takes.
    pub rows: Rows,
}

/// Resolves a LoRA module name (dotted or flattened, without prefix) to the FramePack
/// module(s) it patches; `None` when it names no linear layer of either vocabulary.
pub fn resolve(name: &str) -> Option<(Vocabulary, Vec<Target>)> {
    let flat = name.replace('.', "_");
    for template in FRAMEPACK_LINEARS {
        if let Some(index) = match_template(&flat, template) {
            let target = Target {
                module: fill(template, index),
                rows: Rows::All,
            };
            return Some((Vocabulary::FramePack, vec![target]));
        }
    }
    for entry in HUNYUAN_LINEARS {
        if let Some(index) = match_template(&flat, entry.hunyuan) {
            let targets = entry
                .framepack
                .iter()
                .map(|&(template, rows)| Target {
                    module: fill(template, index),
                    rows,
                })
                .collect();
            return Some((Vocabulary::HunyuanVideo, targets));
        }
    }
    None
}

/// Matches a flattened name against a dotted template; returns the block index (`""` for a
/// template without one).
fn match_template<'a>(flat: &'a str, template: &str) -> Option<&'a str> {
    let template = template.replace('.', "_");
    match template.split_once("{}") {
        None => (flat == template).then_some(""),
        Some((head, tail)) => {
            let index = flat.strip_prefix(head)?.strip_suffix(tail)?;
            (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then_some(index)
        }
    }
}

fn fill(template: &str, index: &str) -> String {
    template.replace("{}", index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framepack_names_resolve_to_themselves_in_both_spellings() {
        for template in FRAMEPACK_LINEARS {
            let name = fill(template, "17");
            let (vocabulary, targets) = resolve(&name).unwrap();
            assert_eq!(vocabulary, Vocabulary::FramePack);
            assert_eq!(targets.len(), 1);
            assert_eq!(targets[0].module, name, "{template}");
            let (_, flat) = resolve(&name.replace('.', "_")).unwrap();
            assert_eq!(flat[0].module, name, "{template} flattened");
        }
    }

    #[test]
    fn no_two_templates_share_a_flattened_name() {
        let mut all: Vec<String> = FRAMEPACK_LINEARS
            .iter()
            .copied()
            .chain(HUNYUAN_LINEARS.iter().map(|h| h.hunyuan))
            .map(|t| t.replace('.', "_"))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn hunyuan_names_land_on_framepack_modules() {
        let (vocabulary, t) = resolve("double_blocks_3_img_attn_qkv").unwrap();
        assert_eq!(vocabulary, Vocabulary::HunyuanVideo);
        let modules: Vec<_> = t.iter().map(|t| (t.module.as_str(), t.rows)).collect();
        assert_eq!(
            modules,
            [
                ("transformer_blocks.3.attn.to_q", Rows::Qkv(0)),
                ("transformer_blocks.3.attn.to_k", Rows::Qkv(1)),
                ("transformer_blocks.3.attn.to_v", Rows::Qkv(2)),
            ]
        );
        let (_, t) = resolve("single_blocks.12.linear1").unwrap();
        assert_eq!(t[3].module, "single_transformer_blocks.12.proj_mlp");
        let (_, t) = resolve("double_blocks_0_txt_mlp_fc2").unwrap();
        assert_eq!(t[0].module, "transformer_blocks.0.ff_context.net.2");
        let (_, t) = resolve("txt_in.individual_token_refiner.blocks.1.mlp.fc1").unwrap();
        assert_eq!(
            t[0].module,
            "context_embedder.token_refiner.refiner_blocks.1.ff.net.0.proj"
        );
        // Every FramePack target of the table is a FramePack linear.
        for entry in HUNYUAN_LINEARS {
            for (template, _) in entry.framepack {
                assert!(FRAMEPACK_LINEARS.contains(template), "{template}");
            }
        }
    }

    #[test]
    fn unknown_and_malformed_names_do_not_resolve() {
        for name in [
            "double_blocks_0_img_attn_q_norm",
            "transformer_blocks_x_attn_to_q",
            "transformer_blocks__attn_to_q",
            "transformer_blocks_1_2_attn_to_q",
            "blocks_0_self_attn_q",
            "single_transformer_blocks_0_attn_to_out_0",
        ] {
            assert!(resolve(name).is_none(), "{name}");
        }
    }

    #[test]
    fn fused_rows_split_by_input_width() {
        assert_eq!(Rows::Qkv(1).ranges(96, 32).unwrap(), vec![32..64]);
        assert!(Rows::Qkv(0).ranges(95, 32).is_err());
        assert_eq!(Rows::QkvMlp(2).ranges(224, 32).unwrap(), vec![64..96]);
        assert_eq!(Rows::QkvMlp(3).ranges(224, 32).unwrap(), vec![96..224]);
        assert!(Rows::QkvMlp(3).ranges(96, 32).is_err());
        assert_eq!(
            Rows::QkvMlp(3).ranges(21504, 3072).unwrap(),
            vec![9216..21504]
        );
        assert_eq!(Rows::SwapHalves.ranges(8, 4).unwrap(), vec![4..8, 0..4]);
        assert_eq!(Rows::All.ranges(7, 3).unwrap(), vec![0..7]);
    }
}
