"""``method=optuna``: the parametric baseline — the Karras schedule's (rho, sigma_min[, sigma_max]) tuned by Optuna.

The schedule is Karras et al. 2022, eq. 5 (:func:`optsample.schedules.karras`) on ``n_steps`` points; Optuna's
TPE sampler (Bergstra et al. 2011; ``optuna.samplers.TPESampler``, seeded, one trial at a time, so the study is
deterministic given ``seed``) minimises the MSE of the sampler's output to the teacher's final state on the
training part of the tuning seeds, as the optimizer-vs-solvers study tunes (rho, sigma_min) with the Hydra
Optuna sweeper (conf/experiment/ovs_tune.yaml; its ranges experiments/optimizer_vs_solvers/search_spaces.yaml:
rho uniform in [1, 10], sigma_min log-uniform in [0.002, 0.5]). Every parameter is sampled log-uniformly. The
default rho range is [1, 100], wider than that study's: eq. 5 tends to the exponential schedule (uniform in
log sigma) as rho -> inf, and on gmm64 at NFE 6 the best rho sits at the upper end of [1, 10] (9.7 for
dpmpp_2m, 9.98 for unipc); [1, 100] moves it to 83 / 95 and the tuning-seed RMSE from 0.218 to 0.167
(dpmpp_2m) and 0.183 to 0.127 (unipc), 64 trials (benchmarks/learn_schedule_cost.py's problem). sigma_min's
default range is that study's (its best, 0.27-0.40 there, is inside it). Trial 0 is the default Karras schedule
(rho = 7, sigma_min = the ends' sigma_min) whenever the ranges hold it, so the result is never worse than it
on the training seeds.

Ends policy (:mod:`.problem`): every trial starts at the ends' ``sigma_max`` and its last positive sigma, the
tuned sigma_min, lies in the ``sigma_min_range``, which must lie in [ends.sigma_min, ends.sigma_max). sigma_max
is fixed to the ends' by default; with ``sigma_max_range`` (within the ends) the Karras curve's top is tuned
too while the first sigma stays the ends' sigma_max (the starting noise's level): sigmas =
[ends.sigma_max, k_1, ..., k_{n-1}, 0] with k the Karras points from the tuned sigma_max.

Validation as ``method=gradient`` does it: the last ``val_fraction`` of the tuning seeds are held out of the
trials; the best trial on the training seeds is kept and its validation MSE (and the default Karras one's) is
reported. ``val_fraction=0`` tunes on every tuning seed and reports no validation.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch

from .. import samplers, schedules
from .problem import Ends, mse

OPTIONS = {"trials": 64, "seed": 0, "startup_trials": 10, "rho_range": [1.0, 100.0], "sigma_min_range": None,
           "sigma_max_range": None, "val_fraction": 0.25}
DEFAULT_SIGMA_MIN_HIGH = 0.5  # search_spaces.yaml's upper end for sigma_min
DEFAULT_RHO = 7.0  # Karras et al. 2022's (and EDM's) rho: trial 0
log = logging.getLogger("optsample.learned_schedules.optuna")


def _check_int(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _check_range(name: str, value) -> tuple[float, float]:
    """A [low, high] pair of finite positive numbers with low < high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a [low, high] pair, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item <= 0:
            raise ValueError(f"{name} must hold two finite numbers > 0, got {list(value)!r}")
    low, high = float(value[0]), float(value[1])
    if not low < high:
        raise ValueError(f"{name} must have low < high, got {list(value)!r}")
    return low, high


def check_options(options: dict) -> None:
    """One-line ValueErrors naming the option, for what can be checked without the ends."""
    _check_int("trials", options["trials"], 1)
    _check_int("startup_trials", options["startup_trials"], 0)
    _check_int("seed", options["seed"], 0)
    _check_range("rho_range", options["rho_range"])
    for key in ("sigma_min_range", "sigma_max_range"):
        if options[key] is not None:
            _check_range(key, options[key])
    fraction = options["val_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")


def search_space(options: dict, ends: Ends) -> dict[str, tuple[float, float]]:
    """{"rho": (lo, hi), "sigma_min": (lo, hi)[, "sigma_max": (lo, hi)]} within the ends policy, else ValueError."""
    check_options(options)
    space = {"rho": _check_range("rho_range", options["rho_range"])}
    given = options["sigma_min_range"]
    low, high = _check_range("sigma_min_range", given) if given is not None else (ends.sigma_min, DEFAULT_SIGMA_MIN_HIGH)
    if given is None and not low < high:
        raise ValueError(f"sigma_min_range: the default [sigma_min, {DEFAULT_SIGMA_MIN_HIGH}] is empty for the ends' "
                         f"sigma_min={ends.sigma_min}; give sigma_min_range")
    if not (ends.sigma_min * (1 - 1e-12) <= low and high < ends.sigma_max):
        raise ValueError(f"sigma_min_range must lie in [sigma_min, sigma_max) = [{ends.sigma_min}, {ends.sigma_max}) "
                         f"of the ends, got {[low, high]}")
    space["sigma_min"] = (max(low, ends.sigma_min), high)
    if options["sigma_max_range"] is not None:
        top_low, top_high = _check_range("sigma_max_range", options["sigma_max_range"])
        if not (high < top_low and top_high <= ends.sigma_max * (1 + 1e-12)):
            raise ValueError(f"sigma_max_range must lie in (max of sigma_min_range, ends' sigma_max] = ({high}, "
                             f"{ends.sigma_max}], got {[top_low, top_high]}")
        space["sigma_max"] = (top_low, min(top_high, ends.sigma_max))
    return space


def karras_within_ends(n_steps: int, ends: Ends, rho: float, sigma_min: float, sigma_max: float | None = None):
    """Karras et al. 2022 eq. 5 from ``sigma_max`` (default: the ends') to ``sigma_min``, then 0, its first sigma
    set to the ends' sigma_max exactly (module docstring)."""
    sigmas = schedules.karras(n_steps, sigma_min, sigma_max if sigma_max is not None else ends.sigma_max, rho)
    sigmas[0] = ends.sigma_max
    return sigmas


def _split(seeds: list[int], fraction: float) -> tuple[slice, slice | None]:
    """(training, validation) slices of the tuning seeds, validation the last ``fraction`` (as learn's gradient)."""
    if fraction == 0:
        return slice(0, len(seeds)), None
    n_val = max(1, round(fraction * len(seeds)))
    return slice(0, len(seeds) - n_val), slice(len(seeds) - n_val, len(seeds))


def check_seeds(seeds: list[int], options: dict) -> None:
    if options["val_fraction"] > 0 and len(seeds) < 2:
        raise ValueError(f"method 'optuna' with val_fraction={options['val_fraction']} needs >= 2 tuning seeds "
                         f"(training and validation), got {seeds}")


def learn_parametric(sampler: str, model, x_start: torch.Tensor, target: torch.Tensor, seeds: list[int],
                     n_steps: int, ends: Ends, options: dict, hparams: dict | None = None):
    """Tune the Karras parameters (module docstring); returns (best sigmas, info for the provenance)."""
    import optuna

    hparams, space = dict(hparams or {}), search_space(options, ends)
    check_seeds(seeds, options)
    train, val = _split(seeds, options["val_fraction"])
    stochastic = samplers.get(sampler).stochastic  # per-sample noise streams only where noise is drawn (as dp)

    def error(sigmas: torch.Tensor, part: slice) -> float:
        with torch.no_grad():
            out = samplers.sample(sampler, model, x_start[part], sigmas, seeds=seeds[part] if stochastic else None,
                                  **hparams)
            value = float(mse(out, target[part]))
        return value if math.isfinite(value) else math.inf  # a diverging trial loses, it does not stop the study

    def schedule_of(params: dict) -> torch.Tensor:
        return karras_within_ends(n_steps, ends, params["rho"], params["sigma_min"], params.get("sigma_max"))

    every = max(1, options["trials"] // 4)

    def objective(trial) -> float:
        params = {name: trial.suggest_float(name, low, high, log=True) for name, (low, high) in space.items()}
        value = error(schedule_of(params), train)
        if (trial.number + 1) % every == 0:  # one line per quarter of the study
            done = [t.value for t in trial.study.trials if t.value is not None] + [value]
            log.info("optuna %s: trial %d/%d, best train MSE %.4g", sampler, trial.number + 1, options["trials"],
                     min(done))
        return value

    default = {"rho": DEFAULT_RHO, "sigma_min": ends.sigma_min, "sigma_max": ends.sigma_max}
    default = {name: default[name] for name in space}
    sampler_tpe = optuna.samplers.TPESampler(seed=options["seed"], n_startup_trials=options["startup_trials"])
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial
    try:
        study = optuna.create_study(direction="minimize", sampler=sampler_tpe)
        if all(low <= default[name] <= high for name, (low, high) in space.items()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(default)
        study.optimize(objective, n_trials=options["trials"])
    finally:
        optuna.logging.set_verbosity(verbosity)
    best = study.best_trial
    if not math.isfinite(best.value):
        raise ValueError(f"method 'optuna': every one of the {options['trials']} trials diverged (non-finite samples)")
    sigmas = schedule_of(best.params)
    info = {"best_params": dict(best.params), "best_trial": best.number, "trials": len(study.trials),
            "study_seed": options["seed"], "search_space": {name: list(bounds) for name, bounds in space.items()},
            "train_mse": best.value, "train_seeds": seeds[train]}
    if val is not None:
        info.update(validation_seeds=seeds[val], validation_mse=error(sigmas, val),
                    validation_mse_karras_default=error(karras_within_ends(n_steps, ends, DEFAULT_RHO, ends.sigma_min), val))
    return sigmas, info
