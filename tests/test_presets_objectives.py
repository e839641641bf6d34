"""Tuning objectives that can show a benefit (issue 9, item 7).

rmse compares each sample with the deterministic ODE solution from the same starting noise, so any noise
a stochastic sampler adds can only make it worse: tuning a noise level against it always answers "none".
Every Optuna preset that tunes a stochastic sampler (or a noise hyper-parameter of any sampler) must target
a distribution metric (MMD, sliced Wasserstein, log-likelihood, FID, ...).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import optsample
from optsample import metrics

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "conf" / "experiment").glob("*.yaml"))
PATHWISE_METRICS = {"rmse"}  # optsample/metrics/analytic.py: distance to the ODE endpoint of the same start
# Hyper-parameters that put noise into a run (EDM churn, ancestral eta, Langevin noise, restarts, noise scale).
NOISE_HPARAMS = {"s_churn", "eta", "s_noise", "langevin_noise", "restart_count", "restart_k"}


def overrides(preset: dict) -> dict:
    """{'/sampler': 'euler', '/hydra/sweeper': 'optuna', ...} of a preset's ``override`` defaults."""
    found = {}
    for item in preset.get("defaults", []):
        if isinstance(item, dict):
            for key, value in item.items():
                found[key.removeprefix("override ").strip()] = value
    return found


def stochastic(sampler: str | None, tuned: dict) -> bool:
    noisy_params = {key.removeprefix("sampler.") for key in tuned} & NOISE_HPARAMS
    return bool(noisy_params) or (sampler is not None and optsample.get(sampler).stochastic)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_a_tuning_preset_of_a_stochastic_sampler_does_not_target_rmse(path):
    preset = yaml.safe_load(path.read_text())
    if overrides(preset).get("/hydra/sweeper") != "optuna":
        return  # not a tuning preset
    tuned = (preset.get("hydra", {}).get("sweeper", {}) or {}).get("params", {}) or {}
    sampler = overrides(preset).get("/sampler")
    objective = str(preset.get("objective", "")).removeprefix("metric.")
    if stochastic(sampler, tuned):
        assert objective and objective not in PATHWISE_METRICS, (
            f"{path.name} tunes a stochastic run ({sampler}, {sorted(tuned)}) against {objective or 'nothing'}")
        assert objective in metrics.available()


def test_the_optimizer_vs_solvers_search_spaces_tune_only_deterministic_samplers_on_rmse():
    """ovs_gmm64 / ovs_digits_empirical tune on rmse: every sampler of the study's search space is deterministic."""
    spaces = yaml.safe_load((ROOT / "experiments" / "optimizer_vs_solvers" / "search_spaces.yaml").read_text())
    rmse_presets = [p.stem for p in PRESETS if yaml.safe_load(p.read_text()).get("objective") == "metric.rmse"]
    assert rmse_presets  # the study's model presets do target rmse
    for sampler, space in spaces["samplers"].items():
        assert not stochastic(sampler, {**(space or {}), **spaces["schedule"]}), sampler


def test_the_churn_preset_targets_a_distribution_metric():
    preset = yaml.safe_load((ROOT / "conf" / "experiment" / "tune_euler_churn.yaml").read_text())
    assert preset["objective"] == "metric.sliced_wasserstein"
    assert "sampler.s_churn" in preset["hydra"]["sweeper"]["params"]
