//! `HunyuanVideoMidBlock3D`: resnet → attention → resnet at the deepest width.

use burn::tensor::{DType, Tensor};

use super::attention::{KvCache, MidBlockAttention};
use super::resnet::{ResnetBlock, ResnetTails};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// The mid block of the encoder and of the decoder (`{encoder,decoder}.mid_block`).
#[derive(Debug, Clone)]
pub struct MidBlock<B: FramePackBackend> {
    resnets: [ResnetBlock<B>; 2],
    attention: Option<MidBlockAttention<B>>,
}

/// A streamed decode's state of the mid block.
#[derive(Debug, Clone)]
pub(crate) struct MidBlockState<B: FramePackBackend> {
    resnets: [ResnetTails<B>; 2],
    attention: KvCache<B>,
}

impl<B: FramePackBackend> MidBlockState<B> {
    pub(crate) fn new(attention_window: Option<usize>) -> Self {
        Self {
            resnets: [ResnetTails::default(), ResnetTails::default()],
            attention: KvCache::new(attention_window),
        }
    }
}

impl<B: FramePackBackend> MidBlock<B> {
    /// Loads `{prefix}.resnets.{0,1}` and, with `attention`, `{prefix}.attentions.0`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        channels: usize,
        groups: usize,
        attention: bool,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let resnet = |src: &mut S, i: usize| {
            ResnetBlock::load(
                src,
                &join(prefix, &format!("resnets.{i}")),
                channels,
                channels,
                groups,
                dtype,
            )
        };
        let first = resnet(src, 0)?;
        let attention = if attention {
            Some(MidBlockAttention::load(
                src,
                &join(prefix, "attentions.0"),
                channels,
                groups,
                dtype,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets: [first, resnet(src, 1)?],
            attention,
        })
    }

    /// The block on `x` `[batch, channels, t, h, w]`; `state` in a streamed decode.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 5>,
        state: Option<&mut MidBlockState<B>>,
    ) -> Tensor<B, 5> {
        let (t0, t1, kv) = match state {
            Some(s) => {
                let [t0, t1] = &mut s.resnets;
                (Some(t0), Some(t1), Some(&mut s.attention))
            }
            None => (None, None, None),
        };
        let x = self.resnets[0].forward(x, t0);
        let x = match &self.attention {
            Some(attention) => attention.forward(x, kv),
            None => x,
        };
        self.resnets[1].forward(x, t1)
    }
}
