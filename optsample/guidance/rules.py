"""Update rules on the guidance gradient g: the same optax-style transforms as the samplers' update rules.

Each rule is a factory of keyword-only, typed hyper-parameters returning a
:class:`~optsample.samplers.transforms.Rule` (one source: :mod:`optsample.samplers.transforms`); the
registry derives the validating dataclass from the signature, as the sampler registry does. The rule
sees ``g`` (ascent direction of log p(y | x), i.e. minus the loss gradient) and a
:class:`~optsample.samplers.transforms.StepInfo` whose ``grad`` is g and ``loss`` the per-sample loss.
Every reduction is per sample and every moment element-wise, so guided sample k never depends on the
rest of the batch.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Callable

from ..samplers import transforms as T
from ..samplers.registry import Choice, Decay, NonNegative, params_dataclass

_RULES: dict[str, tuple[Callable, type]] = {}


def register_guidance_rule(name: str):
    """Register ``make_rule(**hparams) -> Rule`` as guidance rule ``name``."""

    def wrap(make_rule):
        if name in _RULES:
            raise ValueError(f"guidance rule {name!r} is already registered")
        _RULES[name] = (make_rule, params_dataclass(f"guidance_{name}", make_rule))
        return make_rule

    return wrap


def available_rules() -> list[str]:
    """Names of the registered guidance rules, sorted."""
    return sorted(_RULES)


def rule_hparam_names(name: str) -> list[str]:
    """The hyper-parameter names of guidance rule ``name`` ([] for an unknown name: make_rule reports it)."""
    return list(_RULES[name][1].__dataclass_fields__) if name in _RULES else []


def make_rule(name: str, **hparams) -> T.Rule:
    """The rule ``name`` with validated hyper-parameters (unknown names and values raise before any step)."""
    if name not in _RULES:
        close = difflib.get_close_matches(name, _RULES, n=3, cutoff=0.5)
        hint = f"did you mean {close}? " if close else ""
        raise ValueError(f"unknown guidance rule {name!r}; {hint}available: {available_rules()}")
    factory, params = _RULES[name]
    known = [f for f in params.__dataclass_fields__]
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(f"guidance rule {name!r} has no hyper-parameter(s) {unknown}; it takes {known}")
    return factory(**vars(params(**hparams)))


@register_guidance_rule("sgd")
def sgd():
    """direction = g: gradient ascent on log p(y | x) (DPS, Chung et al. 2023; UGD forward guidance, Bansal et al. 2023)."""
    return T.identity()


@register_guidance_rule("momentum")
def momentum(*, beta: Decay = 0.9):
    """Heavy ball on g: vel = beta vel + (1 - beta) g, vel_0 = g (transforms.heavy_ball). beta 0: sgd."""
    return T.heavy_ball(beta)


@register_guidance_rule("nesterov")
def nesterov(*, beta: Decay = 0.9):
    """Nesterov momentum on g without a second evaluation (optax ``trace(nesterov=True)``, EMA form). beta 0: sgd."""
    return T.nesterov_trace(beta)


@register_guidance_rule("adam")
def adam(*, beta1: Decay = 0.9, beta2: Decay = 0.999, eps: NonNegative = 1e-8):
    """Adam on g, bias-corrected, element-wise per sample: m_hat / (sqrt(v_hat) + eps) (Kingma & Ba 2015, Alg. 1;
    AdamDPS / AdamCG, Belardi et al. 2026, christianbelardi/adam-guidance ``methods/adam_dps.py``)."""
    return T.scale_by_adam(beta1, beta2, eps, normalize=True)


@register_guidance_rule("rmsprop")
def rmsprop(*, beta2: Decay = 0.99, eps: NonNegative = 1e-8):
    """RMSprop on g with bias correction = Adam with beta1 = 0 (Tieleman & Hinton 2012)."""
    return T.scale_by_adam(0.0, beta2, eps, normalize=True)


@register_guidance_rule("sign")
def sign():
    """sign(g) element-wise (signSGD, Bernstein et al. 2018) = Lion with beta1 = beta2 = 0."""
    return T.scale_by_lion(0.0, 0.0)


@register_guidance_rule("lion")
def lion(*, beta1: Decay = 0.9, beta2: Decay = 0.99):
    """Lion on g: sign(beta1 m + (1 - beta1) g), m = beta2 m + (1 - beta2) g (Chen et al. 2023, Alg. 2)."""
    return T.scale_by_lion(beta1, beta2)


@register_guidance_rule("normalised")
def normalised(*, by: Annotated[str, Choice("loss", "sqrt_loss", "rms")] = "loss"):
    """g divided by a per-sample scale: ``loss`` |L| (AdamDPS's DPS baseline on L = ||y - A x0_hat||),
    ``sqrt_loss`` sqrt|L| (DPS's zeta' / ||y - A x0_hat|| on L = ||y - A x0_hat||^2, Chung et al. 2023, Alg. 1),
    ``rms`` the RMS of g (unit-RMS step, FreeDoM's gradient-norm rule, Yu et al. 2023)."""
    if by == "rms":
        return T.rescaled("unit")
    return T.scale_by_loss(1.0 if by == "loss" else 0.5)
