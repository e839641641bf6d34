"""One short accelerator check of the sampler core: CUDA correctness, half precision, speed.

    python benchmarks/gpu_check.py            # on a machine with CUDA (falls back to CPU-only parts)

1. Every registered sampler on a Gaussian mixture: CUDA against CPU, float64 and float32, same seeds
   (per-sample noise is drawn on the CPU, so the numbers must agree to rounding).
2. A tiny random diffusers UNet2DModel in float16 / bfloat16 on CUDA: optsample's euler and dpmpp_2m
   through DiscreteVPDenoiser against the diffusers scheduler loop on the same network, same noise,
   both measured against the float32 diffusers loop (optsample keeps its state in float32, diffusers
   in the half type); the output dtype must be the input dtype.
3. Wall time of both loops on that UNet (batch 16, 3x32x32, 20 steps), printed as a ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

import optsample
from optsample import schedules
from optsample.models import DiscreteVPDenoiser, GaussianMixture


def check_samplers(device: str) -> None:
    model = GaussianMixture.random(dim=16, components=4, seed=0, spread=2.0)
    print("1. every sampler, CUDA vs CPU (16-D mixture, 32 samples, 10 steps, seeds 0..31)")
    print(f"   {'sampler':22s} {'float64 max|diff|':>18s} {'float32 max|diff|':>18s}")
    worst = {torch.float64: 0.0, torch.float32: 0.0}
    for name in optsample.available():
        row = []
        for dtype in (torch.float64, torch.float32):
            sigmas = schedules.karras(10, 0.002, 80.0)
            x = optsample.initial_noise(range(32), (16,), dtype=dtype) * 80.0
            out_cpu = optsample.sample(name, model, x, sigmas, seeds=range(32))
            out_dev = optsample.sample(name, model, x.to(device), sigmas, seeds=range(32))
            assert out_dev.device.type == device and out_dev.dtype == dtype
            diff = (out_dev.cpu() - out_cpu).abs().max().item()
            worst[dtype] = max(worst[dtype], diff / max(1.0, out_cpu.abs().max().item()))
            row.append(diff)
        print(f"   {name:22s} {row[0]:18.3e} {row[1]:18.3e}")
    print(f"   worst relative: float64 {worst[torch.float64]:.2e}, float32 {worst[torch.float32]:.2e}")


def tiny_unet(device, dtype):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return unet.to(device, dtype).eval()


def diffusers_loop(scheduler, unet, noise, n_steps):
    scheduler.set_timesteps(n_steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


def check_half_precision(device: str, n_steps: int = 20, batch: int = 16) -> None:
    """Half-precision model, float32 sampler state: agreement with diffusers and the float32 answer, and speed."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    print(f"\n2./3. tiny UNet2DModel on {device}, batch {batch} x 3x32x32, {n_steps} steps: optsample vs diffusers")
    print(f"   {'dtype':9s} {'sampler':9s} {'|ours-dif|':>10s} {'|ours-f32|':>10s} {'|dif-f32|':>10s} {'out dtype':>10s} "
          f"{'optsample s':>12s} {'diffusers s':>12s} {'ratio':>6s}")
    unet32 = tiny_unet(device, torch.float32)
    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing")
    pairs = [("euler", EulerDiscreteScheduler(**kwargs)),
             ("dpmpp_2m", DPMSolverMultistepScheduler(**kwargs, algorithm_type="dpmsolver++", solver_order=2,
                                                      final_sigmas_type="zero"))]
    for dtype in (torch.float16, torch.bfloat16):
        unet = tiny_unet(device, dtype)
        for name, scheduler in pairs:
            scheduler.set_timesteps(n_steps)
            sigmas = scheduler.sigmas.double()
            def net(x_t, t, unet=unet, dtype=dtype):
                return unet(x_t.to(dtype), t).sample

            model = DiscreteVPDenoiser(net, scheduler.alphas_cumprod)
            noise = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            x_start = noise.float() * float(sigmas[0]) if name == "euler" else noise.float() * (1 + float(sigmas[0]) ** 2) ** 0.5
            timings = {}
            with torch.no_grad():
                for rep in range(3):  # first repetition warms up kernels
                    torch.cuda.synchronize() if device == "cuda" else None
                    t0 = time.perf_counter()
                    ours = optsample.sample(name, model, x_start.to(dtype), sigmas)
                    torch.cuda.synchronize() if device == "cuda" else None
                    t1 = time.perf_counter()
                    theirs = diffusers_loop(scheduler, unet, noise, n_steps)
                    torch.cuda.synchronize() if device == "cuda" else None
                    t2 = time.perf_counter()
                    timings = {"ours": min(timings.get("ours", 1e9), t1 - t0), "theirs": min(timings.get("theirs", 1e9), t2 - t1)}
                reference = diffusers_loop(scheduler, unet32, noise.float(), n_steps)
            diff = (ours.float() - theirs.float()).abs().max().item()
            err_ours = (ours.float() - reference).abs().max().item()
            err_theirs = (theirs.float() - reference).abs().max().item()
            print(f"   {str(dtype)[6:]:9s} {name:9s} {diff:10.3e} {err_ours:10.3e} {err_theirs:10.3e} {str(ours.dtype)[6:]:>10s} "
                  f"{timings['ours']:12.4f} {timings['theirs']:12.4f} {timings['ours'] / timings['theirs']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        check_samplers("cuda")
    check_half_precision(args.device, args.steps, args.batch)


if __name__ == "__main__":
    main()
