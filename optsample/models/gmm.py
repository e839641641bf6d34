"""Gaussian mixtures: the analytic model with exact answers at every noise level.

Clean data x0 ~ sum_k w_k N(mu_k, diag(v_k)). Under x = x0 + sigma * eps each component stays Gaussian,
N(mu_k, diag(v_k + sigma^2)), so the noised marginal p_sigma, its score and the optimal denoiser
E[x0 | x] are closed-form (Tweedie: D(x; sigma) = x + sigma^2 * grad log p_sigma(x); Efron 2011,
Karras et al. 2022 eq. 3).
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """A K-component Gaussian mixture in D dimensions, usable directly as a denoiser.

    Args:
        means: [K, D] component means.
        stds: per-component standard deviation: a scalar, [K] (isotropic) or [K, D] (diagonal).
        weights: [K] mixture weights (normalised here); uniform if omitted.
    """

    def __init__(self, means, stds=1.0, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        n_comp, dim = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None]
        stds = stds.expand(n_comp, dim).clone()
        if not bool((stds > 0).all()):
            raise ValueError("stds must be positive")
        weights = torch.ones(n_comp, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n_comp,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {n_comp} positive numbers")
        self.means, self.variances = means, stds**2
        self.weights = weights / weights.sum()
        self.dim, self.n_components = dim, n_comp
        self._cache: dict = {}

    @classmethod
    def random(cls, dim: int, components: int, *, seed: int = 0, spread: float = 3.0, std_range=(0.3, 1.0)):
        """A fixed, seeded mixture: means N(0, spread^2 I), isotropic stds uniform in ``std_range``, weights 4 + Exp(1)."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread
        low, high = std_range
        stds = low + (high - low) * torch.rand(components, generator=g, dtype=torch.float64)
        weights = 4.0 - torch.rand(components, generator=g, dtype=torch.float64).log()  # positive, mildly uneven
        return cls(means, stds, weights)

    def _params(self, ref: torch.Tensor):
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(ref.device, ref.dtype) for t in (self.means, self.variances, self.weights.log()))
        return self._cache[key]

    def _posterior(self, x: torch.Tensor, sigma):
        """Per-component noised variances [B, K, D] and responsibilities p(k | x) [B, K]."""
        means, variances, log_w = self._params(x)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        var = variances[None] + sigma**2  # [B or 1, K, D]
        diff = x[:, None, :] - means[None]  # [B, K, D]
        log_comp = -0.5 * ((diff**2 / var) + var.log() + math.log(2 * math.pi)).sum(-1)  # [B, K]
        log_joint = log_w[None] + log_comp
        return diff, var, log_joint

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) of the noised marginal (sigma=0: the clean density), shape [B]."""
        _, _, log_joint = self._posterior(x, sigma)
        return torch.logsumexp(log_joint, dim=1)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = sum_k p(k|x) (mu_k - x) / (v_k + sigma^2)."""
        diff, var, log_joint = self._posterior(x, sigma)
        resp = torch.softmax(log_joint, dim=1)
        return -(resp[..., None] * diff / var).sum(1)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x] = sum_k p(k|x) (mu_k + v_k / (v_k + sigma^2) (x - mu_k))."""
        diff, var, log_joint = self._posterior(x, sigma)
        resp = torch.softmax(log_joint, dim=1)
        means, variances, _ = self._params(x)
        comp_mean = means[None] + variances[None] / var * diff
        return (resp[..., None] * comp_mean).sum(1)

    def __call__(self, x: torch.Tensor, sigma, **_) -> torch.Tensor:
        """The denoiser convention: ``D(x, sigma)`` with sigma a [batch] tensor."""
        return self.denoise(x, sigma)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """p(k | x) under the noised marginal, [B, K] (mode assignment at sigma=0)."""
        _, _, log_joint = self._posterior(x, sigma)
        return torch.softmax(log_joint, dim=1)

    def log_responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p(k | x) under the noised marginal, [B, K] (finite where p(k | x) underflows; differentiable)."""
        _, _, log_joint = self._posterior(x, sigma)
        return torch.log_softmax(log_joint, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n clean samples x0, [n, D]."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.variances[comp].sqrt() * noise).to(dtype)
