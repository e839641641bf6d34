"""Stochastic single-step DPM-Solver++ samplers (k-diffusion names): ``dpmpp_2s_ancestral``, ``dpmpp_sde``.

Both take two model evaluations per step: one at ``sigma`` and one at an intermediate noise level
``sigma_mid`` placed geometrically between ``sigma`` and the step's target (i.e. at a fraction ``r`` of the
step in lambda = -log sigma, the half log-SNR of the VE convention). Their building block is the first-order
DPM-Solver++ update in data prediction, which in VE form is DDIM and Euler at once (see ``_dpmpp_1``).

In optimization terms: ``denoised`` is the point a gradient step would jump to, the first-order update
interpolates between the iterate and that point, and the second evaluation is an extrapolated
(midpoint) gradient, as in an extragradient method; the ancestral noise is Langevin noise.
"""

from __future__ import annotations

from typing import Annotated

import torch

from .core import add_noise, ancestral_step, euler_step, exp, log, report_step, sqrt, steps, to_d
from .registry import NonNegative, Range, register


def _dpmpp_1(x: torch.Tensor, sigma: float, sigma_to: float, denoised: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(1): x_to = (sigma_to / sigma) x - (e^{-h} - 1) denoised, h = log(sigma / sigma_to).

    Lu et al. 2022 ("DPM-Solver++", the first-order update, = DDIM; alpha = 1 here, so e^{-h} = sigma_to / sigma);
    k-diffusion writes it ``(sigma_fn(s) / sigma_fn(t)) * x - (-h).expm1() * denoised``. Valid for sigma_to = 0.
    """
    ratio = sigma_to / sigma
    return ratio * x + (1.0 - ratio) * denoised


def _sigma_between(sigma: float, sigma_to: float, r: float) -> float:
    """The noise level a fraction r of the way from sigma to sigma_to in lambda = -log sigma.

    s = t + r h with t = -log sigma, h = log(sigma / sigma_to) (k-diffusion ``sample_dpmpp_2s_ancestral`` /
    ``sample_dpmpp_sde``: ``sigma_fn(t + r * h)``); r = 1/2 gives the geometric mean.
    """
    return exp(log(sigma) + r * (log(sigma_to) - log(sigma)))


def _brownian_increments(noise_sampler, sigma: float, sigma_mid: float, sigma_next: float):
    """Standardised increments of one Brownian path W(sigma) over [sigma_mid, sigma] and [sigma_next, sigma].

    W(sigma) - W(sigma_next) = (W(sigma) - W(sigma_mid)) + (W(sigma_mid) - W(sigma_next)), two independent
    pieces of variance sigma - sigma_mid and sigma_mid - sigma_next; each result is N(0, I), as k-diffusion's
    ``BrownianTreeNoiseSampler(sigma, sigma_next)`` returns (its default identity transform: time = sigma).
    """
    first = noise_sampler(sigma, sigma_mid)
    second = noise_sampler(sigma_mid, sigma_next)
    whole = (sqrt(sigma - sigma_mid) * first + sqrt(sigma_mid - sigma_next) * second) / sqrt(sigma - sigma_next)
    return first, whole


@register("dpmpp_2s_ancestral", stochastic=True, revision=2)  # 2: core's fused Euler last step (1 ulp)
def dpmpp_2s_ancestral(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0,
                       s_noise: NonNegative = 1.0):
    """DPM-Solver++(2S) to sigma_down, then fresh noise of std sigma_up (k-diffusion ``sample_dpmpp_2s_ancestral``).

    Lu et al. 2022 ("DPM-Solver++", Alg. 1, singlestep order 2 with r = 1/2) on the deterministic part of an
    ancestral step (``ancestral_step``); a step whose sigma_down is 0 (the last one) is a plain Euler step.
    """
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = euler_step(x, to_d(x, sigma, denoised), sigma, sigma_down)
        else:
            sigma_mid = _sigma_between(sigma, sigma_down, 0.5)
            denoised_mid = model(_dpmpp_1(x, sigma, sigma_mid, denoised), sigma_mid)
            x = _dpmpp_1(x, sigma, sigma_down, denoised_mid)
        x = add_noise(x, noise_sampler, sigma, sigma_next, sigma_up, s_noise)
    return x


@register("dpmpp_sde", stochastic=True, revision=2)  # 2: core's fused Euler last step (1 ulp)
def dpmpp_sde(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0,
              r: Annotated[float, Range(0.0, 1.0, low_open=True, high_open=True)] = 0.5):
    """DPM-Solver++ SDE, a stochastic 2-stage step (k-diffusion ``sample_dpmpp_sde``; "DPM++ SDE" in A1111).

    Stage 1: an ancestral DPM-Solver++(1) step from sigma to sigma_mid (a fraction r of the step in
    lambda); stage 2: from sigma to sigma_next with an ancestral step whose data prediction mixes the two
    evaluations, (1 - 1/(2r)) denoised + 1/(2r) denoised_mid (the 1/(2r) weighting of DPM-Solver-2,
    Lu et al. 2022a, in DPM-Solver++'s data prediction). The last step (sigma_next = 0) is a plain Euler step.

    Noise: k-diffusion draws both stages' noise from one Brownian path W(sigma) (its default
    ``BrownianTreeNoiseSampler``): stage 1 uses the increment over [sigma_mid, sigma], stage 2 the one over
    [sigma_next, sigma], which contains it. We draw independent standard normals for the two disjoint
    intervals [sigma_mid, sigma] and [sigma_next, sigma_mid] (independent increments: a valid Brownian
    path) and sum them into the stage-2 increment (``_brownian_increments``). Drawing the two stages'
    noise independently instead is not equivalent: on the 2-D mixture of tests/test_stochastic.py the
    log-likelihood bias then stays at 0.21 / 0.13 nats at 30 / 60 steps against 0.01 with the Brownian
    increments (the same samples as a Brownian tree gives, up to rounding, tests/test_kdiffusion_parity.py).
    """
    weight_mid = 1 / (2 * r)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = euler_step(x, to_d(x, sigma, denoised), sigma, sigma_next)
            continue
        sigma_mid = _sigma_between(sigma, sigma_next, r)
        noise_mid, noise_next = _brownian_increments(noise_sampler, sigma, sigma_mid, sigma_next) if eta else (0, 0)
        # Stage 1: ancestral DPM-Solver++(1) step sigma -> sigma_mid.
        sigma_down, sigma_up = ancestral_step(sigma, sigma_mid, eta)
        x_mid = _dpmpp_1(x, sigma, sigma_down, denoised) + noise_mid * (s_noise * sigma_up)
        denoised_mid = model(x_mid, sigma_mid)
        # Stage 2: ancestral step sigma -> sigma_next with the second-order data prediction.
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        denoised_2nd = (1 - weight_mid) * denoised + weight_mid * denoised_mid
        x = _dpmpp_1(x, sigma, sigma_down, denoised_2nd) + noise_next * (s_noise * sigma_up)
    return x
