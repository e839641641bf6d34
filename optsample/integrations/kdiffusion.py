"""optsample samplers in k-diffusion's calling convention, the one ComfyUI's ``KSAMPLER`` and AUTOMATIC1111's
sampler list call (crowsonkb/k-diffusion, k_diffusion/sampling.py, e.g. ``sample_euler_ancestral``):

    fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **overrides)

``model(x, sigma_tensor[batch], **extra_args)`` returns the denoised x; ``callback`` gets k-diffusion's
``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step; ``disable`` turns the progress bar off
(``None``: tqdm's rule, on when stderr is a terminal); ``noise_sampler(sigma, sigma_next)`` gives the step
noise, by default ``torch.randn_like(x)`` like k-diffusion's ``default_noise_sampler``, so a global
``torch.manual_seed`` gives k-diffusion's numbers.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from .. import samplers

CALLBACK_KEYS = ("x", "i", "sigma", "sigma_hat", "denoised")


def default_noise_sampler(x: torch.Tensor) -> Callable:
    """k-diffusion's ``default_noise_sampler`` (k_diffusion/sampling.py): fresh ``torch.randn_like(x)`` per call."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _kdiffusion_callback(callback: Callable, sigmas: torch.Tensor) -> Callable:
    """optsample's step info -> k-diffusion's five keys, the sigmas as 0-d tensors as k-diffusion passes them."""

    def report(info: dict) -> None:
        as_tensor = lambda s: torch.as_tensor(s, dtype=sigmas.dtype, device=sigmas.device)  # noqa: E731
        callback({"x": info["x"], "i": info["i"], "sigma": as_tensor(info["sigma"]),
                  "sigma_hat": as_tensor(info["sigma_hat"]), "denoised": info["denoised"]})

    return report


def as_k_diffusion(name: str, **hparams) -> Callable:
    """Sampler ``name`` (``optsample.available()``) with hyper-parameters ``hparams`` as a k-diffusion sampler
    function; ``**overrides`` at call time replace hyper-parameters. Bad names and values fail here, at once."""
    spec = samplers.get(name)
    spec.make_params(**hparams)

    def sample_fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **overrides):
        sigmas = torch.as_tensor(sigmas)
        progress = not disable if disable is not None else sys.stderr.isatty()
        return samplers.sample(
            spec.name, model, x, sigmas, extra_args=extra_args,
            callback=None if callback is None else _kdiffusion_callback(callback, sigmas),
            noise_sampler=noise_sampler if noise_sampler is not None else default_noise_sampler(x),
            progress=progress, **{**hparams, **overrides},
        )

    sample_fn.__name__ = f"sample_{spec.name}"
    sample_fn.__qualname__ = sample_fn.__name__
    sample_fn.__doc__ = f"optsample sampler {spec.name!r} ({', '.join(f'{k}={v!r}' for k, v in hparams.items()) or 'defaults'}) in k-diffusion's calling convention."
    return sample_fn


__all__ = ["CALLBACK_KEYS", "as_k_diffusion", "default_noise_sampler"]
