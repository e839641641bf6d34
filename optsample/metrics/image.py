"""Image metrics: FID and KID on pluggable features (:mod:`.features`), streamed in bounded memory.

FID's state is the torchmetrics one (feature sum, outer-product sum, count; float64), which adds across
batches, ranks and shards; the reference side is the reference features (cached on disk) or a
precomputed ``.npz`` with ``mu`` / ``sigma`` (``MetricContext.reference_stats``). KID's state is a sum of
per-subset MMD^2 over disjoint subsets fixed by sample index. ``frechet_distance`` / ``kernel_distance``
are the one-shot torchmetrics computations on feature sets, kept for parity tests and benchmarks.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .features import reference_features, sample_features
from .registry import MetricContext, NotApplicable, register_statistic
from .streaming import Batch, Statistic


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


def frechet_from_moments(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, eq. 6), the trace of the root as
    the sum of sqrt(eigvals(S1 S2)) (torchmetrics image/fid.py ``_compute_fid``), in float64."""
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def moments(total: torch.Tensor, outer: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance from sum f, sum f f^T and n (torchmetrics FID's compute)."""
    if n < 2:
        raise NotApplicable(f"FID needs at least 2 samples, got {int(n)}")
    mu = total / n
    return mu, (outer - n * torch.outer(mu, mu)) / (n - 1)


def reference_moments(ctx: MetricContext, placeholder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of the reference features: from ``ctx.reference_stats`` (.npz with ``mu``, ``sigma``) or
    computed from the reference features."""
    if ctx.reference_stats is not None:
        import numpy as np

        with np.load(ctx.reference_stats) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise ValueError(f"reference_stats {ctx.reference_stats!r} lacks {sorted(missing)} (has {data.files})")
            return torch.from_numpy(data["mu"]).to(torch.float64), torch.from_numpy(data["sigma"]).to(torch.float64)
    real = reference_features(placeholder, ctx, "fid")
    return moments(real.sum(0), real.T @ real, float(real.shape[0]))


def save_reference_stats(path: str, features: torch.Tensor) -> None:
    """Write ``mu`` / ``sigma`` of features [N, F] as an .npz (pytorch-fid's ``--save-stats`` format)."""
    import numpy as np

    features = features.to(torch.float64)
    mu, sigma = moments(features.sum(0), features.T @ features, float(features.shape[0]))
    np.savez(path, mu=mu.numpy(), sigma=sigma.numpy())


@register_statistic("fid")
class FID(Statistic):
    """Frechet distance of the samples' features to the reference features (``ctx.feature_net``); state:
    sum f, sum f f^T, n in float64 (torchmetrics' FrechetInceptionDistance states)."""

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        _check_images(samples, "fid")
        self.seen(samples)
        fake = sample_features(samples, self.ctx)
        self.add("feature_sum", fake.sum(0))
        self.add("outer_sum", fake.T @ fake)
        self.add("count", torch.tensor(float(fake.shape[0])))

    def compute(self) -> float:
        mu_fake, sigma_fake = moments(self.sums["feature_sum"], self.sums["outer_sum"], float(self.sums["count"]))
        mu_real, sigma_real = reference_moments(self.ctx, self.reference_placeholder())
        return frechet_from_moments(mu_fake, sigma_fake, mu_real, sigma_real)


def poly_mmd2(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018, sec. 3; the
    kernel of torchmetrics' KID), for sets of sizes m and n >= 2."""
    m, n, dim = fake.shape[0], real.shape[0], fake.shape[1]
    k_ff, k_rr = (fake @ fake.T / dim + 1) ** 3, (real @ real.T / dim + 1) ** 3
    k_fr = (fake @ real.T / dim + 1) ** 3
    return ((k_ff.sum() - k_ff.trace()) / (m * (m - 1)) + (k_rr.sum() - k_rr.trace()) / (n * (n - 1))
            - 2 * k_fr.sum() / (m * n))


@register_statistic("kid")
class KID(Statistic):
    """Kernel inception distance: mean over subsets of the unbiased cubic-kernel MMD^2 (Binkowski et al.
    2018, sec. 3). The subsets are the streamed batches (the runner's chunks of ``chunk_size`` samples),
    each against a reference subset of the same size drawn with seed (reference_seed, first index), so
    the value does not depend on which process or shard saw the batch; state: sum of MMD^2, #subsets.
    The subset size is the chunk size: its mean does not depend on it, its variance does (the usual KID:
    ``chunk_size=1000``)."""

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        _check_images(samples, "kid")
        self.seen(samples)
        if samples.shape[0] < 2:
            raise NotApplicable(f"KID needs batches of at least 2 samples, got {samples.shape[0]} at {batch.start}")
        if not hasattr(self, "_real"):  # loaded (or computed and cached on disk) once per stream
            self._real = reference_features(samples, self.ctx, "kid")
        real = self._real
        generator = torch.Generator().manual_seed((self.ctx.reference_seed << 32) + batch.start)
        subset = torch.randperm(real.shape[0], generator=generator)[:min(samples.shape[0], real.shape[0])]
        self.add("mmd2_sum", poly_mmd2(sample_features(samples, self.ctx), real[subset]))
        self.add("subsets", torch.tensor(1.0))

    def compute(self) -> float:
        return float(self.sums["mmd2_sum"] / self.sums["subsets"])
