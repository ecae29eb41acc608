#!/usr/bin/env python3
"""What FP8 block weights cost in PyTorch itself: the reference transformer of
../shared/perf/ref_transformer.py (the same random bf16 weights: same config, seed and draws), its
forward with the weights as they are, then with every linear weight of the 60 blocks rounded to
e4m3 the way framepack-rs stores them (one fp32 scale per output row, absmax -> 448, round to
nearest even, expanded back to bf16), and with one scale per tensor for comparison.

Run on the GPU machine with diffusers installed as ref_transformer.py describes:
  PYTHONPATH=/tmp/dpkgs python3 tools/cuda/ref_fp8.py
Env: TXT (text tokens, default 32); SAVE=path writes the bf16 weights to path and the inputs, the
bf16 output ("output") and the per-row FP8 output ("output_fp8") to path.io.safetensors, so that
`cuda_bench --reference path --fp8` compares our FP8 forward with PyTorch's on the same rounding.
"""
import os

import torch
from diffusers.models.transformers.transformer_hunyuan_video_framepack import (  # noqa: E402
    HunyuanVideoFramepackTransformer3DModel,
)

CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
              num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
              qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
              rope_theta=256.0, rope_axes_dim=(16, 56, 56), image_condition_type=None, has_image_proj=True,
              image_proj_dim=1152, has_clean_x_embedder=True)
E4M3_MAX = 448.0


def round_e4m3(w, per_row):
    """w rounded through e4m3 with per-row (or per-tensor) absmax scales, back in w's dtype."""
    w32 = w.float()
    absmax = w32.abs().amax(dim=1, keepdim=True) if per_row else w32.abs().amax()
    scale = torch.where(absmax > 0, absmax / E4M3_MAX, torch.ones_like(absmax))
    codes = (w32 * (1.0 / scale)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return (codes.float() * scale).to(w.dtype)


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def main():
    dev, bf = "cuda", torch.bfloat16
    txt = int(os.environ.get("TXT", "32"))
    torch.manual_seed(0)
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**CONFIG)
    model = model.to_empty(device=dev).to(bf).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    save = os.environ.get("SAVE")
    if save:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, save)
    h, w = 80, 76
    mask = torch.zeros(1, 512, dtype=torch.bool, device=dev)
    mask[:, :txt] = True
    r = lambda *s: torch.randn(*s, device=dev, dtype=bf)  # noqa: E731
    args = dict(hidden_states=r(1, 16, 9, h, w), timestep=torch.tensor([996.0], device=dev, dtype=bf),
                encoder_hidden_states=r(1, 512, 4096), encoder_attention_mask=mask, pooled_projections=r(1, 768),
                image_embeds=r(1, 729, 1152), indices_latents=torch.arange(1, 10, device=dev),
                guidance=torch.tensor([9984.0], device=dev, dtype=bf),
                latents_clean=r(1, 16, 2, h, w), indices_latents_clean=torch.tensor([0, 10], device=dev),
                latents_history_2x=r(1, 16, 2, h, w), indices_latents_history_2x=torch.tensor([11, 12], device=dev),
                latents_history_4x=r(1, 16, 16, h, w), indices_latents_history_4x=torch.arange(13, 29, device=dev),
                return_dict=False)
    blocks = [m for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)
              and (name.startswith("transformer_blocks.") or name.startswith("single_transformer_blocks."))]
    originals = [m.weight.data.clone().cpu() for m in blocks]
    outputs = {}
    with torch.no_grad():
        outputs["bf16"] = model(**args)[0]
        for label, per_row in (("fp8 per row", True), ("fp8 per tensor", False)):
            for m, w0 in zip(blocks, originals):
                m.weight.data.copy_(round_e4m3(w0.to(dev), per_row))
            outputs[label] = model(**args)[0]
    for k, v in outputs.items():
        assert torch.isfinite(v).all(), f"non-finite {k} output"
    if save:
        from safetensors.torch import save_file
        io = {k: (v.to(torch.int64) if v.dtype == torch.bool else v).contiguous()
              for k, v in args.items() if torch.is_tensor(v)}
        io["output"] = outputs["bf16"].contiguous()
        io["output_fp8"] = outputs["fp8 per row"].contiguous()
        save_file(io, save + ".io.safetensors")
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}; {len(blocks)} block linear layers")
    print("| PyTorch forward | relative L2 vs its bf16 forward |\n|---|---|")
    for label in ("fp8 per row", "fp8 per tensor"):
        print(f"| {label} | {rel_l2(outputs[label], outputs['bf16']):.3e} |")


if __name__ == "__main__":
    main()
