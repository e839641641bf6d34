"""Guidance as optimization: a loss of the denoised estimate (or an exact likelihood score), its gradient
g, and an update rule on g from the samplers' own transforms, packaged as a guided denoiser
``D_y = D + sigma^2 * lr_t * rule(g)`` so every sampler runs guided unchanged (:mod:`.guided`,
:mod:`.objectives`, :mod:`.rules`); DPS and AdamDPS exactly as published (:mod:`.published`); the exact
Gaussian-mixture inverse problem (:mod:`.gmm_inverse`).
"""

from .gmm_inverse import GMMInverse
from .guided import LR_SCHEDULES, GuidedDenoiser, guided
from .objectives import ClassifierLoss, DecodedLoss, LikelihoodScore, Loss, MeasurementLoss
from .rules import available_rules, make_rule, register_guidance_rule

__all__ = [
    "ClassifierLoss", "DecodedLoss", "GMMInverse", "GuidedDenoiser", "LR_SCHEDULES", "LikelihoodScore", "Loss",
    "MeasurementLoss", "available_rules", "guided", "make_rule", "register_guidance_rule",
]
