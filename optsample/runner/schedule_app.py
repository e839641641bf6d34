"""``optsample-schedule`` (also ``python -m optsample.runner.schedule_app``): learn one sigma schedule, write its file.

    optsample-schedule model=gmm64 sampler=dpmpp_2m nfe=6 method=dp out=schedules/gmm64_dpmpp_2m_nfe6.json
    optsample-schedule model=gmm64 sampler=unipc nfe=5 method=gradient gradient.iters=80 out=unipc5.json
    optsample-schedule model=gmm64 sampler=euler nfe=6 method=optuna optuna.trials=64 'optuna.rho_range=[1,12]' out=e6.json
    optsample-run model=gmm64 sampler=dpmpp_2m nfe=6 schedule=learned schedule.path=schedules/gmm64_dpmpp_2m_nfe6.json

The ``model`` and ``sampler`` groups are the runner's (optsample/config.py). Tuning noise: seeds
``(seed << 32) + k`` for k < ``n_samples`` (the runner's ``sample_seeds``; default seed 1, the tuning seed of
experiments/optimizer_vs_solvers, so seeds 2, 3, 4 stay held out). Teacher ``auto``: the exact ODE solution
for analytic models (Gaussian mixtures, empirical data sets), else a many-step iPNDM solve checked by
refinement (optsample/learned_schedules/problem.py). Everything is checked before the model is built.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from omegaconf import MISSING

from optsample.runner import config as C
from optsample import samplers
from optsample.runner import app as R
from optsample.learned_schedules import files
from optsample.learned_schedules import parametric
from optsample.learned_schedules.learn import (DP_OPTIONS, GRADIENT_OPTIONS, METHODS, OPTUNA_OPTIONS, learn,
                                               method_options)
from optsample.learned_schedules.problem import Ends, make_teacher, steps_for_budget

log = logging.getLogger("optsample.schedule")
TEACHERS = ("auto", "exact_ode", "solver")


@dataclass
class DPOptions:
    cost: str = DP_OPTIONS["cost"]  # oss | gits
    history: str = DP_OPTIONS["history"]  # exact | none (oss only)
    grid_size: int = DP_OPTIONS["grid_size"]
    grid_rho: float = DP_OPTIONS["grid_rho"]
    coeff: float = DP_OPTIONS["coeff"]  # gits only
    beam: int = DP_OPTIONS["beam"]  # oss: the k best student states kept per (step, sigma); 1 = OSS


@dataclass
class GradientOptions:
    iters: int = GRADIENT_OPTIONS["iters"]
    lr: float = GRADIENT_OPTIONS["lr"]
    momentum: float = GRADIENT_OPTIONS["momentum"]
    val_fraction: float = GRADIENT_OPTIONS["val_fraction"]
    init_rho: Any = GRADIENT_OPTIONS["init_rho"]  # a number, or a list: restarts from each Karras start
    init_sigma_min: Any = GRADIENT_OPTIONS["init_sigma_min"]  # None: the ends' sigma_min; or a list
    init_schedules: List[Any] = field(default_factory=list)  # more initial sigma lists (e.g. a dp result)
    ball_radius: float = GRADIENT_OPTIONS["ball_radius"]  # LD3's relaxed start (0: the exact start)
    ball_lr: Optional[float] = GRADIENT_OPTIONS["ball_lr"]  # None: LD3's 12 / steps
    batch_size: Optional[int] = GRADIENT_OPTIONS["batch_size"]  # mini-batches of the training seeds; None: all
    lr_schedule: str = GRADIENT_OPTIONS["lr_schedule"]  # constant | cosine


@dataclass
class OptunaOptions:
    """Karras (rho, sigma_min[, sigma_max]) tuned by Optuna TPE (optsample/learned_schedules/parametric.py)."""

    trials: int = OPTUNA_OPTIONS["trials"]
    seed: int = OPTUNA_OPTIONS["seed"]  # the TPE sampler's seed: the same seed gives the same schedule
    startup_trials: int = OPTUNA_OPTIONS["startup_trials"]  # random trials before TPE (trial 0: default Karras)
    rho_range: List[float] = field(default_factory=lambda: list(OPTUNA_OPTIONS["rho_range"]))  # log-uniform
    sigma_min_range: Optional[List[float]] = None  # log-uniform; None: [sigma_min, 0.5]
    sigma_max_range: Optional[List[float]] = None  # log-uniform, <= sigma_max; None: fixed to sigma_max
    val_fraction: float = OPTUNA_OPTIONS["val_fraction"]  # held out of the trials, reported; 0: none


@dataclass
class TeacherOptions:
    name: str = "auto"  # auto | exact_ode | solver
    sampler: str = "ipndm"  # solver only
    substeps: int = 8
    tol: float = 1e-3


@dataclass
class ScheduleAppConfig:
    model: Any = MISSING
    sampler: Any = MISSING
    nfe: int = 6
    method: str = "dp"  # dp | gradient | optuna
    out: str = MISSING
    seed: int = 1
    n_samples: int = 64
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    dp: DPOptions = field(default_factory=DPOptions)
    gradient: GradientOptions = field(default_factory=GradientOptions)
    optuna: OptunaOptions = field(default_factory=OptunaOptions)
    teacher: TeacherOptions = field(default_factory=TeacherOptions)


def plan(cfg: dict) -> dict:
    """Check the whole config (R.ConfigError naming the key) before any work; returns the method options."""
    R.plan_run(_run_like(cfg))
    if cfg["method"] not in METHODS:
        raise R.ConfigError(f"method must be one of {list(METHODS)}, got {cfg['method']!r}")
    if cfg["teacher"]["name"] not in TEACHERS:
        raise R.ConfigError(f"teacher.name must be one of {list(TEACHERS)}, got {cfg['teacher']['name']!r}")
    try:
        ends = Ends(cfg["sigma_max"], cfg["sigma_min"])
        options = method_options(cfg["method"], cfg[cfg["method"]])
        if cfg["method"] == "optuna":
            parametric.search_space(options, ends)
            parametric.check_seeds(list(range(cfg["n_samples"])), options)
        steps_for_budget(cfg["sampler"]["name"], cfg["nfe"], C.sampler_hparams(cfg["sampler"]), ends)
        if cfg["teacher"]["name"] != "exact_ode":
            samplers.get(cfg["teacher"]["sampler"])  # the solver teacher's sampler exists
    except (KeyError, ValueError) as err:
        raise R.ConfigError(str(err)) from None
    if cfg["method"] == "dp" and options["cost"] == "gits":
        options.pop("history")
    if cfg["method"] == "dp" and options["cost"] == "oss":
        options.pop("coeff")
    return options


def _run_like(cfg: dict) -> dict:
    """The runner's view of this config, to reuse its checks (sampler, model, NFE budget)."""
    return {"model": cfg["model"], "sampler": cfg["sampler"], "schedule": {"name": "karras"}, "metric": {"names": []},
            "logger": {"name": "none"}, "name": "schedule", "project": "optsample", "steps": None, "nfe": cfg["nfe"],
            "n_samples": cfg["n_samples"], "batch_size": cfg["n_samples"], "seed": cfg["seed"], "device": "cpu",
            "results_dir": ".", "force": False, "objective": None, "progress": False, "log_trajectory": False,
            "chunk_size": None, "shards": 1, "shard": None, "save_samples": "none", "plugins": []}


def _teacher(cfg: dict, denoiser):
    from optsample.models import EmpiricalDenoiser, GaussianMixture

    options = dict(cfg["teacher"])
    name = options.pop("name")
    if name == "auto":
        name = "exact_ode" if isinstance(denoiser, (GaussianMixture, EmpiricalDenoiser)) else "solver"
    return make_teacher(name, **(options if name == "solver" else {}))


def _non_default(sampler: str, hparams: dict) -> dict:
    """The hyper-parameters that differ from the sampler's defaults: the file's provenance names what was chosen
    (files.check_provenance completes both sides with the defaults), and a default such as euler's s_tmax=inf,
    which JSON cannot hold, is not written."""
    defaults = dataclasses.asdict(samplers.get(sampler).make_params())
    return {key: value for key, value in hparams.items() if key not in defaults or defaults[key] != value}


def execute(cfg: dict) -> files.ScheduleFile:
    """Learn the schedule of a resolved config and write ``cfg["out"]``."""
    options = plan(cfg)
    built = R.build_model(cfg["model"], torch.device("cpu"), torch.float64)
    if built.conditioning is not None or built.extra_args:
        raise R.ConfigError(f"model {cfg['model']['name']!r} needs conditioning; learned schedules take "
                            "unconditional models only for now")
    hparams = _non_default(cfg["sampler"]["name"], C.sampler_hparams(cfg["sampler"]))
    seeds = R.sample_seeds(cfg["seed"], 0, cfg["n_samples"])
    result = learn(built.denoiser, cfg["sampler"]["name"], cfg["nfe"], built.sample_shape, method=cfg["method"],
                   hparams=hparams, seeds=seeds, ends=Ends(cfg["sigma_max"], cfg["sigma_min"]),
                   teacher=_teacher(cfg, built.denoiser), options=options)
    provenance = {"model": dict(cfg["model"]), **result.provenance, "seed": cfg["seed"],
                  "git_rev": R.git_revision(), "versions": R.package_versions()}
    written = files.save(R._absolute(cfg["out"]), result.sigmas, provenance)
    log.info("%s %s nfe=%d %s: RMSE %.4g (default Karras %.4g) -> %s", cfg["model"]["name"], cfg["sampler"]["name"],
             cfg["nfe"], cfg["method"], result.provenance["loss"]["rmse"],
             result.provenance["loss"]["rmse_karras_default"], written.path)
    return written


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    C.register_configs()
    ConfigStore.instance().store(name="schedule_schema", node=ScheduleAppConfig)


def task(cfg) -> None:
    from omegaconf import OmegaConf

    execute(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def main() -> None:
    import hydra

    register_configs()
    hydra.main(config_path=R.config_path("schedule"), config_name="schedule", version_base="1.3")(task)()


if __name__ == "__main__":
    main()
