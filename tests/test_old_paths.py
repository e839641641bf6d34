"""The documented old import paths re-export the moved objects themselves (README "Layout"), and
``python -m optsample.run`` still runs the runner."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("old,new", [
    ("optsample.run", "optsample.runner.app"),
    ("optsample.diffusers_scheduler", "optsample.integrations.diffusers.scheduler"),
    ("optsample.models.diffusers_adapters", "optsample.integrations.diffusers.adapters"),
])
def test_old_module_reexports_the_same_objects(old, new):
    import importlib

    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert old_module.__all__
    for name in old_module.__all__:
        assert getattr(old_module, name) is getattr(new_module, name), name


def test_python_m_optsample_run_still_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "optsample.run", "logger=none", "metric=none", "n_samples=2", "steps=2",
                           "progress=false", f"results_dir={tmp_path}/runs"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1
