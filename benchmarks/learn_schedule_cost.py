"""Cost of learning one schedule: gmm64 (64-D, 8-component mixture, exact teacher) at NFE 6.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/learn_schedule_cost.py [--sampler dpmpp_2m --nfe 6 --n-samples 64]``

Issue 14's target: under 2 minutes on 2 cores. Times each method of optsample.learned_schedules.learn from
scratch (exact teacher solve included) on the tuning seeds (1 << 32) + k, and prints the RMSE to the teacher on
those seeds next to the default Karras schedule's (a tuning-seed number, not a held-out result).
"""

from __future__ import annotations

import argparse
import time

import torch

from optsample.learned_schedules.learn import learn
from optsample.models import GaussianMixture

METHODS = (("dp", {"cost": "oss"}), ("dp", {"cost": "gits"}), ("gradient", {}), ("optuna", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--nfe", type=int, default=6)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gmm = GaussianMixture.random(dim=64, components=8, seed=0)
    seeds = [(1 << 32) + k for k in range(args.n_samples)]
    print(f"gmm64, {args.sampler}, NFE {args.nfe}, {args.n_samples} tuning samples, torch threads {args.threads}")
    print(f"{'method':22s} {'wall s':>7s} {'cpu s':>7s} {'RMSE':>7s} {'Karras':>7s}  sigmas")
    for method, options in METHODS:
        wall, cpu = time.perf_counter(), time.process_time()
        result = learn(gmm, args.sampler, args.nfe, (64,), method=method, seeds=seeds, options=options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        loss = result.provenance["loss"]
        label = f"{method} {options.get('cost', '')}".strip()
        sigmas = " ".join(f"{float(s):.3g}" for s in result.sigmas)
        print(f"{label:22s} {wall:7.1f} {cpu:7.1f} {loss['rmse']:7.4f} {loss['rmse_karras_default']:7.4f}  {sigmas}")


if __name__ == "__main__":
    main()
