//! LoRA on the tiny transformer: synthetic LoRA files in every supported format, merged weights
//! against `W + m · (up @ down) · alpha / rank` computed here in f64, the HunyuanVideo splits
//! against an explicit fused construction, adapters against merging, and the error paths.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};
use framepack_models::lora::{
    KeyStyle, LoraError, LoraFile, LoraSet, LoraSource, ModuleNames, UnmatchedReason,
};
use framepack_models::transformer::{
    ContextGroup, FramePackTransformer, LoadOptions, TransformerConfig, TransformerInputs,
};
use framepack_models::weights::{CheckpointFiles, SafetensorsSource, TensorSource, WeightError};
use framepack_models::{CpuBackend as B, ModelError};
use safetensors::{tensor::TensorView, Dtype};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const HIDDEN: usize = 32;
const MLP: usize = 128;

fn model_path() -> String {
    format!("{FIXTURES}/transformer_tiny.safetensors")
}

// ---------------------------------------------------------------------------------------------
// Synthetic LoRA files.

/// Deterministic values in `[-amp, amp]` (splitmix64).
fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// One LoRA module's factors, as written to a file.
#[derive(Clone)]
struct Pair {
    down: Vec<f32>,
    down_shape: Vec<usize>,
    up: Vec<f32>,
    up_shape: Vec<usize>,
    alpha: Option<f32>,
}

impl Pair {
    /// Random factors: down `[rank, in...]`, up `[out, rank]`.
    fn random(out: usize, input: &[usize], rank: usize, alpha: Option<f32>, seed: u64) -> Self {
        let mut down_shape = vec![rank];
        down_shape.extend_from_slice(input);
        let n_in: usize = input.iter().product();
        Self {
            down: values(rank * n_in, seed, 0.3),
            down_shape,
            up: values(out * rank, seed ^ 0xABCD, 0.3),
            up_shape: vec![out, rank],
            alpha,
        }
    }

    fn rank(&self) -> usize {
        self.down_shape[0]
    }

    /// `m · (up[rows] @ down) · alpha / rank`, `[rows, in]` in f64.
    fn delta(&self, rows: Range<usize>, multiplier: f64) -> Vec<f64> {
        let rank = self.rank();
        let n_in = self.down.len() / rank;
        let scale = multiplier * self.alpha.unwrap_or(rank as f32) as f64 / rank as f64;
        let mut out = vec![0.0; rows.len() * n_in];
        for (o, row) in rows.enumerate() {
            for r in 0..rank {
                let u = self.up[row * rank + r] as f64;
                for i in 0..n_in {
                    out[o * n_in + i] += u * self.down[r * n_in + i] as f64 * scale;
                }
            }
        }
        out
    }
}

#[derive(Default)]
struct LoraWriter {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

impl LoraWriter {
    fn raw(&mut self, key: &str, shape: Vec<usize>, v: &[f32]) -> &mut Self {
        self.tensors
            .push((key.to_string(), Dtype::F32, shape, f32_bytes(v)));
        self
    }

    /// kohya/musubi: `lora_unet_<flat>.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    fn kohya(&mut self, module: &str, p: &Pair) -> &mut Self {
        let name = format!("lora_unet_{}", module.replace('.', "_"));
        self.raw(
            &format!("{name}.lora_down.weight"),
            p.down_shape.clone(),
            &p.down,
        );
        self.raw(&format!("{name}.lora_up.weight"), p.up_shape.clone(), &p.up);
        if let Some(alpha) = p.alpha {
            self.raw(&format!("{name}.alpha"), vec![], &[alpha]);
        }
        self
    }

    /// diffusers / diffusion-pipe: `<prefix>.<module>.lora_A<adapter>.weight`, stored in bf16
    /// when `bf16` (the values of `p` are then rounded to bf16 first by the caller).
    fn diffusers(&mut self, prefix: &str, module: &str, adapter: &str, p: &Pair) -> &mut Self {
        let base = format!("{prefix}.{module}");
        self.raw(
            &format!("{base}.lora_A{adapter}.weight"),
            p.down_shape.clone(),
            &p.down,
        );
        self.raw(
            &format!("{base}.lora_B{adapter}.weight"),
            p.up_shape.clone(),
            &p.up,
        );
        if let Some(alpha) = p.alpha {
            self.raw(&format!("{base}.alpha"), vec![], &[alpha]);
        }
        self
    }

    fn write(&self, path: &Path) -> PathBuf {
        let views: HashMap<String, TensorView> = self
            .tensors
            .iter()
            .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(&views, None).unwrap()).unwrap();
        path.to_path_buf()
    }
}

// ---------------------------------------------------------------------------------------------
// Weights and comparisons.

fn base() -> CheckpointFiles {
    CheckpointFiles::open(model_path()).unwrap()
}

fn stored(files: &CheckpointFiles, key: &str) -> (Vec<f32>, Vec<usize>) {
    let shape = files.stored_shape(key).unwrap();
    let data = files.read_data(key, &shape, DType::F32).unwrap();
    (data.into_vec::<f32>().unwrap(), shape)
}

/// Reads `key` through `src` as fp32, whatever its rank.
fn read_through<S: TensorSource<B>>(src: &mut S, key: &str, shape: &[usize]) -> Vec<f32> {
    let data = match *shape {
        [a] => src.tensor::<1>(key, [a], DType::F32).unwrap().into_data(),
        [a, b] => src
            .tensor::<2>(key, [a, b], DType::F32)
            .unwrap()
            .into_data(),
        [a, b, c, d, e] => src
            .tensor::<5>(key, [a, b, c, d, e], DType::F32)
            .unwrap()
            .into_data(),
        _ => panic!("unexpected rank for {key}"),
    };
    data.into_vec::<f32>().unwrap()
}

fn assert_close(actual: &[f32], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (a as f64 - e).abs() / e.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(worst <= tol, "{what}: error {worst:e} > {tol:e}");
}

/// `base + Σ deltas` in f64.
fn expected(base: &[f32], deltas: &[Vec<f64>]) -> Vec<f64> {
    let mut out: Vec<f64> = base.iter().map(|&v| v as f64).collect();
    for d in deltas {
        assert_eq!(d.len(), out.len());
        for (o, v) in out.iter_mut().zip(d) {
            *o += v;
        }
    }
    out
}

fn lora_source<'a>(set: &'a LoraSet) -> LoraSource<'a, SafetensorsSource<B>> {
    LoraSource::new(
        SafetensorsSource::<B>::open(model_path(), &Default::default()).unwrap(),
        set,
    )
}

/// The tiny model from `src`, no LoRA in the options (`src` may merge some).
fn load_tiny<S: TensorSource<B>>(
    src: S,
    dtype: DType,
) -> Result<FramePackTransformer<B>, ModelError> {
    let options = LoadOptions::new(dtype);
    FramePackTransformer::load(src, TransformerConfig::tiny(), &options).map(|(model, ..)| model)
}

fn load_base(dtype: DType) -> FramePackTransformer<B> {
    let src = SafetensorsSource::<B>::open(model_path(), &Default::default()).unwrap();
    load_tiny(src, dtype).unwrap()
}

fn load_merged(set: &LoraSet, dtype: DType) -> FramePackTransformer<B> {
    let mut src = lora_source(set);
    let model = load_tiny(&mut src, dtype).unwrap();
    let (inner, report) = src.finish();
    inner.finish(|_| false).unwrap();
    assert!(report.unmatched.is_empty(), "{report}");
    model
}

/// `(key, stored shape)` of every linear layer of the tiny model.
fn linears() -> Vec<(String, Vec<usize>)> {
    let mut model = load_base(DType::F32);
    model
        .lora_linears_mut()
        .iter()
        .map(|l| (l.key().to_string(), l.shape().to_vec()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Forward inputs (the parity fixture's).

fn vec1(io: &CheckpointFiles, key: &str) -> Vec<f32> {
    stored(io, key).0
}

fn inputs(io: &CheckpointFiles, batch: usize) -> TransformerInputs<B> {
    let dev = Default::default();
    let t5 = |k: &str| -> Tensor<B, 5> {
        io.read_stored::<B, 5>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    let t3 = |k: &str| -> Tensor<B, 3> {
        io.read_stored::<B, 3>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    let t2 = |k: &str| -> Tensor<B, 2> {
        io.read_stored::<B, 2>(k, DType::F32, &dev)
            .unwrap()
            .narrow(0, 0, batch)
    };
    let group = |l: &str, i: &str| {
        Some(ContextGroup {
            latents: t5(l),
            indices: vec1(io, i),
        })
    };
    TransformerInputs {
        latents: t5("latents"),
        latent_indices: vec1(io, "latent_indices"),
        timestep: vec1(io, "timestep")[..batch].to_vec(),
        guidance: vec1(io, "guidance")[..batch].to_vec(),
        text: t3("text"),
        text_lengths: vec1(io, "text_lengths")[..batch]
            .iter()
            .map(|&l| l as usize)
            .collect(),
        pooled_text: t2("pooled_text"),
        image_embeddings: t3("image_embeddings"),
        clean: group("clean", "clean_indices"),
        clean_2x: group("clean_2x", "clean_2x_indices"),
        clean_4x: group("clean_4x", "clean_4x_indices"),
    }
}

fn io() -> CheckpointFiles {
    CheckpointFiles::open(format!("{FIXTURES}/transformer_tiny_io.safetensors")).unwrap()
}

fn relative_l2(a: &Tensor<B, 5>, b: &Tensor<B, 5>) -> f64 {
    let diff = (a.clone() - b.clone()).powi_scalar(2).sum().into_scalar() as f64;
    let norm = b.clone().powi_scalar(2).sum().into_scalar() as f64;
    (diff / norm).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// A kohya LoRA on every linear layer (and patch embedding) of the model, ranks 1-4, with and
/// without alpha.
fn kohya_everywhere(dir: &Path, seed: u64) -> (PathBuf, Vec<(String, Vec<usize>, Pair)>) {
    let mut w = LoraWriter::default();
    let mut pairs = Vec::new();
    for (i, (key, shape)) in linears().into_iter().enumerate() {
        let rank = 1 + i % 4;
        let alpha = (i % 3 != 0).then_some(0.5 + i as f32 % 7.0);
        let pair = Pair::random(shape[0], &shape[1..], rank, alpha, seed + i as u64);
        w.kohya(&key, &pair);
        pairs.push((key, shape, pair));
    }
    (
        w.write(&dir.join(format!("kohya_{seed}.safetensors"))),
        pairs,
    )
}

#[test]
fn kohya_merge_is_w_plus_scaled_up_down_for_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (path, pairs) = kohya_everywhere(dir.path(), 1);
    let lora = LoraFile::open(&path).unwrap();
    assert_eq!(lora.format().keys, KeyStyle::Kohya);
    assert_eq!(lora.format().modules, ModuleNames::FramePack);
    assert!(lora.unmatched().is_empty());
    // Every matrix (and patch-embedding kernel) of the checkpoint is a layer the adapters can
    // reach, and this LoRA patches all 66 of them.
    let files = base();
    let matrices: BTreeSet<String> = files
        .manifest()
        .into_iter()
        .filter(|(k, meta)| k.ends_with(".weight") && meta.shape.len() >= 2)
        .map(|(k, _)| k.trim_end_matches(".weight").to_string())
        .collect();
    let layers: BTreeSet<String> = pairs.iter().map(|(k, _, _)| k.clone()).collect();
    assert_eq!(layers, matrices);
    assert_eq!(lora.modules().count(), 66);
    let m = 0.8;
    let set = LoraSet::new().with(lora, m as f32);

    let mut src = lora_source(&set);
    for (key, shape, pair) in &pairs {
        let weight_key = format!("{key}.weight");
        let (w, _) = stored(&files, &weight_key);
        let merged = read_through(&mut src, &weight_key, shape);
        let want = expected(&w, &[pair.delta(0..shape[0], m)]);
        assert_close(&merged, &want, 1e-5, &weight_key);
        // The LoRA changed the weight by much more than the tolerance.
        let change = merged
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(change > 1e-3, "{weight_key} unchanged");
        // Biases pass through untouched.
        let bias_key = format!("{key}.bias");
        let (b, bshape) = stored(&files, &bias_key);
        assert_eq!(read_through(&mut src, &bias_key, &bshape), b, "{bias_key}");
    }
    // An unpatched parameter is bit-identical.
    let (norm, nshape) = stored(&files, "transformer_blocks.0.attn.norm_q.weight");
    assert_eq!(
        read_through(&mut src, "transformer_blocks.0.attn.norm_q.weight", &nshape),
        norm
    );
    let (_, report) = src.finish();
    assert_eq!(report.applied.len(), pairs.len());
    assert!(report.unmatched.is_empty());
}

#[test]
fn diffusers_keys_with_both_prefixes_default_alpha_to_rank() {
    let dir = tempfile::tempdir().unwrap();
    let files = base();
    let targets = [
        (
            "diffusion_model",
            "",
            "transformer_blocks.1.attn.to_q",
            None,
        ),
        (
            "transformer",
            ".default",
            "single_transformer_blocks.0.proj_out",
            None,
        ),
        (
            "diffusion_model",
            "",
            "context_embedder.token_refiner.refiner_blocks.0.ff.net.2",
            Some(2.0),
        ),
    ];
    for (i, (prefix, adapter, module, alpha)) in targets.into_iter().enumerate() {
        let (w, shape) = stored(&files, &format!("{module}.weight"));
        let pair = Pair::random(shape[0], &shape[1..], 3, alpha, 40 + i as u64);
        let mut writer = LoraWriter::default();
        writer.diffusers(prefix, module, adapter, &pair);
        // A text-encoder key beside them is reported, not fatal.
        writer.raw(
            "text_encoder.layers.0.q.lora_A.weight",
            vec![3, 4],
            &[0.0; 12],
        );
        let path = writer.write(&dir.path().join(format!("d{i}.safetensors")));
        let lora = LoraFile::open(&path).unwrap();
        assert_eq!(lora.format().keys, KeyStyle::Diffusers);
        assert_eq!(lora.modules().collect::<Vec<_>>(), [module]);
        assert_eq!(lora.unmatched().len(), 1);
        assert_eq!(lora.unmatched()[0].reason, UnmatchedReason::NotTransformer);

        let set = LoraSet::new().with(lora, 1.0);
        let mut src = lora_source(&set);
        let merged = read_through(&mut src, &format!("{module}.weight"), &shape);
        // No alpha: scale 1 (alpha = rank); with alpha 2 and rank 3: 2/3.
        assert_close(
            &merged,
            &expected(&w, &[pair.delta(0..shape[0], 1.0)]),
            1e-5,
            module,
        );
    }
}

#[test]
fn several_loras_add_up_with_their_multipliers() {
    let dir = tempfile::tempdir().unwrap();
    let files = base();
    let shared = "transformer_blocks.0.ff.net.0.proj";
    let only_b = "single_transformer_blocks.1.attn.to_v";
    let (w_shared, s_shared) = stored(&files, &format!("{shared}.weight"));
    let (w_b, s_b) = stored(&files, &format!("{only_b}.weight"));

    let a = Pair::random(s_shared[0], &s_shared[1..], 4, Some(8.0), 7);
    let b1 = Pair::random(s_shared[0], &s_shared[1..], 2, None, 8);
    let b2 = Pair::random(s_b[0], &s_b[1..], 2, None, 9);
    let pa = LoraWriter::default()
        .kohya(shared, &a)
        .write(&dir.path().join("a.safetensors"));
    let pb = LoraWriter::default()
        .diffusers("diffusion_model", shared, "", &b1)
        .diffusers("diffusion_model", only_b, "", &b2)
        .write(&dir.path().join("b.safetensors"));
    let (ma, mb) = (0.7, -1.3);
    let set = LoraSet::open([(&pa, ma as f32), (&pb, mb as f32)]).unwrap();

    let mut src = lora_source(&set);
    let merged = read_through(&mut src, &format!("{shared}.weight"), &s_shared);
    let want = expected(
        &w_shared,
        &[a.delta(0..s_shared[0], ma), b1.delta(0..s_shared[0], mb)],
    );
    assert_close(&merged, &want, 1e-5, shared);
    let merged_b = read_through(&mut src, &format!("{only_b}.weight"), &s_b);
    assert_close(
        &merged_b,
        &expected(&w_b, &[b2.delta(0..s_b[0], mb)]),
        1e-5,
        only_b,
    );

    // Multiplier 0 leaves the weight as it is and is not reported as unmatched.
    let zero = LoraSet::open([(&pa, 0.0f32)]).unwrap();
    let mut src = lora_source(&zero);
    let unchanged = read_through(&mut src, &format!("{shared}.weight"), &s_shared);
    assert_eq!(unchanged, w_shared);
    let (_, report) = src.finish();
    assert!(report.applied.is_empty() && report.unmatched.is_empty());
}

/// `rows` of `base` stacked (row-major `[rows, in]`).
fn stack(parts: &[&[f32]]) -> Vec<f32> {
    parts.concat()
}

#[test]
fn hunyuan_fused_qkv_and_qkv_mlp_split_like_an_explicit_fused_weight() {
    let dir = tempfile::tempdir().unwrap();
    let files = base();
    let m = 0.9f64;
    let qkv = Pair::random(3 * HIDDEN, &[HIDDEN], 4, Some(2.0), 100);
    let txt_qkv = Pair::random(3 * HIDDEN, &[HIDDEN], 2, None, 101);
    let linear1 = Pair::random(3 * HIDDEN + MLP, &[HIDDEN], 3, Some(6.0), 102);
    let linear2 = Pair::random(HIDDEN, &[HIDDEN + MLP], 2, Some(1.0), 103);
    let img_mod = Pair::random(6 * HIDDEN, &[HIDDEN], 2, None, 104);
    let txt_fc1 = Pair::random(MLP, &[HIDDEN], 2, None, 105);
    let final_mod = Pair::random(2 * HIDDEN, &[HIDDEN], 2, None, 106);
    let refiner_qkv = Pair::random(3 * HIDDEN, &[HIDDEN], 2, None, 107);
    let path = LoraWriter::default()
        .kohya("double_blocks.0.img_attn_qkv", &qkv)
        .kohya("double_blocks.1.txt_attn_qkv", &txt_qkv)
        .kohya("single_blocks.1.linear1", &linear1)
        .kohya("single_blocks.0.linear2", &linear2)
        .kohya("double_blocks.0.img_mod.linear", &img_mod)
        .kohya("double_blocks.1.txt_mlp.fc1", &txt_fc1)
        .kohya("final_layer.adaLN_modulation.1", &final_mod)
        .kohya(
            "txt_in.individual_token_refiner.blocks.0.self_attn_qkv",
            &refiner_qkv,
        )
        .write(&dir.path().join("hv.safetensors"));
    let lora = LoraFile::open(&path).unwrap();
    assert_eq!(lora.format().modules, ModuleNames::HunyuanVideo);
    assert_eq!(lora.ranks("single_transformer_blocks.1.proj_mlp"), [3]);
    let set = LoraSet::new().with(lora, m as f32);
    let mut src = lora_source(&set);
    let mut merged = |key: &str| {
        let shape = files.stored_shape(key).unwrap();
        read_through(&mut src, key, &shape)
    };

    // The fused weight HunyuanVideo would hold, patched as HunyuanVideo would patch it, then
    // cut into FramePack's projections.
    let check_fused = |names: &[&str], pair: &Pair, merged_parts: Vec<Vec<f32>>| {
        let bases: Vec<Vec<f32>> = names.iter().map(|n| stored(&files, n).0).collect();
        let refs: Vec<&[f32]> = bases.iter().map(Vec::as_slice).collect();
        let fused = stack(&refs);
        let rows = fused.len() / pair.down_shape[1];
        let fused_patched = expected(&fused, &[pair.delta(0..rows, m)]);
        let mut at = 0;
        for (name, part) in names.iter().zip(merged_parts) {
            assert_close(&part, &fused_patched[at..at + part.len()], 1e-5, name);
            at += part.len();
        }
        assert_eq!(at, fused_patched.len());
    };

    let img = [
        "transformer_blocks.0.attn.to_q.weight",
        "transformer_blocks.0.attn.to_k.weight",
        "transformer_blocks.0.attn.to_v.weight",
    ];
    let parts = img.iter().map(|k| merged(k)).collect();
    check_fused(&img, &qkv, parts);

    let txt = [
        "transformer_blocks.1.attn.add_q_proj.weight",
        "transformer_blocks.1.attn.add_k_proj.weight",
        "transformer_blocks.1.attn.add_v_proj.weight",
    ];
    let parts = txt.iter().map(|k| merged(k)).collect();
    check_fused(&txt, &txt_qkv, parts);

    let single = [
        "single_transformer_blocks.1.attn.to_q.weight",
        "single_transformer_blocks.1.attn.to_k.weight",
        "single_transformer_blocks.1.attn.to_v.weight",
        "single_transformer_blocks.1.proj_mlp.weight",
    ];
    let parts = single.iter().map(|k| merged(k)).collect();
    check_fused(&single, &linear1, parts);

    let refiner = [
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_q.weight",
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_k.weight",
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_v.weight",
    ];
    let parts = refiner.iter().map(|k| merged(k)).collect();
    check_fused(&refiner, &refiner_qkv, parts);

    // Renamed, unsplit modules.
    for (key, pair) in [
        ("single_transformer_blocks.0.proj_out.weight", &linear2),
        ("transformer_blocks.0.norm1.linear.weight", &img_mod),
        (
            "transformer_blocks.1.ff_context.net.0.proj.weight",
            &txt_fc1,
        ),
    ] {
        let (w, shape) = stored(&files, key);
        assert_close(
            &merged(key),
            &expected(&w, &[pair.delta(0..shape[0], m)]),
            1e-5,
            key,
        );
    }

    // final_layer's [shift; scale] lands on norm_out's [scale; shift].
    let (w, _) = stored(&files, "norm_out.linear.weight");
    let d = final_mod.delta(0..2 * HIDDEN, m);
    let half = HIDDEN * HIDDEN;
    let swapped = [&d[half..], &d[..half]].concat();
    let want: Vec<f64> = w.iter().zip(&swapped).map(|(&a, b)| a as f64 + b).collect();
    assert_close(&merged("norm_out.linear.weight"), &want, 1e-5, "norm_out");

    let (_, report) = src.finish();
    assert!(report.unmatched.is_empty(), "{report}");
}

#[test]
fn diffusion_pipe_hunyuan_keys_split_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let files = base();
    let linear1 = Pair::random(3 * HIDDEN + MLP, &[HIDDEN], 2, None, 200);
    let path = LoraWriter::default()
        .diffusers("diffusion_model", "single_blocks.0.linear1", "", &linear1)
        .write(&dir.path().join("dp.safetensors"));
    let lora = LoraFile::open(&path).unwrap();
    assert_eq!(lora.format().keys, KeyStyle::Diffusers);
    assert_eq!(lora.format().modules, ModuleNames::HunyuanVideo);
    let set = LoraSet::new().with(lora, 1.0);
    let mut src = lora_source(&set);
    let (w, shape) = stored(&files, "single_transformer_blocks.0.proj_mlp.weight");
    let merged = read_through(
        &mut src,
        "single_transformer_blocks.0.proj_mlp.weight",
        &shape,
    );
    let want = expected(&w, &[linear1.delta(3 * HIDDEN..3 * HIDDEN + MLP, 1.0)]);
    assert_close(&merged, &want, 1e-5, "proj_mlp");
}

/// A LoRA set over every layer (kohya, FramePack names) plus a HunyuanVideo file.
fn rich_set(dir: &Path, seed: u64, m: (f32, f32)) -> LoraSet {
    let (kohya, _) = kohya_everywhere(dir, seed);
    let hv = LoraWriter::default()
        .kohya(
            "single_blocks.0.linear1",
            &Pair::random(3 * HIDDEN + MLP, &[HIDDEN], 3, Some(1.5), seed + 900),
        )
        .kohya(
            "double_blocks.1.img_attn_qkv",
            &Pair::random(3 * HIDDEN, &[HIDDEN], 2, None, seed + 901),
        )
        .write(&dir.join(format!("hv_{seed}.safetensors")));
    LoraSet::open([(kohya, m.0), (hv, m.1)]).unwrap()
}

#[test]
fn adapters_give_the_merged_output_and_switch_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let x = inputs(&io, 1);
    let set_a = rich_set(dir.path(), 10, (0.6, 1.1));
    let set_b = rich_set(dir.path(), 20, (-0.4, 0.8));

    let mut model = load_base(DType::F32);
    let base_out = model.forward(&x).unwrap();

    let report = model.set_lora_adapters(&set_a).unwrap();
    assert!(report.unmatched.is_empty(), "{report}");
    let n_linears = model.lora_linears_mut().len();
    let with_adapter = model
        .lora_linears_mut()
        .iter()
        .filter(|l| l.adapter().is_some())
        .count();
    assert_eq!(with_adapter, n_linears, "every layer carries an adapter");
    assert_eq!(report.applied.len(), n_linears);
    // Stacked ranks: proj_mlp of single block 0 has the kohya rank plus the HV rank 3.
    let proj_mlp_rank = model
        .lora_linears_mut()
        .into_iter()
        .find(|l| l.key() == "single_transformer_blocks.0.proj_mlp")
        .and_then(|l| l.adapter().map(|a| a.rank()))
        .unwrap();
    assert_eq!(
        proj_mlp_rank,
        set_a
            .iter()
            .map(|(l, _)| l
                .ranks("single_transformer_blocks.0.proj_mlp")
                .iter()
                .sum::<usize>())
            .sum::<usize>()
    );

    let adapted_a = model.forward(&x).unwrap();
    let merged_a = load_merged(&set_a, DType::F32).forward(&x).unwrap();
    let err = relative_l2(&adapted_a, &merged_a);
    let effect = relative_l2(&merged_a, &base_out);
    println!("adapter vs merged (set A): relative L2 {err:.3e}; LoRA effect {effect:.3e}");
    assert!(err <= 1e-5, "adapter vs merged: {err}");
    assert!(effect > 1e-2, "the LoRA must change the output: {effect}");

    // Switch to another set on the same base weights.
    model.set_lora_adapters(&set_b).unwrap();
    let adapted_b = model.forward(&x).unwrap();
    let merged_b = load_merged(&set_b, DType::F32).forward(&x).unwrap();
    let err_b = relative_l2(&adapted_b, &merged_b);
    println!("adapter vs merged (set B): relative L2 {err_b:.3e}");
    assert!(err_b <= 1e-5, "adapter vs merged after switching: {err_b}");
    assert!(relative_l2(&merged_b, &merged_a) > 1e-2);

    // Batch 2 (unequal prompts, key mask) too.
    let x2 = inputs(&io, 2);
    let err2 = relative_l2(
        &model.forward(&x2).unwrap(),
        &load_merged(&set_b, DType::F32).forward(&x2).unwrap(),
    );
    assert!(err2 <= 1e-5, "batch 2: {err2}");

    // No adapters: exactly the base model again.
    model.clear_lora_adapters();
    let cleared = model.forward(&x).unwrap();
    assert_eq!(
        cleared.into_data().to_vec::<f32>().unwrap(),
        base_out.clone().into_data().to_vec::<f32>().unwrap()
    );
    // An empty set also clears.
    model.set_lora_adapters(&set_a).unwrap();
    model.set_lora_adapters(&LoraSet::new()).unwrap();
    assert_eq!(
        model
            .forward(&x)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        base_out.into_data().to_vec::<f32>().unwrap()
    );
}

#[test]
fn bf16_merge_and_adapters_track_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let x = inputs(&io, 1);
    let set = rich_set(dir.path(), 30, (0.5, 0.5));
    let merged32 = load_merged(&set, DType::F32).forward(&x).unwrap();
    let merged16 = load_merged(&set, DType::BF16).forward(&x).unwrap();
    let mut adapted16 = load_base(DType::BF16);
    adapted16.set_lora_adapters(&set).unwrap();
    let adapted16 = adapted16.forward(&x).unwrap();
    let e_merged = relative_l2(&merged16, &merged32);
    let e_adapted = relative_l2(&adapted16, &merged32);
    println!("bf16 vs fp32 merged: merged {e_merged:.3e}, adapters {e_adapted:.3e}");
    assert!(e_merged <= 3e-2 && e_adapted <= 3e-2);

    // A merged bf16 weight is the fp32 merge rounded once.
    let module = "transformer_blocks.1.attn.to_out.0.weight";
    let mut src32 = lora_source(&set);
    let w32: Tensor<B, 2> = src32.tensor(module, [HIDDEN, HIDDEN], DType::F32).unwrap();
    let mut src16 = lora_source(&set);
    let w16: Tensor<B, 2> = src16.tensor(module, [HIDDEN, HIDDEN], DType::BF16).unwrap();
    assert_eq!(w16.dtype(), DType::BF16);
    assert_eq!(
        w16.cast(DType::F32).into_data().to_vec::<f32>().unwrap(),
        w32.cast(DType::BF16)
            .cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    );
}

#[test]
fn lora_factors_stored_in_bf16_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = base();
    let module = "image_projection.down";
    let (w, shape) = stored(&files, &format!("{module}.weight"));
    let mut pair = Pair::random(shape[0], &shape[1..], 2, Some(4.0), 300);
    // Round the values to bf16 so that the f64 expectation is exact.
    for v in pair.down.iter_mut().chain(pair.up.iter_mut()) {
        *v = half::bf16::from_f32(*v).to_f32();
    }
    let name = "lora_unet_image_projection_down";
    let mut writer = LoraWriter::default();
    writer.tensors.push((
        format!("{name}.lora_down.weight"),
        Dtype::BF16,
        pair.down_shape.clone(),
        bf16_bytes(&pair.down),
    ));
    writer.tensors.push((
        format!("{name}.lora_up.weight"),
        Dtype::BF16,
        pair.up_shape.clone(),
        bf16_bytes(&pair.up),
    ));
    writer.tensors.push((
        format!("{name}.alpha"),
        Dtype::BF16,
        vec![],
        bf16_bytes(&[4.0]),
    ));
    let path = writer.write(&dir.path().join("bf16.safetensors"));
    let set = LoraSet::open([(path, 1.0)]).unwrap();
    let mut src = lora_source(&set);
    let merged = read_through(&mut src, &format!("{module}.weight"), &shape);
    assert_close(
        &merged,
        &expected(&w, &[pair.delta(0..shape[0], 1.0)]),
        1e-5,
        module,
    );
}

#[test]
fn unknown_format_is_an_error_listing_sample_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = LoraWriter::default()
        .raw("model.layers.0.weight", vec![2, 2], &[0.0; 4])
        .raw("model.layers.0.hada_w1_a", vec![2, 2], &[0.0; 4])
        .write(&dir.path().join("unknown.safetensors"));
    let err = LoraFile::open(&path).unwrap_err();
    assert!(
        matches!(err, LoraError::UnknownFormat { count: 2, ref sample, .. }
            if sample.contains(&"model.layers.0.weight".to_string())),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("format not recognized") && msg.contains("model.layers.0.hada_w1_a"),
        "{msg}"
    );

    // Kohya keys for another model (Wan's names): recognized, but nothing to patch.
    let wan = LoraWriter::default()
        .kohya("blocks.0.self_attn.q", &Pair::random(4, &[4], 1, None, 1))
        .write(&dir.path().join("wan.safetensors"));
    let err = LoraFile::open(&wan).unwrap_err();
    assert!(matches!(err, LoraError::NoTargets { .. }), "{err:?}");
    assert!(
        err.to_string().contains("lora_unet_blocks_0_self_attn_q"),
        "{err}"
    );
}

#[test]
fn keys_matching_no_module_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let to_q = Pair::random(HIDDEN, &[HIDDEN], 2, None, 1);
    let mut w = LoraWriter::default();
    w.kohya("transformer_blocks.0.attn.to_q", &to_q)
        // Block 7 does not exist in the tiny model (2 double blocks).
        .kohya("transformer_blocks.7.attn.to_q", &to_q)
        // Not a layer of either vocabulary (an RMSNorm weight of HunyuanVideo).
        .kohya(
            "double_blocks.0.img_attn_q_norm",
            &Pair::random(16, &[16], 1, None, 2),
        )
        // A text-encoder LoRA key, a DoRA key and a down without its up.
        .raw(
            "lora_te_text_model_layers_0.lora_down.weight",
            vec![1, 4],
            &[0.0; 4],
        )
        .raw(
            "lora_unet_transformer_blocks_0_attn_to_q.dora_scale",
            vec![1, 32],
            &[0.0; 32],
        )
        .raw(
            "lora_unet_transformer_blocks_0_attn_to_k.lora_down.weight",
            vec![2, HIDDEN],
            &[0.0; 2 * HIDDEN],
        );
    let path = w.write(&dir.path().join("partial.safetensors"));
    let lora = LoraFile::open(&path).unwrap();
    let reasons: BTreeSet<(String, String)> = lora
        .unmatched()
        .iter()
        .map(|u| (u.key.clone(), u.reason.to_string()))
        .collect();
    let has = |key: &str, reason: UnmatchedReason| {
        lora.unmatched()
            .iter()
            .any(|u| u.key == key && u.reason == reason)
    };
    assert!(
        has(
            "lora_unet_double_blocks_0_img_attn_q_norm.lora_down.weight",
            UnmatchedReason::NoSuchModule
        ),
        "{reasons:?}"
    );
    assert!(has(
        "lora_te_text_model_layers_0.lora_down.weight",
        UnmatchedReason::NotTransformer
    ));
    assert!(has(
        "lora_unet_transformer_blocks_0_attn_to_q.dora_scale",
        UnmatchedReason::Unsupported
    ));
    assert!(has(
        "lora_unet_transformer_blocks_0_attn_to_k.lora_down.weight",
        UnmatchedReason::IncompletePair
    ));
    let set = LoraSet::new().with(lora, 1.0);

    // Merge: the model loads, the report names the block that is not in the model.
    let mut src = lora_source(&set);
    load_tiny(&mut src, DType::F32).unwrap();
    let (_, report) = src.finish();
    assert_eq!(report.applied, ["transformer_blocks.0.attn.to_q"]);
    let not_in_model: Vec<_> = report
        .unmatched
        .iter()
        .filter(|u| {
            u.reason
                == UnmatchedReason::NotInModel {
                    module: "transformer_blocks.7.attn.to_q".into(),
                }
        })
        .collect();
    assert_eq!(not_in_model.len(), 1, "{report}");
    assert_eq!(report.unmatched.len(), reasons.len() + 1, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("transformer_blocks.7.attn.to_q") && text.contains("dora_scale"),
        "{text}"
    );

    // Adapters: the same report.
    let mut model = load_base(DType::F32);
    let adapter_report = model.set_lora_adapters(&set).unwrap();
    assert_eq!(adapter_report, report);
}

#[test]
fn shape_and_rank_mismatches_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();

    // up has 48 rows, to_q has 32 outputs: found when the weight loads.
    let wrong_out = Pair::random(48, &[HIDDEN], 2, None, 1);
    let path = LoraWriter::default()
        .kohya("transformer_blocks.0.attn.to_q", &wrong_out)
        .write(&dir.path().join("out.safetensors"));
    let set = LoraSet::open([(&path, 1.0)]).unwrap();
    let mut src = lora_source(&set);
    let err = load_tiny(&mut src, DType::F32).err().unwrap();
    match &err {
        ModelError::Weights(WeightError::Lora(e)) => match e.as_ref() {
            LoraError::ShapeMismatch {
                key,
                target,
                expected,
                found,
                ..
            } => {
                assert_eq!(
                    key,
                    "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight"
                );
                assert_eq!(target, "transformer_blocks.0.attn.to_q.weight");
                assert_eq!(
                    (expected.as_slice(), found.as_slice()),
                    (&[32, 2][..], &[48, 2][..])
                );
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("lora_up.weight") && msg.contains("to_q.weight"),
        "{msg}"
    );

    // Adapters: the same error, and the model keeps its previous adapters.
    let good = LoraWriter::default()
        .kohya(
            "transformer_blocks.0.attn.to_k",
            &Pair::random(HIDDEN, &[HIDDEN], 2, None, 3),
        )
        .write(&dir.path().join("good.safetensors"));
    let mut model = load_base(DType::F32);
    model
        .set_lora_adapters(&LoraSet::open([(&good, 1.0)]).unwrap())
        .unwrap();
    let err = model.set_lora_adapters(&set).unwrap_err();
    assert!(matches!(err, LoraError::ShapeMismatch { .. }), "{err:?}");
    let kept: Vec<String> = model
        .lora_linears_mut()
        .iter()
        .filter(|l| l.adapter().is_some())
        .map(|l| l.key().to_string())
        .collect();
    assert_eq!(kept, ["transformer_blocks.0.attn.to_k"]);

    // down reads 24 features, the layer has 32.
    let wrong_in = Pair::random(HIDDEN, &[24], 2, None, 4);
    let path = LoraWriter::default()
        .kohya("transformer_blocks.1.ff.net.2", &wrong_in)
        .write(&dir.path().join("in.safetensors"));
    let set = LoraSet::open([(&path, 1.0)]).unwrap();
    let mut src = lora_source(&set);
    let err = src
        .tensor::<2>(
            "transformer_blocks.1.ff.net.2.weight",
            [HIDDEN, MLP],
            DType::F32,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_unet_transformer_blocks_1_ff_net_2.lora_down.weight")
            && err.contains("[2, 128]"),
        "{err}"
    );

    // Rank disagreement between down [4, 32] and up [32, 3]: found while parsing.
    let path = LoraWriter::default()
        .raw(
            "lora_unet_proj_out.lora_down.weight",
            vec![4, HIDDEN],
            &[0.0; 4 * HIDDEN],
        )
        .raw(
            "lora_unet_proj_out.lora_up.weight",
            vec![64, 3],
            &[0.0; 64 * 3],
        )
        .write(&dir.path().join("rank.safetensors"));
    let err = LoraFile::open(&path).unwrap_err();
    assert!(matches!(err, LoraError::RankMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("lora_unet_proj_out.lora_up.weight") && msg.contains("[64, 3]"),
        "{msg}"
    );

    // A fused QKV up whose rows are not 3 × the input width.
    let path = LoraWriter::default()
        .kohya(
            "double_blocks.0.img_attn_qkv",
            &Pair::random(90, &[HIDDEN], 2, None, 5),
        )
        .write(&dir.path().join("qkv.safetensors"));
    let err = LoraFile::open(&path).unwrap_err();
    assert!(
        matches!(err, LoraError::FusedSplit { rows: 90, ref key, .. }
            if key == "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"),
        "{err:?}"
    );

    // A non-scalar alpha.
    let path = LoraWriter::default()
        .kohya("proj_out", &Pair::random(64, &[HIDDEN], 2, None, 6))
        .raw("lora_unet_proj_out.alpha", vec![2], &[1.0, 2.0])
        .write(&dir.path().join("alpha.safetensors"));
    let err = LoraFile::open(&path).unwrap_err();
    assert!(matches!(err, LoraError::BadAlpha { .. }), "{err:?}");
}

#[test]
fn folder_loading_with_lora_matches_the_source_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let set = rich_set(dir.path(), 40, (1.0, -0.5));
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::copy(
        model_path(),
        model_dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let config = r#"{"attention_head_dim": 16, "num_attention_heads": 2, "num_layers": 2,
        "num_single_layers": 2, "num_refiner_layers": 1, "text_embed_dim": 32,
        "pooled_projection_dim": 24, "rope_axes_dim": [4, 6, 6], "image_proj_dim": 20}"#;
    std::fs::write(model_dir.join("config.json"), config).unwrap();
    let options = LoadOptions::new(DType::F32).loras(set.clone());
    let (model, report) =
        FramePackTransformer::<B>::from_folder(&model_dir, &Default::default(), &options).unwrap();
    assert!(report.unmatched.is_empty());
    let x = inputs(&io(), 1);
    let a = model.forward(&x).unwrap();
    let b = load_merged(&set, DType::F32).forward(&x).unwrap();
    assert_eq!(
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap()
    );
}

/// LoRAs merge into the transformer only: the other networks refuse them by name.
#[test]
fn the_other_networks_refuse_loras() {
    use framepack_models::text::{ClipTextConfig, ClipTextEncoder, LlamaConfig, LlamaTextEncoder};
    use framepack_models::vae::{HunyuanVideoVae, VaeConfig};
    use framepack_models::vision::{SiglipVisionConfig, SiglipVisionEncoder};
    use framepack_models::weights::RandomSource;

    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions::new(DType::F32).loras(rich_set(dir.path(), 41, (1.0, 1.0)));
    let random = || RandomSource::<B>::host(&Default::default(), 3, 0.05);
    let refused = |result: Result<(), ModelError>, network: &str| match result {
        Err(err @ ModelError::UnsupportedOption { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains(network) && message.contains("LoRA"),
                "{message}"
            );
        }
        other => panic!("{network}: expected LoRAs to be refused, got {other:?}"),
    };
    let vae = HunyuanVideoVae::load(random(), VaeConfig::tiny(), &options);
    refused(vae.map(drop), "VAE");
    let llama = LlamaTextEncoder::load(random(), LlamaConfig::tiny(), &options);
    refused(llama.map(drop), "LLaMA");
    let clip = ClipTextEncoder::load(random(), ClipTextConfig::tiny(), &options);
    refused(clip.map(drop), "CLIP");
    let siglip = SiglipVisionEncoder::load(random(), SiglipVisionConfig::tiny(), &options);
    refused(siglip.map(drop), "SigLIP");
}
