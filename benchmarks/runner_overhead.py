"""The runner's own overhead per run: everything but sampling and scoring.

Two sweeps of near-empty runs (1 sample, 1 Euler step, no metric) with ``optsample-run -m``: one of
``SMALL`` runs and one of ``LARGE`` runs. The marginal cost of a run, (wall_large - wall_small) /
(LARGE - SMALL), minus its sampling and scoring time (from the rows), is the per-run overhead with the
process start-up (python, torch and Hydra imports) cancelled out; the start-up is printed apart.
Targets (issue 4): < 0.5 s per run with logger=none, < 2 s with W&B offline.

    python benchmarks/runner_overhead.py [--loggers none wandb] [--small 2] [--large 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from optsample.runner import results

TARGET_S = {"none": 0.5, "csv": 0.5, "wandb": 2.0}


def sweep_wall(n_runs: int, logger: str, workdir: Path) -> tuple[float, list[dict]]:
    """Wall-clock seconds of one ``-m`` sweep of n_runs distinct tiny runs, and its rows."""
    name = f"{logger}_{n_runs}"
    cmd = [
        sys.executable, "-m", "optsample.runner.app", "-m", f"logger={logger}", "metric=none", "n_samples=1", "steps=1",
        "progress=false", f"name={name}", "seed=" + ",".join(str(s) for s in range(n_runs)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if "failed (" in done.stdout + done.stderr:
        print(f"  note: logger={logger} warned (see optsample.runner.loggers); overhead measured anyway", file=sys.stderr)
    rows = results.read_rows(workdir / "runs" / name)
    if len(rows) != n_runs:
        raise SystemExit(f"expected {n_runs} rows, found {len(rows)}")
    return wall, rows


def measure(logger: str, small: int, large: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wall_small, rows_small = sweep_wall(small, logger, Path(tmp))
        wall_large, rows_large = sweep_wall(large, logger, Path(tmp))
    work = [r["time.sample_s"] + r["time.score_s"] for r in rows_large]
    per_run = (wall_large - wall_small) / (large - small) - sum(work) / len(work)
    startup = wall_small - small * (per_run + sum(work) / len(work))
    in_job = sum(r["time.overhead_s"] for r in rows_large) / len(rows_large)
    return {"per_run_s": per_run, "startup_s": startup, "in_job_s": in_job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loggers", nargs="+", default=["none", "wandb"])
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--large", type=int, default=12)
    args = parser.parse_args()
    print(f"{'logger':<8} {'overhead/run':>13} {'(in job)':>9} {'start-up':>9} {'target':>7}")
    for logger in args.loggers:
        m = measure(logger, args.small, args.large)
        target = TARGET_S.get(logger, float("nan"))
        verdict = "ok" if m["per_run_s"] < target else "SLOW"
        print(f"{logger:<8} {m['per_run_s']:>12.3f}s {m['in_job_s']:>8.3f}s {m['startup_s']:>8.2f}s {target:>6.1f}s {verdict}")


if __name__ == "__main__":
    main()
