//! The mid-block attention: one head over all positions, frame-causal.

use burn::tensor::{DType, Tensor};

use super::norm::GroupNorm;
use super::resnet::NORM_EPS;
use crate::nn::Linear;
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// `mid_block.attentions.0`: `x + to_out(Attention(GroupNorm(x)))`.
///
/// Tokens are the `t·h·w` positions in `(t, y, x)` order with all channels as one head
/// (scale `1/sqrt(channels)`). The mask is block-causal over frames: a query of frame `i`
/// sees every position of frames `0 ..= i`. It is computed frame by frame, each frame's
/// queries against the keys of the frames it may see, through
/// [`FramePackBackend::attend`] without a mask; this is the masked softmax of the reference
/// without materialising the `(t·h·w)²` mask or its masked half.
#[derive(Debug, Clone)]
pub struct MidBlockAttention<B: FramePackBackend> {
    group_norm: GroupNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
}

/// Keys and values of the frames a streamed decode has already passed through the attention,
/// `[batch, frames·h·w, 1, channels]`.
#[derive(Debug, Clone)]
pub(crate) struct KvCache<B: FramePackBackend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    /// Frames held in `keys` / `values`.
    frames: usize,
    /// Most frames (the current one included) a query may see; `None`: all earlier frames.
    window: Option<usize>,
}

impl<B: FramePackBackend> KvCache<B> {
    pub(crate) fn new(window: Option<usize>) -> Self {
        Self {
            keys: None,
            values: None,
            frames: 0,
            window,
        }
    }
}

impl<B: FramePackBackend> MidBlockAttention<B> {
    /// Loads `{prefix}.{group_norm, to_q, to_k, to_v, to_out.0}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        channels: usize,
        groups: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let linear = |src: &mut S, name: &str| {
            Linear::load(src, &join(prefix, name), channels, channels, true, dtype)
        };
        Ok(Self {
            group_norm: GroupNorm::load(
                src,
                &join(prefix, "group_norm"),
                channels,
                groups,
                NORM_EPS,
                dtype,
            )?,
            to_q: linear(src, "to_q")?,
            to_k: linear(src, "to_k")?,
            to_v: linear(src, "to_v")?,
            to_out: linear(src, "to_out.0")?,
        })
    }

    /// The residual attention on `x` `[batch, channels, t, h, w]`; `cache` in a streamed
    /// decode, where the frames of earlier calls are visible to every query of this call.
    pub(crate) fn forward(&self, x: Tensor<B, 5>, cache: Option<&mut KvCache<B>>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let hw = h * w;
        let tokens = self
            .group_norm
            .forward(x.clone())
            .permute([0, 2, 3, 4, 1])
            .reshape([b, t * hw, c]);
        let heads = |y: Tensor<B, 3>| y.reshape([b, t * hw, 1, c]);
        let q = heads(self.to_q.forward(tokens.clone()));
        let k = heads(self.to_k.forward(tokens.clone()));
        let v = heads(self.to_v.forward(tokens));

        let (earlier, window, cached) = match cache.as_deref() {
            Some(c) => (c.frames, c.window, c.keys.clone().zip(c.values.clone())),
            None => (0, None, None),
        };
        let (keys, values) = match cached {
            Some((ck, cv)) => (Tensor::cat(vec![ck, k], 1), Tensor::cat(vec![cv, v], 1)),
            None => (k, v),
        };

        let out = if earlier == 0 && t == 1 {
            B::attend(q, keys.clone(), values.clone(), None)
        } else {
            let per_frame = (0..t)
                .map(|f| {
                    let end = earlier + f + 1;
                    let start = window.map_or(0, |w| end.saturating_sub(w));
                    B::attend(
                        q.clone().narrow(1, f * hw, hw),
                        keys.clone().narrow(1, start * hw, (end - start) * hw),
                        values.clone().narrow(1, start * hw, (end - start) * hw),
                        None,
                    )
                })
                .collect();
            Tensor::cat(per_frame, 1)
        };

        if let Some(cache) = cache {
            // Keep what later frames can still see.
            let total = earlier + t;
            let keep = cache
                .window
                .map_or(total, |w| total.min(w.saturating_sub(1)));
            let from = (total - keep) * hw;
            (cache.keys, cache.values) = if keep == 0 {
                (None, None)
            } else {
                (
                    Some(keys.narrow(1, from, keep * hw)),
                    Some(values.narrow(1, from, keep * hw)),
                )
            };
            cache.frames = keep;
        }

        let out = self.to_out.forward(out.reshape([b, t * hw, c]));
        out.reshape([b, t, h, w, c]).permute([0, 4, 1, 2, 3]) + x
    }
}
