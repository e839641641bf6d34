"""Stable Diffusion adapter on an accelerator: agreement with diffusers and speed, on a tiny random pipeline.

    PYTHONPATH=. python benchmarks/gpu_check_sd.py                       # CUDA, float16
    PYTHONPATH=. python benchmarks/gpu_check_sd.py --device cpu --dtype float32   # dry run

Needs torch, transformers, diffusers and optsample only (no hydra, no wandb). The random pipeline of
``tests/tiny_pipeline.py``'s ``tiny_stable_diffusion`` (latents 4x8x8) runs in ``--dtype`` with CFG
7.5 and DPM-Solver++ 2M; optsample's ``dpmpp_2m`` through ``StableDiffusionDenoiser`` (state float32, network
in ``--dtype``) against ``StableDiffusionPipeline`` (output_type="latent", latents in ``--dtype``), same
start noise. Prints max |ours - diffusers| relative to the output scale, each side's distance from a
float32 diffusers run, and the wall-time ratio ours / diffusers (median of ``--repeats``, text encoding
included on both sides).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

import optsample
from optsample.integrations.diffusers.adapters import StableDiffusionDenoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixture
from tiny_pipeline import tiny_stable_diffusion  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # SD 1.x


def tiny_pipeline(folder, device, dtype) -> StableDiffusionPipeline:
    scheduler = DPMSolverMultistepScheduler(**BETAS, solver_order=2, algorithm_type="dpmsolver++",
                                            final_sigmas_type="zero", lower_order_final=True, steps_offset=1)
    pipe = StableDiffusionPipeline(**tiny_stable_diffusion(Path(folder), scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_diffusers(pipe, noise, steps, guidance_scale) -> torch.Tensor:
    return pipe(prompt=list(PROMPTS) * (noise.shape[0] // len(PROMPTS)), num_inference_steps=steps,
                guidance_scale=guidance_scale, latents=noise.to(pipe.unet.dtype), output_type="latent").images


def run_optsample(pipe, noise, steps, guidance_scale) -> torch.Tensor:
    """dpmpp_2m on the scheduler's own sigmas (DPM-Solver's start is VP: x_VE = x_VP * sqrt(sigma^2 + 1))."""
    denoiser = StableDiffusionDenoiser.from_pipeline(pipe, guidance_scale=guidance_scale)
    pipe.scheduler.set_timesteps(steps)
    sigmas = pipe.scheduler.sigmas.to(noise.device, torch.float32)
    x = noise.float() * (sigmas[0] ** 2 + 1).sqrt()
    prompts = list(PROMPTS) * (noise.shape[0] // len(PROMPTS))
    return optsample.sample("dpmpp_2m", denoiser, x, sigmas, extra_args={"prompts": prompts})


def timed(fn, *args, repeats: int, device) -> tuple[torch.Tensor, float]:
    """(output, median seconds) of ``repeats`` calls after one warm-up."""
    out = fn(*args)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn(*args)
        sync(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.batch % len(PROMPTS):
        parser.error(f"--batch must be a multiple of {len(PROMPTS)}")
    dtype = getattr(torch, args.dtype)
    noise = torch.randn(args.batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(args.device)
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        reference = run_diffusers(tiny_pipeline(folder, args.device, torch.float32), noise, args.steps, args.guidance_scale)
        pipe = tiny_pipeline(folder, args.device, dtype)
        theirs, t_theirs = timed(run_diffusers, pipe, noise, args.steps, args.guidance_scale, repeats=args.repeats, device=args.device)
        ours, t_ours = timed(run_optsample, pipe, noise, args.steps, args.guidance_scale, repeats=args.repeats, device=args.device)
    scale = float(reference.abs().max())
    print(f"device {args.device} ({torch.cuda.get_device_name() if 'cuda' in args.device else 'cpu'}), {args.dtype}, "
          f"batch {args.batch}, {args.steps} steps, CFG {args.guidance_scale}, output scale {scale:.3g}")
    print(f"agreement  max|ours - diffusers| / scale = {float((ours.float() - theirs.float()).abs().max()) / scale:.3e}")
    print(f"vs float32 diffusers: ours {float((ours.float() - reference).abs().max()) / scale:.3e}, "
          f"diffusers {float((theirs.float() - reference).abs().max()) / scale:.3e}")
    print(f"dtypes     ours {ours.dtype} (state), diffusers {theirs.dtype}")
    print(f"wall time  ours {t_ours * 1e3:.1f} ms, diffusers {t_theirs * 1e3:.1f} ms, ratio {t_ours / t_theirs:.3f} "
          f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
