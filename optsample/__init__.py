"""optsample: diffusion sampling as optimization.

``d = (x - D(x, sigma)) / sigma`` is a gradient and the sigma schedule is a learning-rate schedule;
classic samplers and optimizer-inspired update rules run side by side on the same models.
"""

from .integrations.kdiffusion import as_k_diffusion
from .samplers import available, get, initial_noise, sample
from . import learned_schedules as _learned_schedules  # noqa: E402,F401  (registers schedule "learned")

__version__ = "0.1.0"
__all__ = ["as_k_diffusion", "available", "get", "initial_noise", "sample", "__version__"]
