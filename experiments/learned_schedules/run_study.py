"""A first study of learned schedules on gmm64 (exact error): default Karras vs tuned Karras vs dp vs gradient.

    .venv/bin/python experiments/learned_schedules/run_study.py                 # results/learned_schedules/
    .venv/bin/python experiments/learned_schedules/run_study.py --nfe 4 6 --samplers euler   # a part of it

Protocol (as experiments/optimizer_vs_solvers): schedules are learned on the tuning seed 1 only (sample seeds
(1 << 32) + k, ``--n-tune`` samples) and every schedule is scored on the held-out seeds 2, 3, 4 (256 samples
each) by the RMSE to the exact ODE solution (optsample.reference.solve) from the same starting noise. Schedules:

- ``karras``: the default Karras schedule (rho 7, sigma_min 0.002, sigma_max 80);
- ``karras_tuned``: rho and sigma_min from results/optimizer_vs_solvers/best_params.json (Optuna, 16 trials on
  seed 1), present there for euler, dpmpp_2m and unipc at NFE 5 and 10 only (for unipc that tuning also chose
  the order; only its schedule is reused here, with the default sampler);
- ``dp``: optsample.learned_schedules, method=dp, cost=oss, history=exact (grid ``--grid`` Karras points);
- ``gradient``: method=gradient (LD3-style), started from the default Karras schedule.

Learned files go to ``<out>/schedules/``, rows to ``<out>/rmse.csv``, the table to ``<out>/rmse.md`` and the
plot of the learned sigmas against Karras to ``<out>/sigmas_nfe6.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from optsample import reference, samplers, schedules
from optsample.learned_schedules import files
from optsample.learned_schedules.learn import learn
from optsample.learned_schedules.problem import steps_for_budget
from optsample.models import GaussianMixture

REPO = Path(__file__).resolve().parents[2]
SAMPLERS = ("euler", "dpmpp_2m", "unipc", "ipndm")
NFES = (4, 5, 6, 8, 10)
TUNING_SEED, REPORTING_SEEDS = 1, (2, 3, 4)
MODEL = {"name": "gmm64", "dim": 64, "components": 8, "seed": 0, "spread": 3.0}


def sample_seeds(seed: int, n: int) -> list[int]:
    """The runner's per-sample seeds (seed << 32) + k (optsample/run.py ``sample_seeds``)."""
    return [(seed << 32) + k for k in range(n)]


def tuned_karras(sampler: str, nfe: int) -> dict | None:
    """rho and sigma_min tuned for (gmm64, sampler, nfe) in experiments/optimizer_vs_solvers, if there."""
    path = REPO / "results" / "optimizer_vs_solvers" / "best_params.json"
    entry = json.loads(path.read_text()).get("gmm64", {}).get(sampler, {}).get(str(nfe))
    if entry is None:
        return None
    params = entry["params"]
    return {"rho": params["schedule.rho"], "sigma_min": params["schedule.sigma_min"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument("--n-tune", type=int, default=64)
    parser.add_argument("--n-report", type=int, default=256)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--out", default=str(REPO / "results" / "learned_schedules"))
    args = parser.parse_args()
    out = Path(args.out)
    (out / "schedules").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gmm = GaussianMixture.random(dim=64, components=8, seed=0)
    started = time.perf_counter()
    starts = {seed: samplers.initial_noise(sample_seeds(seed, args.n_report), (64,), dtype=torch.float64) * 80.0
              for seed in REPORTING_SEEDS}
    exact = {seed: reference.solve(gmm, x, 80.0, 0.0) for seed, x in starts.items()}
    rows, learned_sigmas, learn_seconds = [], {}, {}
    for sampler in args.samplers:
        for nfe in args.nfe:
            n_steps = steps_for_budget(sampler, nfe)
            candidates = {"karras": schedules.karras(n_steps)}
            tuned = tuned_karras(sampler, nfe)
            if tuned is not None:
                candidates["karras_tuned"] = schedules.karras(n_steps, **tuned)
            for method, options in (("dp", {"grid_size": args.grid}), ("gradient", {"iters": args.iters})):
                t0 = time.perf_counter()
                result = learn(gmm, sampler, nfe, (64,), method=method, seeds=sample_seeds(TUNING_SEED, args.n_tune),
                               options=options)
                learn_seconds[(sampler, nfe, method)] = time.perf_counter() - t0
                files.save(out / "schedules" / f"gmm64_{sampler}_nfe{nfe}_{method}.json", result.sigmas,
                           {"model": MODEL, **result.provenance})
                candidates[method] = result.sigmas
                learned_sigmas[(sampler, nfe, method)] = result.sigmas.tolist()
            for name, sigmas in candidates.items():
                for seed in REPORTING_SEEDS:
                    x_out = samplers.sample(sampler, gmm, starts[seed], sigmas, seeds=sample_seeds(seed, args.n_report))
                    rows.append({"sampler": sampler, "nfe": nfe, "schedule": name, "seed": seed,
                                 "rmse": reference.rmse(x_out, exact[seed]),
                                 "learn_s": learn_seconds.get((sampler, nfe, name))})
            print(f"{sampler} nfe={nfe}: " + ", ".join(
                f"{r['schedule']} {r['rmse']:.3f}" for r in rows[-len(candidates) * 3::3]), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "rmse.csv", index=False)
    (out / "rmse.md").write_text(table(frame))
    plot_sigmas(learned_sigmas, out / "sigmas_nfe6.png", nfe=6)
    print(f"total {time.perf_counter() - started:.0f} s; learning {sum(learn_seconds.values()):.0f} s")


def table(frame: pd.DataFrame) -> str:
    """Markdown: RMSE mean ± std over the reporting seeds, one row per (sampler, NFE); best per row in bold;
    and the ratio of the best learned schedule to the tuned (else default) Karras schedule."""
    order = ["karras", "karras_tuned", "dp", "gradient"]
    stats = frame.groupby(["sampler", "nfe", "schedule"])["rmse"].agg(["mean", "std"]).reset_index()
    lines = ["| sampler | NFE | " + " | ".join(order) + " | best learned / best Karras |",
             "|---|---:|" + "---:|" * (len(order) + 1)]
    for (sampler, nfe), group in stats.groupby(["sampler", "nfe"], sort=False):
        values = {row.schedule: (row.mean, row.std) for row in group.itertuples()}
        best = min(mean for mean, _ in values.values())
        cells = []
        for name in order:
            if name not in values:
                cells.append("–")
                continue
            mean, std = values[name]
            text = f"{mean:.3g} ± {std:.2g}"
            cells.append(f"**{text}**" if mean == best else text)
        karras_best = min(values[k][0] for k in ("karras", "karras_tuned") if k in values)
        learned_best = min(values[k][0] for k in ("dp", "gradient") if k in values)
        lines.append(f"| {sampler} | {nfe} | " + " | ".join(cells) + f" | x{learned_best / karras_best:.2f} |")
    return "\n".join(lines) + "\n"


def plot_sigmas(learned: dict, path: Path, nfe: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers_here = sorted({s for s, n, _ in learned if n == nfe})
    if not samplers_here:
        return
    fig, axes = plt.subplots(1, len(samplers_here), figsize=(3.6 * len(samplers_here), 3.4), sharey=True, squeeze=False)
    for ax, sampler in zip(axes[0], samplers_here):
        n_steps = steps_for_budget(sampler, nfe)
        karras = schedules.karras(n_steps)[:-1]
        ax.plot(range(n_steps), karras, "k--o", ms=3, label="Karras (default)")
        tuned = tuned_karras(sampler, nfe)
        if tuned is not None:
            ax.plot(range(n_steps), schedules.karras(n_steps, **tuned)[:-1], "k:s", ms=3, label="Karras (tuned)")
        for method, style in (("dp", "-o"), ("gradient", "-^")):
            if (sampler, nfe, method) in learned:
                ax.plot(range(n_steps), learned[(sampler, nfe, method)][:-1], style, ms=4, label=method)
        ax.set_yscale("log")
        ax.set_title(f"{sampler}, NFE {nfe}")
        ax.set_xlabel("step i")
    axes[0][0].set_ylabel("sigma_i (log; the final 0 not shown)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
