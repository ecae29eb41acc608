//! GroupNorm over `[batch, channels, t, h, w]`, statistics in fp32.

use burn::tensor::{DType, Tensor};

use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// `nn.GroupNorm(groups, channels, eps, affine=True)` on 5-D activations.
///
/// Statistics are taken over `channels/groups × t × h × w` per sample and group, i.e. over
/// **every frame of the call** (of the tile, in a tiled decode): this is what makes the VAE
/// not strictly causal. They are computed in fp32 whatever the compute dtype, and the result
/// is rounded once to the input dtype (PyTorch's GroupNorm on fp16/bf16), in PyTorch's fused
/// form `y = x · (γ·rstd) + (β − mean·γ·rstd)`.
#[derive(Debug, Clone)]
pub struct GroupNorm<B: FramePackBackend> {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    groups: usize,
    eps: f64,
}

impl<B: FramePackBackend> GroupNorm<B> {
    /// Loads `{prefix}.weight` and `{prefix}.bias` (`[channels]`).
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        channels: usize,
        groups: usize,
        eps: f64,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            weight: src.tensor(&join(prefix, "weight"), [channels], dtype)?,
            bias: src.tensor(&join(prefix, "bias"), [channels], dtype)?,
            groups,
            eps,
        })
    }

    /// Normalises `x` `[batch, channels, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.run(x, false)
    }

    /// `SiLU(GroupNorm(x))`, the pre-activation of every resnet conv and of `conv_out`; the
    /// SiLU runs on the rounded normalisation, as in the reference.
    pub fn forward_silu(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.run(x, true)
    }

    fn run(&self, x: Tensor<B, 5>, silu: bool) -> Tensor<B, 5> {
        let dtype = x.dtype();
        B::group_norm(
            x,
            self.weight.clone().cast(dtype),
            self.bias.clone().cast(dtype),
            self.groups,
            self.eps,
            silu,
        )
    }
}
