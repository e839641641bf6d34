"""DPS and AdamDPS exactly as their papers' code runs them: the ancestral VP loop with the guidance step
after it, in VP coordinates x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, for reproducing published tables.

Both take the peers' model convention, an eps network ``eps_model(x_t, t)`` with integer timesteps
``t`` (a denoiser D in our convention becomes one with
:class:`~optsample.models.DenoiserAsDiscreteEps`), the training ``alphas_cumprod`` table and the
timesteps to visit (descending). Differences from the peers' code, on purpose: noise comes from a
per-sample ``noise_sampler`` (sample k is the same whatever the batch size), DPS's residual norm is per
sample (DPS2022 takes one norm over the batch; its scripts run batch size 1, where the two agree), and
everything runs in the dtype of ``x`` (DPS2022 casts its schedule to float32).

How the post-step form relates to the guided denoiser ``D_y = D + sigma^2 lr_t direction`` (EDM
coordinates x = x_t / sqrt(abar_t), sigma^2 = (1 - abar_t) / abar_t): an ancestral step is linear in D,
x_next = D + (sigma_down / sigma) (x - D) + sigma_up z, so a shift delta of x_next after the step equals a
shift delta sigma / (sigma - sigma_down) of D before it; a VP-coordinate shift is multiplied by
sqrt(1 + sigma_next^2), and a VP gradient is sqrt(1 + sigma^2) times the EDM one. So DPS is
``guided(..., rule="sgd", lr=scale, lr_schedule="dps", sigmas=..., eta=1)`` under ``euler_ancestral``, and
AdamDPS is ``guided(..., rule="adam", lr=scale, lr_schedule="adam_dps", sigmas=..., eta=eta)`` under
``ddim`` / ``euler_ancestral`` (Adam's moments see the VP gradient, whose scale changes with sigma, so the
schedule feeds the rule sqrt(1 + sigma^2) g); both tested to 1e-10 without clipping. Clipping x0_hat for the
step (their clip_denoised / clip_sample_range) is not a shift of D and exists only in these loops.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..samplers.core import SeededNoise
from ..samplers.transforms import StepInfo
from .objectives import Loss
from .rules import make_rule


def _noise(x: torch.Tensor, noise_sampler, seeds):
    if noise_sampler is not None:
        return noise_sampler
    if seeds is None:
        return lambda sigma=None, sigma_next=None: torch.randn_like(x)
    return SeededNoise(x, seeds)


def _check(objective, timesteps, alphas_cumprod, x):
    if not isinstance(objective, Loss) or objective.through != "denoiser":
        raise TypeError("the published loops need a Loss objective with through='denoiser' (their gradient is through the network)")
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    timesteps = [int(t) for t in timesteps]
    if any(b >= a for a, b in zip(timesteps, timesteps[1:])) or min(timesteps) < 0 or max(timesteps) >= len(abar):
        raise ValueError(f"timesteps must be strictly decreasing integers in [0, {len(abar) - 1}], got {timesteps}")
    return abar.to(x.dtype), timesteps


def _x0_and_grad(eps_model, objective, x, t, abar_t, clip):
    """x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar), optionally clipped, and g = -grad_x L(x0_hat) through the net."""

    def predict_x0(x_in, _sigma):
        eps = eps_model(x_in, torch.full((x_in.shape[0],), t, dtype=torch.long, device=x_in.device))
        x0 = (x_in - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        return x0.clamp(-clip, clip) if clip else x0

    return objective.gradient(predict_x0, x, None)


def dps(eps_model: Callable, x: torch.Tensor, objective: Loss, alphas_cumprod, timesteps, *, scale: float,
        variance: str = "fixed_small", clip: float | None = None, noise_sampler=None, seeds=None) -> torch.Tensor:
    """DPS (Chung et al., ICLR 2023; DPS2022 ``gaussian_diffusion.py`` DDPM ``p_sample`` + ``condition_methods.py``
    ``PosteriorSampling``): per step, x0_hat, the DDPM posterior mean coef1 x0_hat + coef2 x_t (Ho et al. 2020,
    eq. 7) plus noise of variance ``fixed_small`` (beta_tilde) or ``fixed_large`` (beta, first beta_tilde), then
    x_{t-1} -= scale * grad_{x_t} L(x0_hat). Respaced betas 1 - abar_t / abar_prev over ``timesteps`` (their
    ``SpacedDiffusion``). ``clip``: clamp x0_hat to [-clip, clip] (their clip_denoised; 1 for images)."""
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
    abar_table, timesteps = _check(objective, timesteps, alphas_cumprod, x)
    noise = _noise(x, noise_sampler, seeds)
    abar = abar_table[list(reversed(timesteps))]  # ascending t, as SpacedDiffusion
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    betas = 1 - abar / abar_prev
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    step_variance = posterior_variance if variance == "fixed_small" else torch.cat([posterior_variance[1:2], betas[1:]])
    for i in reversed(range(len(timesteps))):
        x0_hat, g, _ = _x0_and_grad(eps_model, objective, x, timesteps[len(timesteps) - 1 - i], abar[i], clip)
        coef1 = betas[i] * abar_prev[i].sqrt() / (1 - abar[i])
        coef2 = (1 - abar_prev[i]) * (1 - betas[i]).sqrt() / (1 - abar[i])
        x_prev = coef1 * x0_hat + coef2 * x
        if i != 0:
            x_prev = x_prev + step_variance[i].sqrt() * noise(None, None)
        x = x_prev + scale * g
    return x


def adam_dps(eps_model: Callable, x: torch.Tensor, objective: Loss, alphas_cumprod, timesteps, *, scale: float,
             beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, eta: float = 1.0, clip: float | None = None,
             final_alpha_cumprod: float = 1.0, noise_sampler=None, seeds=None) -> torch.Tensor:
    """AdamDPS (Belardi et al., ICLR 2026; christianbelardi/adam-guidance ``methods/adam_dps.py`` in
    ``diffusion/ddim.py``'s loop): per step, g = -grad_{x_t} L(x0_hat) with L = ||y - A x0_hat|| per sample,
    Adam's bias-corrected moments m_hat / (sqrt(v_hat) + eps) (state reset per run), the DDIM eta step (Song et
    al. 2021, eq. 12) from the clipped x0_hat, then x_{t-1} += scale * adam(g) / sqrt(abar_t / abar_prev).
    ``final_alpha_cumprod``: abar after the last timestep (diffusers' DDIMScheduler, 1 with set_alpha_to_one)."""
    abar_table, timesteps = _check(objective, timesteps, alphas_cumprod, x)
    noise = _noise(x, noise_sampler, seeds)
    abar = abar_table[timesteps]
    abar_prev = torch.cat([abar[1:], abar.new_full((1,), final_alpha_cumprod)])
    rule = make_rule("adam", beta1=beta1, beta2=beta2, eps=eps)
    state = rule.init(x)
    for i, t in enumerate(timesteps):
        x0_hat, g, loss = _x0_and_grad(eps_model, objective, x, t, abar[i], None)
        direction, state = rule.update(g, state, StepInfo(i, i, len(timesteps), 0.0, 0.0, x, x0_hat, g, loss))
        if clip:
            x0_hat = x0_hat.clamp(-clip, clip)
        new_eps = (x - abar[i].sqrt() * x0_hat) / (1 - abar[i]).sqrt()
        sigma = eta * ((1 - abar_prev[i]) / (1 - abar[i]) * (1 - abar[i] / abar_prev[i])).sqrt()
        x_prev = abar_prev[i].sqrt() * x0_hat + (1 - abar_prev[i] - sigma**2).sqrt() * new_eps
        if eta > 0 and t > 0:
            x_prev = x_prev + sigma * noise(None, None)
        x = x_prev + scale * direction / (abar[i] / abar_prev[i]).sqrt()
    return x
