"""Learned schedules (issue 14): differentiable sigmas in the samplers, dp, gradient, schedule files."""

from __future__ import annotations

import pytest
import torch

import optsample
from optsample import schedules
from optsample.models import GaussianMixture

F64 = torch.float64

# Samplers whose outputs are differentiable in the sigmas (checked against finite differences below);
# optsample/learned_schedules/gradient.py lists the same set as verified.
DIFFERENTIABLE = ("euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "plms", "ghvb", "momentum",
                  "nesterov", "dpmpp_2m_momentum", "eps_scaling", "ema_x0")


def _small_problem():
    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    x_unit = optsample.initial_noise(range(8), (4,), dtype=F64)
    weights = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    return gmm, x_unit, weights


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_sampler_gradient_in_sigmas_matches_finite_differences(name):
    """d loss / d sigma_k through the sampler = central differences (step 1e-6) to 1e-6 relative, for the
    interior sigmas of a 5-step Karras schedule; and a sigma tensor that requires grad gives the float
    path's output to 1e-12 (the ordinary path's arithmetic is unchanged)."""
    from optsample.learned_schedules.gradient import VERIFIED_SAMPLERS

    assert name in VERIFIED_SAMPLERS
    gmm, x_unit, weights = _small_problem()
    base = schedules.karras(5, sigma_min=0.05, sigma_max=20.0)

    def loss(sigmas):
        return (optsample.sample(name, gmm, x_unit * sigmas[0], sigmas, seeds=range(8)) * weights).sum()

    sigmas = base.clone().requires_grad_(True)
    value = loss(sigmas)
    (grad,) = torch.autograd.grad(value, sigmas)
    finite = []
    for k in range(1, 5):
        step = torch.zeros_like(base)
        step[k] = 1e-6
        finite.append(float((loss(base + step) - loss(base - step)) / 2e-6))
    finite = torch.tensor(finite, dtype=F64)
    assert float((grad[1:5] - finite).abs().max()) <= 1e-6 * float(finite.abs().max())
    assert abs(float(value.detach()) - float(loss(base))) < 1e-12 * max(1.0, abs(float(value.detach())))
