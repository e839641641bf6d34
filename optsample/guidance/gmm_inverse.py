"""The exact testbed: a Gaussian-mixture prior, a linear measurement y = A x0 + sigma_y n, and every
quantity a guidance method approximates in closed form.

Prior x0 ~ sum_k w_k N(mu_k, V_k), V_k diagonal (:class:`~optsample.models.GaussianMixture`).

* Posterior p(x0 | y) = sum_k w'_k N(m_k, C_k) with S_k = A V_k A^T + sigma_y^2 I, G_k = V_k A^T S_k^-1,
  m_k = mu_k + G_k (y - A mu_k), C_k = V_k - G_k A V_k, w'_k ∝ w_k N(y; A mu_k, S_k) (Bishop 2006, PRML
  eq. 2.113-2.117, in the Woodbury form so sigma_y = 0 works); samples by Matheron's rule
  x = x0 + G_k (y - A x0 - sigma_y n), x0 ~ N(mu_k, V_k) (Doucet 2010, "A note on efficient conditional
  simulation of Gaussian distributions"): memory O(d d_y) per component, never [d, d].
* Noisy likelihood p(y | x_sigma) = sum_k r_k(x) N(y; A m_k(x), A S_k(sigma) A^T + sigma_y^2 I), with
  r_k = p(k | x_sigma), m_k(x) = mu_k + V_k (V_k + sigma^2)^-1 (x - mu_k), S_k = V_k sigma^2 (V_k + sigma^2)^-1
  (the per-component posterior of x0 given x_sigma); its score by autograd of this closed form.
* :meth:`GMMInverse.posterior_denoiser`: E[x0 | x_sigma, y] computed independently, by conditioning each
  component on the stacked observation (x_sigma, y) (for checks at small d: O(K (d + d_y)^3)).

Protocol of MCGdiff (Cardoso et al. 2024, gabrielvc/mcg_diff ``generate_measurement_equations``) and TMPD
(Boys et al. 2023, bb515/tmpdjax): :meth:`GMMInverse.mcgdiff`.
"""

from __future__ import annotations

import math

import torch

from ..models import GaussianMixture
from .objectives import MeasurementLoss

LOG_2PI = math.log(2 * math.pi)


def _gaussian_logpdf(residual: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(residual; 0, cov) over the last dim; residual [..., n], cov [..., n, n]."""
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (white.square().sum(-1) + logdet + residual.shape[-1] * LOG_2PI)


class GMMInverse:
    """y = A x0 + sigma_y n under a :class:`GaussianMixture` prior, with its exact posterior (module docstring).

    Args:
        prior: the Gaussian-mixture prior (diagonal covariances).
        operator: A, [d_y, d].
        y: the measurement, [d_y].
        sigma_y: measurement noise std, >= 0.
        x_true: the x0 the measurement was made from, if known (kept for reference).
    """

    def __init__(self, prior: GaussianMixture, operator, y, sigma_y: float, x_true=None):
        if not sigma_y >= 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        A = torch.as_tensor(operator, dtype=torch.float64)
        if A.ndim != 2 or A.shape[1] != prior.dim:
            raise ValueError(f"operator must be [d_y, {prior.dim}] for a {prior.dim}-dim prior, got shape {tuple(A.shape)}")
        y = torch.as_tensor(y, dtype=torch.float64)
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have shape ({A.shape[0]},) to match the operator, got {tuple(y.shape)}")
        self.prior, self.A, self.y, self.sigma_y = prior, A, y, float(sigma_y)
        self.x_true = None if x_true is None else torch.as_tensor(x_true, dtype=torch.float64)
        self.dim, self.dim_y = prior.dim, A.shape[0]
        means, variances = prior.means, prior.variances  # [K, d]
        AV = A[None] * variances[:, None, :]  # A V_k, [K, d_y, d]
        S = AV @ A.T + self.sigma_y**2 * torch.eye(self.dim_y, dtype=torch.float64)  # [K, d_y, d_y]
        self.gain = torch.linalg.solve(S, AV).transpose(1, 2)  # G_k = V_k A^T S_k^-1, [K, d, d_y]
        residual = y - means @ A.T  # [K, d_y]
        self.post_means = means + (self.gain @ residual[..., None]).squeeze(-1)
        self.post_vars = variances - (self.gain * AV.transpose(1, 2)).sum(-1)  # diag(C_k), [K, d]
        log_w = prior.weights.log() + _gaussian_logpdf(residual, S)
        self.post_weights = torch.softmax(log_w, 0)

    @classmethod
    def mcgdiff(cls, dim: int = 8, dim_y: int = 1, seed: int = 0, sigma_y: float | None = None) -> "GMMInverse":
        """The MCGdiff / TMPD problem: 25 unit-covariance components with means (8 i, 8 j) tiled over the
        dims (i, j in -2..2), weights randn(25)^2 normalised, A = U diag(s) V^T with A's singular vectors and
        s sorted uniform [0, 1], x0 from the prior, sigma_y = U(0, 1) max(s) unless given
        (gabrielvc/mcg_diff ``generate_measurement_equations``). Seeded: the same problem for a seed."""
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be even and >= 2 (the means tile (8i, 8j)), got {dim}")
        if not 1 <= dim_y <= dim:
            raise ValueError(f"dim_y must be in [1, dim={dim}], got {dim_y}")
        g = torch.Generator().manual_seed(seed)
        grid = [(-8.0 * i, -8.0 * j) for i in range(-2, 3) for j in range(-2, 3)]
        means = torch.tensor([list(pair) * (dim // 2) for pair in grid], dtype=torch.float64)
        weights = torch.randn(len(grid), generator=g, dtype=torch.float64) ** 2
        prior = GaussianMixture(means, 1.0, weights)
        U, _, Vh = torch.linalg.svd(torch.randn(dim_y, dim, generator=g, dtype=torch.float64), full_matrices=False)
        s = torch.rand(dim_y, generator=g, dtype=torch.float64).sort(descending=True).values
        A = U @ torch.diag(s) @ Vh
        x_true = prior.sample(1, generator=g)[0]
        if sigma_y is None:
            sigma_y = float(torch.rand(1, generator=g, dtype=torch.float64)) * float(s.max())
        y = A @ x_true + sigma_y * torch.randn(dim_y, generator=g, dtype=torch.float64)
        return cls(prior, A, y, sigma_y, x_true)

    # ------------------------------------------------------------------------------------------
    # The exact posterior.

    def sample_posterior(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n exact posterior samples [n, d] (Matheron's rule, module docstring)."""
        comp = torch.multinomial(self.post_weights, n, replacement=True, generator=generator)
        x0 = self.prior.means[comp] + self.prior.variances[comp].sqrt() * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, self.dim_y, generator=generator, dtype=torch.float64)
        innovation = self.y - x0 @ self.A.T - self.sigma_y * noise  # [n, d_y]
        return (x0 + (self.gain[comp] @ innovation[..., None]).squeeze(-1)).to(dtype)

    def posterior_mean(self) -> torch.Tensor:
        """E[x0 | y], [d]."""
        return self.post_weights @ self.post_means

    def credible_intervals(self, level: float = 0.9, iterations: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coordinate central credible intervals of the exact marginals (bisection on the mixture CDF), [d] each."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        std = self.post_vars.clamp_min(0).sqrt()

        def cdf(t):  # t [d] -> [d]
            z = (t[None] - self.post_means) / std.clamp_min(1e-300)
            return (self.post_weights[:, None] * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(0)

        def quantile(q):
            low = (self.post_means - 12 * std).min(0).values - 1
            high = (self.post_means + 12 * std).max(0).values + 1
            for _ in range(iterations):
                mid = (low + high) / 2
                below = cdf(mid) < q
                low, high = torch.where(below, mid, low), torch.where(below, high, mid)
            return (low + high) / 2

        return quantile((1 - level) / 2), quantile((1 + level) / 2)

    # ------------------------------------------------------------------------------------------
    # The noisy likelihood and the exact posterior denoiser.

    def log_likelihood(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """log p(y | x_sigma), [B] (module docstring)."""
        means, variances = self.prior.means.to(x.dtype), self.prior.variances.to(x.dtype)
        sigma2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1) ** 2
        shrink = variances[None] / (variances[None] + sigma2)  # [B, K, d]
        m = means[None] + shrink * (x[:, None, :] - means[None])  # m_k(x)
        cond_var = shrink * sigma2  # S_k(sigma) diagonal
        A = self.A.to(x.dtype)
        outer = (A[:, None, :] * A[None, :, :]).reshape(-1, self.dim).T  # A_yd A_zd, [d, d_y^2]
        cov = (cond_var @ outer).reshape(*cond_var.shape[:2], self.dim_y, self.dim_y)  # A S_k A^T without [B, K, d_y, d]
        cov = cov + self.sigma_y**2 * torch.eye(self.dim_y, dtype=x.dtype)
        log_r = self.prior.log_responsibilities(x, sigma)
        return torch.logsumexp(log_r + _gaussian_logpdf(self.y.to(x.dtype) - m @ A.T, cov), 1)

    def likelihood_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p(y | x_sigma), [B, d], by autograd of the closed form (per sample: the log-likelihoods are summed)."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_likelihood(x_in, sigma).sum(), x_in)
        return grad

    def posterior_denoiser(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x_sigma, y], [B, d]: each component conditioned on z = (x, y) = H x0 + noise, H = [I; A],
        noise covariance diag(sigma^2 I, sigma_y^2 I) (independent of :meth:`log_likelihood`)."""
        dtype = x.dtype
        means, variances = self.prior.means.to(dtype), self.prior.variances.to(dtype)
        H = torch.cat([torch.eye(self.dim, dtype=dtype), self.A.to(dtype)])  # [d + d_y, d]
        sigma = torch.as_tensor(sigma, dtype=dtype).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        noise = torch.cat([sigma[:, None].expand(-1, self.dim) ** 2,
                           torch.full((x.shape[0], self.dim_y), self.sigma_y**2, dtype=dtype)], 1)  # [B, d + d_y]
        HV = H[None] * variances[:, None, :]  # [K, d + d_y, d]
        cov = (HV @ H.T)[None] + torch.diag_embed(noise)[:, None]  # [B, K, n, n]
        z = torch.cat([x, self.y.to(dtype).expand(x.shape[0], -1)], 1)  # [B, n]
        residual = z[:, None, :] - means @ H.T  # [B, K, n]
        log_w = self.prior.weights.to(dtype).log() + _gaussian_logpdf(residual, cov)
        comp_mean = means[None] + (HV.transpose(1, 2)[None] @ torch.linalg.solve(cov, residual[..., None])).squeeze(-1)
        return (torch.softmax(log_w, 1)[..., None] * comp_mean).sum(1)

    # ------------------------------------------------------------------------------------------
    # Metrics against the exact posterior (the sliced Wasserstein distance lives in optsample.metrics).

    def posterior_mean_error(self, samples: torch.Tensor) -> float:
        """||mean(samples) - E[x0 | y]|| / sqrt(d) (RMS over coordinates)."""
        return float((samples.double().mean(0) - self.posterior_mean()).norm() / math.sqrt(self.dim))

    def weight_tv(self, samples: torch.Tensor) -> float:
        """Total variation between the exact posterior component weights w'_k and mean_n p(k | x_n) (k is
        independent of y given x0, so for exact samples E[p(k | x0)] = w'_k)."""
        empirical = self.prior.responsibilities(samples.double()).mean(0)
        return float(0.5 * (empirical - self.post_weights).abs().sum())

    def coverage(self, samples: torch.Tensor, level: float = 0.9) -> float:
        """Fraction of sample coordinates inside the exact central ``level`` credible intervals (``level`` if exact)."""
        low, high = self.credible_intervals(level)
        samples = samples.double()
        return float(((samples >= low) & (samples <= high)).double().mean())

    def dps_cosine(self, sigmas, n: int = 256, generator: torch.Generator | None = None) -> dict[float, float]:
        """Per sigma, the mean cosine between DPS's gradient -grad_x ||y - A D(x)|| (through the prior's exact
        denoiser) and the exact likelihood score, at x = x0 + sigma eps with x0 from the exact posterior."""
        loss = MeasurementLoss(self.A, self.y, self.sigma_y, norm="l2")
        x0 = self.sample_posterior(n, generator=generator)
        out = {}
        for sigma in [float(s) for s in sigmas]:
            x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
            sigma_batch = torch.full((n,), sigma, dtype=torch.float64)
            _, g_dps, _ = loss.gradient(self.prior, x, sigma_batch)
            exact = self.likelihood_score(x, sigma_batch)
            out[sigma] = float(torch.nn.functional.cosine_similarity(g_dps, exact, dim=1).mean())
        return out
