"""The runner side of guidance: the ``guidance=`` and ``task=`` Hydra groups.

    optsample-run -m task=gmm_inverse guidance=dps,adam_dps,mpgd sampler=ddim,euler steps=20,50 metric=none

    optsample-run -m task=digits_inpaint90 guidance=dps,adam_dps sampler=ddim,euler nfe=20

``task`` brings its own model and measurement and adds its metrics to the result row; ``guidance`` wraps
the task's model in :func:`optsample.guidance.guided`. Tasks: ``gmm_inverse`` (the exact testbed,
:class:`optsample.guidance.GMMInverse`, MCGdiff / TMPD protocol); the digits inverse problems on the
shipped model's unconditional branch (:mod:`optsample.zoo.digits.inverse`): ``digits_inpaint50``,
``digits_inpaint90``, ``digits_box``, ``digits_sr2``, ``digits_sr4``, ``digits_blur`` (``task.sigma_y``
0.05 by default; 0 too), whose logger picture is measurement | reconstruction | truth per sample; and
``digits_class``, class guidance with a guide and a separate judge classifier
(:mod:`optsample.zoo.digits.class_guidance`); the published image tasks ``cat_sr4``, ``cat_sr16``, ``cat_deblur``,
``cat_inpaint90``, ``cifar10_class`` (:mod:`optsample.integrations.diffusers.inverse_tasks`) and ``sd_colour``, the
fast.ai deep dive's colour loss on Stable Diffusion's decoded estimate (:mod:`optsample.integrations.diffusers.guidance_task`),
both task families (``register_family``). With a task, the ``model`` group is not used. Per-step guidance schedules
(``dps``, ``adam_dps``, ``mpgd``) get the run's sigmas and the sampler's
``eta`` (0 for samplers without one: the Euler / DDIM step).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch

from ..guidance import LR_SCHEDULES, GMMInverse, LikelihoodScore, MeasurementLoss, guided
from ..guidance import rules as guidance_rules
from ..integrations.diffusers import inverse_tasks
from ..integrations.diffusers import guidance_task as sd_guidance

RULE_HPARAMS = ("beta", "beta1", "beta2", "eps", "by")


@dataclass
class GuidanceConfig:
    """A guidance method: objective, rule on g (optsample.guidance.rules) and its learning-rate schedule."""

    name: str = "none"
    objective: str = "loss"  # loss: the task's measurement loss | exact: the task's exact likelihood score
    rule: str = "sgd"
    lr: float = 1.0
    lr_schedule: str = "constant"
    lr_end: float = 0.0  # cosine only
    through: str = "denoiser"  # denoiser (DPS) | x0 (MPGD, no backprop through the network)
    norm: str = "l2"  # l2: ||y - A x0_hat|| | squared: ||y - A x0_hat||^2 / (2 sigma_y^2)
    beta: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    by: str = "loss"


def _preset(name, **kw):
    return GuidanceConfig(name=name, **kw)


# Defaults: DPS's scale from DPS2022 configs/super_resolution_config.yaml; AdamDPS's tuned cats SR x4 values
# (Belardi et al. 2026); the others a step of the same size on the per-step form. Tune them per task.
GUIDANCE_PRESETS = {
    "none": _preset("none"),
    "exact": _preset("exact", objective="exact", lr=1.0),
    "dps": _preset("dps", lr=0.3, lr_schedule="dps"),
    "adam_dps": _preset("adam_dps", rule="adam", lr=0.028, lr_schedule="adam_dps", beta1=0.14, beta2=0.03),
    "mpgd": _preset("mpgd", lr=0.3, lr_schedule="mpgd", through="x0"),
    "momentum": _preset("momentum", rule="momentum", lr=0.3, lr_schedule="dps", beta=0.5),
    "nesterov": _preset("nesterov", rule="nesterov", lr=0.3, lr_schedule="dps", beta=0.5),
    "rmsprop": _preset("rmsprop", rule="rmsprop", lr=0.03, lr_schedule="adam_dps", beta2=0.5),
    "sign": _preset("sign", rule="sign", lr=0.03, lr_schedule="adam_dps"),
    "lion": _preset("lion", rule="lion", lr=0.03, lr_schedule="adam_dps", beta1=0.5, beta2=0.5),
    "normalised": _preset("normalised", rule="normalised", lr=0.3, lr_schedule="dps", by="rms"),
    # The fast.ai deep dive's loss guidance (its 200 on every 5th step ~ 40 on every step), and rules on its gradient;
    # adam's direction is ~1 per element (m / sqrt(v)), not |g|: its lr is a guess, not tuned here (no GPU, no weights).
    "fastai": _preset("fastai", lr=40.0, lr_schedule="fastai", through="x0"),
    "fastai_momentum": _preset("fastai_momentum", rule="momentum", lr=40.0, lr_schedule="fastai", through="x0", beta=0.5),
    "fastai_adam": _preset("fastai_adam", rule="adam", lr=0.03, lr_schedule="fastai", through="x0", beta1=0.9, beta2=0.99),
}


@dataclass
class TaskConfig:
    name: str = "none"


@dataclass
class GMMInverseTaskConfig(TaskConfig):
    """The exact Gaussian-mixture inverse problem (GMMInverse.mcgdiff)."""

    name: str = "gmm_inverse"
    dim: int = 8
    dim_y: int = 2
    problem_seed: int = 0
    sigma_y: Optional[float] = None  # None: U(0, 1) max(s), as MCGdiff
    n_reference: int = 1000  # exact posterior samples for the sliced Wasserstein distance (and its floor)
    cosine_sigmas: List[float] = field(default_factory=lambda: [0.05, 0.5, 2.0, 10.0])


@dataclass
class DigitsInverseTaskConfig(TaskConfig):
    """A digits inverse problem (optsample.zoo.digits.inverse.make_problem) on held-out digits; sample k is
    held-out image (offset + k) % 450 with its own mask and noise (seeded by problem_seed)."""

    name: str = "digits_inpaint50"
    kind: str = "inpaint"  # inpaint | box | sr | blur
    drop: float = 0.5  # inpaint: the fraction of pixels dropped
    factor: int = 2  # sr: the average-pool factor
    blur_sigma: float = 1.0  # blur: the 3x3 Gaussian's width
    sigma_y: float = 0.05
    problem_seed: int = 0
    offset: int = 0  # the first held-out image (tuning and held-out problems use different offsets)


DIGITS_INVERSE = {
    "digits_inpaint50": dict(kind="inpaint", drop=0.5),
    "digits_inpaint90": dict(kind="inpaint", drop=0.9),
    "digits_box": dict(kind="box"),
    "digits_sr2": dict(kind="sr", factor=2),
    "digits_sr4": dict(kind="sr", factor=4),
    "digits_blur": dict(kind="blur"),
}

@dataclass
class DigitsClassTaskConfig(TaskConfig):
    """Class guidance of the digits model's unconditional branch towards class k % 10 (the guide: the shipped
    FID-digits CNN on x0_hat; the judge: the shipped pixel MLP; optsample.zoo.digits.class_guidance)."""

    name: str = "digits_class"


TASKS = {"none": TaskConfig, "gmm_inverse": GMMInverseTaskConfig, "digits_class": DigitsClassTaskConfig,
         **{name: functools.partial(DigitsInverseTaskConfig, **kw) for name, kw in DIGITS_INVERSE.items()}}
DIGITS_MODEL = {"name": "digits", "guidance": 0.0, "checkpoint": None}  # the unconditional (null-class) branch

# Task families in other modules: each has TASKS (name -> config) and check(task), model_config(task),
# prepare(cfg, task, built, guide, guidance) -> (BuiltModel, problem), metrics(problem, samples), log_images(problem, images).
FAMILIES: dict = {}


def register_family(family) -> None:
    """Add a family's tasks to the task= group (one line per family below)."""
    TASKS.update(family.TASKS)
    FAMILIES.update(dict.fromkeys(family.TASKS, family))


register_family(inverse_tasks)  # cat_sr4 / cat_sr16 / cat_deblur / cat_inpaint90 / cifar10_class (users' GPUs)
register_family(sd_guidance)  # sd_colour: the fast.ai deep dive's colour loss on Stable Diffusion (users' GPUs)


def register_configs(cs) -> None:
    """Store the guidance and task options in Hydra's ConfigStore."""
    for name, node in GUIDANCE_PRESETS.items():
        cs.store(group="guidance", name=name, node=node)
    for name, node in TASKS.items():
        cs.store(group="task", name=name, node=node(name=name))


def _section(cfg: dict, key: str) -> dict:
    return cfg.get(key) or {"name": "none"}


def active(cfg: dict) -> bool:
    return _section(cfg, "task")["name"] != "none" or _section(cfg, "guidance")["name"] != "none"


def needs_grad(cfg: dict) -> bool:
    """Guidance and the task metrics (the DPS-gradient cosine) take gradients: no torch.inference_mode."""
    return active(cfg)


def is_digits(task: dict) -> bool:
    return task["name"].startswith("digits_")


def model_config(cfg: dict) -> dict:
    """The model the run builds: the task's own for the digits tasks (its schedule range too), else cfg.model."""
    task = _section(cfg, "task")
    if task["name"] in FAMILIES:
        return FAMILIES[task["name"]].model_config(task)
    return DIGITS_MODEL if is_digits(_section(cfg, "task")) else cfg["model"]


PRIOR_METRICS = ("rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein")  # the analytic group


def metric_names(cfg: dict, names: list) -> list:
    """With a task the metrics of the prior (its reference ODE solution, its density) do not measure the
    posterior: they are left out and the task's own metrics reported; others (fid, kid) are kept."""
    if _section(cfg, "task")["name"] == "none":
        return list(names)
    return [name for name in names if name not in PRIOR_METRICS]


def _rule_hparams(gcfg: dict) -> dict:
    names = guidance_rules.rule_hparam_names(gcfg["rule"])
    return {k: gcfg[k] for k in RULE_HPARAMS if k in names}


def check(cfg: dict) -> None:
    """Validate the guidance and task sections before any work (ValueError naming the key)."""
    task, gcfg = _section(cfg, "task"), _section(cfg, "guidance")
    if task["name"] not in TASKS:
        raise ValueError(f"task {task['name']!r} is not one of {sorted(TASKS)}")
    if task["name"] in FAMILIES:
        FAMILIES[task["name"]].check(task)
    if is_digits(task) and task["name"] != "digits_class":
        if not task["sigma_y"] >= 0:
            raise ValueError(f"task.sigma_y must be >= 0, got {task['sigma_y']}")
        if task["kind"] not in ("inpaint", "box", "sr", "blur"):
            raise ValueError(f"task.kind must be one of ['inpaint', 'box', 'sr', 'blur'], got {task['kind']!r}")
        if not 0 <= task["drop"] < 1:
            raise ValueError(f"task.drop must be in [0, 1), got {task['drop']}")
        if task["factor"] not in (2, 4):
            raise ValueError(f"task.factor must be 2 or 4, got {task['factor']}")
    if gcfg["name"] == "none":
        return
    if task["name"] == "none":
        raise ValueError(f"guidance={gcfg['name']} needs a task (the measurement to guide towards), e.g. task=gmm_inverse")
    if gcfg["objective"] not in ("loss", "exact"):
        raise ValueError(f"guidance.objective must be 'loss' or 'exact', got {gcfg['objective']!r}")
    if gcfg["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"guidance.lr_schedule must be one of {list(LR_SCHEDULES)}, got {gcfg['lr_schedule']!r}")
    guidance_rules.make_rule(gcfg["rule"], **_rule_hparams(gcfg))
    if gcfg["objective"] == "exact" and task["name"] != "gmm_inverse":
        raise ValueError(f"guidance.objective='exact' needs task=gmm_inverse (an exact likelihood score), got task={task['name']}")
    if not gcfg["lr"] >= 0:
        raise ValueError(f"guidance.lr must be >= 0, got {gcfg['lr']}")


@dataclass
class PreparedTask:
    problem: Any
    cfg: dict


@functools.lru_cache(maxsize=4)
def _gmm_problem(dim: int, dim_y: int, seed: int, sigma_y):
    return GMMInverse.mcgdiff(dim, dim_y, seed=seed, sigma_y=sigma_y)


@functools.lru_cache(maxsize=4)
def _gmm_reference(dim: int, dim_y: int, seed: int, sigma_y, n: int, n_samples: int):
    """n exact posterior samples (the reference) and the floor: the distance from another exact set of the
    run's size n_samples (so the ratio compares like with like)."""
    from ..metrics.analytic import sliced_wasserstein_distance

    problem = _gmm_problem(dim, dim_y, seed, sigma_y)
    reference = problem.sample_posterior(n, generator=torch.Generator().manual_seed(seed + 1))
    other = problem.sample_posterior(n_samples, generator=torch.Generator().manual_seed(seed + 2))
    floor = sliced_wasserstein_distance(other, reference, generator=torch.Generator().manual_seed(0))
    return reference, floor


def prepare(cfg: dict, built, sigmas: torch.Tensor, hparams: dict):
    """(the model to sample, the prepared task or None). Without a task the built model is returned unchanged."""
    from ..models.registry import BuiltModel

    task = _section(cfg, "task")
    if task["name"] == "none":
        return built, None
    if task["name"] in FAMILIES:
        return _prepare_family(FAMILIES[task["name"]], cfg, task, built, sigmas, hparams)
    if is_digits(task):
        return _prepare_digits(cfg, task, built, sigmas, hparams)
    problem = _gmm_problem(task["dim"], task["dim_y"], task["problem_seed"], task["sigma_y"])
    model = problem.prior
    gcfg = _section(cfg, "guidance")
    if gcfg["name"] != "none":
        if gcfg["objective"] == "exact":
            objective = LikelihoodScore(problem.likelihood_score)
        else:
            objective = MeasurementLoss(problem.A, problem.y, problem.sigma_y, norm=gcfg["norm"], through=gcfg["through"])
        model = _guided(model, objective, gcfg, sigmas, hparams)
    return BuiltModel(model, (problem.dim,)), PreparedTask(problem, task)


def _guided(model, objective, gcfg: dict, sigmas, hparams: dict):
    return guided(model, objective, rule=gcfg["rule"], lr=gcfg["lr"], lr_schedule=gcfg["lr_schedule"],
                  lr_end=gcfg["lr_end"], sigma_max=float(sigmas[0]), sigma_min=float(sigmas[-2]),
                  sigmas=sigmas, eta=float(hparams.get("eta", 0.0)), **_rule_hparams(gcfg))


def _prepare_family(family, cfg: dict, task: dict, built, sigmas, hparams):
    gcfg = _section(cfg, "guidance")
    guide = None if gcfg["name"] == "none" else functools.partial(_guided, gcfg=gcfg, sigmas=sigmas, hparams=hparams)
    model, problem = family.prepare(cfg, task, built, guide, gcfg)
    return model, PreparedTask(problem, task)


def _sample_index(indices: list) -> dict:
    """Guided digits runs: each batch's sample numbers select its measurements (optsample.guidance.objectives)."""
    return {"sample_index": torch.as_tensor(list(indices), dtype=torch.long)}


def _prepare_digits(cfg: dict, task: dict, built, sigmas, hparams):
    from ..models.registry import BuiltModel
    from ..zoo.digits import inverse

    if task["name"] == "digits_class":
        return _prepare_digits_class(cfg, task, built, sigmas, hparams)
    problem = inverse.make_problem(task["kind"], cfg["n_samples"], sigma_y=task["sigma_y"], drop=task["drop"],
                                   factor=task["factor"], blur_sigma=task["blur_sigma"], seed=task["problem_seed"],
                                   offset=task["offset"])
    gcfg = _section(cfg, "guidance")
    model, conditioning = built.denoiser, None
    if gcfg["name"] != "none":
        objective = MeasurementLoss(problem.operator, problem.y, problem.sigma_y, norm=gcfg["norm"], through=gcfg["through"])
        model, conditioning = _guided(model, objective, gcfg, sigmas, hparams), _sample_index
    return (BuiltModel(model, built.sample_shape, conditioning=conditioning, metric_args=built.metric_args),
            PreparedTask(problem, task))


def _prepare_digits_class(cfg: dict, task: dict, built, sigmas, hparams):
    from ..guidance import ClassifierLoss
    from ..models.registry import BuiltModel
    from ..zoo.digits import class_guidance, shipped_classifier

    labels = class_guidance.target_labels(cfg["n_samples"])
    gcfg = _section(cfg, "guidance")
    model, conditioning = built.denoiser, None
    if gcfg["name"] != "none":
        objective = ClassifierLoss(shipped_classifier(), labels, through=gcfg["through"])
        model, conditioning = _guided(model, objective, gcfg, sigmas, hparams), _sample_index
    return (BuiltModel(model, built.sample_shape, conditioning=conditioning, metric_args=built.metric_args),
            PreparedTask(labels, task))


def log_images(prepared: PreparedTask | None, images: torch.Tensor) -> torch.Tensor:
    """What the logger shows: for the digits inverse tasks measurement | reconstruction | truth per sample."""
    if prepared is not None and prepared.cfg["name"] in FAMILIES:
        return FAMILIES[prepared.cfg["name"]].log_images(prepared.problem, images)
    if prepared is None or not is_digits(prepared.cfg) or prepared.cfg["name"] == "digits_class":
        return images
    from ..zoo.digits import inverse

    return inverse.side_by_side(prepared.problem, images)


def log_caption(prepared: PreparedTask | None) -> str | None:
    """What the logger's picture shows, in its column order: a family's ``caption(problem)`` if it has one."""
    if prepared is None:
        return None
    name = prepared.cfg["name"]
    if name in FAMILIES:
        return FAMILIES[name].caption(prepared.problem) if hasattr(FAMILIES[name], "caption") else None
    if is_digits(prepared.cfg) and name != "digits_class":
        return f"each sample: measurement | reconstruction | truth (task {name})"
    return f"samples (task {name})"


def task_metrics(prepared: PreparedTask | None, samples: torch.Tensor) -> dict[str, float]:
    """The task's metrics for the row: sliced W2 to exact posterior samples, its floor and ratio, posterior-mean
    error, component-weight TV, 90 % credible-interval coverage, DPS-gradient cosine per sigma."""
    if prepared is None:
        return {}
    if prepared.cfg["name"] in FAMILIES:
        return FAMILIES[prepared.cfg["name"]].metrics(prepared.problem, samples)
    if prepared.cfg["name"] == "digits_class":
        from ..zoo.digits import class_guidance

        return class_guidance.class_guidance_metrics(samples, prepared.problem)
    if is_digits(prepared.cfg):
        from ..zoo.digits import inverse

        return inverse.reconstruction_metrics(prepared.problem, samples)
    from ..metrics.analytic import sliced_wasserstein_distance

    task, problem = prepared.cfg, prepared.problem
    samples = samples.detach().double().cpu()
    reference, floor = _gmm_reference(task["dim"], task["dim_y"], task["problem_seed"], task["sigma_y"],
                                      task["n_reference"], samples.shape[0])
    if not bool(torch.isfinite(samples).all()):
        return {"sw": math.inf, "sw_floor": floor, "sw_ratio": math.inf}
    sw = sliced_wasserstein_distance(samples, reference, generator=torch.Generator().manual_seed(0))
    values = {
        "sw": sw, "sw_floor": floor, "sw_ratio": sw / floor, "mean_error": problem.posterior_mean_error(samples),
        "weight_tv": problem.weight_tv(samples), "coverage90": problem.coverage(samples, 0.9),
    }
    cosines = problem.dps_cosine(task["cosine_sigmas"], n=256, generator=torch.Generator().manual_seed(0))
    values.update({f"dps_cosine@{sigma:g}": c for sigma, c in cosines.items()})
    return values
