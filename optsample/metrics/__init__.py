"""Metrics of a run's samples: ``compute(names, samples, MetricContext(...)) -> {name: value}``.

Analytic models: "rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein" (:mod:`.analytic`);
images: "fid", "kid" (:mod:`.image`, feature nets in :mod:`.features`), "clip_score" (:mod:`.clip`).
A new metric is one ``@register_metric("name")`` on ``fn(samples, context) -> float``.
"""

from . import analytic, clip, image  # noqa: F401  (register the built-in metrics)
from .features import available_feature_nets, register_feature_net
from .registry import MetricContext, MetricInfo, NotApplicable, available, compute, info, register_metric

__all__ = [
    "MetricContext", "MetricInfo", "NotApplicable", "available", "available_feature_nets", "compute", "info",
    "register_feature_net", "register_metric",
]
