"""Wall time of optsample's loop over the tiny Stable Diffusion pipeline against StableDiffusionPipeline itself.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/sd_pipeline_overhead.py --steps 20 --repeats 7

Same network (benchmarks/gpu_check_sd.py's tiny random pipeline, CFG 7.5), same NFE (DPM-Solver++ 2M,
one evaluation per step), same start noise; each call includes text encoding and returns latents. The
runs are interleaved per repeat so machine load hits both alike; prints the median of each and their
ratio ours / diffusers (target <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gpu_check_sd import run_diffusers, run_optsample, tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    noise = torch.randn(args.batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(args.device)
    times = {"optsample": [], "diffusers": []}
    runs = {"optsample": run_optsample, "diffusers": run_diffusers}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        pipe = tiny_pipeline(folder, args.device, torch.float32)
        for fn in runs.values():  # warm-up
            fn(pipe, noise, args.steps, 7.5)
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn(pipe, noise, args.steps, 7.5)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"tiny SD pipeline, {args.device}, batch {args.batch}, {args.steps} steps (NFE {args.steps}), CFG 7.5")
    for name, seconds in median.items():
        print(f"  {name:10s} median {seconds * 1e3:8.1f} ms  (min {min(times[name]) * 1e3:.1f} ms, {args.repeats} repeats)")
    print(f"  ratio optsample / diffusers = {median['optsample'] / median['diffusers']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
