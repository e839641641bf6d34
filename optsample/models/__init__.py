"""Denoisers in the convention ``D(x, sigma, **extra)``: analytic models with exact answers and wrappers."""

from .empirical import EmpiricalDenoiser
from .gmm import GaussianMixture
from .precond import ContinuousVPDenoiser, EDMPrecond
from .wrappers import (
    DenoiserAsDiscreteEps, DiscreteEpsDDPMDenoiser, DiscreteSchedule, DiscreteVDDPMDenoiser, DiscreteVPDenoiser,
)

__all__ = [
    "ContinuousVPDenoiser", "DenoiserAsDiscreteEps", "DiscreteEpsDDPMDenoiser", "DiscreteSchedule",
    "DiscreteVDDPMDenoiser", "DiscreteVPDenoiser", "EDMPrecond", "EmpiricalDenoiser", "GaussianMixture",
]
