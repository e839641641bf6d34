"""Metrics of a run's samples: ``compute(names, samples, MetricContext(...)) -> {name: value}``.

Analytic models: "rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein" (:mod:`.analytic`);
images: "fid", "kid" (:mod:`.image`, feature nets in :mod:`.features`), "clip_score" (:mod:`.clip`).
A new metric is one ``@register_metric("name")`` on ``fn(samples, context) -> float`` (it streams by
keeping its samples), or ``@register_statistic("name")`` on a :class:`Statistic` (bounded memory).
Streaming over batches, processes and shards: :class:`MetricStream` (:mod:`.streaming`).
"""

from . import analytic, clip, image  # noqa: F401  (register the built-in metrics)
from .features import available_feature_nets, register_feature_net
from .registry import (
    MetricContext, MetricInfo, NotApplicable, available, compute, info, register_metric, register_statistic,
)
from .streaming import Batch, MetricStream, Statistic

__all__ = [
    "Batch", "MetricContext", "MetricInfo", "MetricStream", "NotApplicable", "Statistic", "available",
    "available_feature_nets", "compute", "info", "register_feature_net", "register_metric", "register_statistic",
]
