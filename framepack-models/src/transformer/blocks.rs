//! The double-stream (image and text apart) and single-stream (joint) transformer blocks.

use burn::tensor::{Bool, DType, Tensor};

use crate::nn::{LoraLinear, RmsNorm};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

const EPS: f64 = 1e-6;

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

/// Chunk `i` of `n` equal chunks of a modulation vector `[batch, n·dim]`, as `[batch, 1, dim]`.
fn chunk<B: FramePackBackend>(m: &Tensor<B, 2>, i: usize, n: usize) -> Tensor<B, 3> {
    let d = m.dims()[1] / n;
    m.clone().narrow(1, i * d, d).unsqueeze_dim(1)
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
    ) -> Result<Self, WeightError> {
        Ok(Self {
            proj_in: LoraLinear::load(src, &join(prefix, "net.0.proj"), hidden, mlp, true, dtype)?,
            proj_out: LoraLinear::load(src, &join(prefix, "net.2"), mlp, hidden, true, dtype)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.proj_out.forward(self.proj_in.forward_gelu(x))
    }

    fn lora_linears<'a>(&'a mut self, out: &mut Vec<&'a mut LoraLinear<B>>) {
        out.extend([&mut self.proj_in, &mut self.proj_out]);
    }
}

/// Double-stream block (`transformer_blocks.{i}`): image and text keep their own weights and
/// meet only in a joint attention.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock<B: FramePackBackend> {
    norm1: LoraLinear<B>,
    norm1_context: LoraLinear<B>,
    to_q: LoraLinear<B>,
    to_k: LoraLinear<B>,
    to_v: LoraLinear<B>,
    add_q_proj: LoraLinear<B>,
    add_k_proj: LoraLinear<B>,
    add_v_proj: LoraLinear<B>,
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
    /// Loads the 32 tensors of `{prefix}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        heads: usize,
        head_dim: usize,
        mlp: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let hidden = heads * head_dim;
        let p = |name: &str| join(prefix, name);
        let lin = |src: &mut S, name: &str, i: usize, o: usize| {
            LoraLinear::load(src, &p(name), i, o, true, dtype)
        };
        Ok(Self {
            norm1: lin(src, "norm1.linear", hidden, 6 * hidden)?,
            norm1_context: lin(src, "norm1_context.linear", hidden, 6 * hidden)?,
            to_q: lin(src, "attn.to_q", hidden, hidden)?,
            to_k: lin(src, "attn.to_k", hidden, hidden)?,
            to_v: lin(src, "attn.to_v", hidden, hidden)?,
            add_q_proj: lin(src, "attn.add_q_proj", hidden, hidden)?,
            add_k_proj: lin(src, "attn.add_k_proj", hidden, hidden)?,
            add_v_proj: lin(src, "attn.add_v_proj", hidden, hidden)?,
            norm_q: RmsNorm::load(src, &p("attn.norm_q"), head_dim, EPS, dtype)?,
            norm_k: RmsNorm::load(src, &p("attn.norm_k"), head_dim, EPS, dtype)?,
            norm_added_q: RmsNorm::load(src, &p("attn.norm_added_q"), head_dim, EPS, dtype)?,
            norm_added_k: RmsNorm::load(src, &p("attn.norm_added_k"), head_dim, EPS, dtype)?,
            to_out: lin(src, "attn.to_out.0", hidden, hidden)?,
            to_add_out: lin(src, "attn.to_add_out", hidden, hidden)?,
            ff: GeluFeedForward::load(src, &p("ff"), hidden, mlp, dtype)?,
            ff_context: GeluFeedForward::load(src, &p("ff_context"), hidden, mlp, dtype)?,
            heads,
        })
    }

    /// The block's linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<&'a mut LoraLinear<B>>) {
        out.extend([
            &mut self.norm1,
            &mut self.norm1_context,
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.add_q_proj,
            &mut self.add_k_proj,
            &mut self.add_v_proj,
            &mut self.to_out,
            &mut self.to_add_out,
        ]);
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
        let q = split_heads(self.to_q.forward(xh.clone()), heads);
        let q = self.norm_q.forward_rope(q, cos.clone(), sin.clone());
        let k = split_heads(self.to_k.forward(xh.clone()), heads);
        let k = self.norm_k.forward_rope(k, cos, sin);
        let v = split_heads(self.to_v.forward(xh), heads);
        let qc = self
            .norm_added_q
            .forward(split_heads(self.add_q_proj.forward(ch.clone()), heads));
        let kc = self
            .norm_added_k
            .forward(split_heads(self.add_k_proj.forward(ch.clone()), heads));
        let vc = split_heads(self.add_v_proj.forward(ch), heads);

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
        let x = B::gated_residual(x, chunk(&m, 5, 6), self.ff.forward(xh));
        let c = B::gated_residual(c, chunk(&mc, 5, 6), self.ff_context.forward(ch));
        (x, c)
    }
}

/// Single-stream block (`single_transformer_blocks.{j}`): image and text tokens concatenated,
/// attention and MLP side by side, one output projection (no separate attention output).
#[derive(Debug, Clone)]
pub struct SingleStreamBlock<B: FramePackBackend> {
    norm: LoraLinear<B>,
    to_q: LoraLinear<B>,
    to_k: LoraLinear<B>,
    to_v: LoraLinear<B>,
    norm_q: RmsNorm<B>,
    norm_k: RmsNorm<B>,
    proj_mlp: LoraLinear<B>,
    proj_out: LoraLinear<B>,
    heads: usize,
}

impl<B: FramePackBackend> SingleStreamBlock<B> {
    /// Loads the 14 tensors of `{prefix}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        heads: usize,
        head_dim: usize,
        mlp: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let hidden = heads * head_dim;
        let p = |name: &str| join(prefix, name);
        Ok(Self {
            norm: LoraLinear::load(src, &p("norm.linear"), hidden, 3 * hidden, true, dtype)?,
            to_q: LoraLinear::load(src, &p("attn.to_q"), hidden, hidden, true, dtype)?,
            to_k: LoraLinear::load(src, &p("attn.to_k"), hidden, hidden, true, dtype)?,
            to_v: LoraLinear::load(src, &p("attn.to_v"), hidden, hidden, true, dtype)?,
            norm_q: RmsNorm::load(src, &p("attn.norm_q"), head_dim, EPS, dtype)?,
            norm_k: RmsNorm::load(src, &p("attn.norm_k"), head_dim, EPS, dtype)?,
            proj_mlp: LoraLinear::load(src, &p("proj_mlp"), hidden, mlp, true, dtype)?,
            proj_out: LoraLinear::load(src, &p("proj_out"), hidden + mlp, hidden, true, dtype)?,
            heads,
        })
    }

    /// The block's linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<&'a mut LoraLinear<B>>) {
        out.extend([
            &mut self.norm,
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.proj_mlp,
            &mut self.proj_out,
        ]);
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
    ) -> Tensor<B, 3> {
        let heads = self.heads;
        // shift, scale, gate
        let m = self.norm.forward(temb_silu);
        let zh = B::layer_norm_modulate(z.clone(), chunk(&m, 0, 3), chunk(&m, 1, 3), EPS);
        let mlp = self.proj_mlp.forward_gelu(zh.clone());

        // The rotary tables cover the image tokens, which come first.
        debug_assert_eq!(rotary.cos.dims()[0], n_img);
        let (cos, sin) = (rotary.cos.clone(), rotary.sin.clone());
        let q = split_heads(self.to_q.forward(zh.clone()), heads);
        let q = self.norm_q.forward_rope(q, cos.clone(), sin.clone());
        let k = split_heads(self.to_k.forward(zh.clone()), heads);
        let k = self.norm_k.forward_rope(k, cos, sin);
        let v = split_heads(self.to_v.forward(zh), heads);
        let attn = merge_heads(B::attend(q, k, v, masked_keys));

        let out = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        B::gated_residual(z, chunk(&m, 2, 3), out)
    }
}
