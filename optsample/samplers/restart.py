"""Restart sampling (Xu et al., "Restart Sampling for Improving Generative Processes", NeurIPS 2023, Alg. 1).

Heun ODE steps along the given sigmas; when the walk reaches ``restart_t_min`` it jumps back up to
``restart_t_max`` with forward noise of std sqrt(t_max^2 - t_min^2) and runs ``restart_steps`` Heun
steps back down, ``restart_k`` times, then carries on along the sigmas. In optimization terms this is
SGDR (warm restarts): the learning rate (= noise level) is reset upwards and annealed again, and the
injected noise contracts the errors accumulated so far (the paper's analysis of Restart).

Peers: Newbeeer/diffusion_restart_sampling (EDM ``restart_sampler``), AUTOMATIC1111/ComfyUI
``restart_sampler`` (``{t_min: [steps + 1, K, t_max]}`` restart lists). Here the interval is given by plain
scalars so a Hydra sweep can vary each one.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import torch

from .classic import heun_correction
from .core import euler_step, report_step, sqrt, steps, to_d
from .registry import Positive, Range, register

RESTART_RHO = 7.0  # the inner grid is EDM's (Karras et al. 2022, eq. 5), as in the paper's experiments


def heun_step(model, x: torch.Tensor, sigma: float, sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Heun step sigma -> sigma_next, Euler when sigma_next = 0 (Karras et al. 2022, Alg. 1); returns (x_next, denoised).

    Built from ``classic.heun_correction``, the correction ``heun`` itself uses, so restart_k = 0 is
    ``heun`` bit for bit.
    """
    denoised = model(x, sigma)
    d = to_d(x, sigma, denoised)
    if sigma_next == 0:
        return euler_step(x, d, sigma, sigma_next), denoised
    return heun_correction(model, x, d, sigma, sigma_next), denoised


def karras_grid(n_steps: int, sigma_min: float, sigma_max: float, rho: float = RESTART_RHO) -> list[float]:
    """n_steps + 1 sigmas from sigma_max down to sigma_min, (max^(1/rho) + i/n (min^(1/rho) - max^(1/rho)))^rho.

    Karras et al. 2022, eq. 5 (no trailing zero); the end points are set exactly so that the restart
    pass lands on the grid sigma it left from.
    """
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    inner = [(hi + i / n_steps * (lo - hi)) ** rho for i in range(1, n_steps)]
    return [sigma_max, *inner, sigma_min]


def restart_index(sigmas: list[float], t_min: float, t_max: float) -> int | None:
    """Index j of the grid sigma where the restart happens: the interior sigma nearest to t_min below t_max.

    Interior means 0 < j < len - 1 and sigmas[j] > 0 (the walk must have taken a step and must go on).
    Snapping to the grid, as the AUTOMATIC1111/ComfyUI ports do, makes the restart pass end exactly where
    the main walk resumes. None when no grid sigma qualifies (e.g. a single-step schedule).
    """
    candidates = [j for j in range(1, len(sigmas) - 1) if 0 < sigmas[j] < t_max]
    if not candidates:
        return None
    return min(candidates, key=lambda j: abs(sigmas[j] - t_min))


def _check(params) -> None:
    if params.restart_t_max <= params.restart_t_min:
        raise ValueError(
            f"restart_t_max = {params.restart_t_max} must be above restart_t_min = {params.restart_t_min}"
        )


# Defaults: AUTOMATIC1111's restart list {0.1: [9 + 1, 1, 2]}: one pass of 9 Heun steps between 0.1 and 2.


@register("restart", stochastic=True, check=_check)
def restart(model, x, sigmas, *, callback, noise_sampler, restart_t_min: Positive = 0.1,
            restart_t_max: Positive = 2.0, restart_k: Annotated[int, Range(0)] = 1,
            restart_steps: Annotated[int, Range(1)] = 9, s_noise: Annotated[float, Range(0.0)] = 1.0):
    """Restart sampling: Heun down the sigmas, restart_k noisy jumps t_min -> t_max each followed by Heun back down.

    Xu et al. 2023, Alg. 1: x_{t_max} = x_{t_min} + s_noise sqrt(t_max^2 - t_min^2) eps, then an ODE pass of
    ``restart_steps`` Heun steps on an EDM (rho = 7) grid from t_max to t_min, repeated ``restart_k`` times.
    t_min is snapped to the grid (:func:`restart_index`); t_max is used as given. The callback is called once
    per step of ``sigmas`` (restart passes report nothing); each restart pass costs 2 * restart_steps NFE on
    top of Heun's. restart_k = 0 is ``heun`` (s_churn = 0) bit for bit.
    """
    sigma_list = sigmas.tolist()
    j = restart_index(sigma_list, restart_t_min, restart_t_max) if restart_k else None
    if restart_k and j is None:
        warnings.warn(f"restart: no interior sigma of {sigma_list} lies below restart_t_max = {restart_t_max}; "
                      "running plain Heun", stacklevel=3)
    for i, sigma, sigma_next in steps(sigmas):
        x_next, denoised = heun_step(model, x, sigma, sigma_next)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        x = x_next
        if i + 1 == j:
            x = _restart_passes(model, x, sigma_next, restart_t_max, restart_k, restart_steps, noise_sampler, s_noise)
    return x


def _restart_passes(model, x, t_min: float, t_max: float, k: int, n_steps: int, noise_sampler, s_noise: float):
    """restart_k times: forward jump t_min -> t_max, then Heun back to t_min (Xu et al. 2023, Alg. 1)."""
    jump_std = sqrt(t_max**2 - t_min**2) * s_noise
    grid = karras_grid(n_steps, t_min, t_max)
    for _ in range(k):
        x = x + noise_sampler(t_min, t_max) * jump_std
        for sigma, sigma_next in zip(grid[:-1], grid[1:]):
            x, _ = heun_step(model, x, sigma, sigma_next)
    return x
