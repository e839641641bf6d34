"""The reference probability-flow ODE solver: closed-form check, tolerance stability, Euler convergence."""

from __future__ import annotations

import math

import pytest
import torch

import optsample
from optsample.models import EmpiricalDenoiser, GaussianMixture
from optsample.reference import rmse, solve

F64 = torch.float64


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5 (k-diffusion ``get_sigmas_karras`` without the appended zero), transcribed."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def gaussian_ode_solution(x0, mu, var, sigma0, sigma):
    """Closed form for x0 ~ N(mu, diag(var)): x(sigma) = mu + sqrt((var + sigma^2)/(var + sigma0^2)) (x(sigma0) - mu)."""
    return mu + ((var + sigma**2) / (var + sigma0**2)).sqrt() * (x0 - mu)


@pytest.mark.parametrize("sigma_end", [0.0, 0.002, 0.5, 3.0])
def test_single_gaussian_matches_closed_form(sigma_end):
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    std = torch.tensor([0.3, 1.0, 2.0], dtype=F64)
    gaussian = GaussianMixture(mu[None], std[None])
    sigma0 = 80.0
    x = sigma0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    out, info = solve(gaussian, x, sigma0, sigma_end, return_info=True)
    exact = gaussian_ode_solution(x, mu, std**2, sigma0, sigma_end)
    assert out.dtype == F64 and out.shape == x.shape
    assert (out - exact).abs().max() < 1e-8
    assert info.nfe > 10 and info.status == 0
    assert (info.sigma_floor is not None) == (sigma_end == 0)


def test_sigma_floor_residual_is_negligible_for_gmm_with_std_at_least_03():
    """Integrating to sigma_floor then an Euler step to 0 costs ~ f^2/(2 v) |x - mu| (module docstring)."""
    gmm = GaussianMixture.random(dim=2, components=4, seed=3, std_range=(0.3, 0.6))
    x = 20.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    fine = solve(gmm, x, 20.0, sigma_floor=1e-8)
    default = solve(gmm, x, 20.0)  # sigma_floor = 1e-6
    coarse = solve(gmm, x, 20.0, sigma_floor=1e-3)
    assert (default - fine).abs().max() < 1e-9
    assert (coarse - fine).abs().max() > 1e-7  # the floor matters when it is large: the check can fail


def test_tighter_tolerance_changes_gmm_answer_by_less_than_1e7():
    gmm = GaussianMixture.random(dim=3, components=5, seed=0)
    x = 40.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    default = solve(gmm, x, 40.0)
    tight = solve(gmm, x, 40.0, rtol=1e-12, atol=1e-12)
    loose = solve(gmm, x, 40.0, rtol=1e-4, atol=1e-4)
    assert (default - tight).abs().max() < 1e-7
    assert (loose - tight).abs().max() > (default - tight).abs().max()


def test_euler_converges_to_reference_at_first_order():
    gmm = GaussianMixture.random(dim=2, components=3, seed=5)
    sigma_max, sigma_min = 20.0, 0.05
    x = sigma_max * torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = solve(gmm, x, sigma_max, sigma_min)
    errors = [rmse(optsample.sample("euler", gmm, x, karras_sigmas(n, sigma_min, sigma_max)), ref) for n in (25, 100, 400)]
    # first order: 4x the steps, ~4x smaller error
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5
    assert errors[2] < 0.02


def test_nfe_is_counted_and_extra_args_are_forwarded():
    gmm = GaussianMixture.random(dim=2, components=2, seed=1)
    calls = []

    def model(x, sigma, *, scale):
        calls.append(sigma.shape)
        return gmm(x, sigma) * scale

    x = torch.randn(3, 2, dtype=torch.float32) * 5
    out, info = solve(model, x, 5.0, 0.1, extra_args={"scale": 1.0}, return_info=True)
    assert info.nfe == len(calls) and all(shape == (3,) for shape in calls)
    assert out.dtype == F64
    assert (out - solve(gmm, x.to(F64), 5.0, 0.1)).abs().max() == 0


def test_empirical_data_trajectory_ends_on_a_data_point():
    data = torch.randn(20, 2, generator=torch.Generator().manual_seed(7), dtype=F64) * 3
    den = EmpiricalDenoiser(data)
    x = 10 * torch.randn(4, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    out = solve(den, x, 10.0, rtol=1e-8, atol=1e-8)
    assert (out - den.nearest(out)).abs().max() < 1e-12


def test_rmse_and_argument_checks():
    a = torch.zeros(2, 3)
    b = torch.full((2, 3), 2.0)
    b[0, 0] = 0.0
    assert rmse(a, b) == pytest.approx(math.sqrt(4 * 5 / 6), rel=1e-15)
    with pytest.raises(ValueError):
        solve(lambda x, s: x, a, 1.0, 2.0)
