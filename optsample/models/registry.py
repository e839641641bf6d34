"""The model registry: ``model=<name>`` options of the runner, below the runner (beside the samplers' and
metrics' registries) so model families register without importing the runner.

A builder takes the model node (a plain dict) and returns a :class:`BuiltModel`; adding a model is one line,
``register_model(GMMConfig(name="gmm8d", dim=8), build_gmm)``, in any module the runner imports (a shipped
family, or a user's module named by ``plugins=[...]`` or the ``optsample.plugins`` entry-point group).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from omegaconf import MISSING


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
    # The trained (sigma_min, sigma_max); None: the denoiser's ``sigma_min`` / ``sigma_max`` attributes if it
    # has them (k-diffusion's convention: DiscreteVPDenoiser, ContinuousVPDenoiser), else no trained range.
    sigma_range: tuple | None = None

    def trained_sigma_range(self) -> dict:
        """{"sigma_min": ., "sigma_max": .} of the model's trained range, or {} if it has none."""
        found = self.sigma_range
        if found is None:
            low, high = getattr(self.denoiser, "sigma_min", None), getattr(self.denoiser, "sigma_max", None)
            found = (low, high) if low is not None and high is not None else None
        return {} if found is None else {"sigma_min": float(found[0]), "sigma_max": float(found[1])}


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
    """Add option ``model=<config.name>``: ``register_model(GMMConfig(name="gmm8d", dim=8), build_gmm)``.

    Registering a name again replaces the earlier model with a warning (a re-run notebook cell).
    """
    if config.name in MODELS:
        warnings.warn(f"model {config.name!r} is already registered; replacing it", stacklevel=2)
    MODELS[config.name] = ModelEntry(config, build)


def available() -> list[str]:
    return sorted(MODELS)


def build_gmm(cfg: dict) -> BuiltModel:
    """``GaussianMixture.random(dim, components, seed, spread)`` (optsample/models/gmm.py)."""
    from .gmm import GaussianMixture

    gmm = GaussianMixture.random(dim=cfg["dim"], components=cfg["components"], seed=cfg["seed"], spread=cfg["spread"])
    return BuiltModel(gmm, (cfg["dim"],))


register_model(GMMConfig(name="gmm2d", dim=2, components=8), build_gmm)
register_model(GMMConfig(name="gmm64", dim=64, components=8), build_gmm)
