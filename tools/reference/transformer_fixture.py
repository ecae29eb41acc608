#!/usr/bin/env python3
"""Reference fixtures for framepack-models' transformer tests.

Builds diffusers' `HunyuanVideoFramepackTransformer3DModel` (numerically the model of FramePack's
`HunyuanVideoTransformer3DModelPacked`) with a tiny config that matches
`TransformerConfig::tiny()`, random weights and random inputs covering every context group
(clean, 2x and 4x history, with replicate padding in t, y and x) and padded text, and writes:

  framepack-models/tests/fixtures/transformer_tiny.safetensors     weights, checkpoint key names, fp32
  framepack-models/tests/fixtures/transformer_tiny_io.safetensors  inputs and reference outputs (fp32)
  framepack-models/tests/fixtures/transformer_manifest.json        every key and shape of the full-size model
                                                  (built on the meta device, nothing allocated)

Run by hand from the repository root (CPU is enough):
  pip install torch diffusers==0.35.2 safetensors
  python3 tools/reference/transformer_fixture.py
"""
import json
import torch
import shutil

from safetensors.torch import save_file
from diffusers.models.transformers.transformer_hunyuan_video_framepack import (
    HunyuanVideoFramepackTransformer3DModel,
)

OUT = "framepack-models/tests/fixtures"

# Must match TransformerConfig::tiny() in framepack-models/src/transformer/config.rs.
TINY = dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_single_layers=2, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=32, pooled_projection_dim=24,
            rope_theta=256.0, rope_axes_dim=(4, 6, 6), image_condition_type=None, has_image_proj=True,
            image_proj_dim=20, has_clean_x_embedder=True)

FULL = dict(TINY, num_attention_heads=24, attention_head_dim=128, num_layers=20, num_single_layers=40,
            num_refiner_layers=2, text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56),
            image_proj_dim=1152)


def manifest():
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**FULL)
    entries = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(f"{OUT}/transformer_manifest.json", "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=0)
    print(f"manifest: {len(entries)} tensors, {sum(v.numel() for v in model.state_dict().values()):,} parameters")


def fixture():
    torch.manual_seed(1234)
    model = HunyuanVideoFramepackTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{OUT}/transformer_tiny.safetensors")
    # framepack-sampling's tests run the same model; its published crate carries a copy.
    shutil.copyfile(f"{OUT}/transformer_tiny.safetensors", "framepack-sampling/tests/fixtures/transformer_tiny.safetensors")

    b, h, w, text_len = 2, 12, 10, 8
    lengths = [5, 8]  # sample 0 has padded text
    mask = torch.zeros(b, text_len, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    text = torch.randn(b, text_len, 32)
    text[~mask] = 0.0
    io = dict(
        latents=torch.randn(b, 16, 3, h, w),
        latent_indices=torch.tensor([4.0, 5.0, 6.0]),
        timestep=torch.tensor([996.0, 948.0]),
        guidance=torch.tensor([9984.0, 9984.0]),
        text=text,
        text_lengths=torch.tensor(lengths, dtype=torch.float32),
        pooled_text=torch.randn(b, 24),
        image_embeddings=torch.randn(b, 7, 20),
        clean=torch.randn(b, 16, 2, h, w),
        clean_indices=torch.tensor([0.0, 7.0]),
        clean_2x=torch.randn(b, 16, 3, h, w),  # 3 frames: replicate padding in t as well
        clean_2x_indices=torch.tensor([8.0, 9.0, 10.0]),
        clean_4x=torch.randn(b, 16, 6, h, w),
        clean_4x_indices=torch.arange(11, 17).float(),
    )

    def run(sl, dtype):
        m = model.to(dtype)
        with torch.no_grad():
            out = m(hidden_states=io["latents"][sl].to(dtype), timestep=io["timestep"][sl],
                    encoder_hidden_states=io["text"][sl].to(dtype), encoder_attention_mask=mask[sl],
                    pooled_projections=io["pooled_text"][sl].to(dtype),
                    image_embeds=io["image_embeddings"][sl].to(dtype), indices_latents=io["latent_indices"],
                    guidance=io["guidance"][sl], latents_clean=io["clean"][sl].to(dtype),
                    indices_latents_clean=io["clean_indices"], latents_history_2x=io["clean_2x"][sl].to(dtype),
                    indices_latents_history_2x=io["clean_2x_indices"],
                    latents_history_4x=io["clean_4x"][sl].to(dtype),
                    indices_latents_history_4x=io["clean_4x_indices"], return_dict=False)[0]
        return out.float()

    io["output_b1"] = run(slice(0, 1), torch.float32)
    io["output_b2"] = run(slice(0, 2), torch.float32)
    bf = run(slice(0, 1), torch.bfloat16)
    rel = ((bf - io["output_b1"]).norm() / io["output_b1"].norm()).item()
    print(f"PyTorch bf16 vs fp32 (batch 1): relative L2 {rel:.3e}")
    save_file({k: v.contiguous() for k, v in io.items()}, f"{OUT}/transformer_tiny_io.safetensors")
    print("output_b1 norm", io["output_b1"].norm().item(), "shape", tuple(io["output_b1"].shape))


if __name__ == "__main__":
    manifest()
    fixture()
