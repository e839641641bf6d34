"""Samplers: pure functions over a sigma array, registered by name with typed hyper-parameters."""

from . import classic, multistep, restart, rules, singlestep, transforms  # noqa: F401  (importing registers the samplers)
from .core import (
    BudgetError, Denoiser, NonFiniteError, SampleInfo, SeededNoise, add_noise, ancestral_step, churn, initial_noise, measure_nfe, sample,
    steps, steps_for_nfe, to_d,
)
from .registry import Choice, Range, UnknownSamplerError, available, get, register

__all__ = [
    "BudgetError", "Choice", "Denoiser", "NonFiniteError", "Range", "SampleInfo", "SeededNoise", "UnknownSamplerError",
    "add_noise", "ancestral_step", "available", "churn", "get", "initial_noise", "measure_nfe", "register", "sample", "steps",
    "steps_for_nfe", "to_d",
]
