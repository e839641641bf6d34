"""Structured configs for the Hydra runner, generated from the registries.

Hydra config groups (``optsample-run <group>=<option> <group>.<key>=<value>``):

- ``sampler``: one option per registered sampler (``optsample.samplers.available()``). Its fields are
  ``name`` plus the sampler's hyper-parameters, generated from ``get(name).params`` with the
  ``Annotated[...]`` bounds stripped to the plain type (OmegaConf does not understand ``Annotated``);
  the bounds are checked by ``get(name).make_params(**hp)`` before any work (:func:`optsample.runner.app.plan_run`).
- ``schedule``: one option per ``optsample.schedules.available()``, fields generated from the schedule
  function's signature (``n`` comes from ``steps`` / ``nfe``; model-provided arguments such as
  ``alphas_cumprod`` are left out).
- ``model``: :data:`optsample.models.registry.MODELS`; adding a model is one ``register_model`` line.
- ``metric``, ``logger``: presets (dataclasses here); ``experiment``: YAML presets in ``conf/experiment``.

Every node is a dataclass, so OmegaConf runs in struct mode: a misspelled key fails at composition with
the key's name, and a wrong type (``steps=abc``) fails naming the field.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

# The model registry lives below the runner (optsample/models/registry.py); its names are re-exported here.
from ..models.registry import MODELS, BuiltModel, GMMConfig, ModelConfig, ModelEntry, build_gmm, register_model  # noqa: F401

SCALARS = (int, float, bool, str)
MODEL_DTYPES = ("float32", "float16", "bfloat16", "float64")
DEVICES = ("auto", "cpu", "cuda", "mps")


def plain_type(hint: Any) -> Any:
    """The OmegaConf-friendly type of a hint: Annotated[float, Range(..)] -> float, Optional kept, else Any."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint in SCALARS:
        return hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and len(args) == 2 and type(None) in args:
        inner = plain_type(next(a for a in args if a is not type(None)))
        return Optional[inner] if inner is not Any else Any
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        item = plain_type(args[0]) if args else Any
        return List[item]
    return Any


def _default_field(value: Any):
    """Dataclass defaults must not be mutable: lists become default_factory."""
    if isinstance(value, (list, tuple)):
        return field(default_factory=lambda v=list(value): list(v))
    return field(default=value)


def _class_name(group: str, name: str) -> str:
    return "".join(p.capitalize() for p in f"{name}_{group}".split("_")) + "Config"


# ----------------------------------------------------------------------------------------------
# Samplers: generated from the registry's hyper-parameter dataclasses.


def sampler_config(name: str) -> type:
    """Plain dataclass ``name`` + the hyper-parameters of sampler ``name`` with their defaults."""
    from .. import samplers

    params = samplers.get(name).params
    hints = typing.get_type_hints(params, include_extras=True)
    fields = [("name", str, field(default=name))]
    for f in dataclasses.fields(params):
        fields.append((f.name, plain_type(hints[f.name]), _default_field(f.default)))
    return dataclasses.make_dataclass(_class_name("sampler", name), fields)


def sampler_hparams(sampler_cfg: dict) -> dict:
    """The hyper-parameters of a ``sampler`` node (everything but ``name``)."""
    return {k: v for k, v in sampler_cfg.items() if k != "name"}


# ----------------------------------------------------------------------------------------------
# Schedules: generated from the schedule functions' signatures.

SCHEDULE_SKIP = ("n", "device", "expect")  # given by the runner (expect: the run's model and sampler, for learned)
# Schedule parameters that default to the model's trained sigma range (BuiltModel.sigma_range), as
# k-diffusion reads ``model.sigma_min`` / ``model.sigma_max``; an explicit value wins.
MODEL_RANGE_KEYS = ("sigma_min", "sigma_max")


def schedule_parameters(name: str) -> list[inspect.Parameter]:
    """The user-settable parameters of schedule ``name`` (``n``/``device`` excluded)."""
    from .. import schedules

    fn = schedules.function(name)
    return [p for p in inspect.signature(fn).parameters.values() if p.name not in SCHEDULE_SKIP]


def schedule_config(name: str) -> type:
    """Plain dataclass ``name`` + schedule ``name``'s parameters; those without a default and a
    scalar/list type are required (``???``); non-config arguments (tensors) come from the model."""
    from .. import schedules

    hints = typing.get_type_hints(schedules.function(name))
    fields = [("name", str, field(default=name))]
    for p in schedule_parameters(name):
        kind = plain_type(hints.get(p.name, Any))
        if p.default is inspect.Parameter.empty:
            if kind is Any:
                continue  # e.g. discrete's alphas_cumprod: supplied by the model
            fields.append((p.name, kind, field(default=MISSING)))
        elif p.name in MODEL_RANGE_KEYS:
            fields.append((p.name, Optional[kind], field(default=None)))  # None: the model's range, else p.default
        else:
            fields.append((p.name, kind, _default_field(p.default)))
    return dataclasses.make_dataclass(_class_name("schedule", name), fields)


def schedule_params(schedule_cfg: dict) -> dict:
    return {k: v for k, v in schedule_cfg.items() if k != "name"}


# ----------------------------------------------------------------------------------------------
# Metrics and loggers: presets.


@dataclass
class MetricConfig:
    names: List[str] = field(default_factory=list)
    reference_stats: Optional[str] = None  # FID reference statistics: an .npz with mu, sigma (pytorch-fid / EDM format)


METRIC_PRESETS = {
    "analytic": ["rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein"],
    "fast": ["loglik", "mode_error"],
    "images": ["fid", "kid"],
    "text2image": ["fid", "clip_score"],
    "none": [],
}


@dataclass
class LoggerConfig:
    name: str = MISSING


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    mode: str = "offline"  # offline | online | disabled
    entity: Optional[str] = None
    log_samples: bool = True
    init_timeout: float = 10.0  # seconds wandb.init waits for the server; then the sweep goes offline (loggers.py)


@dataclass
class CsvLoggerConfig(LoggerConfig):
    name: str = "csv"


LOGGER_PRESETS = {"wandb": WandbLoggerConfig, "csv": CsvLoggerConfig, "none": LoggerConfig}


# ----------------------------------------------------------------------------------------------
# The top-level run config.


@dataclass
class RunConfig:
    model: Any = MISSING
    sampler: Any = MISSING
    schedule: Any = MISSING
    metric: MetricConfig = MISSING
    logger: Any = MISSING
    guidance: Any = MISSING  # optsample/runner/guidance_tasks.py: none | exact | dps | adam_dps | mpgd | rules
    task: Any = MISSING  # none | gmm_inverse (brings its own model and metrics)
    name: str = "default"  # experiment name: runs/<name>, the W&B group
    project: str = "optsample"  # W&B project
    steps: Optional[int] = 10
    nfe: Optional[int] = None  # NFE budget; if set, steps = steps_for_nfe(sampler, nfe, **hp)
    n_samples: int = 256
    batch_size: int = 256
    chunk_size: Optional[int] = None  # seeds per chunk (ranks, shards, metric updates, KID subsets); None: batch_size
    seed: int = 0  # sample k starts from seed (seed << 32) + k
    device: str = "auto"  # auto | cpu | cuda | cuda:<i> | mps
    results_dir: str = "runs/${name}"  # result rows, not committed; tables made from them go in results/
    force: bool = False  # redo runs whose row exists
    objective: Optional[str] = None  # row key returned to the sweeper, e.g. metric.rmse
    progress: bool = True
    log_trajectory: bool = False  # hand the first samples' iterates to the logger (2-D plot)
    # Modules imported in every job before anything else (optsample/runner/plugins.py): users' samplers,
    # rules, schedules, models, metrics. Like optsample's own code, not part of the config hash.
    plugins: List[str] = field(default_factory=list)
    shards: int = 1  # split the run across K jobs (optsample.runner.shards); the merged row is the unsharded one
    shard: Optional[int] = None  # which of the K shards this job samples (0..K-1)
    save_samples: str = "none"  # none | npz | png: write the samples per seed under <results_dir>/samples/<hash>


# Keys that do not change a run's outcome: left out of the config hash so that re-running a sweep
# with another results dir, logger or progress bar still finds its rows.
UNHASHED_KEYS = ("results_dir", "force", "logger", "progress", "objective", "log_trajectory", "plugins", "shards",
                 "shard", "save_samples")


def register_configs() -> None:
    """Store every structured config in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from .. import samplers, schedules
    from . import distributed

    distributed.register_resolver()  # ${optsample_now:...}: one output directory for all torchrun ranks
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for name in samplers.available():
        cs.store(group="sampler", name=name, node=sampler_config(name))
    for name in schedules.available():
        cs.store(group="schedule", name=name, node=schedule_config(name))
    for name, entry in MODELS.items():
        cs.store(group="model", name=name, node=entry.config)
    for name, names in METRIC_PRESETS.items():
        cs.store(group="metric", name=name, node=MetricConfig(names=list(names)))
    for name, node in LOGGER_PRESETS.items():
        cs.store(group="logger", name=name, node=node(name=name) if node is LoggerConfig else node)
    from . import guidance_tasks

    guidance_tasks.register_configs(cs)


# Model families beyond the analytic ones (optsample/zoo/, optsample/integrations/, users' packages) come in
# as plugins: the entry-point group optsample.plugins (optsample/runner/plugins.py).
from .plugins import load_installed as _load_installed  # noqa: E402

_load_installed()
