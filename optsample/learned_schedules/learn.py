"""``learn``: one learned schedule for (model, sampler, hyper-parameters, NFE budget), with its provenance.

Order of work: every argument is checked (method, options, budget, ends, seeds) before any model evaluation;
then the teacher is solved from the tuning seeds' noise (a TeacherError names it if it does not converge);
then the method runs; the result is refused (ScheduleFileError, nothing written) unless it is finite,
strictly decreasing and meets the ends policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import samplers, schedules
from . import dp as dp_method
from . import gradient as gradient_method
from . import parametric as optuna_method
from .files import validate_sigmas
from .problem import BudgetError, Ends, ExactTeacher, mse, steps_for_budget, tuning_noise

METHODS = ("dp", "gradient", "optuna")
DP_OPTIONS = {"cost": "oss", "history": "exact", "grid_size": 40, "grid_rho": 7.0, "coeff": 1.15, "beam": 1}
# init_rho / init_sigma_min: a number or a list (restarts from every Karras (rho, sigma_min) pair, the best on
# validation kept; sigma_min None = ends.sigma_min); init_schedules: more initial sigma lists (e.g. a dp result).
GRADIENT_OPTIONS = {"iters": 60, "lr": 0.01, "momentum": 0.9, "val_fraction": 0.25, "init_rho": 7.0,
                    "init_sigma_min": None, "init_schedules": [], "ball_radius": 0.0, "ball_lr": None,
                    "batch_size": None, "lr_schedule": "constant"}
OPTUNA_OPTIONS = optuna_method.OPTIONS


@dataclass
class Learned:
    sigmas: torch.Tensor
    provenance: dict  # everything but the model's description (added by the caller, files.save)


def method_options(method: str, options: dict | None) -> dict:
    """The method's options with defaults filled in; unknown ones raise naming them."""
    defaults = {"dp": DP_OPTIONS, "gradient": GRADIENT_OPTIONS, "optuna": OPTUNA_OPTIONS}.get(method)
    if defaults is None:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; it takes {sorted(defaults)}")
    merged = {**defaults, **options}
    if method == "dp":
        if merged["cost"] not in dp_method.COSTS:
            raise ValueError(f"cost must be one of {list(dp_method.COSTS)}, got {merged['cost']!r}")
        if merged["history"] not in dp_method.HISTORIES:
            raise ValueError(f"history must be one of {list(dp_method.HISTORIES)}, got {merged['history']!r}")
        beam = merged["beam"]
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    elif method == "optuna":
        optuna_method.check_options(merged)
    else:
        if not 0 < merged["val_fraction"] < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {merged['val_fraction']!r}")
        gradient_method.check_options(**{k: merged[k] for k in ("iters", "lr", "ball_radius", "ball_lr",
                                                                 "batch_size", "lr_schedule")})
        for name in ("init_rho", "init_sigma_min"):
            values = merged[name] if isinstance(merged[name], (list, tuple)) else [merged[name]]
            if not values or not all(v is None and name == "init_sigma_min" or
                                     isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
                raise ValueError(f"{name} must be a number > 0 or a non-empty list of them, got {merged[name]!r}")
    return merged


def gradient_inits(options: dict, n_steps: int, ends: Ends) -> list[torch.Tensor]:
    """The initial schedules of method=gradient: Karras for every (init_rho, init_sigma_min) pair, then
    init_schedules; each checked (length n_steps + 1, from sigma_max, strictly decreasing, to 0)."""
    def as_list(value):
        return list(value) if isinstance(value, (list, tuple)) else [value]

    for sigma_min in as_list(options["init_sigma_min"]):
        if sigma_min is not None and not ends.sigma_min <= sigma_min < ends.sigma_max:
            raise ValueError(f"init_sigma_min must lie in [sigma_min, sigma_max) = [{ends.sigma_min}, {ends.sigma_max}), "
                             f"got {sigma_min!r}")
    inits = [schedules.karras(n_steps, ends.sigma_min if sigma_min is None else sigma_min, ends.sigma_max, rho)
             for rho in as_list(options["init_rho"]) for sigma_min in as_list(options["init_sigma_min"])]
    for k, given in enumerate(options["init_schedules"]):
        sigmas = validate_sigmas(torch.as_tensor(given, dtype=torch.float64), f"init_schedules[{k}]", ends.sigma_max)
        if len(sigmas) != n_steps + 1 or not ends.sigma_min <= float(sigmas[-2]):
            raise ValueError(f"init_schedules[{k}] must have {n_steps + 1} sigmas (this budget's steps, then 0) with "
                             f"its last positive sigma >= sigma_min={ends.sigma_min}, got {list(map(float, sigmas))}")
        inits.append(sigmas)
    return inits


def learn(model, sampler: str, nfe: int, sample_shape, *, method: str = "dp", hparams: dict | None = None,
          seeds=range(64), ends: Ends | None = None, teacher=None, options: dict | None = None) -> Learned:
    """Learn the sigmas of ``sampler`` at budget ``nfe`` on ``model`` from the tuning ``seeds`` (ends: Ends())."""
    hparams, ends = dict(hparams or {}), ends if ends is not None else Ends()
    samplers.get(sampler).make_params(**hparams)  # unknown sampler / bad hyper-parameter: before any work
    options = method_options(method, options)
    n_steps = steps_for_budget(sampler, nfe, hparams, ends)
    teacher = teacher if teacher is not None else ExactTeacher()
    seeds = [int(s) for s in seeds]
    if method == "dp":
        if samplers.get(sampler).stochastic and (options["cost"] == "gits" or options["history"] == "none"):
            raise ValueError(f"sampler {sampler!r} draws noise: method=dp needs cost=oss history=exact with it (the "
                             f"other options restart the seeds' noise at every step, so their cost is not the "
                             f"sampler's error); got cost={options['cost']!r} history={options['history']!r}")
        if hparams.get("restart_count", 0):  # the rules' warm restarts need a sigma in their range at every prefix
            raise ValueError(f"method=dp cannot learn a schedule for {sampler!r} with restart_count="
                             f"{hparams['restart_count']}: its partial schedules miss the warm-restart range; "
                             "use method=gradient or method=optuna")
        grid = dp_method.make_grid(options["grid_size"], ends, options["grid_rho"])
        dp_method.check_budget(n_steps, grid)
    elif method == "optuna":
        optuna_method.search_space(options, ends)  # ranges within the ends: before any work
        optuna_method.check_seeds(seeds, options)
    elif len(seeds) < 2:
        raise ValueError(f"method 'gradient' needs >= 2 tuning seeds (training and validation), got {seeds}")
    started = time.perf_counter()
    x_start = tuning_noise(seeds, sample_shape, ends)
    first_rho = options.get("init_rho", 7.0)
    first_rho = first_rho[0] if isinstance(first_rho, (list, tuple)) else first_rho
    karras = schedules.karras(n_steps, ends.sigma_min, ends.sigma_max, first_rho)
    inits = gradient_inits(options, n_steps, ends) if method == "gradient" else []
    info: dict = {}
    if method == "dp":
        states = teacher.states(model, x_start, grid)
        target = states[-1]
        if options["cost"] == "gits":
            costs = dp_method.gits_costs(sampler, model, grid, states, hparams, seeds)
            path, objective = dp_method.gits_path(costs, n_steps, options["coeff"])
        else:
            path, objective = dp_method.oss_path(sampler, model, grid, states, x_start, n_steps, hparams, seeds,
                                                 options["history"], options["beam"])
        sigmas = grid[path]
        info = {"grid_indices": path, "objective": objective}
    elif method == "optuna":
        target = teacher.states(model, x_start, [ends.sigma_max, 0.0])[-1]
        sigmas, info = optuna_method.learn_parametric(sampler, model, x_start, target, seeds, n_steps, ends, options,
                                                      hparams)
    else:
        target = teacher.states(model, x_start, [ends.sigma_max, 0.0])[-1]
        n_val = max(1, round(options["val_fraction"] * len(seeds)))
        train, val = slice(0, len(seeds) - n_val), slice(len(seeds) - n_val, len(seeds))
        sigmas, best_val, history, chosen, values = gradient_method.learn_gradient_restarts(
            sampler, model, x_start[train], target[train], x_start[val], target[val], inits, ends, hparams=hparams,
            iters=options["iters"], lr=options["lr"], momentum=options["momentum"], seeds_train=seeds[train],
            seeds_val=seeds[val], ball_radius=options["ball_radius"], ball_lr=options["ball_lr"],
            batch_size=options["batch_size"], lr_schedule=options["lr_schedule"])
        info = {"validation_seeds": seeds[val], "validation_mse": best_val, "iterations_run": len(history),
                "train_mse_first_last": [history[0][0], history[-1][0]] if history else None}
        if len(inits) > 1:
            info.update(restart_chosen=chosen, restart_validation_mse=values)
    sigmas = validate_sigmas(sigmas, f"learned schedule ({method}, {sampler}, nfe={nfe})", ends.sigma_max)
    if float(sigmas[-2]) < ends.sigma_min * (1 - 1e-12):
        raise ValueError(f"learned schedule's last positive sigma {float(sigmas[-2])} is below sigma_min={ends.sigma_min}")
    with torch.no_grad():
        def rmse_of(schedule):
            out = samplers.sample(sampler, model, x_start, schedule, seeds=seeds, **hparams)
            return float(mse(out, target).sqrt())

        loss = {"rmse": rmse_of(sigmas), "rmse_karras_default": rmse_of(karras),
                "on": "tuning seeds, RMSE to the teacher's final state"}
    nfe_used = samplers.measure_nfe(sampler, n_steps, schedule=lambda n: sigmas, **hparams)  # on the learned sigmas
    if nfe_used > nfe:
        raise BudgetError(f"learned schedule costs {nfe_used} evaluations with {sampler!r}, over the budget nfe={nfe}")
    provenance = {
        "sampler": {"name": sampler, "hparams": hparams}, "nfe": nfe,
        "nfe_used": nfe_used, "steps": n_steps, "method": method,
        "method_options": options, "ends": {"sigma_max": ends.sigma_max, "sigma_min": ends.sigma_min, "final": "zero"},
        "teacher": teacher.describe(), "seeds": seeds, "loss": loss, "info": info,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Learned(sigmas, provenance)
