"""Image metrics: FID and KID through torchmetrics on pluggable features (:mod:`.features`), and CLIP score.

The feature net runs here (batched, reference features cached on disk); torchmetrics receives the
features through an identity module and computes the statistics in float64 (``set_dtype``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .features import reference_features, sample_features
from .registry import MetricContext, NotApplicable, register_metric


class _Precomputed(nn.Module):
    """Identity "feature extractor": torchmetrics is fed features, not images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_images(samples: torch.Tensor, metric: str) -> None:
    if samples.ndim != 4:
        raise NotApplicable(f"metric {metric!r} applies to images [N, C, H, W], got shape {tuple(samples.shape)}")


def _feature_pair(samples: torch.Tensor, ctx: MetricContext, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_images(samples, metric)
    return reference_features(samples, ctx, metric), sample_features(samples, ctx)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets [N, F] (Heusel et al. 2017, eq. 6) by torchmetrics in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    return float(metric.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> float:
    """KID: mean over random subsets of the unbiased polynomial-kernel MMD^2 (Binkowski et al. 2018, sec. 3),
    by torchmetrics in float64; subsets drawn with a seeded RNG, so the value is reproducible."""
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.set_dtype(torch.float64)
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, _ = metric.compute()
    return float(kid_mean)


@register_metric("fid")
def fid(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Frechet distance of the samples' features to the reference features (``ctx.feature_net``)."""
    real, fake = _feature_pair(samples, ctx, "fid")
    return frechet_distance(real, fake)


@register_metric("kid")
def kid(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Kernel inception distance (mean over 100 seeded subsets) to the reference features."""
    real, fake = _feature_pair(samples, ctx, "kid")
    return kernel_distance(real, fake, seed=ctx.reference_seed)
