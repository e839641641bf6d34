"""The runner's guidance= and task= groups (optsample/runner/guidance_tasks.py), end to end on gmm_inverse."""

from __future__ import annotations


import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from optsample.runner import config as C
from optsample.runner import app as R

BASE = ["logger=none", "metric=none", "progress=false", "task=gmm_inverse", "schedule.sigma_max=1000"]


def resolved(overrides):
    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_exact_guidance_row_has_the_task_metrics(tmp_path):
    """task=gmm_inverse guidance=exact: the row carries the exact-posterior metrics; guided by the exact score
    the sliced W2 is within 1.5x the floor between two exact sets and coverage is 0.9 +- 0.05."""
    cfg = resolved(BASE + ["guidance=exact", "sampler=dpmpp_2m", "steps=50", "n_samples=1000", "batch_size=500",
                           f"results_dir={tmp_path}"])
    row = R.execute(cfg)
    assert row["guidance.name"] == "exact" and row["task.name"] == "gmm_inverse" and row["nfe"] == 50
    assert row["metric.sw_ratio"] <= 1.5 and abs(row["metric.coverage90"] - 0.9) < 0.05
    assert row["metric.dps_cosine@0.05"] > 0.999
    unguided = R.execute(resolved(BASE + ["sampler=dpmpp_2m", "steps=50", "n_samples=1000", f"results_dir={tmp_path}"]))
    assert unguided["metric.sw_ratio"] > 3  # the prior is not the posterior: the check can fail


def test_dps_runs_under_another_sampler_and_eta_reaches_the_schedule(tmp_path):
    cfg = resolved(BASE + ["guidance=dps", "sampler=ddim", "sampler.eta=1.0", "steps=20", "n_samples=64",
                           f"results_dir={tmp_path}"])
    built, task = R.guidance_tasks.prepare(cfg, None, R.plan_run(cfg).sigmas, R.plan_run(cfg).hparams)
    assert built.denoiser.eta == 1.0 and built.denoiser.lr_schedule == "dps"
    row = R.execute(cfg)
    assert row["metric.sw"] > 0 and row["nfe"] == 20


@pytest.mark.parametrize("overrides,message", [
    (["task=none", "guidance=dps"], "guidance=dps needs a task"),
    (["guidance=adam_dps", "guidance.beta1=1.5"], "'beta1' = 1.5 is outside"),
    (["guidance=dps", "guidance.rule=adm"], "unknown guidance rule 'adm'"),
    (["guidance=dps", "guidance.lr_schedule=sqrt"], "guidance.lr_schedule must be one of"),
])
def test_bad_guidance_config_fails_before_work(overrides, message):
    with pytest.raises(R.ConfigError, match=message):
        R.plan_run(resolved(BASE + overrides))


def test_unguided_config_hash_is_unchanged():
    """guidance=none, task=none leave the hashed config as it was before these groups (old rows are found)."""
    cfg = resolved(["logger=none", "metric=none"])
    assert "guidance" not in R.hashed_config(cfg) and "task" not in R.hashed_config(cfg)
    assert "guidance" in R.hashed_config(resolved(BASE + ["guidance=dps"]))
