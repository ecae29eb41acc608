#!/usr/bin/env python3
"""Reference fixtures for framepack-sampling's tests, produced by FramePack's own sampler code.

FramePack's `diffusers_helper/k_diffusion/uni_pc_fm.py`, `wrapper.py` and
`pipelines/k_diffusion_hunyuan.py` are read at run time from the local git mirror of
lllyasviel/FramePack (nothing of them is copied into this repository). `diffusers_helper.utils`
pulls in cv2/einops/torchvision, which the sampler does not need, so a stand-in module providing
the one helper the pipeline imports (`repeat_to_batch_size`) is registered instead.

The transformer is replaced by an analytic stand-in: the exact flow velocity of Gaussian data
`x0 ~ N(m, s^2)` per channel, with `m` read from `pooled_projections[:, :16]` (so the positive and
negative prompts give different fields) and `s = guidance / 10000` (so the bf16 guidance, 9984 for
gs = 10, is visible in the result). `framepack-sampling/tests/reference.rs` implements the same
stand-in and replays every case.

Writes:
  framepack-sampling/tests/fixtures/sampling_reference.safetensors  torch.randn draws; sample_hunyuan trajectories
                                                 (x0 estimate and sampler state at some steps)
  framepack-sampling/tests/fixtures/sampling_reference.json         sigma schedules; recorded float32 UniPC solves

Run from the repository root (CPU only):
  pip install torch safetensors tqdm
  python3 tools/reference/sampling_fixture.py [path/to/FramePack/git/dir]
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import types

import torch
from safetensors.torch import save_file

MIRROR = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/lllyasviel+FramePack/repo"
COMMIT = "97fe5db"
OUT = "framepack-sampling/tests/fixtures"


def load_reference():
    """Imports FramePack's sampler modules from the mirror (read with `git show`)."""
    tmp = tempfile.mkdtemp()

    def source(path):
        return subprocess.run(["git", "-C", MIRROR, "show", f"{COMMIT}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    def load(name, path):
        file = os.path.join(tmp, name.replace(".", "_") + ".py")
        with open(file, "w") as f:
            f.write(source(path))
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for pkg in ["diffusers_helper", "diffusers_helper.k_diffusion", "diffusers_helper.pipelines"]:
        sys.modules[pkg] = types.ModuleType(pkg)

    utils = types.ModuleType("diffusers_helper.utils")

    def repeat_to_batch_size(tensor, batch_size):
        if tensor is None or tensor.shape[0] == batch_size:
            return tensor
        return tensor.repeat(batch_size // tensor.shape[0], *([1] * (tensor.ndim - 1)))

    utils.repeat_to_batch_size = repeat_to_batch_size
    sys.modules["diffusers_helper.utils"] = utils

    uni_pc = load("diffusers_helper.k_diffusion.uni_pc_fm", "diffusers_helper/k_diffusion/uni_pc_fm.py")
    load("diffusers_helper.k_diffusion.wrapper", "diffusers_helper/k_diffusion/wrapper.py")
    pipeline = load("diffusers_helper.pipelines.k_diffusion_hunyuan",
                    "diffusers_helper/pipelines/k_diffusion_hunyuan.py")
    return uni_pc, pipeline


class GaussianFlow:
    """Stand-in transformer: the exact velocity of per-channel Gaussian data (all float32)."""

    def __call__(self, hidden_states, timestep, pooled_projections, guidance, return_dict=False, **_):
        x = hidden_states.float()
        sigma = timestep.float() / 1000.0
        s = guidance.float() / 10000.0
        a = 1.0 - sigma
        var = a * a * s * s + sigma * sigma
        coef = (a * s * s / var).reshape(-1, 1, 1, 1, 1)
        a5 = a.reshape(-1, 1, 1, 1, 1)
        m = pooled_projections.float()[:, :16].reshape(-1, 16, 1, 1, 1)
        x0 = m + coef * (x - a5 * m)
        v = (x - x0) / sigma.reshape(-1, 1, 1, 1, 1)
        return (v,)


def randn_cases(tensors, meta):
    # (seed, [shape, shape, ...]): consecutive draws from one generator.
    cases = [
        (0, [[1, 16, 9, 2, 2]]),
        (31337, [[1, 16, 9, 4, 4], [1, 16, 9, 4, 4]]),
        (42, [[37], [16], [5]]),
        (123456789, [[3], [4], [1]]),
        (2**32 + 5, [[2, 3, 5]]),
        (7, [[10000]]),
    ]
    for seed, shapes in cases:
        g = torch.Generator("cpu").manual_seed(seed)
        for i, shape in enumerate(shapes):
            tensors[f"randn.{seed}.{i}"] = torch.randn(shape, generator=g).contiguous()
        meta["randn"].append({"seed": seed, "shapes": shapes})


def sigma_cases(pipeline, meta):
    cases = [(25, 36, None), (25, 13680, None), (25, 8000, None), (8, 36, None), (1, 36, None),
             (2, 36, None), (50, 14040, None), (25, 36, 3.0), (10, 36, 7.0)]
    for steps, seq_len, shift in cases:
        mu = pipeline.calculate_flux_mu(seq_len, exp_max=7.0) if shift is None else math.log(shift)
        sigmas = pipeline.get_flux_sigmas_from_mu(steps, mu)
        timesteps = (sigmas * 1000.0).to(torch.bfloat16).float()
        meta["sigmas"].append({"steps": steps, "seq_len": seq_len, "shift": shift, "mu": mu,
                               "sigmas": sigmas.tolist(), "timesteps": timesteps.tolist()})


def unipc_solves(uni_pc, pipeline, meta):
    """Runs the reference UniPC (25 steps, shift 7) and records every float32 `expm1` and
    `linalg.solve` it makes: the h, rks, b and rho coefficients of each update."""
    sigmas = pipeline.get_flux_sigmas_from_mu(25, math.log(7.0))
    steps = []
    current = {"expm1": [], "solve": []}
    real_solve, real_expm1 = torch.linalg.solve, torch.expm1

    def solve(a, b):
        x = real_solve(a, b)
        current["solve"].append({"a": a.tolist(), "b": b.tolist(), "x": x.tolist()})
        return x

    def expm1(v):
        r = real_expm1(v)
        current["expm1"].append({"hh": v.item(), "phi1": r.item()})
        return r

    def model(x, t, **_):
        nonlocal current
        steps.append(current)
        current = {"expm1": [], "solve": []}
        return x * 0.5

    torch.linalg.solve, torch.expm1 = solve, expm1
    try:
        uni_pc.sample_unipc(model, torch.ones(1, 1, 1, 1, 1), sigmas, extra_args={}, disable=True)
    finally:
        torch.linalg.solve, torch.expm1 = real_solve, real_expm1
    meta["unipc"] = {"steps": 25, "shift": 7.0, "sigmas": sigmas.tolist(), "updates": steps[1:]}


def trajectories(pipeline, tensors, meta):
    m_pos = torch.linspace(-0.5, 0.7, 16).reshape(1, 16)
    m_neg = torch.linspace(0.3, -0.2, 16).reshape(1, 16)
    cases = [
        dict(name="default", seed=31337, steps=8, frames=33, size=32, cfg=1.0, gs=10.0, rs=0.0),
        dict(name="cfg", seed=5, steps=8, frames=33, size=32, cfg=3.0, gs=10.0, rs=0.7),
        dict(name="influence", seed=11, steps=8, frames=33, size=32, cfg=1.0, gs=10.0, rs=0.0,
             strength=1.0 / 1.02),
        dict(name="shift7_25", seed=31337, steps=25, frames=33, size=16, cfg=1.0, gs=10.0, rs=0.0,
             shift=7.0),
        dict(name="one_frame", seed=1, steps=6, frames=1, size=32, cfg=1.0, gs=6.0, rs=0.0),
    ]
    recorded = [0, 1, 2]
    for case in cases:
        seen = {}

        def callback(d):
            if d["i"] in recorded or d["i"] == case["steps"] - 1:
                seen[d["i"]] = (d["denoised"].clone(), d["x"].clone())

        initial = None
        if "strength" in case:
            initial = torch.linspace(-1.0, 1.0, 16 * (case["size"] // 8) ** 2).reshape(
                1, 16, 1, case["size"] // 8, case["size"] // 8)
            tensors[f"traj.{case['name']}.initial"] = initial.contiguous()
        out = pipeline.sample_hunyuan(
            transformer=GaussianFlow(), sampler="unipc", initial_latent=initial,
            strength=case.get("strength", 1.0), width=case["size"], height=case["size"],
            frames=case["frames"], real_guidance_scale=case["cfg"],
            distilled_guidance_scale=case["gs"], guidance_rescale=case["rs"],
            shift=case.get("shift"), num_inference_steps=case["steps"],
            generator=torch.Generator("cpu").manual_seed(case["seed"]),
            prompt_embeds=torch.zeros(1, 4, 8), prompt_embeds_mask=torch.ones(1, 4, dtype=torch.bool),
            prompt_poolers=m_pos, negative_prompt_embeds=torch.zeros(1, 4, 8),
            negative_prompt_embeds_mask=torch.ones(1, 4, dtype=torch.bool), negative_prompt_poolers=m_neg,
            dtype=torch.bfloat16, device=torch.device("cpu"), callback=callback)
        tensors[f"traj.{case['name']}.out"] = out.contiguous()
        for i, (d, x) in seen.items():
            tensors[f"traj.{case['name']}.denoised.{i}"] = d.contiguous()
            tensors[f"traj.{case['name']}.x.{i}"] = x.contiguous()
        meta["trajectories"].append(dict(case, recorded=sorted(seen)))
    tensors["traj.m_pos"] = m_pos.contiguous()
    tensors["traj.m_neg"] = m_neg.contiguous()


def main():
    torch.set_num_threads(1)
    uni_pc, pipeline = load_reference()
    tensors, meta = {}, {"randn": [], "sigmas": [], "trajectories": [], "torch": torch.__version__,
                         "framepack": COMMIT}
    randn_cases(tensors, meta)
    sigma_cases(pipeline, meta)
    unipc_solves(uni_pc, pipeline, meta)
    trajectories(pipeline, tensors, meta)
    save_file(tensors, f"{OUT}/sampling_reference.safetensors")
    with open(f"{OUT}/sampling_reference.json", "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(t.numel() * 4 for t in tensors.values())
    print(f"{len(tensors)} tensors ({size / 1024:.0f} KiB), {len(meta['sigmas'])} schedules, "
          f"{len(meta['unipc']['updates'])} UniPC updates, {len(meta['trajectories'])} trajectories")


if __name__ == "__main__":
    main()
