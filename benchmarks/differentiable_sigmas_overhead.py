"""The ordinary (no-grad) path's cost before and after the samplers learned to carry sigma gradients (issue 14).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/differentiable_sigmas_overhead.py [--old REV --repeats 7]``

``--old`` (default: ``git merge-base HEAD main``) is exported with ``git archive`` into a temporary folder; each
repeat runs one worker process on the old tree and one on this checkout, alternately, so load on a shared
machine hits both alike. A worker times ``optsample.sample`` (plain float sigmas, no autograd) for euler,
dpmpp_2m, restart and dpmpp_sde at 20 Karras steps on two models: ``gmm64`` (the exact denoiser of a 64-D,
8-component Gaussian mixture, batch 64, float32) and ``zero`` (a model returning zeros: the loop's own cost,
the worst case for any per-step overhead). Printed: the best milliseconds per sample() call and new / old
(and the ratio of medians), the per-call microseconds of the pieces the change touched, and the Python / C
function calls one 20-step sample() makes (zero model), a measure of the loop's overhead that load does not move.
The numbers themselves (outputs) are compared too: every run must be bitwise the same as the old tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("euler", "dpmpp_2m", "restart", "dpmpp_sde")
MODELS = ("gmm64", "zero")

WORKER = r"""
import hashlib, json, sys, time, torch
import optsample
from optsample import schedules
from optsample.models import GaussianMixture

torch.set_num_threads(1)
n_steps, number = int(sys.argv[1]), int(sys.argv[2])
gmm = GaussianMixture.random(dim=64, components=8, seed=0)
models = {"gmm64": lambda x, sigma: gmm(x, sigma).to(x.dtype), "zero": lambda x, sigma: torch.zeros_like(x)}
x = optsample.initial_noise(range(64), (64,)) * 80.0
sigmas = schedules.karras(n_steps, 0.002, 80.0)
out = {}
for model_name, model in models.items():
    for name in sys.argv[3:]:
        result = optsample.sample(name, model, x, sigmas, seeds=range(64))  # warm-up, and the numbers
        digest = hashlib.sha256(result.numpy().tobytes()).hexdigest()[:16]
        times = []
        for _ in range(number):
            start = time.perf_counter()
            optsample.sample(name, model, x, sigmas, seeds=range(64))
            times.append(time.perf_counter() - start)
        out[f"{model_name}/{name}"] = [min(times), digest]
# python function calls (and C calls) per sample(): the per-step overhead in a unit load does not move
for name in sys.argv[3:]:
    counts = [0, 0]
    def count(frame, event, arg):
        if event in ("call", "c_call"):
            counts[event == "c_call"] += 1
    sys.setprofile(count)
    optsample.sample(name, models["zero"], x, sigmas, seeds=range(64))
    sys.setprofile(None)
    out[f"calls/{name} (py, C)"] = [counts, "-"]
# the pieces the change touched, per call (microseconds): best of 5 rounds of 20000 calls
from optsample.samplers import core
values = sigmas.tolist()
pieces = {"core.steps(20 steps)": lambda: list(core.steps(sigmas)),
          "core.ancestral_step": lambda: core.ancestral_step(values[3], values[4]),
          "core.churn(no-op)": lambda: core.churn(x, values[3], n_steps, None, 0.0, 0.0, float("inf"), 1.0)}
for piece, fn in pieces.items():
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20000):
            fn()
        rounds.append((time.perf_counter() - start) / 20000)
    out[piece] = [min(rounds) * 1e3, "-"]  # printed in the ms column as microseconds
print(json.dumps(out))
"""


def worker(tree: Path, n_steps: int, number: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, str(n_steps), str(number), *SAMPLERS], env=env,
                          capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default=None, help="the revision to compare with (default: merge-base with main)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7, help="worker pairs (medians over them)")
    parser.add_argument("--number", type=int, default=5, help="timed calls per worker (their minimum is kept)")
    args = parser.parse_args()
    old = args.old or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="optsample-old-") as folder:
        archive = subprocess.run(["git", "archive", old], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        runs = {"old": [], "new": []}
        for _ in range(args.repeats):
            runs["old"].append(worker(Path(folder), args.steps, args.number))
            runs["new"].append(worker(ROOT, args.steps, args.number))
    print(f"no-grad sample() at {args.steps} steps, batch 64 x 64, float32; old = {old[:10]}, new = this checkout; "
          f"best of {args.repeats} worker pairs x {args.number} calls (the median in brackets; a shared machine's load "
          "moves medians by 2x, the best less); the last rows are per-call costs of the changed pieces, in us")
    print(f"{'model/sampler':<24}{'old ms':>9}{'new ms':>9}{'new/old':>9}{'(median)':>10}  outputs")
    for key in runs["old"][0]:
        if key.startswith("calls/"):
            old_calls, new_calls = runs["old"][0][key][0], runs["new"][0][key][0]
            print(f"{key:<30} {old_calls[0]} + {old_calls[1]} -> {new_calls[0]} + {new_calls[1]}")
            continue
        best = [min(r[key][0] for r in runs[side]) * 1e3 for side in ("old", "new")]
        median = [statistics.median(r[key][0] for r in runs[side]) * 1e3 for side in ("old", "new")]
        same = {r[key][1] for r in runs["old"] + runs["new"]}
        outputs = "" if same == {"-"} else "bitwise equal" if len(same) == 1 else "DIFFER " + " ".join(sorted(same))
        print(f"{key:<24}{best[0]:>9.3f}{best[1]:>9.3f}{best[1] / best[0]:>9.3f}{median[1] / median[0]:>10.3f}  {outputs}")


if __name__ == "__main__":
    main()
