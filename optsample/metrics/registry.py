"""The metric registry: ``compute(names, samples, context)`` and the one-line ``@register_metric``.

A metric is a function ``fn(samples, context) -> float`` registered under a name with its direction
(``higher_is_better``), which :mod:`optsample.runner.report` uses to mark the best cell of a table. A metric
that does not apply to the run's model raises :class:`NotApplicable` (a ValueError) saying why.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics CLIPScore's default (REFERENCES.md)


class NotApplicable(ValueError):
    """The metric cannot be computed for this model / these samples (the message says why)."""


@dataclass
class MetricContext:
    """Everything a metric may need besides the samples.

    The first seven fields are the fixed interface the runner fills. The rest have defaults:
    ``reference`` (data to compare with: a tensor, or a zero-argument callable returning one, so a cached
    ``reference_key`` never loads it), ``reference_key`` (names the reference data in the on-disk feature
    cache instead of a hash of its bytes), ``feature_net`` (a name in :mod:`optsample.metrics.features`),
    ``cache_dir`` (None: ``$OPTSAMPLE_CACHE`` or ``~/.cache/optsample``), ``clip_model`` (a hub name or a
    ``(CLIPModel, tokenizer)`` pair), ``n_reference`` (fresh data drawn from an analytic model; None: as
    many as samples), ``reference_seed`` (seeds the fresh data, projections, random features and KID subsets, so every run
    is compared with the same reference), ``reference_stats`` (a ``.npz`` with FID's ``mu`` and ``sigma``
    of the reference features, the format pytorch-fid and NVlabs/edm publish; used instead of ``reference``).
    """

    model: Any
    x_start: torch.Tensor | None = None
    sigma_start: float | None = None
    extra_args: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None
    prompts: list[str] | None = None
    device: str | torch.device = "cpu"
    reference: torch.Tensor | Callable[[], torch.Tensor] | None = None
    reference_key: str | None = None
    feature_net: str = "inception"
    cache_dir: str | None = None
    clip_model: Any = DEFAULT_CLIP_MODEL
    n_reference: int | None = None
    reference_seed: int = 0
    reference_stats: str | None = None


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable[[torch.Tensor, MetricContext], float]  # one shot over all samples
    higher_is_better: bool
    description: str
    statistic: type  # its mergeable state (optsample.metrics.streaming.Statistic)


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, *, higher_is_better: bool = False):
    """Decorator: ``@register_metric("digits_accuracy", higher_is_better=True)`` on ``fn(samples, ctx)``.

    A plain function streams by keeping its samples (:class:`~optsample.metrics.streaming.Collected`);
    :func:`register_statistic` registers one in bounded memory.
    Registering a name again replaces the earlier metric with a warning (a re-run notebook cell).
    """

    def wrap(fn):
        from .streaming import collected

        _add(MetricInfo(name, fn, higher_is_better, _first_line(fn), collected(name, fn)))
        return fn

    return wrap


def register_statistic(name: str, *, higher_is_better: bool = False):
    """Decorator on a :class:`~optsample.metrics.streaming.Statistic` subclass: metric ``name`` in
    bounded memory; its one-shot ``fn`` streams all samples as one chunk."""

    def wrap(cls):
        from .streaming import compute_one_shot

        cls.name = name
        _add(MetricInfo(name, lambda samples, ctx: compute_one_shot([name], samples, ctx)[name], higher_is_better,
                        _first_line(cls), cls))
        return cls

    return wrap


def _first_line(obj) -> str:
    doc = (obj.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def _add(entry: MetricInfo) -> None:
    if entry.name in _METRICS:  # re-running a notebook cell re-registers: replace, but say so
        warnings.warn(f"metric {entry.name!r} is already registered; replacing it", stacklevel=3)
    _METRICS[entry.name] = entry


def available() -> list[str]:
    """Registered metric names, sorted."""
    return sorted(_METRICS)


def info(name: str) -> MetricInfo:
    """The registry entry of ``name``; ValueError listing the names if unknown."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(available())}")
    return _METRICS[name]


def compute(names: list[str], samples: torch.Tensor, context: MetricContext, *,
            chunk_size: int | None = None) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names`` (all names are checked before any work), streamed
    through the metrics' statistics in chunks of ``chunk_size`` samples (None: one chunk)."""
    from .streaming import compute_one_shot

    for name in names:
        info(name)
    return compute_one_shot(list(names), samples, context, chunk_size)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the metric modules.


def unwrap_model(model: Any) -> Any:
    """The user's model under the sampler framework's ``Denoiser`` wrapper (``.inner``), so metrics never
    add to its NFE count."""
    while hasattr(model, "inner") and hasattr(model, "nfe"):
        model = model.inner
    return model


def require(model: Any, attributes: tuple[str, ...], metric: str) -> Any:
    """``model`` unwrapped, or NotApplicable if it lacks one of ``attributes`` (e.g. ``log_prob``)."""
    model = unwrap_model(model)
    missing = [a for a in attributes if not hasattr(model, a)]
    if missing:
        raise NotApplicable(
            f"metric {metric!r} does not apply to model {type(model).__name__}: it needs an analytic model "
            f"with {', '.join(missing)} (e.g. optsample.models.GaussianMixture)"
        )
    return model


def reference_data(samples: torch.Tensor, ctx: MetricContext, metric: str) -> torch.Tensor:
    """Data to compare ``samples`` with: ``ctx.reference``, else the model's data set (``.data``), else
    ``n_reference`` fresh draws ``model.sample(n, generator)`` seeded by ``ctx.reference_seed``.
    Only ``samples.shape`` is read (a stream passes an expanded placeholder, :func:`placeholder`)."""
    if ctx.reference is not None:
        ref = ctx.reference() if callable(ctx.reference) else ctx.reference
        return torch.as_tensor(ref)
    model = unwrap_model(ctx.model)
    data = getattr(model, "data", None)
    if isinstance(data, torch.Tensor) and data.shape[1:] == samples.shape[1:]:
        return data
    if callable(getattr(model, "sample", None)):
        n = ctx.n_reference or samples.shape[0]
        generator = torch.Generator().manual_seed(ctx.reference_seed)
        return model.sample(n, generator=generator)
    raise NotApplicable(
        f"metric {metric!r} needs reference data: pass MetricContext(reference=...) or use a model with "
        f"``.data`` or ``.sample(n, generator)`` (got {type(model).__name__})"
    )


def tensor_digest(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes (keys on-disk caches by content)."""
    x = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def placeholder(n: int, sample_shape: tuple) -> torch.Tensor:
    """A tensor of shape [n, *sample_shape] that takes no memory (for :func:`reference_data`)."""
    return torch.empty(1, *sample_shape).expand(n, *sample_shape)
