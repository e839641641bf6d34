"""Throughput of one config run by 1 process and by ``torchrun --nproc_per_node=K`` (gloo, CPU), and
whether the two rows agree. Prints samples per second from the wall clock of the whole command (imports
and process start included) and from the run's own clock (the row's ``time.total_s``, rank 0), and
their ratio K-process / 1-process.

    OMP_NUM_THREADS=1 python benchmarks/distributed_throughput.py              # gmm64, 20k samples, K = 2
    OMP_NUM_THREADS=1 python benchmarks/distributed_throughput.py --nproc 4 n_samples=50000

Each process uses one thread (OMP_NUM_THREADS=1), so K processes can use K cores.
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
DEFAULT = ["model=gmm64", "sampler=dpmpp_2m", "nfe=10", "n_samples=20000", "batch_size=1000", "metric=fast",
           "logger=none", "progress=false", "device=cpu"]


def timed(cmd: list[str], cwd: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="optsample-run overrides added to the defaults")
    args = parser.parse_args()
    overrides = [*DEFAULT, *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            1: [sys.executable, "-m", "optsample.runner.app", *overrides, "results_dir=one"],
            args.nproc: [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                         "-m", "optsample.runner.app", *overrides, f"results_dir=k{args.nproc}"],
        }
        rows, walls = {}, {}
        for k, cmd in runs.items():
            walls[k] = timed(cmd, tmp)
            (path,) = Path(tmp, "one" if k == 1 else f"k{k}").glob("*.json")
            rows[k] = json.loads(path.read_text())
    n = rows[1]["n_samples"]
    print(f"{' '.join(overrides)}")
    print(f"{'processes':>9} {'wall s':>8} {'samples/s':>10} {'run s':>8} {'samples/s':>10}  world_size")
    for k in runs:
        print(f"{k:9d} {walls[k]:8.1f} {n / walls[k]:10.0f} {rows[k]['time.total_s']:8.1f} "
              f"{n / rows[k]['time.total_s']:10.0f}  {rows[k]['world_size']}")
    print(f"ratio {args.nproc}-process / 1-process: wall {walls[1] / walls[args.nproc]:.2f}x, "
          f"run {rows[1]['time.total_s'] / rows[args.nproc]['time.total_s']:.2f}x")
    metrics = sorted(k for k in rows[1] if k.startswith("metric.") and k != "metric.names" and isinstance(rows[1][k], float))
    worst = max((abs(rows[args.nproc][k] - rows[1][k]) / max(abs(rows[1][k]), 1e-300) for k in metrics), default=0.0)
    print(f"rows agree: largest relative difference of {', '.join(metrics)}: {worst:.1e}")


if __name__ == "__main__":
    main()
