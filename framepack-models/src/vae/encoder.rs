//! `HunyuanVideoEncoder3D`: pixels `[b, 3, t, h, w]` → moments `[b, 2·latent, t', h/8, w/8]`.

use burn::tensor::{DType, Tensor};

use super::causal_conv::CausalConv3d;
use super::config::VaeConfig;
use super::mid_block::MidBlock;
use super::norm::GroupNorm;
use super::resnet::{ResnetBlock, NORM_EPS};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// One encoder stage: resnets, then (except in the last stage) a strided causal conv.
#[derive(Debug, Clone)]
pub struct DownBlock<B: FramePackBackend> {
    resnets: Vec<ResnetBlock<B>>,
    downsampler: Option<CausalConv3d<B>>,
}

impl<B: FramePackBackend> DownBlock<B> {
    fn forward(&self, mut x: Tensor<B, 5>) -> Tensor<B, 5> {
        for resnet in &self.resnets {
            x = resnet.forward(x, None);
        }
        match &self.downsampler {
            Some(down) => down.forward(x, None),
            None => x,
        }
    }
}

/// The encoder (`encoder.*`).
///
/// 1. `conv_in` 3 → C0;
/// 2. per block: `layers_per_block` resnets, then a causal conv of stride (1, 2, 2) in the
///    first block and (2, 2, 2) in the next two (`T → ⌊(T−1)/2⌋+1`, `H → ⌈H/2⌉`);
/// 3. the mid block;
/// 4. `conv_norm_out`, SiLU, `conv_out` → 2·latent channels (mean, logvar).
#[derive(Debug, Clone)]
pub struct Encoder<B: FramePackBackend> {
    conv_in: CausalConv3d<B>,
    down_blocks: Vec<DownBlock<B>>,
    mid_block: MidBlock<B>,
    conv_norm_out: GroupNorm<B>,
    conv_out: CausalConv3d<B>,
}

impl<B: FramePackBackend> Encoder<B> {
    /// Loads `encoder.*` (`prefix` = `encoder`).
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        config: &VaeConfig,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = *channels.last().unwrap_or(&0);
        let conv_in = CausalConv3d::load(
            src,
            &p("conv_in"),
            config.in_channels,
            channels[0],
            3,
            [1; 3],
            dtype,
        )?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut in_ch = channels[0];
        for (i, (&out_ch, stride)) in channels.iter().zip(config.down_strides()).enumerate() {
            let block = p(&format!("down_blocks.{i}"));
            let resnets = (0..config.layers_per_block)
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
            let downsampler = stride
                .map(|stride| {
                    CausalConv3d::load(
                        src,
                        &join(&block, "downsamplers.0.conv"),
                        out_ch,
                        out_ch,
                        3,
                        stride,
                        dtype,
                    )
                })
                .transpose()?;
            down_blocks.push(DownBlock {
                resnets,
                downsampler,
            });
            in_ch = out_ch;
        }
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::load(
                src,
                &p("mid_block"),
                last,
                groups,
                config.mid_block_add_attention,
                dtype,
            )?,
            conv_norm_out: GroupNorm::load(
                src,
                &p("conv_norm_out"),
                last,
                groups,
                NORM_EPS,
                dtype,
            )?,
            conv_out: CausalConv3d::load(
                src,
                &p("conv_out"),
                last,
                2 * config.latent_channels,
                3,
                [1; 3],
                dtype,
            )?,
        })
    }

    /// Pixels `[b, in, t, h, w]` → moments `[b, 2·latent, (t−1)/4+1, ⌈h/8⌉, ⌈w/8⌉]`, before
    /// `quant_conv`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward(x, None);
        for block in &self.down_blocks {
            x = block.forward(x);
        }
        let x = self.mid_block.forward(x, None);
        self.conv_out
            .forward(self.conv_norm_out.forward_silu(x), None)
    }
}
