#!/usr/bin/env python3
"""Pillow LANCZOS reference for the input-image preprocessing (spec pipeline.md §1.3).

FramePack brings every input image to its bucket with `resize_and_center_crop`
(`diffusers_helper/utils.py`): `PIL.Image.resize((rw, rh), Image.LANCZOS)` on the uint8 RGB image,
then `crop()` with box corners rounded half to even. This script records Pillow's output for
procedural images (`procedural_image` of `encoders_fixture.py`, mirrored in Rust), so that the
Rust resampler can be checked bit for bit:

  framepack-models/tests/fixtures/vision_lanczos_pil.safetensors
      `cases`          float32 [n, 4]: source width, source height, target width, target height
      `case{i}`        uint8 [target h, target w, 3]: `Image.resize(..., LANCZOS)` of source i
                       (seeded with i)
  framepack-models/tests/fixtures/vision_lanczos_pil.json
      `crops`: whole `resize_and_center_crop` runs at bucket sizes (outputs up to 1920 px wide are
      too large to commit, so only their SHA-256 and a few pixels are stored)

Pillow's 8-bit resampler has not changed between 11.1.0 (FramePack's pin) and the 13.x this was
run with. Run by hand from the repository root:
  pip install pillow numpy safetensors torch
  python3 tools/reference/lanczos_fixture.py
"""
import hashlib
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

OUT = "framepack-models/tests/fixtures"

# (source width, source height, target width, target height)
RESIZE_CASES = [
    (64, 48, 40, 30),     # downscale both axes (support widened by the scale)
    (33, 17, 80, 41),     # upscale both axes (support 3)
    (50, 40, 50, 23),     # height only: PIL skips the horizontal pass
    (45, 60, 97, 60),     # width only
    (300, 200, 61, 41),   # strong downscale (factor ~4.9)
    (7, 5, 3, 2),         # tiny source: every tap clamped at the borders
]

# (source width, source height, target width, target height, seed): FramePack buckets
# (spec §1.2 examples) and one small exact size (the tiny-random demo's default).
CROP_CASES = [
    (512, 512, 608, 640, 11),    # square -> 640 tall x 608 wide: upscale to 640x640, crop 16..624
    (1920, 1080, 832, 480, 12),  # 16:9 -> 853x480, crop corners 10.5/842.5 -> 10/842
    (1001, 1000, 640, 608, 13),  # 1000x1001 (h x w) -> 608x640
    (400, 600, 512, 768, 14),    # 600x400 (h x w) -> 768x512
    (300, 200, 64, 64, 15),      # exact 64x64 (tiny demo): downscale to 96x64, crop 16..80
]


def procedural_image(width, height, seed):
    """Identical to encoders_fixture.procedural_image (uint8 RGB [height, width, 3])."""
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


def resize_and_center_crop(image, target_width, target_height):
    """FramePack's diffusers_helper/utils.py, verbatim."""
    if target_height == image.shape[0] and target_width == image.shape[1]:
        return image
    pil_image = Image.fromarray(image)
    original_width, original_height = pil_image.size
    scale_factor = max(target_width / original_width, target_height / original_height)
    resized_width = int(round(original_width * scale_factor))
    resized_height = int(round(original_height * scale_factor))
    resized_image = pil_image.resize((resized_width, resized_height), Image.LANCZOS)
    left = (resized_width - target_width) / 2
    top = (resized_height - target_height) / 2
    right = (resized_width + target_width) / 2
    bottom = (resized_height + target_height) / 2
    cropped_image = resized_image.crop((left, top, right, bottom))
    return np.array(cropped_image)


def main():
    out = {"cases": torch.tensor(RESIZE_CASES, dtype=torch.float32)}
    for i, (sw, sh, dw, dh) in enumerate(RESIZE_CASES):
        src = procedural_image(sw, sh, seed=i)
        res = np.asarray(Image.fromarray(src).resize((dw, dh), Image.LANCZOS))
        out[f"case{i}"] = torch.from_numpy(res.copy())
    save_file(out, f"{OUT}/vision_lanczos_pil.safetensors")

    crops = []
    for sw, sh, dw, dh, seed in CROP_CASES:
        src = procedural_image(sw, sh, seed=seed)
        res = resize_and_center_crop(src, dw, dh)
        assert res.shape == (dh, dw, 3), res.shape
        probes = [[0, 0], [dh // 2, dw // 3], [dh - 1, dw - 1]]
        crops.append({
            "source": [sw, sh], "target": [dw, dh], "seed": seed,
            "sha256": hashlib.sha256(res.tobytes()).hexdigest(),
            "probes": [{"y": y, "x": x, "rgb": [int(v) for v in res[y, x]]} for y, x in probes],
        })
    with open(f"{OUT}/vision_lanczos_pil.json", "w") as f:
        json.dump({"pillow": Image.__version__, "crops": crops}, f, indent=1)
    print(f"{len(RESIZE_CASES)} resize cases, {len(CROP_CASES)} crop cases (Pillow {Image.__version__})")


if __name__ == "__main__":
    main()
