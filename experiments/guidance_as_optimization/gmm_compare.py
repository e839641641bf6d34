"""Does Adam help guidance? A first, small, exact comparison on the Gaussian-mixture inverse problem.

Setting: MCGdiff / TMPD problem (d = 8, d_y = 2, 25 components), DDPM-like sampling (``ddim`` with eta 1 on
the 50 respaced timesteps of DPS's linear-beta schedule), y-guidance by DPS (sgd), AdamDPS (adam, two
settings), momentum, RMSProp, sign and MPGD (backprop-free), each written as ``guided(...)`` with its per-step
schedule. Each method's lr is tuned on a grid (x 10^(k/2), k = -3..3, around its preset) by the mean sliced
W2 on two tuning problems (seeds 0, 1; 200 samples), then reported on three held-out problems (seeds
10, 11, 12; other measurements, other sample seeds; 800 samples). References: the exact likelihood score
(the sampler's own error) and no guidance (the prior). About 2-3 CPU-minutes.

    PYTHONPATH=. python experiments/guidance_as_optimization/gmm_compare.py
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

import optsample
from optsample.guidance import GMMInverse, LikelihoodScore, MeasurementLoss, guided
from optsample.metrics.analytic import sliced_wasserstein_distance
from optsample.samplers import NonFiniteError

torch.set_num_threads(1)
F64 = torch.float64
OUT = Path(__file__).resolve().parents[2] / "results" / "guidance_as_optimization"
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)  # DPS2022 linear schedule
ABAR = torch.cumprod(1 - BETAS, 0)[list(range(0, 1000, 20))[::-1]]
SIGMAS = torch.cat([((1 - ABAR) / ABAR).sqrt(), torch.zeros(1, dtype=F64)])
TUNE, HELD_OUT = (0, 1), (10, 11, 12)

# name -> (rule, options, lr preset, through, schedule)
METHODS = {
    "DPS (sgd)": ("sgd", {}, 0.3, "denoiser", "dps"),
    "AdamDPS (b1 .9, b2 .999)": ("adam", {"beta1": 0.9, "beta2": 0.999}, 1.0, "denoiser", "adam_dps"),
    "AdamDPS (b1 .14, b2 .03)": ("adam", {"beta1": 0.14, "beta2": 0.03}, 1.0, "denoiser", "adam_dps"),
    "momentum (beta .5)": ("momentum", {"beta": 0.5}, 0.3, "denoiser", "dps"),
    "RMSProp (beta2 .5)": ("rmsprop", {"beta2": 0.5}, 1.0, "denoiser", "adam_dps"),
    "sign": ("sign", {}, 1.0, "denoiser", "adam_dps"),
    "MPGD (sgd on x0)": ("sgd", {}, 3.0, "x0", "mpgd"),
}


def sample(model, n, seed_base):
    seeds = [seed_base + k for k in range(n)]
    x = optsample.initial_noise(seeds, (8,), dtype=F64) * math.sqrt(1 + float(SIGMAS[0]) ** 2)
    return optsample.sample("ddim", model, x, SIGMAS, seeds=seeds, eta=1.0)


def evaluate(problem, samples, reference, floor):
    if not bool(torch.isfinite(samples).all()):
        return {"sw_ratio": math.inf, "weight_tv": math.inf, "coverage90": math.nan, "mean_error": math.inf}
    sw = sliced_wasserstein_distance(samples, reference, generator=torch.Generator().manual_seed(0))
    return {"sw_ratio": sw / floor, "weight_tv": problem.weight_tv(samples), "coverage90": problem.coverage(samples),
            "mean_error": problem.posterior_mean_error(samples)}


def setup(seed, n):
    problem = GMMInverse.mcgdiff(8, 2, seed=seed)
    reference = problem.sample_posterior(n, generator=torch.Generator().manual_seed(100 + seed))
    other = problem.sample_posterior(n, generator=torch.Generator().manual_seed(200 + seed))
    return problem, reference, sliced_wasserstein_distance(other, reference, generator=torch.Generator().manual_seed(0))


def make_model(problem, method, lr):
    if method == "exact score":
        return guided(problem.prior, LikelihoodScore(problem.likelihood_score))
    if method == "no guidance":
        return problem.prior
    rule, options, _, through, schedule = METHODS[method]
    loss = MeasurementLoss(problem.A, problem.y, problem.sigma_y, norm="l2", through=through)
    return guided(problem.prior, loss, rule=rule, lr=lr, lr_schedule=schedule, sigmas=SIGMAS, eta=1.0, **options)


def run(problem, method, lr, n, seed_base, reference, floor):
    try:
        return evaluate(problem, sample(make_model(problem, method, lr), n, seed_base), reference, floor)
    except NonFiniteError:
        return evaluate(problem, torch.full((1, 8), math.nan, dtype=F64), reference, floor)


def main():
    start = time.perf_counter()
    tuning = [setup(seed, 200) for seed in TUNE]
    held_out = [setup(seed, 800) for seed in HELD_OUT]
    tuned, rows = {}, []
    for method, (_, _, preset, _, _) in METHODS.items():
        grid = [preset * 10 ** (k / 2) for k in range(-3, 4)]
        scores = [sum(run(p, method, lr, 200, 10_000, r, f)["sw_ratio"] for p, r, f in tuning) / len(tuning) for lr in grid]
        tuned[method] = grid[min(range(len(grid)), key=scores.__getitem__)]
        print(f"{method}: tuning sw_ratio {[round(s, 2) for s in scores]} -> lr {tuned[method]:.3g}", flush=True)
    for method in ["exact score", "no guidance", *METHODS]:
        values = [run(p, method, tuned.get(method, 1.0), 800, 50_000 + 1000 * i, r, f) for i, (p, r, f) in enumerate(held_out)]
        row = {"method": method, "lr": tuned.get(method, "")}
        for key in values[0]:
            column = [v[key] for v in values]
            row[key] = sum(column) / len(column)
            row[key + "_max"] = max(column)
        rows.append(row)
        print(row, flush=True)
    cosines = setup(HELD_OUT[0], 10)[0].dps_cosine([0.05, 0.5, 2.0, 10.0, 50.0], n=512, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    write(rows, cosines, seconds)


def write(rows, cosines, seconds):
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "gmm_inverse.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| method | tuned lr | SW / floor (mean, max) | weight TV | 90 % coverage | mean error |", "|---|---|---|---|---|---|"]
    for r in rows:
        lr = f"{r['lr']:.3g}" if r["lr"] != "" else "-"
        lines.append(f"| {r['method']} | {lr} | {r['sw_ratio']:.2f} ({r['sw_ratio_max']:.2f}) | {r['weight_tv']:.3f} | "
                     f"{r['coverage90']:.3f} | {r['mean_error']:.3f} |")
    lines += ["", "DPS-gradient cosine with the exact likelihood score, held-out problem 10, by sigma:", "",
              "| sigma | " + " | ".join(f"{s:g}" for s in cosines) + " |", "|---|" + "---|" * len(cosines),
              "| cosine | " + " | ".join(f"{c:.3f}" for c in cosines.values()) + " |", "",
              f"Wall time {seconds:.0f} s on one CPU thread."]
    (OUT / "gmm_inverse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
