"""Convergence orders against the high-accuracy reference solution (float64, Gaussian mixture).

The error of an order-p solver falls like n^-p in the number of steps n. The schedule stops at
sigma_min > 0 (the reference stops there too), so no sampler's special last step to sigma = 0 blurs
the asymptotic order.
"""

import numpy as np
import pytest
import torch

from optsample import initial_noise, reference, sample, schedules
from optsample.models import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 20.0, 0.2
STEPS = [12, 24, 48, 96]
MODEL = GaussianMixture.random(dim=8, components=4, seed=3, spread=2.0)
X_START = initial_noise(range(16), (8,), dtype=torch.float64) * SIGMA_MAX
X_REF = reference.solve(MODEL, X_START, SIGMA_MAX, SIGMA_MIN, rtol=1e-12, atol=1e-12)


def fitted_order(name, **hparams):
    errors = []
    for n in STEPS:
        sigmas = schedules.karras(n, SIGMA_MIN, SIGMA_MAX, rho=7.0)[:-1]  # end on sigma_min, not 0
        errors.append(reference.rmse(sample(name, MODEL, X_START, sigmas, **hparams), X_REF))
    slope = np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    return -slope, errors


@pytest.mark.parametrize("name, hparams, order", [
    ("euler", {}, 1.0),
    ("heun", {}, 2.0),
    ("dpm_2", {}, 2.0),
    ("dpmpp_2m", {}, 2.0),
    ("unipc", {"order": 2}, 2.0),
    ("unipc", {"order": 3, "lower_order_final": False}, 3.0),
])
def test_convergence_order(name, hparams, order):
    measured, errors = fitted_order(name, **hparams)
    assert errors[-1] < errors[0]
    assert abs(measured - order) <= 0.3, f"{name} {hparams}: fitted order {measured:.2f}, errors {errors}"
