"""The guidance study's tuning setup (experiments/guidance_as_optimization/study.py, issue 12 item 4): the search
spaces in conf/experiment/guidance_tune_<method>.yaml parse as the Hydra Optuna sweeper parses them and name
only real hyper-parameters of each rule, every method has the same trial budget, the Hydra presets compose,
and the held-out problems share no seed, measurement or image with the tuning problems."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf" / "experiment"
N_IMAGES = 450  # held-out digits of the shipped model (optsample.zoo.digits.inverse: image (offset + k) % 450)


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("guidance_study", REPO / "experiments" / "guidance_as_optimization" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["guidance_study"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("guidance_study", None)


def test_every_method_has_a_search_space_file_and_no_file_is_orphaned(study):
    files = {p.stem.removeprefix("guidance_tune_") for p in CONF.glob("guidance_tune_*.yaml")}
    assert files == set(study.METHODS.values())


@pytest.mark.parametrize("method", ["dps", "adam_dps", "momentum", "rmsprop", "sign", "mpgd"])
def test_a_search_space_names_lr_and_all_the_rule_hyper_parameters(study, method):
    from optuna.distributions import LogUniformDistribution, UniformDistribution

    from optsample.guidance import rules
    from optsample.runner.guidance_tasks import GUIDANCE_PRESETS

    space = study.distributions(method)  # check_space inside; Hydra's own parser
    rule = GUIDANCE_PRESETS[method].rule
    expected = {"guidance.lr"} | {f"guidance.{n}" for n in rules.rule_hparam_names(rule) if n != "eps"}
    assert set(space) == expected
    lr = space["guidance.lr"]
    assert isinstance(lr, LogUniformDistribution) and lr.high / lr.low == pytest.approx(1e4)  # four decades each
    assert lr.low <= GUIDANCE_PRESETS[method].lr <= lr.high  # trial 0, the preset, lies inside
    for key in expected - {"guidance.lr"}:  # betas in [0, 0.999] as AdamDPS's tuning (Belardi et al. 2026)
        assert isinstance(space[key], UniformDistribution) and (space[key].low, space[key].high) == (0.0, 0.999)


def test_a_bogus_hyper_parameter_or_a_missing_one_is_refused(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "CONF", tmp_path)
    base = {"defaults": ["guidance_tune"], "hydra": {"sweeper": {"params": {
        "guidance.lr": "tag(log, interval(0.001, 10.0))", "guidance.beta1": "interval(0.0, 0.999)",
        "guidance.beta2": "interval(0.0, 0.999)"}}}}
    (tmp_path / "guidance_tune_adam_dps.yaml").write_text(yaml.safe_dump(base))
    study.check_space("adam_dps")
    params = base["hydra"]["sweeper"]["params"]
    params["guidance.beta"] = "interval(0.0, 0.999)"  # momentum's, not Adam's
    (tmp_path / "guidance_tune_adam_dps.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(ValueError, match=r"searches \['guidance.beta'\]"):
        study.distributions("adam_dps")
    del params["guidance.beta"], params["guidance.beta2"]
    (tmp_path / "guidance_tune_adam_dps.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(ValueError, match=r"does not search \['beta2'\]"):
        study.check_space("adam_dps")


def test_every_method_gets_the_same_trial_budget_from_one_file(study):
    settings = study.sweeper_settings()
    assert settings == {"n_trials": 16, "seed": 0, "n_startup_trials": 6}
    for method in study.METHODS.values():
        preset = yaml.safe_load((CONF / f"guidance_tune_{method}.yaml").read_text())
        assert "guidance_tune" in preset["defaults"]
        assert set(preset["hydra"]["sweeper"]) == {"params"}  # no method overrides trials or the sampler


def test_the_hydra_presets_compose_into_the_sweep_the_script_runs(study):
    from hydra import compose, initialize_config_dir

    from optsample.runner import app as R
    from optsample.runner import config as C

    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        for task in study.TASKS.values():
            cfg = compose(config_name="config", overrides=[f"experiment=[guidance_study_{task.preset},guidance_tune_adam_dps]"],
                          return_hydra_config=True)
            assert cfg.objective == study.objective_key(task) and cfg.task.name.startswith(("gmm", "digits"))
            assert dict(cfg.hydra.sweeper.params) == study.search_space("adam_dps")
            assert cfg.guidance.name == "adam_dps" and cfg.hydra.sweeper.n_trials == 16


def _preset(task) -> dict:
    return yaml.safe_load((CONF / f"guidance_study_{task.preset}.yaml").read_text())


def _images(split, preset) -> set:
    n = split.n or preset["n_samples"]
    return {(split.offset + k) % N_IMAGES for k in range(n)}


def test_held_out_problems_are_disjoint_from_the_tuning_problems(study):
    for name, task in study.TASKS.items():
        preset = _preset(task)
        tuning_seeds = {s.seed for s in task.tuning} | {preset["seed"]}  # the Hydra route tunes on the preset's seed
        assert tuning_seeds.isdisjoint({s.seed for s in task.held_out}), name
        if name == "class":
            continue  # labels k % 10 are the task; the problems differ by their sample seeds
        tuning_problems = {s.problem_seed for s in task.tuning} | {preset["task"]["problem_seed"]}
        assert tuning_problems.isdisjoint({s.problem_seed for s in task.held_out}), name
        if name.startswith("gmm"):
            continue
        tuned_images = set().union(*(_images(s, preset) for s in task.tuning))
        tuned_images |= _images(study.Split(seed=0, offset=preset["task"]["offset"]), preset)
        held = [_images(s, preset) for s in task.held_out]
        assert tuned_images.isdisjoint(set().union(*held)), name
        assert sum(map(len, held)) == len(set().union(*held)), name  # held-out sets are distinct images too


def test_the_committed_best_params_cover_each_search_space(study):
    """The held-out step reruns alone from the JSON (--held-out): every tuned entry has its method's keys."""
    path = study.OUT / "study_best_params.json"
    if not path.exists():
        pytest.skip("no committed study results")
    import json

    for task, methods in json.loads(path.read_text()).items():
        assert task in study.TASKS
        for method, entry in methods.items():
            assert set(entry["params"]) == set(study.search_space(method)), (task, method)
            assert len(entry["trials"]) == study.sweeper_settings()["n_trials"], (task, method)


def test_the_script_runs_the_trials_the_hydra_sweeper_runs(study, tmp_path):
    """The Hydra Optuna sweeper on experiment=[guidance_study_gmm8,guidance_tune_sign] (a small run: 16 samples,
    5 steps) suggests and scores trials 0-2 exactly as the script's trials 1-3 (its trial 0 is the enqueued
    preset, which draws nothing from the seeded sampler)."""
    import optuna

    from optsample.runner import app as R

    small = ("n_samples=16", "batch_size=16", "steps=5", "task.n_reference=64")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    argv = ["optsample-run", "-m", "experiment=[guidance_study_gmm8,guidance_tune_sign]", *small,
            f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=3",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=parity",
            "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    old, sys.argv = sys.argv, argv
    try:
        R.main()
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    finally:
        sys.argv = old
    swept = optuna.load_study(study_name="parity", storage=storage).trials
    task = study.Task("small gmm8", "gmm8", tuning=(study.Split(seed=1, problem_seed=0, extra=small),), held_out=(),
                      columns=("sw_ratio",))
    mine = study.tune(task, "sign", n_trials=4)["trials"]
    assert mine[0]["params"] == study.preset_values("sign")
    assert [t.params for t in swept] == [t["params"] for t in mine[1:]]
    assert [t.value for t in swept] == [t["value"] for t in mine[1:]]
