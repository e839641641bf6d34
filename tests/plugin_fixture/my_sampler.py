"""A user's sampler module, registered from outside optsample (the README's "Add your own sampler")."""

from typing import Annotated

from optsample.samplers import Range, register
from optsample.samplers.core import euler_step, steps, to_d


@register("damped_euler")
def damped_euler(model, x, sigmas, *, callback, noise_sampler, damping: Annotated[float, Range(0, 1)] = 0.5):
    """Euler steps on the ODE direction shrunk by (1 - damping) until the last step (a test fixture)."""
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "sigma_next": sigma_next, "denoised": denoised})
        scale = 1.0 if sigma_next == 0 else 1.0 - damping
        x = euler_step(x, scale * to_d(x, sigma, denoised), sigma, sigma_next)
    return x
