"""Classic one-step solvers of the probability-flow ODE / reverse SDE (k-diffusion names).

Each sampler is a short loop over the sigma array; shared pieces (``to_d``, ``ancestral_step``,
``churn``, noise, NFE counting, non-finite checks) live in :mod:`optsample.samplers.core`.
"""

from __future__ import annotations

import math
from typing import Annotated

from .core import add_noise, ancestral_step, churn, steps, to_d
from .registry import Range, register

NonNegative = Annotated[float, Range(0.0)]


@register("euler")
def euler(model, x, sigmas, *, callback, noise_sampler, s_churn: NonNegative = 0.0, s_tmin: NonNegative = 0.0,
          s_tmax: float = math.inf, s_noise: NonNegative = 1.0):
    """Euler = DDIM(eta=0) = SGD with lr = sigma - sigma_next (Karras et al. 2022, Alg. 2 without the 2nd-order step)."""
    for i, sigma, sigma_next in steps(sigmas):
        x, sigma_hat = churn(x, sigma, len(sigmas) - 1, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "sigma_next": sigma_next, "denoised": denoised})
        x = x + to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@register("euler_ancestral", stochastic=True)
def euler_ancestral(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0):
    """Euler step to sigma_down, then fresh noise of std sigma_up (k-diffusion ``sample_euler_ancestral``)."""
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "sigma_next": sigma_next, "denoised": denoised})
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        x = add_noise(x, noise_sampler, sigma, sigma_next, sigma_up, s_noise)
    return x
