"""The optimizer-vs-solvers driver (experiments/optimizer_vs_solvers/run_ovs.py) end to end, --tiny: Optuna tuning on
seed 1 only, reporting on seeds 2-4 only, best-parameter JSON that matches the tuning rows, tables that match the
rows, and one reported number recomputed here from optsample's pieces without the runner."""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from optsample import reference, schedules
from optsample.models import GaussianMixture
from optsample.runner.results import read_rows
from optsample.samplers import initial_noise, sample

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "experiments" / "optimizer_vs_solvers" / "run_ovs.py"
SAMPLERS, NFES, TRIALS, N = ("euler", "momentum"), (4, 6), 3, 32
MODELS = ("gmm64", "digits_empirical")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(DRIVER), "--tiny", "--runs", str(root / "runs"), "--out", str(root / "out")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)  # a hang guard (~60 CPU-s; 250 s wall at load 10)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def rows(root, model, label):
    return read_rows(root / "runs" / f"ovs_{model}_{label}")


def cell(found, sampler, nfe):
    return [r for r in found if r["sampler.name"] == sampler and r["nfe_budget"] == nfe]


def test_tuning_sees_seed_1_only_and_json_holds_its_best(tiny):
    best = json.loads((tiny / "out" / "best_params.json").read_text())
    assert best["protocol"]["tuning_seed"] == 1 and best["protocol"]["reporting_seeds"] == [2, 3, 4]
    for model in MODELS:
        tuning = rows(tiny, model, "tune")
        assert {r["seed"] for r in tuning} == {1}
        for sampler in SAMPLERS:
            for nfe in NFES:
                entry = best[model][sampler][str(nfe)]
                trials = cell(tuning, sampler, nfe)
                assert entry["completed_trials"] == TRIALS and len(trials) == TRIALS
                # the JSON's best is the smallest tuning row; trial 0 = the defaults, so tuning never loses on seed 1
                assert entry["tuning_value"] == min(r["metric.rmse"] for r in trials)
                assert entry["default_value"] in [r["metric.rmse"] for r in trials]
                assert entry["tuning_value"] <= entry["default_value"]
    assert best["gmm64"]["momentum"]["4"]["default_params"] == {
        "sampler.beta": 0.2, "schedule.rho": 7.0, "schedule.sigma_min": 0.002}  # rules.momentum, schedules.karras


def test_reporting_uses_seeds_2_3_4_with_the_best_params(tiny):
    best = json.loads((tiny / "out" / "best_params.json").read_text())
    for model in MODELS:
        tuned = rows(tiny, model, "tuned")
        for sampler in SAMPLERS:
            for nfe in NFES:
                found = cell(tuned, sampler, nfe)
                assert sorted(r["seed"] for r in found) == [2, 3, 4]
                assert all(r[k] == v for r in found for k, v in best[model][sampler][str(nfe)]["params"].items())
                # three seeds, three different starting noises: three different errors
                assert len({r["metric.rmse"] for r in found}) == 3
        assert {r["seed"] for r in rows(tiny, model, "default")} == {2, 3, 4}


def test_reported_euler_row_recomputed_without_the_runner(tiny):
    """gmm64, Euler, defaults (karras rho 7, 4 steps), seed 2: noise of sample k from torch seed
    k xor (2 * 0x9E3779B9) mod 2^32 (seed 2's (2 << 32) + k folded to 32 bits), scaled by sigma_max 80."""
    row = next(r for r in cell(rows(tiny, "gmm64", "default"), "euler", 4) if r["seed"] == 2)
    gmm = GaussianMixture.random(dim=64, components=8, seed=0, spread=3.0)
    seeds = [(k ^ (2 * 0x9E3779B9)) & 0xFFFFFFFF for k in range(N)]
    x = initial_noise(seeds, (64,)) * 80.0
    got = sample("euler", gmm, x, schedules.karras(4))
    expected = reference.rmse(got, reference.solve(gmm, x, 80.0, 0.0))
    assert row["metric.rmse"] == pytest.approx(expected, rel=1e-5)
    assert row["steps"] == 4 and row["nfe"] == 4 and row["n_samples"] == N


def test_tables_are_mean_and_std_of_the_reported_rows(tiny):
    found = cell(rows(tiny, "gmm64", "tuned"), "momentum", 6)
    values = [r["metric.rmse"] for r in found]
    with open(tiny / "out" / "gmm64_rmse_tuned.csv") as handle:
        table = {line["sampler.name"]: line for line in csv.DictReader(handle)}
    assert float(table["momentum"]["nfe_budget=6"]) == pytest.approx(statistics.mean(values), rel=1e-12)
    assert float(table["momentum"]["nfe_budget=6 std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
    markdown = (tiny / "out" / "gmm64_rmse_tuned.md").read_text()
    assert "seed 1 was used for tuning and is never reported" in markdown and "**" in markdown
    for model in MODELS:
        for label in ("tuned", "default"):
            assert (tiny / "out" / f"{model}_rmse_{label}.png").stat().st_size > 1000
    comparison = (tiny / "out" / "comparison.md").read_text()
    assert "| 4 | momentum |" in comparison and "vs euler" in comparison


def test_unknown_sampler_or_model_is_named(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_ovs", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_ovs", driver)  # dataclasses look their module up there
    spec.loader.exec_module(driver)
    with pytest.raises(SystemExit, match=r"no search space for sampler\(s\) \['eulr'\]"):
        driver.main(["--samplers", "euler,eulr"])
    with pytest.raises(SystemExit, match=r"unknown model\(s\) \['gmm65'\]"):
        driver.main(["--models", "gmm65"])
