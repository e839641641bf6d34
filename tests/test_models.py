"""Analytic models: the Gaussian mixture's exact answers and the finite data set's optimal denoiser."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch.utils._python_dispatch import TorchDispatchMode

from optsample.models import EmpiricalDenoiser, GaussianMixture

F64 = torch.float64


def isotropic_gmm():
    return GaussianMixture([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], stds=[0.5, 0.8, 0.4], weights=[0.5, 0.3, 0.2])


def diagonal_gmm():
    return GaussianMixture([[-1.0, 1.0], [2.0, -1.0]], stds=[[0.3, 1.2], [0.9, 0.4]], weights=[0.6, 0.4])


# ---------------------------------------------------------------------------------------------- GaussianMixture


@pytest.mark.parametrize("make_gmm", [isotropic_gmm, diagonal_gmm])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_gmm_denoiser_matches_monte_carlo_posterior_mean(make_gmm, sigma):
    """D(x; sigma) = E[x0 | x]: self-normalised importance sampling from the clean prior, weights N(x; x0, sigma^2)."""
    gmm = make_gmm()
    x = torch.tensor([[0.3, -0.4]], dtype=F64)
    x0 = gmm.sample(400_000, generator=torch.Generator().manual_seed(123))
    log_w = -((x - x0) ** 2).sum(1) / (2 * sigma**2)
    w = torch.softmax(log_w, 0)
    mc = (w[:, None] * x0).sum(0)
    # delta-method standard error of a self-normalised estimator: sum_i w_i^2 (x0_i - mc)^2
    se = ((w[:, None] ** 2) * (x0 - mc) ** 2).sum(0).sqrt()
    exact = gmm.denoise(x, torch.tensor([sigma], dtype=F64))[0]
    assert bool((se < 0.02).all()), f"Monte Carlo too noisy to be a test: se {se}"
    assert bool(((exact - mc).abs() < 4 * se).all()), f"D {exact} vs MC {mc} +- {se}"


@pytest.mark.parametrize("make_gmm", [isotropic_gmm, diagonal_gmm])
def test_gmm_score_is_autograd_of_log_prob_and_tweedie_holds(make_gmm):
    gmm = make_gmm()
    g = torch.Generator().manual_seed(0)
    for sigma in [0.0, 0.05, 0.7, 4.0]:
        x = (torch.randn(16, 2, generator=g, dtype=F64) * 3).requires_grad_(True)
        (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
        score = gmm.score(x.detach(), sigma)
        assert (score - grad).abs().max() < 1e-10
        if sigma > 0:  # Tweedie: D = x + sigma^2 grad log p_sigma (Efron 2011)
            tweedie = x.detach() + sigma**2 * score
            denoised = gmm(x.detach(), torch.full((16,), sigma, dtype=F64))
            assert (denoised - tweedie).abs().max() < 1e-12


@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0])
def test_gmm_log_prob_integrates_to_one_in_1d(sigma):
    gmm = GaussianMixture([[-3.0], [0.5], [2.0]], stds=[0.3, 1.0, 0.5], weights=[1, 2, 3])
    grid = torch.linspace(-30, 30, 60_001, dtype=F64)[:, None]
    density = gmm.log_prob(grid, sigma).exp()
    assert abs(float(torch.trapezoid(density, grid[:, 0])) - 1) < 1e-9


@pytest.mark.parametrize("sigma", [0.0, 0.6])
def test_gmm_diagonal_log_prob_matches_scipy(sigma):
    gmm = diagonal_gmm()
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    comps = [
        multivariate_normal(mean=gmm.means[k].numpy(), cov=np.diag(gmm.variances[k].numpy() + sigma**2))
        for k in range(2)
    ]
    ref = np.logaddexp(*[math.log(float(gmm.weights[k])) + comps[k].logpdf(x.numpy()) for k in range(2)])
    assert np.abs(gmm.log_prob(x, sigma).numpy() - ref).max() < 1e-12


# ---------------------------------------------------------------------------------------------- EmpiricalDenoiser


def brute_force_denoise(data: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """eq. 57 of Karras et al. 2022 written directly: softmax over all N at once."""
    flat = data.reshape(len(data), -1)
    sq = torch.cdist(x.reshape(len(x), -1), flat, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return (torch.softmax(-sq / (2 * sigma**2), dim=1) @ flat).reshape(x.shape)


def random_data(n=300, shape=(6,), seed=0):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_empirical_tiny_sigma_returns_nearest_point_exactly():
    data = random_data()
    den = EmpiricalDenoiser(data, chunk_size=37)
    idx = torch.tensor([3, 77, 150, 299])
    x = data[idx] + 0.01 * torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = den(x, torch.full((4,), 1e-4, dtype=F64))
    assert torch.equal(out, data[idx])
    assert torch.equal(den.nearest_index(x), idx)
    assert torch.equal(den(x, torch.zeros(4, dtype=F64)), data[idx])  # the sigma = 0 limit


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 10.0])
def test_empirical_chunked_equals_unchunked_and_brute_force(sigma):
    data = random_data(shape=(2, 3))
    x = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * 1.5
    sig = torch.full((8,), sigma, dtype=F64)
    chunked = EmpiricalDenoiser(data, chunk_size=7)(x, sig)
    whole = EmpiricalDenoiser(data, chunk_size=len(data))(x, sig)
    ref = brute_force_denoise(data, x, sigma)
    assert chunked.shape == x.shape
    assert (chunked - whole).abs().max() < 1e-12
    assert (chunked - ref).abs().max() < 1e-12


def test_empirical_per_sample_sigmas():
    data = random_data()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    sigmas = torch.tensor([0.2, 1.0, 5.0], dtype=F64)
    out = EmpiricalDenoiser(data, chunk_size=50)(x, sigmas)
    for k in range(3):
        assert (out[k] - brute_force_denoise(data, x[k:k + 1], float(sigmas[k]))[0]).abs().max() < 1e-12


def test_empirical_huge_sigma_returns_data_mean():
    data = random_data()
    den = EmpiricalDenoiser(data, chunk_size=64)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = den(x, torch.full((4,), 1e5, dtype=F64))
    assert (out - data.mean(0)).abs().max() < 1e-8
    assert (out - data.mean(0)).abs().max() > 0  # not a hard-coded limit: the weights are still x-dependent


class LargestTensor(TorchDispatchMode):
    """Records the largest new tensor (in elements) produced by any torch op while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            # views (reshapes, slices of the data) share an input's storage and allocate nothing
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


def test_empirical_large_data_bounded_memory_and_fast():
    n, dim, batch, chunk = 10_000, 1024, 64, 256
    g = torch.Generator().manual_seed(0)
    data = torch.randn(n, dim, generator=g)
    den = EmpiricalDenoiser(data, chunk_size=chunk)
    x = data[:batch] + 2.0 * torch.randn(batch, dim, generator=g)
    sigma = torch.full((batch,), 8.0)
    start = time.perf_counter()
    with LargestTensor() as probe:
        out = den(x, sigma)
    elapsed = time.perf_counter() - start
    # no op produced anything bigger than [B, chunk], [B, dim] or [chunk, dim] (views of the data are free)
    assert probe.largest <= max(batch * chunk, batch * dim, chunk * dim)
    assert probe.largest < batch * n
    assert elapsed < 20
    # at sigma = 8 the softmax over 10,000 points in 1,024-D is neither one-hot nor uniform (measured:
    # 0.06 from the source points, 4.6 from the mean), so agreement with float64 brute force means something
    ref = brute_force_denoise(data.to(F64), x.to(F64), 8.0)
    assert (out.to(F64) - ref).abs().max() < 1e-4
    assert (ref - data[:batch].to(F64)).abs().max() > 0.01
    assert (ref - data.to(F64).mean(0)).abs().max() > 1.0
