"""What guidance costs on the shipped digits model (printed ratios, asserts nothing).

1. A guided step through the denoiser (DPS: a vector-Jacobian product through the UNet) against an
   unguided step (target <= 3x), and a backprop-free MPGD step (the loss gradient at x0_hat only;
   target <= 1.3x); euler, 20 steps, the unconditional branch, digits_inpaint90's measurement.
2. Memory over the steps of a guided run: resident set size (CPU) or allocated memory (CUDA) after each
   step of a 60-step run; flat means no autograd graph or state survives a step.
3. Our published DPS loop (optsample.guidance.published.dps) against the literal transcription of
   DPS2022's loop in tests/test_guidance_published.py (target <= 1.05x), the digits network as a
   discrete eps model on DPS's linear 1000-step betas, the same batch through both.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/guidance_cost.py --batch 256 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import optsample  # noqa: E402
from optsample import schedules  # noqa: E402
from optsample.guidance import MeasurementLoss, guided  # noqa: E402
from optsample.guidance.published import dps  # noqa: E402
from optsample.models import DenoiserAsDiscreteEps  # noqa: E402
from optsample.samplers import SeededNoise  # noqa: E402
from optsample.zoo.digits import GuidedDenoiser, inverse, load_denoiser  # noqa: E402


def memory_now(device: torch.device) -> float:
    """MB: allocated CUDA memory, or the process's resident set (Linux /proc)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    prior = GuidedDenoiser(load_denoiser(), guidance=0.0).to(device)  # unconditional branch
    problem = inverse.make_problem("inpaint", args.batch, drop=0.9, sigma_y=0.05)
    operator = inverse.Mask(problem.operator.mask.to(device))
    sigmas = schedules.karras(args.steps, 0.002, 80.0).to(device)
    x = optsample.initial_noise(range(args.batch), (1, 8, 8), device=device) * float(sigmas[0])
    loss = MeasurementLoss(operator, problem.y.to(device), 0.05)
    loss_x0 = MeasurementLoss(operator, problem.y.to(device), 0.05, through="x0")
    runs = {
        "unguided": lambda: optsample.sample("euler", prior, x, sigmas),
        "dps (through the denoiser)": lambda: optsample.sample("euler", guided(prior, loss, lr=1.0), x, sigmas),
        "mpgd (x0 only)": lambda: optsample.sample("euler", guided(prior, loss_x0, lr=1.0), x, sigmas),
    }
    for run in runs.values():
        run()  # warm-up
    seconds = {name: timed(run, args.repeats, device) for name, run in runs.items()}
    print(f"digits UNet, batch {args.batch}, euler {args.steps} steps, {device}, {torch.get_num_threads()} thread(s)")
    for name, s in seconds.items():
        print(f"  {name:28s} {1e3 * s / args.steps:8.2f} ms/step  {s / seconds['unguided']:5.2f}x unguided")

    record = []
    steps = 60
    long_sigmas = schedules.karras(steps, 0.002, 80.0).to(device)
    optsample.sample("euler", guided(prior, loss, lr=1.0), x, long_sigmas,
                     callback=lambda info: record.append(memory_now(device)))
    print(f"memory over a {steps}-step DPS run (MB after steps 1, {steps // 4}, {steps // 2}, {steps}): "
          f"{record[0]:.1f}, {record[steps // 4 - 1]:.1f}, {record[steps // 2 - 1]:.1f}, {record[-1]:.1f}; "
          f"growth from step 5 to the end {record[-1] - record[4]:+.1f} MB")

    from test_guidance_published import ALPHAS_CUMPROD, LINEAR_BETAS, PeerDDPM, peer_posterior_sampling

    abar = ALPHAS_CUMPROD.float()
    eps_net = DenoiserAsDiscreteEps(prior, abar).to(device)
    use = set(range(0, 1000, 1000 // args.steps))
    n_loop = 8  # the peer's loop runs batch size 1 (its `if t != 0` and batch-wide norm), as DPS2022's scripts
    x_t = optsample.initial_noise(range(n_loop), (1, 8, 8), device=device)
    peer = PeerDDPM(use, LINEAR_BETAS, "fixed_small", True)
    one = [(inverse.Mask(operator.mask[k:k + 1]), problem.y[k:k + 1].to(device)) for k in range(n_loop)]

    def ours():
        return [dps(eps_net, x_t[k:k + 1].clone(), MeasurementLoss(op, y, norm="l2"), abar, sorted(use, reverse=True),
                    scale=1.0, clip=1.0, seeds=[k]) for k, (op, y) in enumerate(one)]

    def theirs():
        out = []
        for k, (op, y) in enumerate(one):
            stream = SeededNoise(x_t[k:k + 1], [k])
            out.append(peer.p_sample_loop(eps_net, x_t[k:k + 1].clone(), y, peer_posterior_sampling(op, 1.0),
                                          noise=lambda x: stream()))
        return out

    ours(), theirs()
    pair = {"ours": [], "peer": []}
    for _ in range(args.repeats):  # interleaved, so load hits both alike
        pair["ours"].append(timed(ours, 1, device))
        pair["peer"].append(timed(theirs, 1, device))
    t_ours, t_peer = statistics.median(pair["ours"]), statistics.median(pair["peer"])
    difference = max(float((a - b).abs().max()) for a, b in zip(ours(), theirs()))
    print(f"published DPS loop, {args.steps} steps, {n_loop} samples one at a time: ours {1e3 * t_ours:.1f} ms, DPS2022 transcription "
          f"{1e3 * t_peer:.1f} ms, ratio {t_ours / t_peer:.3f}; outputs within {difference:.1e}")


if __name__ == "__main__":
    main()
