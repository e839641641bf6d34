"""Structured configs for the Hydra runner, generated from the registries; plus the small model registry.

Hydra config groups (``optsample-run <group>=<option> <group>.<key>=<value>``):

- ``sampler``: one option per registered sampler (``optsample.samplers.available()``). Its fields are
  ``name`` plus the sampler's hyper-parameters, generated from ``get(name).params`` with the
  ``Annotated[...]`` bounds stripped to the plain type (OmegaConf does not understand ``Annotated``);
  the bounds are checked by ``get(name).make_params(**hp)`` before any work (:func:`optsample.run.plan_run`).
- ``schedule``: one option per ``optsample.schedules.available()``, fields generated from the schedule
  function's signature (``n`` comes from ``steps`` / ``nfe``; model-provided arguments such as
  ``alphas_cumprod`` are left out).
- ``model``: :data:`MODELS` below; adding a model is one :func:`register_model` line.
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
from typing import Any, Callable, List, Optional

from omegaconf import MISSING

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
    from . import samplers

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

SCHEDULE_SKIP = ("n", "device")  # given by the runner


def schedule_parameters(name: str) -> list[inspect.Parameter]:
    """The user-settable parameters of schedule ``name`` (``n``/``device`` excluded)."""
    from . import schedules

    fn = getattr(schedules, name)
    return [p for p in inspect.signature(fn).parameters.values() if p.name not in SCHEDULE_SKIP]


def schedule_config(name: str) -> type:
    """Plain dataclass ``name`` + schedule ``name``'s parameters; those without a default and a
    scalar/list type are required (``???``); non-config arguments (tensors) come from the model."""
    from . import schedules

    hints = typing.get_type_hints(getattr(schedules, name))
    fields = [("name", str, field(default=name))]
    for p in schedule_parameters(name):
        kind = plain_type(hints.get(p.name, Any))
        if p.default is inspect.Parameter.empty:
            if kind is Any:
                continue  # e.g. discrete's alphas_cumprod: supplied by the model
            fields.append((p.name, kind, field(default=MISSING)))
        else:
            fields.append((p.name, kind, _default_field(p.default)))
    return dataclasses.make_dataclass(_class_name("schedule", name), fields)


def schedule_params(schedule_cfg: dict) -> dict:
    return {k: v for k, v in schedule_cfg.items() if k != "name"}


# ----------------------------------------------------------------------------------------------
# Models: a small registry. A builder takes the model node (a dict) and returns a BuiltModel.


@dataclass
class BuiltModel:
    """What the runner needs from a model: the denoiser, the shape of one sample, and model-provided
    arguments for the schedule (e.g. ``alphas_cumprod`` for ``schedule=discrete``)."""

    denoiser: Callable
    sample_shape: tuple
    schedule_args: dict = field(default_factory=dict)
    extra_args: dict = field(default_factory=dict)
    # Per-sample conditioning: sample indices -> extra model arguments for that batch, e.g.
    # {"class_labels": tensor} or {"prompts": [...]}; sample k's conditioning depends on k alone.
    # The keys "class_labels" / "labels" and "prompts" are also handed to the metrics.
    conditioning: Callable[[list], dict] | None = None
    # Extra fields for optsample.metrics.MetricContext (reference data, feature net, ...).
    metric_args: dict = field(default_factory=dict)
    # Samples -> images in [-1, 1] for the metrics and the logger (e.g. a VAE decoder for latent models).
    decode: Callable[[Any], Any] | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    dtype: str = "float32"  # the model's compute dtype; the sampler state stays float32


@dataclass
class GMMConfig(ModelConfig):
    dim: int = 2
    components: int = 8
    seed: int = 0
    spread: float = 3.0


@dataclass(frozen=True)
class ModelEntry:
    config: Any  # a ModelConfig instance: the option's defaults
    build: Callable[[dict], BuiltModel]


MODELS: dict[str, ModelEntry] = {}


def register_model(config: ModelConfig, build: Callable[[dict], BuiltModel]) -> None:
    """Add option ``model=<config.name>``: ``register_model(GMMConfig(name="gmm8d", dim=8), build_gmm)``."""
    if config.name in MODELS:
        raise ValueError(f"model {config.name!r} is already registered")
    MODELS[config.name] = ModelEntry(config, build)


def build_gmm(cfg: dict) -> BuiltModel:
    """``GaussianMixture.random(dim, components, seed, spread)`` (optsample/models/gmm.py)."""
    from .models import GaussianMixture

    gmm = GaussianMixture.random(dim=cfg["dim"], components=cfg["components"], seed=cfg["seed"], spread=cfg["spread"])
    return BuiltModel(gmm, (cfg["dim"],))


register_model(GMMConfig(name="gmm2d", dim=2, components=8), build_gmm)
register_model(GMMConfig(name="gmm64", dim=64, components=8), build_gmm)


# ----------------------------------------------------------------------------------------------
# Metrics and loggers: presets.


@dataclass
class MetricConfig:
    names: List[str] = field(default_factory=list)
    reference_stats: Optional[str] = None  # FID reference statistics: an .npz with mu, sigma (pytorch-fid / EDM format)


METRIC_PRESETS = {
    "analytic": ["rmse", "loglik", "mode_error", "mmd", "sliced_wasserstein"],
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
    shards: int = 1  # split the run across K jobs (optsample.runner.shards); the merged row is the unsharded one
    shard: Optional[int] = None  # which of the K shards this job samples (0..K-1)
    save_samples: str = "none"  # none | npz | png: write the samples per seed under <results_dir>/samples/<hash>


# Keys that do not change a run's outcome: left out of the config hash so that re-running a sweep
# with another results dir, logger or progress bar still finds its rows.
UNHASHED_KEYS = ("results_dir", "force", "logger", "progress", "objective", "log_trajectory", "shards", "shard",
                 "save_samples")


def register_configs() -> None:
    """Store every structured config in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from . import samplers, schedules
    from .runner import distributed

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


# Model families beyond the analytic ones register themselves here (optsample/zoo/).
from . import zoo as _zoo  # noqa: E402,F401
