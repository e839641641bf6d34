"""optsample-run as a user meets it: a configuration mistake is one line on stderr and exit status 2; a sweep
with no route to the W&B server waits once.

Each case runs the real console entry point in a subprocess (``python -m optsample.runner.app``), so Hydra's own
error printing is part of what is tested. Before this file, ``steps=0`` printed an 18-line traceback and
exited 1, ``sampler=dpmpp2m`` listed all 30 samplers and the config search path, and ``schedule=discrete``
on gmm2d said ``discrete() missing 1 required positional argument: 'alphas_cumprod'``.
"""

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = ["logger=none", "metric=none", "n_samples=8", "progress=false"]


def env(**extra) -> dict:
    """The test's environment without HYDRA_FULL_ERROR, plus ``extra`` (a None value removes that variable)."""
    found = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    found.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1", **extra)
    return {k: v for k, v in found.items() if v is not None}


def run_cli(tmp_path, *args, module="optsample.runner.app", **extra):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env(**extra),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override, line", [
    ("steps=0", "steps must be >= 1, got 0"),
    ("sampler=dpmpp2m", "Could not find 'sampler/dpmpp2m'; did you mean 'dpmpp_2m', 'dpmpp_3m', 'dpmpp_2m_sde'?"),
    ("schedule=discrete", "model gmm2d has no discrete schedule (schedule=discrete needs a discrete-time model"),
    ("stepz=4", "Could not override 'stepz': Key 'stepz' not in 'RunConfig'; did you mean 'steps'?"),
    ("schedule=custom", "Missing mandatory value: schedule.values"),
    ("sampler.eta=-0.5", "hyper-parameter 'eta' = -0.5 is outside [0.0, inf]"),
])
def test_config_mistake_is_one_line_and_exit_2(tmp_path, override, line):
    args = [*BASE, "sampler=euler_ancestral"] if override.startswith("sampler.") else BASE
    done = run_cli(tmp_path, *args, override)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optsample-run: error: ") and line in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()  # failed before any work


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    done = run_cli(tmp_path, *BASE, "steps=0", HYDRA_FULL_ERROR="1")
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "optsample.runner.app.ConfigError: steps must be >= 1, got 0"


def test_custom_schedule_needs_no_steps_null(tmp_path):
    # [80, 10, 1, 0.1] plus the appended 0: 4 steps, whatever the default steps=10 says
    done = run_cli(tmp_path, *BASE, "schedule=custom", "schedule.values=[80,10,1,0.1]")
    assert done.returncode == 0, done.stderr[-2000:]
    (row_file,) = (tmp_path / "runs" / "default").glob("*.json")
    row = json.loads(row_file.read_text())
    assert (row["steps"], row["nfe"]) == (4, 4)


def test_run_help_lists_no_train_group_and_train_still_composes(tmp_path):
    done = run_cli(tmp_path, "--help")
    groups = done.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert done.returncode == 0 and "sampler:" in groups and "train:" not in groups
    train = run_cli(tmp_path, "--cfg", "job", module="optsample.zoo.digits.train")
    assert train.returncode == 0 and "iterations: 2000" in train.stdout, train.stderr[-2000:]


def test_sweep_without_a_route_to_wandb_waits_once(tmp_path):
    # W&B online, a dummy 40-character key, and a closed port on this machine as the server. Before: each of the
    # 2 runs waited W&B's 90 s init_timeout (one gmm2d run took 1 min 47 s here). Now: one bounded wait
    # (init_timeout, 3 s here), then the sweep logs offline, said once.
    began = time.perf_counter()
    done = run_cli(tmp_path, "-m", "sampler=euler,heun", "steps=3", "metric=none", "n_samples=8", "progress=false",
                   "logger=wandb", "logger.mode=online", "logger.init_timeout=3", WANDB_MODE=None,
                   WANDB_API_KEY="0123456789abcdef" * 2 + "01234567", WANDB_BASE_URL="http://127.0.0.1:9")
    elapsed = time.perf_counter() - began
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("rest of the sweep log offline") == 1 and "127.0.0.1:9" in done.stderr, done.stderr[-2000:]
    assert elapsed < 120, elapsed  # old code: 3 x 90 s (2 runs + the sweep table); a loaded 2-core machine: ~50 s
    assert len(list((tmp_path / "multirun").rglob("offline-run-*"))) == 3  # 2 runs + the sweep table, syncable
