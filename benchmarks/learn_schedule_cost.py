"""Cost of learning one schedule: gmm64 (exact teacher) at NFE 6, or the digits network (solver teacher) at NFE 5.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/learn_schedule_cost.py [--sampler dpmpp_2m --nfe 6 --n-samples 64]``
     ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/learn_schedule_cost.py --model digits``   (dp and gradient)

Issue 14's targets: under 2 minutes on 2 cores for gmm64, under 10 minutes for digits. Times each method of
optsample.learned_schedules.learn from scratch (teacher solve included) on the tuning seeds (1 << 32) + k, and
prints the RMSE to the teacher on those seeds next to the default Karras schedule's (a tuning-seed number, not a
held-out result). ``--model digits``: the shipped UNet's unconditional branch (``learn`` takes no conditioning),
in float64 as ``optsample-schedule`` builds it; teacher ``SolverTeacher`` (iPNDM, 8 sub-steps per interval of the
asked sigmas, checked against 16): for dp the asked sigmas are its grid (``--grid``, default 16 points); for
gradient only [80, 0], so its teacher takes ``--gradient-substeps`` (64) geometric sub-steps 80 -> 0.08 and
jumps to 0. Wall seconds depend on the load of the machine; CPU seconds are the process's.
"""

from __future__ import annotations

import argparse
import time

import torch

from optsample.learned_schedules.learn import learn
from optsample.learned_schedules.problem import SolverTeacher

GMM_METHODS = (("dp", {"cost": "oss"}), ("dp", {"cost": "gits"}), ("gradient", {}), ("optuna", {}))


def build(name: str):
    """(denoiser, sample shape, default NFE)."""
    if name == "gmm64":
        from optsample.models import GaussianMixture

        return GaussianMixture.random(dim=64, components=8, seed=0), (64,), 6
    from optsample.zoo.digits import GuidedDenoiser, load_denoiser

    return GuidedDenoiser(load_denoiser(), guidance=0.0).to(torch.float64).eval(), (1, 8, 8), 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("gmm64", "digits"), default="gmm64")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--nfe", type=int, default=None, help="default: 6 on gmm64, 5 on digits")
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=int, default=16, help="digits: dp grid size")
    parser.add_argument("--gradient-substeps", type=int, default=64, help="digits: the gradient teacher's sub-steps")
    parser.add_argument("--methods", nargs="+", default=None, help="digits: dp and/or gradient (default both)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, shape, nfe = build(args.model)
    nfe = args.nfe or nfe
    seeds = [(1 << 32) + k for k in range(args.n_samples)]
    if args.model == "gmm64":
        runs = [(method, options, None) for method, options in GMM_METHODS]
    else:
        runs = [("dp", {"grid_size": args.grid}, SolverTeacher("ipndm", substeps=8)),
                ("gradient", {}, SolverTeacher("ipndm", substeps=args.gradient_substeps))]
        runs = [run for run in runs if args.methods is None or run[0] in args.methods]
    print(f"{args.model}, {args.sampler}, NFE {nfe}, {args.n_samples} tuning samples, torch threads {args.threads}")
    print(f"{'method':24s} {'wall s':>7s} {'cpu s':>7s} {'RMSE':>7s} {'Karras':>7s}  sigmas")
    for method, options, teacher in runs:
        wall, cpu = time.perf_counter(), time.process_time()
        result = learn(model, args.sampler, nfe, shape, method=method, seeds=seeds, options=options, teacher=teacher)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        loss = result.provenance["loss"]
        label = " ".join(f"{k}={v}" for k, v in options.items()) or "default options"
        label = f"{method} {label}"
        sigmas = " ".join(f"{float(s):.3g}" for s in result.sigmas)
        print(f"{label:24s} {wall:7.1f} {cpu:7.1f} {loss['rmse']:7.4f} {loss['rmse_karras_default']:7.4f}  {sigmas}")


if __name__ == "__main__":
    main()
