//! `HunyuanVideoResnetBlockCausal3D`.

use burn::tensor::{DType, Tensor};

use super::causal_conv::{CausalConv3d, Tail};
use super::norm::GroupNorm;
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// GroupNorm eps of every VAE norm.
pub(crate) const NORM_EPS: f64 = 1e-6;

/// `h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); out = h + shortcut(x)`, with a 1×1×1
/// causal conv as the shortcut when the channel count changes (dropout is 0).
#[derive(Debug, Clone)]
pub struct ResnetBlock<B: FramePackBackend> {
    norm1: GroupNorm<B>,
    conv1: CausalConv3d<B>,
    norm2: GroupNorm<B>,
    conv2: CausalConv3d<B>,
    conv_shortcut: Option<CausalConv3d<B>>,
}

/// The temporal tails of a resnet's two 3×3×3 convs in a streamed decode.
#[derive(Debug, Clone)]
pub(crate) struct ResnetTails<B: FramePackBackend> {
    conv1: Tail<B>,
    conv2: Tail<B>,
}

impl<B: FramePackBackend> Default for ResnetTails<B> {
    fn default() -> Self {
        Self {
            conv1: None,
            conv2: None,
        }
    }
}

impl<B: FramePackBackend> ResnetBlock<B> {
    /// Loads `{prefix}.{norm1, conv1.conv, norm2, conv2.conv[, conv_shortcut.conv]}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        Ok(Self {
            norm1: GroupNorm::load(src, &p("norm1"), in_channels, groups, NORM_EPS, dtype)?,
            conv1: CausalConv3d::load(
                src,
                &p("conv1"),
                in_channels,
                out_channels,
                3,
                [1; 3],
                dtype,
            )?,
            norm2: GroupNorm::load(src, &p("norm2"), out_channels, groups, NORM_EPS, dtype)?,
            conv2: CausalConv3d::load(
                src,
                &p("conv2"),
                out_channels,
                out_channels,
                3,
                [1; 3],
                dtype,
            )?,
            conv_shortcut: if in_channels != out_channels {
                Some(CausalConv3d::load(
                    src,
                    &p("conv_shortcut"),
                    in_channels,
                    out_channels,
                    1,
                    [1; 3],
                    dtype,
                )?)
            } else {
                None
            },
        })
    }

    /// The block on `x` `[batch, in, t, h, w]`; `tails` in a streamed decode.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 5>,
        tails: Option<&mut ResnetTails<B>>,
    ) -> Tensor<B, 5> {
        self.forward_releasing(x, tails, false)
    }

    /// [`ResnetBlock::forward`], handing the device's unused buffers back after each
    /// convolution when `release` ([`VaeTiling::release_buffers`](super::VaeTiling)).
    pub(crate) fn forward_releasing(
        &self,
        x: Tensor<B, 5>,
        tails: Option<&mut ResnetTails<B>>,
        release: bool,
    ) -> Tensor<B, 5> {
        let released = |h| super::released(h, release);
        let (tail1, tail2) = match tails {
            Some(t) => (Some(&mut t.conv1), Some(&mut t.conv2)),
            None => (None, None),
        };
        let h = released(
            self.conv1
                .forward(self.norm1.forward_silu(x.clone()), tail1),
        );
        let h = released(self.conv2.forward(self.norm2.forward_silu(h), tail2));
        let residual = match &self.conv_shortcut {
            Some(shortcut) => shortcut.forward(x, None),
            None => x,
        };
        h + residual
    }
}
