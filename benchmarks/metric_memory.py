"""Peak memory and time of one run against n, with the default metrics (rmse, loglik, mode_error, mmd2_unbiased,
sliced_wasserstein), for gmm2d and gmm64: each run is a fresh process, its peak resident set read from
``os.wait4`` (the child's rusage, Linux: kilobytes), so imports and the model count too.

    python benchmarks/metric_memory.py                      # n = 5k, 20k, 50k; gmm2d and gmm64
    python benchmarks/metric_memory.py --n 1000 --models gmm2d --set 'metric.names=[loglik,mmd2_unbiased]'

Before issue 13 the analytic metrics built [n, n] kernels: 10,000 gmm2d samples took 3.4 GB and
30,000 were OOM-killed at 24 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(model: str, n: int, results_dir: str, extra: list[str]) -> tuple[float, float, float, float, int]:
    """(peak RSS in GiB, wall seconds, CPU seconds, the run's own seconds, exit code) of one optsample-run
    process; CPU seconds (user + system) are what to compare on a loaded machine."""
    cmd = [sys.executable, "-m", "optsample.runner.app", f"model={model}", "sampler=dpmpp_2m", "nfe=10", f"n_samples={n}",
           "batch_size=1000", "logger=none", "progress=false", f"results_dir={results_dir}",
           f"hydra.run.dir={results_dir}/hydra", *extra]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    rows = list(Path(results_dir).glob("*.json"))
    run_s = json.loads(rows[0].read_text())["time.total_s"] if rows else float("nan")
    return usage.ru_maxrss / 2**20, wall, usage.ru_utime + usage.ru_stime, run_s, child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--models", nargs="+", default=["gmm2d", "gmm64"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="OVERRIDE",
                        help="an extra optsample-run override, e.g. --set metric=fast (repeatable)")
    args = parser.parse_args()
    names = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("metric.names=")), "metric=analytic")
    print(f"sampler=dpmpp_2m nfe=10 batch_size=1000, {names}")
    print(f"{'model':8} {'n':>7} {'peak GiB':>9} {'wall s':>8} {'CPU s':>8} {'run s':>8}  rc")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for n in sorted(args.n):
                peak, wall, cpu, run_s, code = run_once(model, n, f"{tmp}/{model}-{n}", args.overrides)
                print(f"{model:8} {n:7d} {peak:9.2f} {wall:8.1f} {cpu:8.1f} {run_s:8.1f}  {code}", flush=True)


if __name__ == "__main__":
    main()
