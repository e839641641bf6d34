"""Classic one-step and linear-multistep solvers of the probability-flow ODE / reverse SDE (k-diffusion names).

Each sampler is a short loop over the sigma array; shared pieces (``to_d``, ``ancestral_step``,
``churn``, noise, NFE counting, non-finite checks) live in :mod:`optsample.samplers.core`. Inside this
file the loops are shared too: ``euler`` / ``heun`` / ``dpm_2`` are one churned loop with different
second-order corrections, and ``euler_ancestral`` / ``ddim`` / ``ddpm`` are one ancestral loop.

Last step (sigma_next == 0): the second-order samplers take a plain Euler step (k-diffusion
``sample_heun`` / ``sample_dpm_2``; EDM ``edm_sampler``), ancestral samplers add no noise.
"""

from __future__ import annotations

import math
from typing import Annotated, Callable

from .adams import combine, lms_coefficients
from .core import add_noise, add_scaled, ancestral_step, churn, euler_step, exp, log, report_step, steps, to_d
from .registry import NonNegative, Range, UnitInterval, register


# A second-order correction: (model, x, d, sigma, sigma_next) -> x at sigma_next, given d = to_d at (x, sigma).
Correction = Callable


# ----------------------------------------------------------------------------------------------
# Second-order corrections shared by heun, dpm_2 and dpm_2_ancestral.


def heun_correction(model, x, d, sigma: float, sigma_next: float):
    """Trapezoidal rule: average the slopes at both ends of an Euler predictor (Karras et al. 2022, Alg. 1 l. 7-8)."""
    x_euler = euler_step(x, d, sigma, sigma_next)
    d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_next))
    return add_scaled(x, d + d_next, (sigma_next - sigma) / 2)


def log_midpoint(sigma: float, sigma_next: float) -> float:
    """The midpoint in log sigma, sqrt(sigma * sigma_next) (k-diffusion ``sample_dpm_2``: log().lerp(.., 0.5).exp())."""
    return exp(0.5 * (log(sigma) + log(sigma_next)))


def midpoint_correction(model, x, d, sigma: float, sigma_next: float):
    """Midpoint rule with the midpoint in log sigma: DPM-Solver-2 in sigma coordinates (Lu et al. 2022, Alg. 1 with
    r = 1/2; k-diffusion ``sample_dpm_2``). Euler to sigma_mid, then the full step with the slope found there."""
    sigma_mid = log_midpoint(sigma, sigma_next)
    x_mid = euler_step(x, d, sigma, sigma_mid)
    d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid))
    return euler_step(x, d_mid, sigma, sigma_next)


def _churned_loop(model, x, sigmas, callback, noise_sampler, s_churn, s_tmin, s_tmax, s_noise,
                  correction: Correction | None):
    """Karras et al. 2022, Algorithm 2: churn to sigma_hat, Euler step, optional second-order ``correction``
    (skipped on the last step, sigma_next == 0, where the step is plain Euler as in k-diffusion)."""
    for i, sigma, sigma_next in steps(sigmas):
        x, sigma_hat = churn(x, sigma, len(sigmas) - 1, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        report_step(callback, x, i, sigma, sigma_next, denoised, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if correction is None or sigma_next == 0:
            x = euler_step(x, d, sigma_hat, sigma_next)
        else:
            x = correction(model, x, d, sigma_hat, sigma_next)
    return x


@register("euler")
def euler(model, x, sigmas, *, callback, noise_sampler, s_churn: NonNegative = 0.0, s_tmin: NonNegative = 0.0,
          s_tmax: float = math.inf, s_noise: NonNegative = 1.0):
    """Euler = DDIM(eta=0) = SGD with lr = sigma - sigma_next (Karras et al. 2022, Alg. 2 without the 2nd order)."""
    return _churned_loop(model, x, sigmas, callback, noise_sampler, s_churn, s_tmin, s_tmax, s_noise, None)


@register("heun")
def heun(model, x, sigmas, *, callback, noise_sampler, s_churn: NonNegative = 0.0, s_tmin: NonNegative = 0.0,
         s_tmax: float = math.inf, s_noise: NonNegative = 1.0):
    """Heun's 2nd-order method with EDM churn (Karras et al. 2022, Alg. 2; k-diffusion ``sample_heun``).

    Euler on the last step (sigma_next = 0), as Alg. 2 line 8 and diffusers' HeunDiscreteScheduler.
    """
    return _churned_loop(model, x, sigmas, callback, noise_sampler, s_churn, s_tmin, s_tmax, s_noise, heun_correction)


@register("dpm_2")
def dpm_2(model, x, sigmas, *, callback, noise_sampler, s_churn: NonNegative = 0.0, s_tmin: NonNegative = 0.0,
          s_tmax: float = math.inf, s_noise: NonNegative = 1.0):
    """Midpoint method, midpoint in log sigma, with EDM churn (k-diffusion ``sample_dpm_2``); Euler on the last step."""
    return _churned_loop(model, x, sigmas, callback, noise_sampler, s_churn, s_tmin, s_tmax, s_noise,
                         midpoint_correction)


# ----------------------------------------------------------------------------------------------
# Ancestral samplers: a deterministic move to sigma_down, then fresh noise of std sigma_up.


def _ancestral_loop(model, x, sigmas, callback, noise_sampler, eta, s_noise, correction: Correction | None):
    """Step to sigma_down with Euler (or ``correction``), add s_noise * sigma_up * z (k-diffusion
    ``sample_euler_ancestral`` / ``sample_dpm_2_ancestral``). Plain Euler when sigma_down == 0."""
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if correction is None or sigma_down == 0:
            x = euler_step(x, d, sigma, sigma_down)
        else:
            x = correction(model, x, d, sigma, sigma_down)
        x = add_noise(x, noise_sampler, sigma, sigma_next, sigma_up, s_noise)
    return x


@register("euler_ancestral", stochastic=True)
def euler_ancestral(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0):
    """Euler step to sigma_down, then fresh noise of std sigma_up (k-diffusion ``sample_euler_ancestral``)."""
    return _ancestral_loop(model, x, sigmas, callback, noise_sampler, eta, s_noise, None)


@register("dpm_2_ancestral", stochastic=True)
def dpm_2_ancestral(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0):
    """Log-sigma midpoint step to sigma_down, then noise of std sigma_up (k-diffusion ``sample_dpm_2_ancestral``)."""
    return _ancestral_loop(model, x, sigmas, callback, noise_sampler, eta, s_noise, midpoint_correction)


@register("ddim", stochastic=True)
def ddim(model, x, sigmas, *, callback, noise_sampler, eta: UnitInterval = 0.0):
    """DDIM (Song et al. 2021, eq. 12) in VE coordinates: exactly the ancestral Euler step with the same eta.

    Derivation. With x = x_t / sqrt(abar_t), sigma^2 = (1 - abar_t) / abar_t, eps_hat = d and x0_hat = denoised,
    eq. 12 divided by sqrt(abar_prev) reads x_prev = denoised + sqrt(sigma_next^2 - sigma_up^2) d + sigma_up z, where
    sigma_up = sigma_t(eta) / sqrt(abar_prev). Inserting eq. 16, sigma_t(eta)^2 = eta^2 (1 - abar_prev) / (1 - abar_t)
    (1 - abar_t / abar_prev), and abar = 1 / (1 + sigma^2) gives sigma_up^2 = eta^2 sigma_next^2 (sigma^2 -
    sigma_next^2) / sigma^2: k-diffusion's ``get_ancestral_step``. Since denoised = x - sigma d, the step is
    x + (sigma_down - sigma) d + sigma_up z with sigma_down = sqrt(sigma_next^2 - sigma_up^2). eta = 0 is Euler.
    """
    return _ancestral_loop(model, x, sigmas, callback, noise_sampler, eta, 1.0, None)


@register("ddpm", stochastic=True)
def ddpm(model, x, sigmas, *, callback, noise_sampler):
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7): the posterior q(x_prev | x_t, x0_hat) = DDIM with eta = 1.

    The mean of eq. 7 equals DDIM eq. 12's deterministic part at eta = 1 and its variance beta_tilde_t =
    (1 - abar_prev) / (1 - abar_t) beta_t equals sigma_t(1)^2 of eq. 16 (Song et al. 2021, remark after eq. 16).
    This is diffusers' ``DDPMScheduler(variance_type="fixed_small")`` (the posterior variance), not
    ``"fixed_large"`` (variance beta_t).
    """
    return _ancestral_loop(model, x, sigmas, callback, noise_sampler, 1.0, 1.0, None)


# ----------------------------------------------------------------------------------------------
# Linear multistep.


@register("lms")
def lms(model, x, sigmas, *, callback, noise_sampler, order: Annotated[int, Range(1, 8)] = 4):
    """Linear multistep (Adams-Bashforth in sigma) of order ``min(i + 1, order)`` (k-diffusion ``sample_lms``);
    the variable-step weights are :func:`optsample.samplers.adams.lms_coefficients`."""
    ds, sigma_history = [], []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        ds.insert(0, to_d(x, sigma, denoised))  # newest first, matching the nodes of lms_coefficients
        sigma_history.insert(0, sigma)
        del ds[order:], sigma_history[order:]
        coeffs = lms_coefficients(sigma_history, sigma_next)
        x = x + combine(coeffs, ds)
    return x
