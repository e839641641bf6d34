"""torchrun with 2 gloo processes on the CPU: the row equals the single-process row (1e-9 relative), one
row with world_size 2, one Hydra output directory; a failing rank fails the run and writes no row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optsample.runner import distributed

ROOT = Path(__file__).resolve().parent.parent
RUN = ["model=gmm2d", "sampler=dpmpp_2m", "nfe=6", "n_samples=60", "batch_size=16", "metric=analytic", "logger=none",
       "progress=false", "device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}


def torchrun(tmp_path, *args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)


def rows(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def test_chunks_do_not_depend_on_world_size():
    assert distributed.chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    every = [distributed.rank_chunks(50, 7, distributed.World(r, 3)) for r in range(3)]
    assert sorted(c for part in every for c in part) == distributed.chunks(50, 7)  # a partition, no padding
    assert every[1] == [(7, 14), (28, 35), (49, 50)]  # rank 1 of 3: chunks 1, 4, 7 (NVlabs/edm's rank-strided batches)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        distributed.chunks(10, 0)


def test_two_processes_equal_one(tmp_path):
    two = torchrun(tmp_path, "-m", "optsample.runner.app", *RUN, "results_dir=two")
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "optsample.runner.app", *RUN, "results_dir=one"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    (row2,), (row1,) = rows(tmp_path / "two"), rows(tmp_path / "one")
    assert row2["world_size"] == 2 and row1["world_size"] == 1
    assert row2["config_hash"] == row1["config_hash"]
    names = ["rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein"]
    for name in names:
        assert row2[f"metric.{name}"] == pytest.approx(row1[f"metric.{name}"], rel=1e-9, abs=0), name
    assert row1["metric.rmse"] > 0 and row1["metric.mode_error"] > 0  # real numbers, not zeros
    # both ranks used rank 0's output directory (hydra #2070): one directory, one config copy, two logs
    dirs = sorted(p.name for p in (tmp_path / "outputs" / "default").iterdir())
    assert len(dirs) == 2  # the torchrun one and the single-process one
    torchrun_dir = next(d for d in (tmp_path / "outputs" / "default").iterdir() if list(d.glob("*.rank1.log")))
    job = next(torchrun_dir.glob("*.rank1.log")).name.removesuffix(".rank1.log")  # Hydra's job name
    assert sorted(p.name for p in torchrun_dir.iterdir()) == [".hydra", f"{job}.log", f"{job}.rank1.log"]


def test_failing_rank_fails_the_run_and_writes_no_row(tmp_path):
    out = torchrun(tmp_path, str(ROOT / "tests" / "rank_failure_entry.py"), *RUN, "results_dir=failed")
    assert out.returncode != 0
    assert "rank 1 fails on purpose" in out.stderr + out.stdout
    assert rows(tmp_path / "failed") == []


def test_rank_overrides_and_shared_stamp():
    assert distributed.hydra_overrides(distributed.World(0, 2), []) == []
    extra = distributed.hydra_overrides(distributed.World(1, 2), ["hydra.output_subdir=out"])
    assert extra == ["hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/${hydra.job.name}.rank1.log"]
    distributed.set_run_stamp(0.0)  # what rank 0 broadcasts: every rank formats the same instant
    from datetime import datetime

    assert distributed.run_stamp("%Y-%m-%d_%H-%M-%S") == datetime.fromtimestamp(0.0).strftime("%Y-%m-%d_%H-%M-%S")
