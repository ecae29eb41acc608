#!/usr/bin/env python3
"""Reference fixtures for framepack-models' VAE tests.

Builds diffusers' `AutoencoderKLHunyuanVideo` with a small config that matches
`VaeConfig::tiny()` (block_out_channels (8, 16, 16, 16), 1 resnet per encoder block, 4 norm
groups, 16 latent channels), random weights and random inputs, and writes:

  framepack-models/tests/fixtures/vae_tiny.safetensors     weights, checkpoint key names, fp32
  framepack-models/tests/fixtures/vae_tiny_io.safetensors  inputs and reference outputs (fp32)
  framepack-models/tests/fixtures/vae_manifest.json        every key and shape of the full-size VAE
                                          (built on the meta device, nothing allocated)

The outputs cover: encode (mean and clamped logvar, batch 2), the temporally tiled encode
(21 frames), the spatially tiled encode (reduced tile sizes), the plain decode, the temporally
tiled decode with the published tile sizes (10 latents: tiles 0-4, 3-7, 6-9 and an empty 9),
the spatially tiled decode and the spatially + temporally tiled decode with reduced tile
sizes, and a streamed ("cached") decode written here on top of diffusers' own modules, in the
way FramePack-eichi's VAE cache works: each causal conv's temporal padding is replaced by the
tail of the previous call, the upsamplers duplicate every frame in time once the stream has
started, and the mid-block attention keeps the keys and values of earlier frames.

Run by hand from the repository root (CPU is enough, a few seconds):
  pip install torch diffusers==0.35.2 safetensors
  python3 tools/reference/vae_fixture.py
"""
import copy
import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from diffusers import AutoencoderKLHunyuanVideo
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
    HunyuanVideoCausalConv3d,
    HunyuanVideoUpsampleCausal3D,
)

OUT = "framepack-models/tests/fixtures"

# Must match VaeConfig::tiny() in framepack-models/src/vae/config.rs.
TINY = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16)

# Reduced spatial tiles (pixels): 32 px tiles (4 latents) every 24 px (3 latents), 8 px blends.
SPATIAL = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
               tile_sample_stride_width=24)
# Reduced temporal tiles: 8 frames (2 latents, + 1) every 4 frames (1 latent), 4-frame blends.
TEMPORAL = dict(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=4)


def manifest():
    with torch.device("meta"):
        model = AutoencoderKLHunyuanVideo()
    entries = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(f"{OUT}/vae_manifest.json", "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=0)
    print(f"manifest: {len(entries)} tensors, {sum(v.numel() for v in model.state_dict().values()):,} parameters")


def reset_tiling(vae):
    vae.use_tiling = False
    vae.use_framewise_encoding = True
    vae.use_framewise_decoding = True
    vae.tile_sample_min_height = vae.tile_sample_min_width = 256
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = 192
    vae.tile_sample_min_num_frames = 16
    vae.tile_sample_stride_num_frames = 12


# ---------------------------------------------------------------------------------------------
# The streamed decode (FramePack-eichi's "VAE cache"), on diffusers' modules.


class KvCacheProcessor:
    """The mid-block attention with the keys/values of all earlier frames of the stream."""

    def __init__(self):
        self.k = None
        self.v = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        # hidden_states: (B, T*H*W, C); attention_mask: the frame-causal mask of this call.
        residual = hidden_states
        b, n, _ = hidden_states.shape
        h = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        mask = attention_mask.view(b, 1, n, n)
        if self.k is not None:
            k = torch.cat([self.k, k], 1)
            v = torch.cat([self.v, v], 1)
            # every earlier frame is visible to every query of this call
            mask = torch.cat([torch.zeros(b, 1, n, self.k.shape[1], dtype=mask.dtype), mask], 3)
        self.k, self.v = k, v
        heads = attn.heads
        d = q.shape[-1] // heads
        out = F.scaled_dot_product_attention(
            q.view(b, -1, heads, d).transpose(1, 2), k.view(b, -1, heads, d).transpose(1, 2),
            v.view(b, -1, heads, d).transpose(1, 2), attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, n, heads * d)
        return attn.to_out[0](out) + residual


def streamed_decode(vae, z, chunks):
    """Decodes z chunk by chunk, carrying every causal conv's last input frames between calls."""
    tails = {}
    originals = []

    def conv_forward(conv):
        kt = conv.conv.kernel_size[0]

        def forward(x):
            if kt > 1:
                tail = tails.get(conv)
                x_t = F.pad(x, (0, 0, 0, 0, kt - 1, 0), mode="replicate") if tail is None else torch.cat([tail, x], 2)
                tails[conv] = x_t[:, :, -(kt - 1):]
            else:
                x_t = x
            p = conv.time_causal_padding
            x_t = F.pad(x_t, (p[0], p[1], p[2], p[3], 0, 0), mode="replicate")
            return conv.conv(x_t)

        return forward

    def upsample_forward(up, original):
        def forward(x):
            if tails.get(up.conv) is None:
                return original(x)  # the stream's first frame: spatial-only, as the reference
            x = F.interpolate(x.contiguous(), scale_factor=up.upsample_factor, mode="nearest")
            return up.conv(x)

        return forward

    for m in vae.decoder.modules():
        if isinstance(m, HunyuanVideoCausalConv3d):
            originals.append((m, "forward", m.forward))
            m.forward = conv_forward(m)
    for m in vae.decoder.modules():
        if isinstance(m, HunyuanVideoUpsampleCausal3D):
            originals.append((m, "forward", m.forward))
            m.forward = upsample_forward(m, m.forward)
    attn = vae.decoder.mid_block.attentions[0]
    old_processor = attn.processor
    attn.processor = KvCacheProcessor()
    outs = []
    start = 0
    try:
        for n in chunks:
            zc = z[:, :, start:start + n]
            start += n
            outs.append(vae.decoder(vae.post_quant_conv(zc)))
    finally:
        for m, name, f in originals:
            setattr(m, name, f)
        attn.processor = old_processor
    assert start == z.shape[2]
    return torch.cat(outs, 2)


def check_stream_is_causal(vae, z):
    """Self-check of `streamed_decode`: GroupNorm statistics are the only thing that looks at
    other frames of a call. With them frozen (affine only), a stream of any chunking must give
    the plain decode of the whole clip."""
    norms = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    def affine_only(m):
        def forward(x):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return x * m.weight.view(shape) + m.bias.view(shape)

        return forward

    for m in norms:
        m.forward = affine_only(m)
    try:
        whole = vae.decoder(vae.post_quant_conv(z))
        for chunks in ([1] * z.shape[2], [2, 3, 1, 4]):
            streamed = streamed_decode(vae, z, chunks)
            err = ((streamed - whole).norm() / whole.norm()).item()
            assert err < 1e-5, f"streamed decode {chunks} is not causal: {err}"
    finally:
        for m in norms:
            del m.forward


# ---------------------------------------------------------------------------------------------


def fixture():
    torch.manual_seed(20251126)
    vae = AutoencoderKLHunyuanVideo(**TINY).eval()
    with torch.no_grad():
        # PyTorch's default init keeps activations O(1); norms get random affines so that a
        # swapped weight/bias or a missing affine shows.
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, f"{OUT}/vae_tiny.safetensors")

    io = {}
    with torch.no_grad():
        def encode(x):
            d = vae.encode(x).latent_dist
            return d.mean, d.logvar

        # Encode, untiled (9 frames <= 16), batch 2: per-sample GroupNorm and attention mask.
        reset_tiling(vae)
        io["enc_x"] = torch.rand(2, 3, 9, 24, 32) * 2 - 1
        io["enc_mean"], io["enc_logvar"] = encode(io["enc_x"])
        # Temporally tiled encode, published tile sizes (21 frames > 16: tiles 0-16 and 12-20).
        io["enc_t_x"] = torch.rand(1, 3, 21, 16, 16) * 2 - 1
        io["enc_t_mean"], io["enc_t_logvar"] = encode(io["enc_t_x"])
        # Spatially tiled encode of one image, reduced tiles.
        vae.enable_tiling(**SPATIAL)
        io["enc_sp_x"] = torch.rand(1, 3, 1, 40, 56) * 2 - 1
        io["enc_sp_mean"], io["enc_sp_logvar"] = encode(io["enc_sp_x"])
        # The same image untiled, to see that tiling changes it.
        reset_tiling(vae)
        io["enc_sp_untiled_mean"], _ = encode(io["enc_sp_x"])

        # Decode, untiled (3 latents <= 4).
        io["dec_z"] = torch.randn(1, 16, 3, 3, 4)
        io["dec_out"] = vae.decode(io["dec_z"]).sample
        # Temporally tiled decode, published sizes: 10 latents (tiles 0-4, 3-7, 6-9, 9).
        io["dec_long_z"] = torch.randn(1, 16, 10, 2, 2)
        io["dec_long_out"] = vae.decode(io["dec_long_z"]).sample
        vae.use_framewise_decoding = False
        io["dec_long_direct"] = vae.decode(io["dec_long_z"]).sample
        reset_tiling(vae)
        # Spatially tiled decode, reduced tiles (5x7 latents -> 40x56 px).
        vae.enable_tiling(**SPATIAL)
        io["dec_sp_z"] = torch.randn(1, 16, 2, 5, 7)
        io["dec_sp_out"] = vae.decode(io["dec_sp_z"]).sample
        # Spatially and temporally tiled decode, reduced tiles.
        vae.enable_tiling(**SPATIAL, **TEMPORAL)
        io["dec_tsp_z"] = torch.randn(1, 16, 4, 5, 4)
        io["dec_tsp_out"] = vae.decode(io["dec_tsp_z"]).sample
        reset_tiling(vae)

        # Streamed decodes of dec_long_z: one latent per call, and uneven chunks.
        io["stream_1_out"] = streamed_decode(vae, io["dec_long_z"], [1] * 10)
        io["stream_mixed_out"] = streamed_decode(vae, io["dec_long_z"], [2, 3, 1, 4])
        one_call = streamed_decode(vae, io["dec_long_z"], [10])
        assert torch.allclose(one_call, io["dec_long_direct"], atol=1e-6), "one call = the plain decode"
        check_stream_is_causal(vae, io["dec_long_z"])

    def rel(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    # PyTorch's own half-precision error on this model (relative L2 against its fp32 outputs):
    # rows bf16, fp16; columns encode mean, temporally tiled decode, streamed decode (1 latent
    # per call). The random tiny model amplifies rounding (GroupNorm over few elements), so
    # the Rust tests compare their half-precision error with these, not with a fixed number.
    half_err = []
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float16):
            half = copy.deepcopy(vae).to(dtype)
            mean = half.encode(io["enc_x"].to(dtype)).latent_dist.mean
            dec = half.decode(io["dec_long_z"].to(dtype)).sample
            stream = streamed_decode(half, io["dec_long_z"].to(dtype), [1] * 10)
            half_err.append([rel(mean, io["enc_mean"]), rel(dec, io["dec_long_out"]),
                             rel(stream, io["stream_1_out"])])
            print(f"PyTorch {dtype} vs fp32: encode {half_err[-1][0]:.3e}, tiled decode "
                  f"{half_err[-1][1]:.3e}, stream {half_err[-1][2]:.3e}")
    io["half_precision_error"] = torch.tensor(half_err)

    print("enc_mean", tuple(io["enc_mean"].shape), "std", io["enc_mean"].std().item(),
          "logvar mean", io["enc_logvar"].mean().item())
    print("dec_out", tuple(io["dec_out"].shape), "std", io["dec_out"].std().item())
    print("dec_long_out", tuple(io["dec_long_out"].shape), "dec_tsp_out", tuple(io["dec_tsp_out"].shape))
    print(f"tiled vs untiled decode (10 latents): relative L2 {rel(io['dec_long_out'], io['dec_long_direct']):.3e}")
    print(f"tiled vs untiled encode (one image):  relative L2 {rel(io['enc_sp_mean'], io['enc_sp_untiled_mean']):.3e}")
    print(f"streamed (1 latent/call) vs chunked:  relative L2 {rel(io['stream_1_out'], io['dec_long_out']):.3e}")
    print(f"streamed (1 latent/call) vs direct:   relative L2 {rel(io['stream_1_out'], io['dec_long_direct']):.3e}")
    print(f"streamed (2,3,1,4) vs chunked:        relative L2 {rel(io['stream_mixed_out'], io['dec_long_out']):.3e}")
    save_file({k: v.contiguous() for k, v in io.items()}, f"{OUT}/vae_tiny_io.safetensors")


if __name__ == "__main__":
    manifest()
    fixture()
