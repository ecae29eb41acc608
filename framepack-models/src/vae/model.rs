//! `AutoencoderKLHunyuanVideo`: loading, encode, decode and the scaling factor.

use std::path::Path;

use burn::tensor::{DType, Tensor};

use super::cached_decode::CachedDecoder;
use super::causal_conv::Conv3d;
use super::config::{VaeConfig, VaeTiling};
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::posterior::Posterior;
use crate::error::{check, ModelError};
use crate::load::{load_folder, LoadOptions};
use crate::ops::FramePackBackend;
use crate::weights::TensorSource;

/// The causal 3D VAE of HunyuanVideo with its weights.
///
/// Pixels are `[batch, 3, frames, height, width]` in [−1, 1]; latents are
/// `[batch, 16, (frames−1)/4 + 1, height/8, width/8]`, **unscaled** (diffusers'
/// `latent_dist` and `decode` input). FramePack's diffusion latents are these times
/// `scaling_factor`: see [`HunyuanVideoVae::scale_latents`] and
/// [`HunyuanVideoVae::unscale_latents`].
///
/// [`HunyuanVideoVae::encode`] and [`HunyuanVideoVae::decode`] split their work exactly like
/// diffusers 0.35.2 (temporal tiling by default, spatial tiling when enabled, see
/// [`VaeTiling`]), so they give the reference's numbers, tiling seams included.
/// [`HunyuanVideoVae::cached_decoder`] is a streamed alternative that never decodes a frame
/// twice (see [`CachedDecoder`]).
#[derive(Debug, Clone)]
pub struct HunyuanVideoVae<B: FramePackBackend> {
    pub(super) config: VaeConfig,
    pub(super) dtype: DType,
    pub(super) tiling: VaeTiling,
    pub(super) encoder: Encoder<B>,
    pub(super) decoder: Decoder<B>,
    pub(super) quant_conv: Conv3d<B>,
    pub(super) post_quant_conv: Conv3d<B>,
}

impl<B: FramePackBackend> HunyuanVideoVae<B> {
    /// Builds the VAE from `src` (checkpoint keys `encoder.*`, `decoder.*`, `quant_conv.*`,
    /// `post_quant_conv.*`), computing in `options.dtype` (F32, F16 or BF16; the published
    /// weights are fp32 and FramePack runs them in fp16). Tiling starts at diffusers' defaults
    /// ([`VaeTiling::reference`]). The VAE is always resident, dense and without LoRA: other
    /// options are an error.
    pub fn load<S: TensorSource<B>>(
        mut src: S,
        config: VaeConfig,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        options.check("VAE", false)?;
        let dtype = options.dtype;
        config
            .validate()
            .map_err(|reason| ModelError::input("config", reason))?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::input(
                "dtype",
                format!("{dtype:?} is not a float compute dtype (F32, F16 or BF16)"),
            ));
        }
        let c = &config;
        let latent = c.latent_channels;
        let src = &mut src;
        Ok(Self {
            encoder: Encoder::load(src, "encoder", c, dtype)?,
            decoder: Decoder::load(src, "decoder", c, dtype)?,
            quant_conv: Conv3d::load(src, "quant_conv", 2 * latent, 2 * latent, 1, [1; 3], dtype)?,
            post_quant_conv: Conv3d::load(
                src,
                "post_quant_conv",
                latent,
                latent,
                1,
                [1; 3],
                dtype,
            )?,
            tiling: VaeTiling::reference(),
            config: c.clone(),
            dtype,
        })
    }

    /// [`HunyuanVideoVae::load`] from the VAE folder as published
    /// (`hunyuanvideo-community/HunyuanVideo`'s `vae/`: `config.json` and the safetensors),
    /// checking that every stored tensor was used.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        load_folder(
            folder.as_ref(),
            device,
            |dir| VaeConfig::from_file(dir.join("config.json")),
            None,
            |src, config| Self::load(src, config, options),
            |_| false,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The current tiling settings.
    pub fn tiling(&self) -> &VaeTiling {
        &self.tiling
    }

    /// Replaces the tiling settings (diffusers' `enable_tiling` / `disable_tiling` and the
    /// `use_framewise_*` and `tile_sample_*` attributes).
    pub fn set_tiling(&mut self, tiling: VaeTiling) -> Result<(), ModelError> {
        tiling
            .validate(&self.config)
            .map_err(|reason| ModelError::input("tiling", reason))?;
        self.tiling = tiling;
        Ok(())
    }

    /// A conservative estimate, in bytes, of the device memory a [`HunyuanVideoVae::decode`]
    /// of latents `[batch, 16, t, h, w]` takes without spatial tiling: twelve activations of
    /// the widest stage at full resolution (`block_out_channels[1]` channels, the last
    /// upsampler's) over one temporal chunk. The pipeline's resident mode tiles a decode when
    /// the free memory is below it.
    pub fn untiled_decode_bytes(&self, latents: [usize; 5]) -> u64 {
        let [batch, _, t, h, w] = latents;
        let (s, r) = (
            self.config.spatial_compression_ratio,
            self.config.temporal_compression_ratio,
        );
        let chunk = self.tiling.tile_sample_min_num_frames / r;
        let latents = if self.tiling.use_framewise_decoding && t > chunk {
            chunk + 1
        } else {
            t
        };
        let frames = latents.saturating_sub(1) * r + 1;
        let channels = self.config.block_out_channels.get(1).copied().unwrap_or(0);
        let bytes = batch * frames * h * s * w * s * channels * self.dtype.size();
        12 * bytes as u64
    }

    /// The scaling factor (0.476986).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// VAE latents → diffusion latents: `z · scaling_factor` (FramePack's `start_latent`).
    pub fn scale_latents(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        z.mul_scalar(self.config.scaling_factor)
    }

    /// Diffusion latents → VAE latents: `z / scaling_factor`, computed in fp32 (as
    /// FramePack's `vae_decode`; [`HunyuanVideoVae::decode`] then casts to the compute dtype).
    pub fn unscale_latents(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        z.cast(DType::F32).div_scalar(self.config.scaling_factor)
    }

    /// Encodes pixels `[batch, 3, frames, h, w]` to the posterior **mean** `[batch, 16,
    /// (frames−1)/4 + 1, h/8, w/8]` in fp32, unscaled. This is deterministic; FramePack draws
    /// a sample instead ([`HunyuanVideoVae::encode_sample`]).
    pub fn encode(&self, x: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        Ok(self.encode_posterior(x)?.mean)
    }

    /// Encodes pixels to the full posterior (mean and clamped logvar, fp32, unscaled).
    pub fn encode_posterior(&self, x: Tensor<B, 5>) -> Result<Posterior<B>, ModelError> {
        let [batch, channels, frames, height, width] = x.dims();
        check(channels == self.config.in_channels, "x", || {
            format!(
                "{channels} channels, the VAE takes {}",
                self.config.in_channels
            )
        })?;
        check(
            batch > 0 && frames > 0 && height > 0 && width > 0,
            "x",
            || format!("empty shape {:?}", x.dims()),
        )?;
        let t = &self.tiling;
        let s = self.config.spatial_compression_ratio;
        let spatially_tiled =
            t.use_tiling && (width > t.tile_sample_min_width || height > t.tile_sample_min_height);
        check(!spatially_tiled || (height >= s && width >= s), "x", || {
            format!(
                "{height}x{width} pixels: a spatially tiled encode needs at least {s} pixels \
                 (one latent) in each direction; disable tiling for such images"
            )
        })?;
        let moments = self.encode_moments(x.cast(self.dtype));
        Ok(Posterior::from_moments(moments))
    }

    /// Encodes pixels and draws `mean + std · ε` with a seeded generator (see
    /// [`Posterior::sample`] for how this differs from the reference's unseeded draw).
    pub fn encode_sample(&self, x: Tensor<B, 5>, seed: u64) -> Result<Tensor<B, 5>, ModelError> {
        Ok(self.encode_posterior(x)?.sample(seed))
    }

    /// Decodes unscaled latents `[batch, 16, t, h, w]` to pixels `[batch, 3, 4(t−1)+1, 8h,
    /// 8w]` in the compute dtype, nominally in [−1, 1] (not clamped).
    ///
    /// With the default tiling, more than 4 latents are decoded in overlapping 5-latent
    /// chunks every 3 latents, blended over 4 frames, exactly as the reference (so a decode
    /// is not the same as one pass over all latents: GroupNorm statistics and the attention
    /// span each chunk).
    pub fn decode(&self, z: Tensor<B, 5>) -> Result<Tensor<B, 5>, ModelError> {
        self.check_latents(&z)?;
        Ok(self.decode_latents(z.cast(self.dtype)))
    }

    /// A streamed decoder that decodes latents call by call and never decodes a frame twice
    /// (see [`CachedDecoder`]).
    pub fn cached_decoder(&self) -> CachedDecoder<'_, B> {
        CachedDecoder::new(self)
    }

    /// Decodes `z` with a [`CachedDecoder`], `latents_per_call` latents per call (1 = frame
    /// by frame, FramePack-eichi's VAE cache), and concatenates the pixels.
    pub fn decode_cached(
        &self,
        z: Tensor<B, 5>,
        latents_per_call: usize,
    ) -> Result<Tensor<B, 5>, ModelError> {
        check(latents_per_call > 0, "latents_per_call", || {
            "must be at least 1".into()
        })?;
        self.check_latents(&z)?;
        let frames = z.dims()[2];
        let mut decoder = self.cached_decoder();
        let mut out = Vec::new();
        for start in (0..frames).step_by(latents_per_call) {
            let n = latents_per_call.min(frames - start);
            out.push(decoder.decode_next(z.clone().narrow(2, start, n))?);
        }
        Ok(Tensor::cat(out, 2))
    }

    pub(super) fn check_latents(&self, z: &Tensor<B, 5>) -> Result<(), ModelError> {
        let [batch, channels, frames, height, width] = z.dims();
        check(channels == self.config.latent_channels, "z", || {
            format!(
                "{channels} channels, the VAE's latents have {}",
                self.config.latent_channels
            )
        })?;
        check(
            batch > 0 && frames > 0 && height > 0 && width > 0,
            "z",
            || format!("empty shape {:?}", z.dims()),
        )
    }

    /// diffusers' `_encode`: temporal tiling, else spatial tiling, else one pass. Returns
    /// the moments (after `quant_conv`) in the compute dtype.
    pub(super) fn encode_moments(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, frames, height, width] = x.dims();
        let t = &self.tiling;
        if t.use_framewise_encoding && frames > t.tile_sample_min_num_frames {
            self.temporal_tiled_encode(x)
        } else if t.use_tiling
            && (width > t.tile_sample_min_width || height > t.tile_sample_min_height)
        {
            self.tiled_encode(x)
        } else {
            self.encode_direct(x)
        }
    }

    /// diffusers' `_decode`: temporal tiling, else spatial tiling, else one pass.
    pub(super) fn decode_latents(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, frames, height, width] = z.dims();
        let t = &self.tiling;
        let (s, r) = (
            self.config.spatial_compression_ratio,
            self.config.temporal_compression_ratio,
        );
        if t.use_framewise_decoding && frames > t.tile_sample_min_num_frames / r {
            self.temporal_tiled_decode(z)
        } else if t.use_tiling
            && (width > t.tile_sample_min_width / s || height > t.tile_sample_min_height / s)
        {
            self.tiled_decode(z)
        } else {
            self.decode_direct(z)
        }
    }

    /// `quant_conv(encoder(x))` in one pass (one tile of a tiled encode).
    pub(super) fn encode_direct(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let moments = self.quant_conv.forward(self.encoder.forward(x));
        super::released(moments, self.tiling.release_buffers)
    }

    /// `decoder(post_quant_conv(z))` in one pass (one tile of a tiled decode).
    pub(super) fn decode_direct(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let release = self.tiling.release_buffers;
        let pixels = self
            .decoder
            .forward(self.post_quant_conv.forward(z), None, release);
        super::released(pixels, release)
    }
}
