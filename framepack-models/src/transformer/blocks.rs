//! The double-stream (image and text apart) and single-stream (joint) transformer blocks.

use burn::tensor::{Bool, DType, Tensor};

use crate::nn::{FusedLinear, LoraLinear, LoraSlot, RmsNorm, WeightFormat};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

const EPS: f64 = 1e-6;

/// The image (or joint) stream's q, k and v projections, fused into one GEMM.
const TO_QKV: [&str; 3] = ["attn.to_q", "attn.to_k", "attn.to_v"];
/// The text stream's q, k and v projections (double blocks).
const ADD_QKV: [&str; 3] = ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"];

/// Per-token rotary tables of the image stream, `[tokens, head_dim]` fp32 tensors.
#[derive(Debug, Clone)]
pub struct Rotary<B: FramePackBackend> {
    /// `cos` values.
    pub cos: Tensor<B, 2>,
    /// `sin` values.
    pub sin: Tensor<B, 2>,
}

/// Splits `[batch, seq, heads·dim]` into `[batch, seq, heads, dim]`.
fn split_heads<B: FramePackBackend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads])
}

/// Merges `[batch, seq, heads, dim]` back into `[batch, seq, heads·dim]`.
fn merge_heads<B: FramePackBackend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, s, h, d] = x.dims();
    x.reshape([b, s, h * d])
}

/// Splits the fused `[batch, seq, 3·heads·dim]` output of a q/k/v projection into q, k and v
/// `[batch, seq, heads, dim]` (views: no copy).
fn split_qkv<B: FramePackBackend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let qkv = split_heads(qkv, 3 * heads);
    [0, 1, 2].map(|i| qkv.clone().narrow(2, i * heads, heads))
}

/// The q, k and v projections `{prefix}.{names}` of one stream, fused into one GEMM.
fn load_qkv<B: FramePackBackend, S: TensorSource<B>>(
    src: &mut S,
    prefix: &str,
    names: [&str; 3],
    hidden: usize,
    dtype: DType,
    format: WeightFormat,
) -> Result<FusedLinear<B>, WeightError> {
    let prefixes = names.map(|n| join(prefix, n));
    FusedLinear::load(src, &prefixes, [hidden, hidden], dtype, format)
}

/// What both kinds of block share for loading: the checkpoint stack they sit in (block `i`
/// is `{STACK}.{i}`) and a loader of one signature, so that one generic function loads,
/// stages and fetches either.
pub(super) trait Block<B: FramePackBackend>: Sized {
    /// `transformer_blocks` or `single_transformer_blocks`.
    const STACK: &'static str;

    /// The block's `load`: the tensors of `{prefix}`, linear weights in `format`.
    fn load_block<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        dims: [usize; 3],
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError>;
}

/// `Block` for a block type whose inherent `load` has the trait's signature.
macro_rules! block {
    ($block:ident, $stack:literal) => {
        impl<B: FramePackBackend> Block<B> for $block<B> {
            const STACK: &'static str = $stack;

            fn load_block<S: TensorSource<B>>(
                src: &mut S,
                prefix: &str,
                dims: [usize; 3],
                dtype: DType,
                format: WeightFormat,
            ) -> Result<Self, WeightError> {
                Self::load(src, prefix, dims, dtype, format)
            }
        }
    };
}

block!(DoubleStreamBlock, "transformer_blocks");
block!(SingleStreamBlock, "single_transformer_blocks");

/// Chunk `i` of `n` equal chunks of a modulation vector `[batch, n·dim]`, as `[batch, 1, dim]`.
fn chunk<B: FramePackBackend>(m: &Tensor<B, 2>, i: usize, n: usize) -> Tensor<B, 3> {
    let d = m.dims()[1] / n;
    m.clone().narrow(1, i * d, d).unsqueeze_dim(1)
}

/// `f(start, len)` over slices of at most `chunk` of `tokens` tokens, concatenated along the
/// sequence (one call for `None`): for per-token work whose intermediates are wide.
fn by_tokens<B: FramePackBackend>(
    tokens: usize,
    chunk: Option<usize>,
    f: impl Fn(usize, usize) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    match chunk {
        Some(chunk) if chunk < tokens => Tensor::cat(
            (0..tokens)
                .step_by(chunk)
                .map(|start| f(start, chunk.min(tokens - start)))
                .collect(),
            1,
        ),
        _ => f(0, tokens),
    }
}

/// A feed-forward network `Linear → GELU(tanh) → Linear` (`ff.net.0.proj`, `ff.net.2`).
#[derive(Debug, Clone)]
struct GeluFeedForward<B: FramePackBackend> {
    proj_in: LoraLinear<B>,
    proj_out: LoraLinear<B>,
}

impl<B: FramePackBackend> GeluFeedForward<B> {
    fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        hidden: usize,
        mlp: usize,
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let lin = |src: &mut S, name: &str, i: usize, o: usize| {
            LoraLinear::load_as(src, &join(prefix, name), [i, o], true, dtype, format)
        };
        Ok(Self {
            proj_in: lin(src, "net.0.proj", hidden, mlp)?,
            proj_out: lin(src, "net.2", mlp, hidden)?,
        })
    }

    /// The network over `x`, `chunk` tokens at a time ([`by_tokens`]).
    fn forward(&self, x: Tensor<B, 3>, chunk: Option<usize>) -> Tensor<B, 3> {
        by_tokens(x.dims()[1], chunk, |start, len| {
            let x = x.clone().narrow(1, start, len);
            self.proj_out.forward(self.proj_in.forward_gelu(x))
        })
    }

    fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([self.proj_in.slot(), self.proj_out.slot()]);
    }
}

/// Double-stream block (`transformer_blocks.{i}`): image and text keep their own weights and
/// meet only in a joint attention.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock<B: FramePackBackend> {
    norm1: LoraLinear<B>,
    norm1_context: LoraLinear<B>,
    /// `attn.to_q`, `attn.to_k`, `attn.to_v`.
    to_qkv: FusedLinear<B>,
    /// `attn.add_q_proj`, `attn.add_k_proj`, `attn.add_v_proj`.
    add_qkv: FusedLinear<B>,
    norm_q: RmsNorm<B>,
    norm_k: RmsNorm<B>,
    norm_added_q: RmsNorm<B>,
    norm_added_k: RmsNorm<B>,
    to_out: LoraLinear<B>,
    to_add_out: LoraLinear<B>,
    ff: GeluFeedForward<B>,
    ff_context: GeluFeedForward<B>,
    heads: usize,
}

impl<B: FramePackBackend> DoubleStreamBlock<B> {
    /// Loads the 32 tensors of `{prefix}`, the linear layers' weights in `format`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        [heads, head_dim, mlp]: [usize; 3],
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let hidden = heads * head_dim;
        let p = |name: &str| join(prefix, name);
        let lin = |src: &mut S, name: &str, i: usize, o: usize| {
            LoraLinear::load_as(src, &p(name), [i, o], true, dtype, format)
        };
        Ok(Self {
            norm1: lin(src, "norm1.linear", hidden, 6 * hidden)?,
            norm1_context: lin(src, "norm1_context.linear", hidden, 6 * hidden)?,
            to_qkv: load_qkv(src, prefix, TO_QKV, hidden, dtype, format)?,
            add_qkv: load_qkv(src, prefix, ADD_QKV, hidden, dtype, format)?,
            norm_q: RmsNorm::load(src, &p("attn.norm_q"), head_dim, EPS, dtype)?,
            norm_k: RmsNorm::load(src, &p("attn.norm_k"), head_dim, EPS, dtype)?,
            norm_added_q: RmsNorm::load(src, &p("attn.norm_added_q"), head_dim, EPS, dtype)?,
            norm_added_k: RmsNorm::load(src, &p("attn.norm_added_k"), head_dim, EPS, dtype)?,
            to_out: lin(src, "attn.to_out.0", hidden, hidden)?,
            to_add_out: lin(src, "attn.to_add_out", hidden, hidden)?,
            ff: GeluFeedForward::load(src, &p("ff"), hidden, mlp, dtype, format)?,
            ff_context: GeluFeedForward::load(src, &p("ff_context"), hidden, mlp, dtype, format)?,
            heads,
        })
    }

    /// The block's linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([self.norm1.slot(), self.norm1_context.slot()]);
        self.to_qkv.slots(out);
        self.add_qkv.slots(out);
        out.extend([self.to_out.slot(), self.to_add_out.slot()]);
        self.ff.lora_linears(out);
        self.ff_context.lora_linears(out);
    }

    /// The image stream's modulated input `LN(x)·(1+scale_msa)+shift_msa`: the signal
    /// TeaCache compares between steps.
    pub fn modulated_input(&self, x: Tensor<B, 3>, temb_silu: Tensor<B, 2>) -> Tensor<B, 3> {
        let m = self.norm1.forward(temb_silu);
        B::layer_norm_modulate(x, chunk(&m, 0, 6), chunk(&m, 1, 6), EPS)
    }

    /// Runs the block on image tokens `x` and text tokens `c`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        c: Tensor<B, 3>,
        temb_silu: Tensor<B, 2>,
        rotary: &Rotary<B>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
        ff_chunk: Option<usize>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let n_img = x.dims()[1];
        let heads = self.heads;
        // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
        let m = self.norm1.forward(temb_silu.clone());
        let mc = self.norm1_context.forward(temb_silu);

        // Attention: image q/k get RMSNorm + RoPE, text q/k RMSNorm only.
        let xh = B::layer_norm_modulate(x.clone(), chunk(&m, 0, 6), chunk(&m, 1, 6), EPS);
        let ch = B::layer_norm_modulate(c.clone(), chunk(&mc, 0, 6), chunk(&mc, 1, 6), EPS);
        let (cos, sin) = (rotary.cos.clone(), rotary.sin.clone());
        let [q, k, v] = split_qkv(self.to_qkv.forward(xh), heads);
        let q = self.norm_q.forward_rope(q, cos.clone(), sin.clone());
        let k = self.norm_k.forward_rope(k, cos, sin);
        let [qc, kc, vc] = split_qkv(self.add_qkv.forward(ch), heads);
        let qc = self.norm_added_q.forward(qc);
        let kc = self.norm_added_k.forward(kc);

        let out = B::attend(
            Tensor::cat(vec![q, qc], 1),
            Tensor::cat(vec![k, kc], 1),
            Tensor::cat(vec![v, vc], 1),
            masked_keys,
        );
        let out = merge_heads(out);
        let n_txt = out.dims()[1] - n_img;
        let attn_x = self.to_out.forward(out.clone().narrow(1, 0, n_img));
        let attn_c = self.to_add_out.forward(out.narrow(1, n_img, n_txt));
        let x = B::gated_residual(x, chunk(&m, 2, 6), attn_x);
        let c = B::gated_residual(c, chunk(&mc, 2, 6), attn_c);

        // Feed-forward.
        let xh = B::layer_norm_modulate(x.clone(), chunk(&m, 3, 6), chunk(&m, 4, 6), EPS);
        let ch = B::layer_norm_modulate(c.clone(), chunk(&mc, 3, 6), chunk(&mc, 4, 6), EPS);
        let x = B::gated_residual(x, chunk(&m, 5, 6), self.ff.forward(xh, ff_chunk));
        let c = B::gated_residual(c, chunk(&mc, 5, 6), self.ff_context.forward(ch, ff_chunk));
        (x, c)
    }
}

/// Single-stream block (`single_transformer_blocks.{j}`): image and text tokens concatenated,
/// attention and MLP side by side, one output projection (no separate attention output).
#[derive(Debug, Clone)]
pub struct SingleStreamBlock<B: FramePackBackend> {
    norm: LoraLinear<B>,
    /// `attn.to_q`, `attn.to_k`, `attn.to_v`.
    to_qkv: FusedLinear<B>,
    norm_q: RmsNorm<B>,
    norm_k: RmsNorm<B>,
    proj_mlp: LoraLinear<B>,
    proj_out: LoraLinear<B>,
    heads: usize,
}

impl<B: FramePackBackend> SingleStreamBlock<B> {
    /// Loads the 14 tensors of `{prefix}`, the linear layers' weights in `format`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        [heads, head_dim, mlp]: [usize; 3],
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let hidden = heads * head_dim;
        let p = |name: &str| join(prefix, name);
        let lin = |src: &mut S, name: &str, i: usize, o: usize| {
            LoraLinear::load_as(src, &p(name), [i, o], true, dtype, format)
        };
        Ok(Self {
            norm: lin(src, "norm.linear", hidden, 3 * hidden)?,
            to_qkv: load_qkv(src, prefix, TO_QKV, hidden, dtype, format)?,
            norm_q: RmsNorm::load(src, &p("attn.norm_q"), head_dim, EPS, dtype)?,
            norm_k: RmsNorm::load(src, &p("attn.norm_k"), head_dim, EPS, dtype)?,
            proj_mlp: lin(src, "proj_mlp", hidden, mlp)?,
            proj_out: lin(src, "proj_out", hidden + mlp, hidden)?,
            heads,
        })
    }

    /// The block's linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.push(self.norm.slot());
        self.to_qkv.slots(out);
        out.extend([self.proj_mlp.slot(), self.proj_out.slot()]);
    }

    /// Runs the block on the joint sequence `z = [image; text]`; RoPE applies to the first
    /// `n_img` tokens only.
    pub fn forward(
        &self,
        z: Tensor<B, 3>,
        n_img: usize,
        temb_silu: Tensor<B, 2>,
        rotary: &Rotary<B>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
        mlp_chunk: Option<usize>,
    ) -> Tensor<B, 3> {
        let heads = self.heads;
        // shift, scale, gate
        let m = self.norm.forward(temb_silu);
        let zh = B::layer_norm_modulate(z.clone(), chunk(&m, 0, 3), chunk(&m, 1, 3), EPS);

        // The rotary tables cover the image tokens, which come first.
        debug_assert_eq!(rotary.cos.dims()[0], n_img);
        let (cos, sin) = (rotary.cos.clone(), rotary.sin.clone());
        let [q, k, v] = split_qkv(self.to_qkv.forward(zh.clone()), heads);
        let q = self.norm_q.forward_rope(q, cos.clone(), sin.clone());
        let k = self.norm_k.forward_rope(k, cos, sin);
        let attn = merge_heads(B::attend(q, k, v, masked_keys));

        // The MLP and the output projection work token by token (after the attention, so
        // that the MLP's wide activation is not held across it).
        let out = by_tokens(z.dims()[1], mlp_chunk, |start, len| {
            let mlp = self.proj_mlp.forward_gelu(zh.clone().narrow(1, start, len));
            let attn = attn.clone().narrow(1, start, len);
            self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2))
        });
        B::gated_residual(z, chunk(&m, 2, 3), out)
    }
}
