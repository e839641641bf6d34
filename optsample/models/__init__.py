"""Denoisers in the convention ``D(x, sigma, **extra)``: analytic models with exact answers and wrappers."""

from .gmm import GaussianMixture
from .wrappers import (
    DenoiserAsDiscreteEps, DiscreteEpsDDPMDenoiser, DiscreteSchedule, DiscreteVDDPMDenoiser, DiscreteVPDenoiser,
)

__all__ = [
    "DenoiserAsDiscreteEps", "DiscreteEpsDDPMDenoiser", "DiscreteSchedule", "DiscreteVDDPMDenoiser",
    "DiscreteVPDenoiser", "GaussianMixture",
]
