"""Stale rows (issue 9, item 8): rows carry the code revision that decides their numbers, a re-run after a
revision change does not reuse them, and a table that mixes revisions says so."""

from __future__ import annotations

import dataclasses
import warnings

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import optsample
from optsample.runner import config as C
from optsample.runner import report, results
from optsample.runner import app as R
from optsample.samplers import registry


def resolved(tmp_path, *overrides) -> dict:
    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "metric=none", "progress=false", "n_samples=4", "steps=2",
                                           f"results_dir={tmp_path}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_rows_carry_the_code_revision(tmp_path):
    row = R.execute(resolved(tmp_path, "sampler=heun"))
    spec = optsample.get("heun")
    assert (row["versions.optsample"], row["sampler.revision"]) == (optsample.__version__, 1)
    assert row["sampler.source_hash"] == spec.source_hash and len(spec.source_hash) == 12
    assert results.read_rows(tmp_path) == [row]


def test_a_revision_bump_or_a_new_version_is_not_served_the_old_row(tmp_path, monkeypatch):
    cfg = resolved(tmp_path, "sampler=euler")
    old = R.execute(cfg)
    assert R.execute(cfg)["timestamp"] == old["timestamp"]  # same code: the finished row is reused
    # old code: the key ignored the revision, so this returned the revision-1 row
    monkeypatch.setitem(registry._REGISTRY, "euler", dataclasses.replace(optsample.get("euler"), revision=2))
    new = R.execute(cfg)
    assert new["sampler.revision"] == 2 and new["config_hash"] != old["config_hash"]
    monkeypatch.setattr(optsample, "__version__", "99.0")
    newer = R.execute(cfg)
    assert newer["versions.optsample"] == "99.0" and newer["config_hash"] not in {old["config_hash"], new["config_hash"]}
    assert len(results.read_rows(tmp_path)) == 3


def test_register_rejects_a_bad_revision():
    with pytest.raises(ValueError, match="revision must be an integer >= 1, got 0"):
        registry.register("never_registered", revision=0)


def table_rows(revisions) -> pd.DataFrame:
    return pd.DataFrame([{"config_hash": f"h{i}", "sampler.name": "euler", "nfe": 10, "seed": i, "metric.rmse": 0.1 * i,
                          "versions.optsample": "0.1.0", **({} if rev is None else {"sampler.revision": rev})}
                         for i, rev in enumerate(revisions)])


def test_a_table_that_mixes_revisions_warns():
    with pytest.warns(UserWarning, match=r"different code revisions are mixed \(euler: sampler.revision 1 / 2\)"):
        report.pivot(table_rows([1, 2]), "rmse", "sampler.name", "nfe")
    with pytest.warns(UserWarning, match=r"euler: sampler.revision 1 / none"):  # a row from before revisions
        report.pivot(table_rows([1, None]), "rmse", "sampler.name", "nfe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.pivot(table_rows([2, 2]), "rmse", "sampler.name", "nfe")  # one revision: no warning
    assert results.revision_mix(table_rows([2, 2]).to_dict("records")) is None


def test_a_table_by_nfe_budget_shows_the_nfe_really_used():
    # heun at budget 6 runs 3 steps = 5 NFE (its last step to 0 is Euler); euler uses all 6
    frame = pd.DataFrame([
        {"config_hash": "a", "sampler.name": "heun", "nfe_budget": 6, "nfe": 5, "seed": 0, "metric.rmse": 0.25},
        {"config_hash": "b", "sampler.name": "euler", "nfe_budget": 6, "nfe": 6, "seed": 0, "metric.rmse": 0.5},
    ])
    text = report.to_markdown(report.pivot(frame, "rmse", "sampler.name", "nfe_budget"))
    assert "| heun | **0.25 (NFE 5)** |" in text and "| euler | 0.5 |" in text
