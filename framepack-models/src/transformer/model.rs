//! The full transformer: loading, input packing, the block stack and the output head.

use std::sync::Mutex;

use burn::tensor::{Bool, DType, Tensor, TensorData};

use super::blocks::{Block, DoubleStreamBlock, Rotary, SingleStreamBlock};
use super::config::TransformerConfig;
use super::embeddings::{
    pad_to_multiple, CleanLatentEmbedder, ConditionEmbedding, ImageProjection,
};
use super::inputs::TransformerInputs;
use super::refiner::TokenRefiner;
use super::rope::{Rope3d, RopeTable};
use crate::error::{check, ModelError};
use crate::load::{LoadOptions, Residency};
use crate::nn::{LoraLinear, LoraSlot, PatchEmbed, WeightFormat};
use crate::ops::FramePackBackend;
use crate::streaming::{fetch_block, stage_block, BlockStreamer};
use crate::weights::{TensorSource, WeightError};

/// `[batch, keys]`, true where a key is padding.
type KeyMask<B> = Tensor<B, 2, Bool>;

/// The packed transformer with its weights.
pub struct FramePackTransformer<B: FramePackBackend> {
    config: TransformerConfig,
    dtype: DType,
    x_embedder: PatchEmbed<B>,
    clean_x_embedder: CleanLatentEmbedder<B>,
    context_embedder: TokenRefiner<B>,
    time_text_embed: ConditionEmbedding<B>,
    image_projection: ImageProjection<B>,
    blocks: Blocks<B>,
    norm_out: LoraLinear<B>,
    proj_out: LoraLinear<B>,
    rope: Rope3d,
    rope_cache: Mutex<Option<(RopeKey, Rotary<B>)>>,
    /// Feed-forward networks run over slices of at most this many tokens (`None`: all at
    /// once); see [`FramePackTransformer::set_token_chunk`].
    token_chunk: Option<usize>,
    /// Streamed models: clean the backend's pool after the double blocks and after the
    /// single blocks; see [`FramePackTransformer::set_pool_cleanup`].
    pool_cleanup: bool,
}

/// The feed-forward slice of streamed (low-VRAM) models: the widest activations of a
/// 17.5k-token block (the 12,288-wide MLP and the single blocks' 15,360-wide concatenation,
/// about 1 GB in bf16) shrink to a quarter, at GEMMs still 4,096 rows tall.
pub const STREAMED_TOKEN_CHUNK: usize = 4096;

/// The blocks, resident or streamed.
enum Blocks<B: FramePackBackend> {
    Resident {
        double: Vec<DoubleStreamBlock<B>>,
        single: Vec<SingleStreamBlock<B>>,
    },
    Streamed {
        streamer: Box<dyn BlockStreamer<B>>,
        device: B::Device,
        /// How the blocks' linear weights were captured (and are replayed).
        format: WeightFormat,
        /// Staged index of each double block, then of each single block.
        double: Vec<usize>,
        single: Vec<usize>,
    },
}

/// What the RoPE tables of a call depend on.
#[derive(Debug, Clone, PartialEq)]
struct RopeKey {
    groups: Vec<(usize, Vec<f32>)>,
    height: usize,
    width: usize,
}

/// A call's inputs after packing: the image stream, the text stream and everything the blocks
/// share. Splitting the forward here lets a step cache (TeaCache) look at the first block's
/// input and skip the block stack.
#[derive(Debug, Clone)]
pub struct PreparedInputs<B: FramePackBackend> {
    /// Image-stream tokens `[batch, n_img, hidden]`, ordered `[4x | 2x | clean | noisy]`.
    pub image: Tensor<B, 3>,
    /// Text-stream tokens `[batch, n_txt, hidden]`: projected SigLIP tokens, then refined text.
    pub context: Tensor<B, 3>,
    /// `SiLU(temb)` `[batch, hidden]`, the input of every modulation.
    pub temb_silu: Tensor<B, 2>,
    /// RoPE tables of the image stream.
    pub rotary: Rotary<B>,
    /// Padded text keys (batches of unequal prompt lengths only).
    pub masked_keys: Option<Tensor<B, 2, Bool>>,
    /// `(batch, frames, height, width)` of the noisy window on the post-patch grid.
    pub grid: [usize; 4],
}

impl<B: FramePackBackend> FramePackTransformer<B> {
    /// Builds the model from `src` as `options` say, LoRAs aside (they are merged by the
    /// source [`FramePackTransformer::load`] wraps `src` in).
    pub(super) fn build<S: TensorSource<B>>(
        src: &mut S,
        config: TransformerConfig,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let (dtype, residency) = (options.dtype, options.residency);
        let block_weights = options.block_weights;
        config
            .validate()
            .map_err(|reason| ModelError::input("config", reason))?;
        let c = &config;
        let hidden = c.hidden_size();
        let mlp = c.mlp_dim();
        let heads = c.num_attention_heads;
        Ok(Self {
            x_embedder: PatchEmbed::load(
                src,
                "x_embedder.proj",
                c.in_channels,
                hidden,
                [c.patch_size_t, c.patch_size, c.patch_size],
                dtype,
            )?,
            clean_x_embedder: CleanLatentEmbedder::load(
                src,
                "clean_x_embedder",
                c.in_channels,
                hidden,
                dtype,
            )?,
            context_embedder: TokenRefiner::load(
                src,
                "context_embedder",
                c.text_embed_dim,
                heads,
                hidden,
                mlp,
                c.num_refiner_layers,
                dtype,
            )?,
            time_text_embed: ConditionEmbedding::load(
                src,
                "time_text_embed",
                hidden,
                c.pooled_projection_dim,
                c.guidance_embeds,
                dtype,
            )?,
            image_projection: ImageProjection::load(
                src,
                "image_projection",
                c.image_proj_dim,
                hidden,
                dtype,
            )?,
            blocks: Blocks::load(src, c, dtype, residency, block_weights)?,
            norm_out: LoraLinear::load(src, "norm_out.linear", hidden, 2 * hidden, true, dtype)?,
            proj_out: LoraLinear::load(
                src,
                "proj_out",
                hidden,
                c.patch_size_t * c.patch_size * c.patch_size * c.out_channels,
                true,
                DType::F32,
            )?,
            rope: Rope3d {
                axes: c.rope_axes_dim,
                theta: c.rope_theta as f32,
            },
            rope_cache: Mutex::new(None),
            token_chunk: (residency == Residency::Streamed).then_some(STREAMED_TOKEN_CHUNK),
            pool_cleanup: residency == Residency::Streamed,
            config: c.clone(),
            dtype,
        })
    }

    /// Where the blocks' weights live.
    pub fn residency(&self) -> Residency {
        match self.blocks {
            Blocks::Resident { .. } => Residency::Resident,
            Blocks::Streamed { .. } => Residency::Streamed,
        }
    }

    /// Bytes of block weights held in host memory (0 when the blocks are resident).
    pub fn streamed_host_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Resident { .. } => 0,
            Blocks::Streamed { streamer, .. } => streamer.host_bytes(),
        }
    }

    /// Every linear layer (and patch embedding) with its checkpoint key, in load order: where
    /// [`FramePackTransformer::set_lora_adapters`] attaches LoRA adapters.
    pub fn lora_linears_mut(&mut self) -> Vec<LoraSlot<'_, B>> {
        let mut out = Vec::new();
        out.push(self.x_embedder.slot());
        self.clean_x_embedder.lora_linears(&mut out);
        self.context_embedder.lora_linears(&mut out);
        self.time_text_embed.lora_linears(&mut out);
        self.image_projection.lora_linears(&mut out);
        if let Blocks::Resident { double, single } = &mut self.blocks {
            for block in double {
                block.lora_linears(&mut out);
            }
            for block in single {
                block.lora_linears(&mut out);
            }
        }
        out.extend([self.norm_out.slot(), self.proj_out.slot()]);
        out
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// One forward call: the flow velocity `[batch, 16, frames, h, w]` in fp32.
    pub fn forward(&self, inputs: &TransformerInputs<B>) -> Result<Tensor<B, 5>, ModelError> {
        let prepared = self.prepare(inputs)?;
        let image = self.run_blocks(&prepared);
        Ok(self.project_out(&prepared, image))
    }

    /// Packs the inputs into the image and text streams (steps 1-3 of the forward).
    pub fn prepare(&self, inputs: &TransformerInputs<B>) -> Result<PreparedInputs<B>, ModelError> {
        let c = &self.config;
        let [batch, channels, frames, height, width] = inputs.latents.dims();
        let (p, pt) = (c.patch_size, c.patch_size_t);
        check(channels == c.in_channels, "latents", || {
            format!("{channels} channels, the model takes {}", c.in_channels)
        })?;
        check(
            frames % pt == 0 && height % p == 0 && width % p == 0,
            "latents",
            || {
                format!("size {frames}x{height}x{width} is not a multiple of the patch ({pt}, {p}, {p})")
            },
        )?;
        let (grid_t, grid_h, grid_w) = (frames / pt, height / p, width / p);
        check(
            inputs.latent_indices.len() == grid_t,
            "latent_indices",
            || {
                format!(
                    "{} indices for {grid_t} frames",
                    inputs.latent_indices.len()
                )
            },
        )?;
        check(inputs.timestep.len() == batch, "timestep", || {
            format!("{} values for batch {batch}", inputs.timestep.len())
        })?;
        check(
            !c.guidance_embeds || inputs.guidance.len() == batch,
            "guidance",
            || format!("{} values for batch {batch}", inputs.guidance.len()),
        )?;

        // 1. Image stream [4x | 2x | clean | noisy] and its RoPE tables.
        let mut tokens = vec![self
            .x_embedder
            .forward(inputs.latents.clone().cast(self.dtype))];
        let mut rope_groups = vec![(1, inputs.latent_indices.clone())];
        let groups = [
            (&inputs.clean, &self.clean_x_embedder.proj, 1, "clean"),
            (
                &inputs.clean_2x,
                &self.clean_x_embedder.proj_2x,
                2,
                "clean_2x",
            ),
            (
                &inputs.clean_4x,
                &self.clean_x_embedder.proj_4x,
                4,
                "clean_4x",
            ),
        ];
        for (group, embed, k, name) in groups {
            let Some(group) = group else { continue };
            let [gb, gc, gt, gh, gw] = group.latents.dims();
            check(
                gb == batch && gc == channels && gh == height && gw == width,
                name,
                || {
                    format!(
                        "shape {:?} does not match the latents {:?}",
                        group.latents.dims(),
                        inputs.latents.dims()
                    )
                },
            )?;
            check(group.indices.len() == gt, name, || {
                format!("{} indices for {gt} frames", group.indices.len())
            })?;
            let latents = pad_to_multiple(group.latents.clone().cast(self.dtype), embed.kernel());
            tokens.insert(0, embed.forward(latents));
            rope_groups.insert(0, (k, group.indices.clone()));
        }
        let image = Tensor::cat(tokens, 1);
        let rotary = self.rotary(rope_groups, grid_h, grid_w, &inputs.latents.device());

        // 2. temb.
        let pooled = inputs.pooled_text.clone().cast(self.dtype);
        let temb = self
            .time_text_embed
            .forward(&inputs.timestep, &inputs.guidance, pooled);
        let temb_silu = B::silu(temb);

        // 3. Text stream: [SigLIP projection | refined valid text], padded to the longest prompt.
        let (context, masked_keys) = self.context(inputs, image.dims()[1])?;

        Ok(PreparedInputs {
            image,
            context,
            temb_silu,
            rotary,
            masked_keys,
            grid: [batch, grid_t, grid_h, grid_w],
        })
    }

    fn context(
        &self,
        inputs: &TransformerInputs<B>,
        n_img: usize,
    ) -> Result<(Tensor<B, 3>, Option<KeyMask<B>>), ModelError> {
        let [batch, max_len, text_dim] = inputs.text.dims();
        check(text_dim == self.config.text_embed_dim, "text", || {
            format!(
                "feature width {text_dim}, the model takes {}",
                self.config.text_embed_dim
            )
        })?;
        check(inputs.text_lengths.len() == batch, "text_lengths", || {
            format!("{} lengths for batch {batch}", inputs.text_lengths.len())
        })?;
        check(
            inputs.text_lengths.iter().all(|&l| l >= 1 && l <= max_len),
            "text_lengths",
            || format!("{:?} must lie in 1..={max_len}", inputs.text_lengths),
        )?;
        let image_tokens = self
            .image_projection
            .forward(inputs.image_embeddings.clone().cast(self.dtype));
        let longest = inputs.text_lengths.iter().copied().max().unwrap_or(1);
        let hidden = self.config.hidden_size();
        let device = inputs.text.device();
        let mut samples = Vec::with_capacity(batch);
        for (b, &len) in inputs.text_lengths.iter().enumerate() {
            let text = inputs
                .text
                .clone()
                .narrow(0, b, 1)
                .narrow(1, 0, len)
                .cast(self.dtype);
            let mut refined = self.context_embedder.forward(text, inputs.timestep[b]);
            if len < longest {
                let pad = Tensor::zeros([1, longest - len, hidden], (&device, self.dtype));
                refined = Tensor::cat(vec![refined, pad], 1);
            }
            samples.push(refined);
        }
        let text = Tensor::cat(samples, 0);
        let context = Tensor::cat(vec![image_tokens, text], 1);
        let n_ctx = context.dims()[1];
        let masked_keys = (inputs.text_lengths.iter().any(|&l| l != longest)).then(|| {
            let mut mask = vec![false; batch * (n_img + n_ctx)];
            for (b, &len) in inputs.text_lengths.iter().enumerate() {
                let row = &mut mask[b * (n_img + n_ctx)..(b + 1) * (n_img + n_ctx)];
                row[n_img + n_ctx - (longest - len)..].fill(true);
            }
            Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [batch, n_img + n_ctx]), &device)
        });
        Ok((context, masked_keys))
    }

    fn rotary(
        &self,
        groups: Vec<(usize, Vec<f32>)>,
        height: usize,
        width: usize,
        device: &B::Device,
    ) -> Rotary<B> {
        let key = RopeKey {
            groups,
            height,
            width,
        };
        if let Ok(cache) = self.rope_cache.lock() {
            if let Some((cached, rotary)) = cache.as_ref() {
                if *cached == key {
                    return rotary.clone();
                }
            }
        }
        let tables: Vec<RopeTable> = key
            .groups
            .iter()
            .map(|(k, frames)| match k {
                1 => self.rope.table(frames, height, width),
                k => self.rope.pooled_table(frames, height, width, *k),
            })
            .collect();
        let table = RopeTable::concat(&tables);
        let shape = [table.tokens, table.head_dim];
        let rotary = Rotary {
            cos: Tensor::from_data(TensorData::new(table.cos, shape), (device, DType::F32)),
            sin: Tensor::from_data(TensorData::new(table.sin, shape), (device, DType::F32)),
        };
        if let Ok(mut cache) = self.rope_cache.lock() {
            *cache = Some((key, rotary.clone()));
        }
        rotary
    }

    /// Runs the blocks' feed-forward networks (and the single blocks' output projection) over
    /// slices of at most `tokens` tokens, or over all tokens at once (`None`). They work token
    /// by token, so the result is the same (up to the GEMM's choice of algorithm for the
    /// shorter shape) and their widest activations shrink. Streamed models default to
    /// [`STREAMED_TOKEN_CHUNK`], resident ones to `None`.
    pub fn set_token_chunk(&mut self, tokens: Option<usize>) {
        self.token_chunk = tokens.filter(|&t| t > 0);
    }

    /// See [`FramePackTransformer::set_token_chunk`].
    pub fn token_chunk(&self) -> Option<usize> {
        self.token_chunk
    }

    /// Streamed models only (on by default there): hand the pool's free buffers back to the
    /// device after the double blocks and again after the single blocks. The two kinds of
    /// block have activations and weights of different sizes; with exact-size allocations
    /// ([`FramePackBackend::with_exact_allocations`], the low-VRAM mode) the buffers of one
    /// kind would otherwise stay reserved while the other runs. Costs a re-allocation of
    /// each kind's buffers per forward.
    pub fn set_pool_cleanup(&mut self, on: bool) {
        self.pool_cleanup = on;
    }

    /// The first double block's modulated image input, the signal TeaCache measures.
    pub fn teacache_signal(&self, prepared: &PreparedInputs<B>) -> Tensor<B, 3> {
        let (x, temb) = (prepared.image.clone(), prepared.temb_silu.clone());
        match &self.blocks {
            Blocks::Resident { double, .. } => match double.first() {
                Some(block) => block.modulated_input(x, temb),
                None => x,
            },
            Blocks::Streamed { double, .. } => match double.first() {
                Some(&id) => self
                    .blocks
                    .fetch::<DoubleStreamBlock<B>>(&self.config, self.dtype, 0, id)
                    .modulated_input(x, temb),
                None => x,
            },
        }
    }

    /// Runs all double- and single-stream blocks; returns the image stream.
    pub fn run_blocks(&self, prepared: &PreparedInputs<B>) -> Tensor<B, 3> {
        let (rotary, masked) = (&prepared.rotary, &prepared.masked_keys);
        let temb = &prepared.temb_silu;
        let chunk = self.token_chunk;
        let double = |block: &DoubleStreamBlock<B>, (x, c): (Tensor<B, 3>, Tensor<B, 3>)| {
            block.forward(x, c, temb.clone(), rotary, masked.clone(), chunk)
        };
        let single = |block: &SingleStreamBlock<B>, z: Tensor<B, 3>, n_img: usize| {
            block.forward(z, n_img, temb.clone(), rotary, masked.clone(), chunk)
        };
        let mut xc = (prepared.image.clone(), prepared.context.clone());
        let n_img = xc.0.dims()[1];
        match &self.blocks {
            Blocks::Resident {
                double: d,
                single: s,
            } => {
                for block in d {
                    xc = double(block, xc);
                }
                let mut z = Tensor::cat(vec![xc.0, xc.1], 1);
                for block in s {
                    z = single(block, z, n_img);
                }
                z.narrow(1, 0, n_img)
            }
            Blocks::Streamed {
                streamer,
                device,
                double: d,
                single: s,
                ..
            } => {
                // Block i+1 is copied to the device while block i runs.
                let order: Vec<usize> = d.iter().chain(s.iter()).copied().collect();
                let prefetch_after = |pos: usize| {
                    if let Some(&next) = order.get(pos + 1) {
                        streamer.prefetch(next);
                    }
                };
                let cleanup = || {
                    if self.pool_cleanup {
                        B::memory_cleanup(device);
                    }
                };
                for (i, &id) in d.iter().enumerate() {
                    let block =
                        self.blocks
                            .fetch::<DoubleStreamBlock<B>>(&self.config, self.dtype, i, id);
                    prefetch_after(i);
                    xc = double(&block, xc);
                }
                let mut z = Tensor::cat(vec![xc.0, xc.1], 1);
                cleanup();
                for (j, &id) in s.iter().enumerate() {
                    let block =
                        self.blocks
                            .fetch::<SingleStreamBlock<B>>(&self.config, self.dtype, j, id);
                    prefetch_after(d.len() + j);
                    z = single(&block, z, n_img);
                }
                let image = z.narrow(1, 0, n_img);
                cleanup();
                image
            }
        }
    }

    /// Final AdaLN, fp32 projection and unpatchify of the noisy tokens (step 5).
    pub fn project_out(&self, prepared: &PreparedInputs<B>, image: Tensor<B, 3>) -> Tensor<B, 5> {
        let [batch, t, h, w] = prepared.grid;
        let n_noisy = t * h * w;
        let n_img = image.dims()[1];
        let hidden = self.config.hidden_size();
        let x = image.narrow(1, n_img - n_noisy, n_noisy);
        // scale first, then shift (unlike the blocks).
        let m = self.norm_out.forward(prepared.temb_silu.clone());
        let scale = m.clone().narrow(1, 0, hidden).unsqueeze_dim(1);
        let shift = m.narrow(1, hidden, hidden).unsqueeze_dim(1);
        let x = B::layer_norm_modulate(x, shift, scale, 1e-6);
        let x = self.proj_out.forward(x.cast(DType::F32));
        let c = &self.config;
        let (p, pt, ch) = (c.patch_size, c.patch_size_t, c.out_channels);
        x.reshape([batch, t, h, w, ch, pt, p, p])
            .permute([0, 4, 1, 5, 2, 6, 3, 7])
            .reshape([batch, ch, t * pt, h * p, w * p])
    }
}

impl<B: FramePackBackend> Blocks<B> {
    /// Loads the blocks as `residency` asks: on the device, or captured into host memory and
    /// staged with the backend's streamer.
    fn load<S: TensorSource<B>>(
        src: &mut S,
        c: &TransformerConfig,
        dtype: DType,
        residency: Residency,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let dims = block_dims(c);
        let double = DoubleStreamBlock::<B>::STACK;
        let single = SingleStreamBlock::<B>::STACK;
        let (n_double, n_single) = (c.num_layers, c.num_single_layers);
        match residency {
            Residency::Resident => Ok(Self::Resident {
                double: load_stack(src, double, n_double, |src, key| {
                    DoubleStreamBlock::load_block(src, key, dims, dtype, format)
                })?,
                single: load_stack(src, single, n_single, |src, key| {
                    SingleStreamBlock::load_block(src, key, dims, dtype, format)
                })?,
            }),
            Residency::Streamed => {
                let mut streamer = B::block_streamer(src.device());
                let double = load_stack(src, double, n_double, |src, key| {
                    stage_block(streamer.as_mut(), src, |capture| {
                        DoubleStreamBlock::<B>::load_block(capture, key, dims, dtype, format)
                    })
                })?;
                let single = load_stack(src, single, n_single, |src, key| {
                    stage_block(streamer.as_mut(), src, |capture| {
                        SingleStreamBlock::<B>::load_block(capture, key, dims, dtype, format)
                    })
                })?;
                Ok(Self::Streamed {
                    device: src.device().clone(),
                    streamer,
                    format,
                    double,
                    single,
                })
            }
        }
    }

    /// Block `i` of its kind (staged as `id`) rebuilt on the device from its staged copy.
    fn fetch<T: Block<B>>(&self, c: &TransformerConfig, dtype: DType, i: usize, id: usize) -> T {
        let Self::Streamed {
            streamer,
            device,
            format,
            ..
        } = self
        else {
            unreachable!("fetch on resident blocks")
        };
        let key = format!("{}.{i}", T::STACK);
        fetch_block(streamer.as_ref(), device, id, |replay| {
            T::load_block(replay, &key, block_dims(c), dtype, *format)
        })
        .unwrap_or_else(|e| panic!("streamed block {key} does not replay its capture: {e}"))
    }
}

/// `[heads, head_dim, mlp]`, the dimensions both kinds of block load with.
fn block_dims(c: &TransformerConfig) -> [usize; 3] {
    [c.num_attention_heads, c.attention_head_dim, c.mlp_dim()]
}

/// `load(src, key)` for the `n` blocks `{stack}.{i}` of one kind, in order.
fn load_stack<S, R>(
    src: &mut S,
    stack: &str,
    n: usize,
    mut load: impl FnMut(&mut S, &str) -> Result<R, WeightError>,
) -> Result<Vec<R>, WeightError> {
    (0..n).map(|i| load(src, &format!("{stack}.{i}"))).collect()
}
