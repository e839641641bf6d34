"""Denoisers in the convention ``D(x, sigma, **extra)``: analytic models with exact answers and wrappers;
and the model registry behind the runner's ``model=<name>`` options (registry.py)."""

from .empirical import EmpiricalDenoiser
from .gmm import GaussianMixture
from .precond import ContinuousVPDenoiser, EDMPrecond
from .registry import BuiltModel, ModelConfig, register_model
from .wrappers import (
    DenoiserAsDiscreteEps, DiscreteEpsDDPMDenoiser, DiscreteSchedule, DiscreteVDDPMDenoiser, DiscreteVPDenoiser,
)

__all__ = [
    "BuiltModel", "ModelConfig", "register_model",
    "ContinuousVPDenoiser", "DenoiserAsDiscreteEps", "DiscreteEpsDDPMDenoiser", "DiscreteSchedule",
    "DiscreteVDDPMDenoiser", "DiscreteVPDenoiser", "EDMPrecond", "EmpiricalDenoiser", "GaussianMixture",
]
