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
        let dtype = x.dtype();
        let [b, c, t, h, w] = x.dims();
        let g = self.groups;
        let x = x.cast(DType::F32);
        let grouped = x.clone().reshape([b, g, (c / g) * t * h * w]);
        let mean = grouped.clone().mean_dim(2);
        let var = (grouped - mean.clone()).powi_scalar(2).mean_dim(2);
        let rstd = var.add_scalar(self.eps).sqrt().recip();
        let per_channel = |v: Tensor<B, 3>| v.expand([b, g, c / g]).reshape([b, c]);
        let scale = per_channel(rstd) * self.weight.clone().cast(DType::F32).unsqueeze::<2>();
        let shift =
            self.bias.clone().cast(DType::F32).unsqueeze::<2>() - per_channel(mean) * scale.clone();
        let y = x * scale.reshape([b, c, 1, 1, 1]) + shift.reshape([b, c, 1, 1, 1]);
        y.cast(dtype)
    }

    /// `SiLU(GroupNorm(x))`, the pre-activation of every resnet conv and of `conv_out`; the
    /// SiLU runs on the rounded normalisation, as in the reference.
    pub fn forward_silu(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        B::silu(self.forward(x))
    }
}
