"""Shared set-up for the parity tests: one analytic model seen by optsample and by diffusers."""

from __future__ import annotations

import torch

from optsample.models import DenoiserAsDiscreteEps, DiscreteVPDenoiser, GaussianMixture

# Stable Diffusion's discrete VP schedule (scaled_linear, 1000 steps) is the common case in practice.
SCHEDULER_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def vp_models(alphas_cumprod, dim: int = 8, seed: int = 1):
    """(eps_net for diffusers, denoiser for optsample) built on the same 8-D Gaussian mixture."""
    gmm = GaussianMixture.random(dim=dim, components=3, seed=seed, spread=1.0)
    eps_net = DenoiserAsDiscreteEps(gmm, alphas_cumprod)
    return eps_net, DiscreteVPDenoiser(eps_net, alphas_cumprod)


class CountingEps:
    """The eps network handed to diffusers, counting its evaluations."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x_t, t):
        self.calls += 1
        return self.net(x_t, t)


def run_diffusers(scheduler, eps_net, x_start: torch.Tensor, generator: torch.Generator | None = None, **step_kwargs):
    """The standard diffusers denoising loop; ``x_start`` is unit-variance noise (scaled by init_noise_sigma)."""
    x = x_start * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = eps_net(model_input, t)
        kwargs = dict(step_kwargs)
        if generator is not None:
            kwargs["generator"] = generator
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x
