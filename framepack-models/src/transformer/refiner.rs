//! The token refiner (`context_embedder`): a small bidirectional transformer over the LLaMA
//! features, conditioned on the timestep and the masked mean of the raw features.

use burn::tensor::{DType, Tensor};

use super::embeddings::ConditionEmbedding;
use crate::nn::{LayerNorm, LoraLinear, LoraSlot};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

const EPS: f64 = 1e-6;

/// One refiner block: affine LayerNorm, self-attention (no q/k norm, no RoPE), affine
/// LayerNorm, SiLU FFN, each update gated by `norm_out(temb)`.
#[derive(Debug, Clone)]
pub struct RefinerBlock<B: FramePackBackend> {
    norm1: LayerNorm<B>,
    to_q: LoraLinear<B>,
    to_k: LoraLinear<B>,
    to_v: LoraLinear<B>,
    to_out: LoraLinear<B>,
    norm2: LayerNorm<B>,
    ff_in: LoraLinear<B>,
    ff_out: LoraLinear<B>,
    gates: LoraLinear<B>,
    heads: usize,
}

impl<B: FramePackBackend> RefinerBlock<B> {
    fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        heads: usize,
        hidden: usize,
        mlp: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        Ok(Self {
            norm1: LayerNorm::load(src, &p("norm1"), hidden, EPS, dtype)?,
            to_q: LoraLinear::load(src, &p("attn.to_q"), hidden, hidden, true, dtype)?,
            to_k: LoraLinear::load(src, &p("attn.to_k"), hidden, hidden, true, dtype)?,
            to_v: LoraLinear::load(src, &p("attn.to_v"), hidden, hidden, true, dtype)?,
            to_out: LoraLinear::load(src, &p("attn.to_out.0"), hidden, hidden, true, dtype)?,
            norm2: LayerNorm::load(src, &p("norm2"), hidden, EPS, dtype)?,
            ff_in: LoraLinear::load(src, &p("ff.net.0.proj"), hidden, mlp, true, dtype)?,
            ff_out: LoraLinear::load(src, &p("ff.net.2"), mlp, hidden, true, dtype)?,
            gates: LoraLinear::load(src, &p("norm_out.linear"), hidden, 2 * hidden, true, dtype)?,
            heads,
        })
    }

    fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([
            self.to_q.slot(),
            self.to_k.slot(),
            self.to_v.slot(),
            self.to_out.slot(),
            self.ff_in.slot(),
            self.ff_out.slot(),
            self.gates.slot(),
        ]);
    }

    fn forward(&self, x: Tensor<B, 3>, temb_silu: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, d / self.heads]);
        let gates = self.gates.forward(temb_silu).unsqueeze_dim::<3>(1);
        let gate_msa = gates.clone().narrow(2, 0, d);
        let gate_mlp = gates.narrow(2, d, d);

        let h = self.norm1.forward(x.clone());
        let attn = B::attend(
            split(self.to_q.forward(h.clone())),
            split(self.to_k.forward(h.clone())),
            split(self.to_v.forward(h)),
            None,
        );
        let attn = self.to_out.forward(attn.reshape([b, s, d]));
        let x = B::gated_residual(x, gate_msa, attn);

        let ff = self
            .ff_out
            .forward(B::silu(self.ff_in.forward(self.norm2.forward(x.clone()))));
        B::gated_residual(x, gate_mlp, ff)
    }
}

/// `context_embedder`: projects the LLaMA features to the hidden size and refines them.
#[derive(Debug, Clone)]
pub struct TokenRefiner<B: FramePackBackend> {
    time_text_embed: ConditionEmbedding<B>,
    proj_in: LoraLinear<B>,
    blocks: Vec<RefinerBlock<B>>,
}

impl<B: FramePackBackend> TokenRefiner<B> {
    /// Loads `{prefix}.time_text_embed`, `.proj_in` and `.token_refiner.refiner_blocks.{i}`.
    #[allow(clippy::too_many_arguments)]
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        text_dim: usize,
        heads: usize,
        hidden: usize,
        mlp: usize,
        layers: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        Ok(Self {
            time_text_embed: ConditionEmbedding::load(
                src,
                &p("time_text_embed"),
                hidden,
                text_dim,
                false,
                dtype,
            )?,
            proj_in: LoraLinear::load(src, &p("proj_in"), text_dim, hidden, true, dtype)?,
            blocks: (0..layers)
                .map(|i| {
                    RefinerBlock::load(
                        src,
                        &p(&format!("token_refiner.refiner_blocks.{i}")),
                        heads,
                        hidden,
                        mlp,
                        dtype,
                    )
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// The refiner's linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        self.time_text_embed.lora_linears(out);
        out.push(self.proj_in.slot());
        for block in &mut self.blocks {
            block.lora_linears(out);
        }
    }

    /// Refines the valid tokens of one sample, `text` `[1, len, text_dim]` (padding already
    /// cropped: with right padding this equals the reference's masked attention for every
    /// valid token). The pooled conditioning is the fp32 mean of the raw features.
    pub fn forward(&self, text: Tensor<B, 3>, timestep: f32) -> Tensor<B, 3> {
        let dtype = text.dtype();
        let pooled = text
            .clone()
            .cast(DType::F32)
            .mean_dim(1)
            .squeeze_dim::<2>(1)
            .cast(dtype);
        let temb = self.time_text_embed.timestep_only(&[timestep], pooled);
        let temb_silu = B::silu(temb);
        let mut x = self.proj_in.forward(text);
        for block in &self.blocks {
            x = block.forward(x, temb_silu.clone());
        }
        x
    }
}
