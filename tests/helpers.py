"""Shared set-up for the parity tests: one analytic model seen by optsample and by diffusers."""

from __future__ import annotations

import sys

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


# k-diffusion's Brownian-tree noise (crowsonkb/k-diffusion, k_diffusion/sampling.py), transcribed literally:
# the standardised increment (W(t1) - W(t0)) / sqrt|t1 - t0| of one fixed Brownian path per seed.

import torchsde  # noqa: E402


class BatchedBrownianTree:
    """A wrapper around torchsde.BrownianTree that enables batches of entropy."""

    def __init__(self, x, t0, t1, seed=None, **kwargs):
        t0, t1, self.sign = self.sort(t0, t1)
        w0 = kwargs.get('w0', torch.zeros_like(x))
        if seed is None:
            seed = torch.randint(0, 2 ** 63 - 1, []).item()
        self.batched = True
        try:
            assert len(seed) == x.shape[0]
            w0 = w0[0]
        except TypeError:
            seed = [seed]
            self.batched = False
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s, **kwargs) for s in seed]

    @staticmethod
    def sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1):
        t0, t1, sign = self.sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """A noise sampler backed by a torchsde.BrownianTree (k-diffusion; no ``independent_calls``: a path sampler)."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        self.transform = transform
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def cli(*args) -> int:
    """optsample-run in this process; returns the exit code (0 when main returns)."""
    from optsample.runner import app

    old, sys.argv = sys.argv, ["optsample-run", *args]
    try:
        app.main()
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = old
