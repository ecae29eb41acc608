#!/usr/bin/env python3
"""Reference fixtures for framepack-models' conditioning encoders (LLaMA-3, CLIP-L text, SigLIP).

Builds transformers' `LlamaModel`, `CLIPTextModel` and `SiglipVisionModel` with small configs that
match `LlamaConfig::tiny()`, `ClipTextConfig::tiny()` and `SiglipVisionConfig::tiny()` in
framepack-models, random weights (checkpoint key names, fp32) and random inputs, and writes the
outputs FramePack reads:

  framepack-models/tests/fixtures/text_llama_tiny.safetensors       weights (4 layers: hidden_states[-3] needs 2)
  framepack-models/tests/fixtures/text_llama_tiny_io.safetensors    ids (padded + mask, as FramePack calls it) and
                                                   hidden_states[-3] of the valid tokens (fp32, fp16)
  framepack-models/tests/fixtures/text_clip_tiny.safetensors        weights
  framepack-models/tests/fixtures/text_clip_tiny_io.safetensors     77 padded ids, pooler_output, last_hidden_state
  framepack-models/tests/fixtures/vision_siglip_tiny.safetensors    weights (with the unused pooling head)
  framepack-models/tests/fixtures/vision_siglip_tiny_io.safetensors last_hidden_state for the 384x384 image of
                                                   vision_resize_pil.safetensors `case0`
  framepack-models/tests/fixtures/vision_resize_pil.safetensors     PIL BICUBIC resizes (uint8 RGB) of procedural
                                                   images (`procedural_image`, mirrored in Rust)
  framepack-models/tests/fixtures/text_llama_manifest.json          every key and shape of the full-size models,
  framepack-models/tests/fixtures/text_clip_manifest.json           built on the meta device (nothing allocated)
  framepack-models/tests/fixtures/vision_siglip_manifest.json

The model maths is unchanged between FramePack's pinned transformers 4.46.2 and the version this was
run with (5.x); the SigLIP preprocessing follows 4.46.2's slow `SiglipImageProcessor` step by step
(PIL resize on uint8, float64 rescale, float32 normalise), since transformers 5 defaults to a
torchvision-based processor.

Run by hand from the repository root (CPU is enough):
  pip install torch transformers safetensors pillow numpy
  python3 tools/reference/encoders_fixture.py
"""
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig,
                          SiglipVisionModel)

OUT = "framepack-models/tests/fixtures"

# Must match the tiny() configs in framepack-models/src/text/{llama,clip}.rs and vision/siglip.rs.
LLAMA_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=512, hidden_act="silu", attention_bias=False, mlp_bias=False)
LLAMA_FULL = dict(LLAMA_TINY, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128320,
                  max_position_embeddings=8192)
CLIP_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=512, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=64)
CLIP_FULL = dict(CLIP_TINY, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, vocab_size=49408, projection_dim=768)
SIGLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   num_channels=3, image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6)
SIGLIP_FULL = dict(SIGLIP_TINY, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                   num_attention_heads=16)

# (source width, source height, target width, target height). case0 is FramePack's real use:
# a 640x608 bucket image squashed to SigLIP's 384x384.
RESIZE_CASES = [
    (640, 608, 384, 384),
    (50, 37, 120, 90),     # upscale both axes (no antialiasing)
    (97, 61, 31, 23),      # downscale both axes (support widened)
    (333, 17, 64, 48),     # down in x, up in y
    (96, 50, 96, 96),      # width unchanged: PIL skips the horizontal pass
    (3, 2, 7, 5),          # tiny source: every tap clamped at the borders
]


def procedural_image(width, height, seed):
    """uint8 RGB [height, width, 3]: a sawtooth, a checkerboard and hashed noise (sharp edges that
    make the bicubic overshoot and clip). Mirrored exactly in framepack-models/tests/vision_*.rs."""
    y, x, c = np.meshgrid(np.arange(height, dtype=np.uint64), np.arange(width, dtype=np.uint64),
                          np.arange(3, dtype=np.uint64), indexing="ij")
    m = np.uint64(0xFFFFFFFF)
    h = ((x * np.uint64(73856093)) & m) ^ ((y * np.uint64(19349663)) & m) ^ \
        ((c * np.uint64(83492791)) & m) ^ np.uint64(seed)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0x5BD1E995)) & m
    h ^= h >> np.uint64(15)
    v = ((x * np.uint64(3) + y * np.uint64(2) + c * np.uint64(40)) % np.uint64(256)).astype(np.int64)
    checker = ((x // np.uint64(16) + y // np.uint64(16)) % np.uint64(2)) == 0
    v = np.where(checker, 255 - v, v)
    v = v + (h % np.uint64(33)).astype(np.int64) - 16
    return np.clip(v, 0, 255).astype(np.uint8)


def randomize(model, embedding_std=1.0):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(embedding_std * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))


# transformers 5 flattened `CLIPTextModel.text_model` and `SiglipVisionModel.vision_model` (it strips
# the prefix when loading); the published checkpoints, saved with 4.x, keep it. Fixtures and
# manifests use the published names.
CHECKPOINT_PREFIX = {LlamaModel: "", CLIPTextModel: "text_model.", SiglipVisionModel: "vision_model."}


def published_keys(model, sd):
    prefix = CHECKPOINT_PREFIX[type(model)]
    return {k if k.startswith(prefix) else prefix + k: v for k, v in sd.items()}


def state(model):
    return {k: v.contiguous() for k, v in published_keys(model, model.state_dict()).items()}


def relative_l2(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def manifest(name, model_cls, config):
    with torch.device("meta"):
        model = model_cls(config)
    sd = published_keys(model, model.state_dict())
    entries = {k: list(v.shape) for k, v in sd.items()}
    with open(f"{OUT}/{name}_manifest.json", "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=0)
    print(f"{name} manifest: {len(entries)} tensors, {sum(v.numel() for v in sd.values()):,} parameters")


def llama():
    torch.manual_seed(1)
    model = LlamaModel(LlamaConfig(**LLAMA_TINY)).eval()
    randomize(model)
    save_file(state(model), f"{OUT}/text_llama_tiny.safetensors")

    n_valid, padded = 37, 48
    ids = torch.randint(0, LLAMA_TINY["vocab_size"], (1, padded))
    mask = torch.zeros(1, padded, dtype=torch.long)
    mask[:, :n_valid] = 1
    io = {"ids": ids.float(), "n_valid": torch.tensor([float(n_valid)])}
    # As FramePack calls it: padded ids with an attention mask, hidden_states[-3] of the valid part.
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        io["hidden_states_m3"] = out.hidden_states[-3][:, :n_valid].float()
        # hidden_states[-3] is the raw output of layers[1] (of 4), before the final norm.
        manual = model.embed_tokens(ids[:, :n_valid])
        pos = torch.arange(n_valid)[None]
        rope = model.rotary_emb(manual, pos)
        for layer in model.layers[:2]:
            manual = layer(manual, attention_mask=None, position_embeddings=rope, position_ids=pos)
            manual = manual[0] if isinstance(manual, tuple) else manual
        print(f"llama: hidden_states[-3] vs 2 unmasked layers on the valid ids: "
              f"{relative_l2(manual, io['hidden_states_m3']):.2e}")
        half = model.half()
        out16 = half(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        io["hidden_states_m3_f16"] = out16.hidden_states[-3][:, :n_valid].float()
    print(f"llama: PyTorch fp16 vs fp32 relative L2 {relative_l2(io['hidden_states_m3_f16'], io['hidden_states_m3']):.3e}")
    save_file({k: v.contiguous() for k, v in io.items()}, f"{OUT}/text_llama_tiny_io.safetensors")


def clip():
    torch.manual_seed(2)
    model = CLIPTextModel(CLIPTextConfig(**CLIP_TINY)).eval()
    randomize(model)
    save_file(state(model), f"{OUT}/text_clip_tiny.safetensors")

    vocab = CLIP_TINY["vocab_size"]
    bos, eos = vocab - 2, vocab - 1  # like 49406 / 49407: EOS is the largest id
    n_content = 12
    ids = torch.full((1, 77), eos)  # padding is EOS, as in CLIPTokenizer
    ids[0, 0] = bos
    ids[0, 1:1 + n_content] = torch.randint(0, vocab - 2, (n_content,))
    io = {"ids": ids.float(), "eos_index": torch.tensor([float(1 + n_content)])}
    with torch.no_grad():
        out = model(input_ids=ids)
        io["pooler_output"] = out.pooler_output.float()
        io["last_hidden_state"] = out.last_hidden_state.float()
        io["pooler_output_f16"] = model.half()(input_ids=ids).pooler_output.float()
    print(f"clip: PyTorch fp16 vs fp32 relative L2 {relative_l2(io['pooler_output_f16'], io['pooler_output']):.3e}")
    save_file({k: v.contiguous() for k, v in io.items()}, f"{OUT}/text_clip_tiny_io.safetensors")


def pil_bicubic(image, width, height):
    """transformers 4.46 `image_transforms.resize` on a uint8 array: PIL, BICUBIC, no reducing gap."""
    return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.BICUBIC, reducing_gap=None))


def siglip_pixels(resized_u8):
    """transformers 4.46 slow `SiglipImageProcessor` after the resize: rescale in float64 then
    float32, normalise with mean = std = 0.5, HWC -> CHW."""
    x = (resized_u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def resize_cases():
    out = {"cases": torch.tensor(RESIZE_CASES, dtype=torch.float32)}
    for i, (sw, sh, dw, dh) in enumerate(RESIZE_CASES):
        src = procedural_image(sw, sh, seed=i)
        out[f"case{i}"] = torch.from_numpy(pil_bicubic(src, dw, dh).copy())
        out[f"source{i}_checksum"] = torch.tensor([int(src.astype(np.uint64).sum())], dtype=torch.float64)
    save_file(out, f"{OUT}/vision_resize_pil.safetensors")
    print(f"resize: {len(RESIZE_CASES)} cases")
    return out


def siglip(resized):
    torch.manual_seed(3)
    model = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_TINY)).eval()
    randomize(model, embedding_std=0.5)
    sd = state(model)
    assert any(k.startswith("vision_model.head.") for k in sd), "fixture must carry the unused head"
    save_file(sd, f"{OUT}/vision_siglip_tiny.safetensors")

    pixels = siglip_pixels(resized["case0"].numpy())
    with torch.no_grad():
        io = {"last_hidden_state": model(pixel_values=pixels).last_hidden_state.float()}
        io["last_hidden_state_f16"] = model.half()(pixel_values=pixels.half()).last_hidden_state.float()
    print(f"siglip: PyTorch fp16 vs fp32 relative L2 "
          f"{relative_l2(io['last_hidden_state_f16'], io['last_hidden_state']):.3e}")
    save_file({k: v.contiguous() for k, v in io.items()}, f"{OUT}/vision_siglip_tiny_io.safetensors")


if __name__ == "__main__":
    manifest("text_llama", LlamaModel, LlamaConfig(**LLAMA_FULL))
    manifest("text_clip", CLIPTextModel, CLIPTextConfig(**CLIP_FULL))
    manifest("vision_siglip", SiglipVisionModel, SiglipVisionConfig(**SIGLIP_FULL))
    llama()
    clip()
    siglip(resize_cases())
