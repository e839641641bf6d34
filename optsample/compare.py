"""A built-in comparison: samplers on a Gaussian mixture, error to the exact ODE solution at fixed NFE.

``optsample-compare`` (the README's main command until the experiment runner lands) prints one table:
rows are samplers, columns are NFE budgets, cells are the RMSE of the final samples against a
high-accuracy solution of the probability-flow ODE from the same starting noise (``optsample.reference``).
Everything is analytic: no weights, no network, no GPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import reference, schedules
from .models import GaussianMixture
from .samplers import available, initial_noise, sample, steps_for_nfe

DEFAULT_SAMPLERS = ["euler", "heun", "lms", "plms", "dpmpp_2m", "unipc", "momentum", "adam", "eps_scaling"]


def compare(samplers, nfes, *, dim=64, components=8, n_samples=128, sigma_min=0.002, sigma_max=80.0, rho=7.0, seed=0):
    """{sampler: {nfe: (rmse, real_nfe)}} on ``GaussianMixture.random(dim, components, seed)``, float64."""
    model = GaussianMixture.random(dim=dim, components=components, seed=seed)
    x_start = initial_noise(range(n_samples), (dim,), dtype=torch.float64) * sigma_max
    x_ref = reference.solve(model, x_start, sigma_max, 0.0)
    table = {}
    for name in samplers:
        table[name] = {}
        for nfe in nfes:
            def schedule(n):
                return schedules.karras(n, sigma_min, sigma_max, rho)

            sigmas = schedule(steps_for_nfe(name, nfe, schedule=schedule))  # NFE measured on the schedule run
            x, info = sample(name, model, x_start, sigmas, seeds=range(n_samples), return_info=True)
            table[name][nfe] = (reference.rmse(x, x_ref), info.nfe)
    return table


def format_table(table, nfes) -> str:
    """Markdown: one row per sampler, 'rmse (real NFE)' per budget, the best per column in bold."""
    best = {nfe: min(row[nfe][0] for row in table.values()) for nfe in nfes}
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for name, row in table.items():
        cells = []
        for nfe in nfes:
            rmse, real = row[nfe]
            cell = f"{rmse:.4f}" + ("" if real == nfe else f" ({real})")
            cells.append(f"**{cell}**" if rmse == best[nfe] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samplers", nargs="+", default=[s for s in DEFAULT_SAMPLERS if s in available()])
    parser.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = compare(args.samplers, args.nfe, dim=args.dim, components=args.components, n_samples=args.samples, seed=args.seed)
    print(f"RMSE to the exact probability-flow ODE solution; {args.dim}-D, {args.components}-component Gaussian mixture "
          f"(seed {args.seed}), {args.samples} samples, float64, Karras schedule (sigma 80 -> 0.002, rho 7).")
    print("A cell shows the real NFE in brackets where the sampler cannot hit the budget exactly.\n")
    print(format_table(table, args.nfe))
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
