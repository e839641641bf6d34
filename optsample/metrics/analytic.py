"""Exact metrics for analytic models: error to the reference ODE solution, log-likelihood, mode weights,
and two-sample distances (MMD, sliced Wasserstein) against fresh data."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .registry import MetricContext, NotApplicable, reference_data, register_metric, require, tensor_digest, unwrap_model

_REFERENCE_CACHE: OrderedDict = OrderedDict()  # (id(model), sigma_start, digest) -> (model, x_ref)
_REFERENCE_CACHE_SIZE = 8


def reference_solution(ctx: MetricContext) -> torch.Tensor:
    """x(0) on the probability-flow ODE through (x_start, sigma_start) (:func:`optsample.reference.solve`),
    cached in memory: a sweep scores many samplers from the same starting noise."""
    from .. import reference

    if ctx.x_start is None or ctx.sigma_start is None:
        raise NotApplicable("metric 'rmse' needs MetricContext.x_start and sigma_start (the starting noise)")
    model = unwrap_model(ctx.model)
    key = (id(model), float(ctx.sigma_start), tensor_digest(ctx.x_start), repr(sorted(ctx.extra_args.items())))
    if key in _REFERENCE_CACHE:
        _REFERENCE_CACHE.move_to_end(key)
        return _REFERENCE_CACHE[key][1]
    x_ref = reference.solve(model, ctx.x_start, float(ctx.sigma_start), 0.0, extra_args=ctx.extra_args)
    _REFERENCE_CACHE[key] = (model, x_ref)  # holding the model keeps its id from being reused
    while len(_REFERENCE_CACHE) > _REFERENCE_CACHE_SIZE:
        _REFERENCE_CACHE.popitem(last=False)
    return x_ref


@register_metric("rmse")
def rmse(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Root mean square error to the reference ODE solution from the same starting noise."""
    from .. import reference

    return reference.rmse(samples, reference_solution(ctx))


@register_metric("loglik", higher_is_better=True)
def loglik(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Mean log-density of the samples under the clean data distribution, log p_0(x)."""
    model = require(ctx.model, ("log_prob",), "loglik")
    return float(model.log_prob(samples.detach().to(torch.float64), 0.0).mean())


def mode_frequencies(responsibilities: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned to each component by argmax_k p(k | x), [K]."""
    n_components = responsibilities.shape[1]
    counts = torch.bincount(responsibilities.argmax(dim=1), minlength=n_components)
    return counts.to(torch.float64) / responsibilities.shape[0]


@register_metric("mode_error")
def mode_error(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Total variation between the samples' mode frequencies and the mixture weights, 1/2 sum_k |f_k - w_k|."""
    model = require(ctx.model, ("responsibilities", "weights"), "mode_error")
    freq = mode_frequencies(model.responsibilities(samples.detach().to(torch.float64), 0.0))
    weights = torch.as_tensor(model.weights, dtype=torch.float64)
    return float(0.5 * (freq - weights).abs().sum())


def _flat64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)


def median_bandwidth(y: torch.Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance of (the first ``max_points`` of) y: the median heuristic
    (Gretton et al. 2012, JMLR 13, sec. 8)."""
    y = y[:max_points]
    dist = torch.cdist(y, y)
    off_diagonal = dist[~torch.eye(y.shape[0], dtype=torch.bool)]
    return float(off_diagonal.median()) if off_diagonal.numel() else 1.0


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """k(a, b) = exp(-|a - b|^2 / (2 h^2))."""
    return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 between samples x [m, D] and y [n, D] with a Gaussian kernel
    (Gretton et al. 2012, JMLR 13, Lemma 6): mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean k(x_i,y_j)."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise NotApplicable("MMD needs at least 2 samples on each side")
    k_xx, k_yy, k_xy = gaussian_kernel(x, x, bandwidth), gaussian_kernel(y, y, bandwidth), gaussian_kernel(x, y, bandwidth)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


@register_metric("mmd2_unbiased")
def mmd2_unbiased_to_reference(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Unbiased MMD^2 (Gaussian kernel, median-heuristic bandwidth of the reference) against fresh data.

    Named for what it is: the unbiased estimator of the squared MMD, which is negative when the two sets
    are closer than sampling noise (Gretton et al. 2012, Lemma 6); it was called ``mmd`` before.
    """
    ref = _flat64(reference_data(samples, ctx, "mmd2_unbiased"))
    return mmd2_unbiased(_flat64(samples), ref, median_bandwidth(ref))


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Exact W_p between the empirical measures of the columns of u [m, L] and v [n, L], shape [L].

    W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt (Villani 2003, Topics in Optimal Transportation, Thm 2.18);
    both quantile functions are step functions, constant between the breakpoints {i/m} u {j/n}.
    """
    m, n = u.shape[0], v.shape[0]
    u_sorted, v_sorted = u.sort(dim=0).values, v.sort(dim=0).values
    levels = torch.cat([torch.arange(1, m + 1, dtype=torch.float64) / m, torch.arange(1, n + 1, dtype=torch.float64) / n])
    levels = torch.unique(levels.clamp(max=1.0))  # sorted
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    u_index = torch.ceil(mid * m).long().clamp(1, m) - 1  # F^-1(t) = u_(ceil(t m))
    v_index = torch.ceil(mid * n).long().clamp(1, n) - 1
    gaps = (u_sorted[u_index] - v_sorted[v_index]).abs().pow(p)  # [segments, L]
    return (widths[:, None] * gaps).sum(0).pow(1.0 / p)


def sliced_wasserstein_distance(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, p: float = 2.0,
                                generator: torch.Generator | None = None) -> float:
    """SW_p = (mean over random unit directions theta of W_p^p(theta.x, theta.y))^(1/p)
    (Bonneel, Rabin, Peyre & Pfister 2015, "Sliced and Radon Wasserstein barycenters of measures")."""
    directions = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    per_direction = wasserstein_1d(x @ directions, y @ directions, p)
    return float(per_direction.pow(p).mean().pow(1.0 / p))


@register_metric("sliced_wasserstein")
def sliced_wasserstein(samples: torch.Tensor, ctx: MetricContext) -> float:
    """Sliced 2-Wasserstein distance (256 seeded directions) against fresh data."""
    ref = _flat64(reference_data(samples, ctx, "sliced_wasserstein"))
    generator = torch.Generator().manual_seed(ctx.reference_seed)
    return sliced_wasserstein_distance(_flat64(samples), ref, generator=generator)
