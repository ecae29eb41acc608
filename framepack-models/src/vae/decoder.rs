//! `HunyuanVideoDecoder3D`: latents `[b, 16, t, h, w]` → pixels `[b, 3, 4(t−1)+1, 8h, 8w]`.

use burn::tensor::{DType, Tensor};

use super::causal_conv::{upsample_nearest, CausalConv3d, Tail};
use super::config::VaeConfig;
use super::mid_block::{MidBlock, MidBlockState};
use super::norm::GroupNorm;
use super::resnet::{ResnetBlock, ResnetTails, NORM_EPS};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// `HunyuanVideoUpsampleCausal3D`: nearest upsampling, then a causal 3×3×3 conv.
///
/// The first frame of a call is upsampled in height and width only; the other frames also in
/// time (each frame twice) when the block upsamples time. So latent 0 always decodes to one
/// pixel frame. In a streamed decode only the stream's very first frame is special: frames of
/// later calls are all time-upsampled (they are not first frames of the clip).
#[derive(Debug, Clone)]
pub struct Upsampler<B: FramePackBackend> {
    conv: CausalConv3d<B>,
    factor: [usize; 3],
}

impl<B: FramePackBackend> Upsampler<B> {
    /// `release`: hand the upsampling's unused device buffers back before the convolution
    /// ([`VaeTiling::release_buffers`](super::VaeTiling::release_buffers)).
    fn forward(&self, x: Tensor<B, 5>, tail: Option<&mut Tail<B>>, release: bool) -> Tensor<B, 5> {
        let [ft, fh, fw] = self.factor;
        let stream_started = matches!(tail.as_deref(), Some(Some(_)));
        let frames = x.dims()[2];
        let x = if ft == 1 || stream_started {
            upsample_nearest(x, self.factor)
        } else if frames == 1 {
            upsample_nearest(x, [1, fh, fw])
        } else {
            let first = upsample_nearest(x.clone().narrow(2, 0, 1), [1, fh, fw]);
            let rest = upsample_nearest(x.narrow(2, 1, frames - 1), self.factor);
            Tensor::cat(vec![first, rest], 2)
        };
        self.conv.forward(super::released(x, release), tail)
    }
}

/// One decoder stage: `layers_per_block + 1` resnets, then (except in the last stage) an
/// upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock<B: FramePackBackend> {
    resnets: Vec<ResnetBlock<B>>,
    upsampler: Option<Upsampler<B>>,
}

/// A streamed decode's state of one up block.
#[derive(Debug, Clone)]
pub(crate) struct UpBlockState<B: FramePackBackend> {
    resnets: Vec<ResnetTails<B>>,
    upsampler: Tail<B>,
}

impl<B: FramePackBackend> UpBlock<B> {
    /// `release`: hand the unused device buffers back after each resnet and the upsampler
    /// ([`VaeTiling::release_buffers`](super::VaeTiling::release_buffers)).
    fn forward(
        &self,
        mut x: Tensor<B, 5>,
        state: Option<&mut UpBlockState<B>>,
        release: bool,
    ) -> Tensor<B, 5> {
        let released = |x| super::released(x, release);
        match state {
            Some(state) => {
                for (resnet, tails) in self.resnets.iter().zip(&mut state.resnets) {
                    x = released(resnet.forward_releasing(x, Some(tails), release));
                }
                match &self.upsampler {
                    Some(up) => released(up.forward(x, Some(&mut state.upsampler), release)),
                    None => x,
                }
            }
            None => {
                for resnet in &self.resnets {
                    x = released(resnet.forward_releasing(x, None, release));
                }
                match &self.upsampler {
                    Some(up) => released(up.forward(x, None, release)),
                    None => x,
                }
            }
        }
    }
}

/// The decoder (`decoder.*`).
///
/// 1. `conv_in` latent → C_last;
/// 2. the mid block;
/// 3. per block (channels reversed): `layers_per_block + 1` resnets, then an upsampler:
///    space only in the first block, time and space in the next two;
/// 4. `conv_norm_out`, SiLU, `conv_out` → 3 channels (nominally in [−1, 1], not clamped).
#[derive(Debug, Clone)]
pub struct Decoder<B: FramePackBackend> {
    conv_in: CausalConv3d<B>,
    mid_block: MidBlock<B>,
    up_blocks: Vec<UpBlock<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: CausalConv3d<B>,
}

/// Everything a streamed decode carries between calls: the tail of every causal conv and
/// the mid-block attention's keys and values.
#[derive(Debug, Clone)]
pub(crate) struct DecoderState<B: FramePackBackend> {
    conv_in: Tail<B>,
    mid_block: MidBlockState<B>,
    up_blocks: Vec<UpBlockState<B>>,
    conv_out: Tail<B>,
}

impl<B: FramePackBackend> Decoder<B> {
    /// Loads `decoder.*` (`prefix` = `decoder`).
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        config: &VaeConfig,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let conv_in = CausalConv3d::load(
            src,
            &p("conv_in"),
            config.latent_channels,
            channels[0],
            3,
            [1; 3],
            dtype,
        )?;
        let mid_block = MidBlock::load(
            src,
            &p("mid_block"),
            channels[0],
            groups,
            config.mid_block_add_attention,
            dtype,
        )?;
        let mut up_blocks = Vec::with_capacity(channels.len());
        let mut in_ch = channels[0];
        for (i, (&out_ch, factor)) in channels.iter().zip(config.up_factors()).enumerate() {
            let block = p(&format!("up_blocks.{i}"));
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let c_in = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock::load(
                        src,
                        &join(&block, &format!("resnets.{j}")),
                        c_in,
                        out_ch,
                        groups,
                        dtype,
                    )
                })
                .collect::<Result<_, _>>()?;
            let upsampler = factor
                .map(|factor| -> Result<_, WeightError> {
                    Ok(Upsampler {
                        conv: CausalConv3d::load(
                            src,
                            &join(&block, "upsamplers.0.conv"),
                            out_ch,
                            out_ch,
                            3,
                            [1; 3],
                            dtype,
                        )?,
                        factor,
                    })
                })
                .transpose()?;
            up_blocks.push(UpBlock { resnets, upsampler });
            in_ch = out_ch;
        }
        let first = *channels.last().unwrap_or(&0);
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                src,
                &p("conv_norm_out"),
                first,
                groups,
                NORM_EPS,
                dtype,
            )?,
            conv_out: CausalConv3d::load(
                src,
                &p("conv_out"),
                first,
                config.out_channels,
                3,
                [1; 3],
                dtype,
            )?,
        })
    }

    /// A fresh streamed-decode state (nothing decoded yet). `attention_window`: most frames a
    /// mid-block query may see, the current one included (`None`: all earlier frames).
    pub(crate) fn new_state(&self, attention_window: Option<usize>) -> DecoderState<B> {
        DecoderState {
            conv_in: None,
            mid_block: MidBlockState::new(attention_window),
            up_blocks: self
                .up_blocks
                .iter()
                .map(|b| UpBlockState {
                    resnets: b.resnets.iter().map(|_| ResnetTails::default()).collect(),
                    upsampler: None,
                })
                .collect(),
            conv_out: None,
        }
    }

    /// Latents (after `post_quant_conv`) → pixels, as one self-contained call (`state`
    /// `None`) or as the next call of a streamed decode; `release`: the up blocks hand the
    /// unused device buffers back as they go
    /// ([`VaeTiling::release_buffers`](super::VaeTiling::release_buffers)).
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 5>,
        state: Option<&mut DecoderState<B>>,
        release: bool,
    ) -> Tensor<B, 5> {
        match state {
            Some(s) => {
                let mut x = self.conv_in.forward(x, Some(&mut s.conv_in));
                x = self.mid_block.forward(x, Some(&mut s.mid_block));
                for (block, block_state) in self.up_blocks.iter().zip(&mut s.up_blocks) {
                    x = block.forward(x, Some(block_state), release);
                }
                self.conv_out
                    .forward(self.conv_norm_out.forward_silu(x), Some(&mut s.conv_out))
            }
            None => {
                let mut x = self.conv_in.forward(x, None);
                x = self.mid_block.forward(x, None);
                for block in &self.up_blocks {
                    x = block.forward(x, None, release);
                }
                self.conv_out
                    .forward(self.conv_norm_out.forward_silu(x), None)
            }
        }
    }
}
