"""Update rules as small composable transforms of the gradient ``d`` (optax style).

A :class:`Rule` is ``init(x) -> state`` and ``update(grad, state, info) -> (direction, state)``; the
shared loop in :mod:`optsample.samplers.rules` then steps ``x <- x + (sigma_next - sigma) * direction``
(DESIGN.md: Euler == SGD with lr = sigma - sigma_next). ``grad`` is ``d = (x - denoised) / sigma``
(Karras et al. 2022, eq. 3); ``info`` (:class:`StepInfo`) carries the step index, sigma, sigma_next,
the denoised estimate, x and the raw gradient. A rule may also say where the model is evaluated
(``evaluate_at``, for Nesterov's look-ahead). :func:`chain` composes rules left to right
(optax ``chain``, optax/_src/combine.py).

Every reduction (RMS) is per sample, over all non-batch dimensions, so sample k never depends on
the rest of the batch. States are tuples/tensors, never mutated in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from .core import log
from .adams import AB_COEFFICIENTS, combine, ghvb_combination


class StepInfo(NamedTuple):
    """What a rule may look at besides the gradient.

    ``i``: running step count (restarts included); ``index``: position in the sigma array;
    ``n_steps``: ``len(sigmas) - 1``; ``sigma``: the noise level stepped from (after churn);
    ``x``: the iterate stepped from; ``denoised``, ``grad``: the model's estimate and the raw d.
    ``loss``: per-sample loss values [B] when the gradient is a loss's (guidance), else None.
    """

    i: int
    index: int
    n_steps: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor
    grad: torch.Tensor
    loss: torch.Tensor | None = None


@dataclass(frozen=True)
class Rule:
    """An update rule: ``init(x) -> state``, ``update(grad, state, info) -> (direction, state)``.

    ``evaluate_at(x, state, sigma, sigma_next) -> (x_eval, sigma_eval)``, if given, picks the point
    where the model is evaluated for this step (default: ``(x, sigma)``).
    """

    init: Callable[[torch.Tensor], Any]
    update: Callable[[torch.Tensor, Any, StepInfo], tuple[torch.Tensor, Any]]
    evaluate_at: Callable | None = None


def _no_state(x):
    return None


def stateless(fn: Callable[[torch.Tensor, StepInfo], torch.Tensor]) -> Rule:
    """A rule without state from ``fn(direction, info) -> direction``."""
    return Rule(_no_state, lambda grad, state, info: (fn(grad, info), None))


def chain(*rules: Rule) -> Rule:
    """Apply ``rules`` left to right, each to the previous one's direction (optax ``chain``).

    At most one of them may choose the evaluation point (``evaluate_at``).
    """
    lookaheads = [(k, r.evaluate_at) for k, r in enumerate(rules) if r.evaluate_at is not None]
    if len(lookaheads) > 1:
        raise ValueError("at most one rule in a chain may choose where the model is evaluated")

    def init(x):
        return tuple(r.init(x) for r in rules)

    def update(grad, states, info):
        new_states = []
        for rule, state in zip(rules, states):
            grad, state = rule.update(grad, state, info)
            new_states.append(state)
        return grad, tuple(new_states)

    evaluate_at = None
    if lookaheads:
        k, inner = lookaheads[0]

        def evaluate_at(x, states, sigma, sigma_next):
            return inner(x, states[k], sigma, sigma_next)

    return Rule(init, update, evaluate_at)


# ----------------------------------------------------------------------------------------------
# Small pieces shared by several rules.


def ema(average: torch.Tensor | None, new: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * average + (1 - beta) * new, started at ``new`` (Polyak heavy ball as in Wizadwongsa
    et al. 2024, momentum_scheduler.py ``vel = (1 - b) vel + b update`` with b = 1 - beta, vel_0 = update)."""
    if average is None:
        return new
    return average * beta + new * (1 - beta)


def per_sample_rms(t: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(t^2)) over all non-batch dims, shaped [B, 1, ..., 1] to broadcast against t."""
    return t.square().flatten(1).mean(1).sqrt().reshape((-1,) + (1,) * (t.ndim - 1))


def direction_from_denoised(info: StepInfo, denoised: torch.Tensor) -> torch.Tensor:
    """(x - D) / sigma: the Euler direction that lands on the same point as the data-space update
    x <- (sigma_next/sigma) x + (1 - sigma_next/sigma) D (Lu et al. 2022, DPM-Solver++ eq. 9, first order)."""
    return (info.x - denoised) / info.sigma


RESCALE_MODES = ("grad_rms", "unit", "none")


def rescale(direction: torch.Tensor, info: StepInfo, mode: str) -> torch.Tensor:
    """Set the per-sample scale of a normalised direction.

    * ``grad_rms``: RMS of the raw gradient d: the step keeps Euler's length and only turns, so
      the sample still travels the ODE's distance and ends near the right noise level.
    * ``unit``: RMS 1 (the RMS of eps for an on-shell x); ignores how far x is from the shell, so
      errors in the noise level are not corrected.
    * ``none``: the raw normalised direction (Adam: |m_hat / sqrt(v_hat)| <= 1 element-wise, below
      1 where gradients change sign): the step is shorter than the ODE's, x keeps excess noise.
    """
    if mode == "none":
        return direction
    scale = per_sample_rms(direction).clamp_min(torch.finfo(direction.dtype).tiny)
    if mode == "unit":
        return direction / scale
    return direction * (per_sample_rms(info.grad) / scale)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0 (so eps = 0 is allowed in the normalising rules)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


# ----------------------------------------------------------------------------------------------
# The transforms.


def identity() -> Rule:
    """SGD: the direction is the gradient d (Euler, DESIGN.md)."""
    return stateless(lambda grad, info: grad)


def heavy_ball(beta: float) -> Rule:
    """Polyak heavy ball: vel = beta vel + (1 - beta) grad (Wizadwongsa et al. 2024, eq. 9; their b = 1 - beta)."""
    return Rule(_no_state, lambda grad, vel, info: (ema(vel, grad, beta),) * 2)


def nesterov(beta: float, lookahead_sigma: str) -> Rule:
    """Heavy ball with the gradient taken at the look-ahead x + h beta vel (Nesterov 1983; Sutskever et al.
    2013, eq. 3-4), h = sigma_next - sigma. ``lookahead_sigma`` 'shifted' evaluates it at the noise level
    the look-ahead reaches, sigma + beta h (ODE-consistent); 'same' at sigma, as in optimisation."""

    def evaluate_at(x, vel, sigma, sigma_next):
        if vel is None:
            return x, sigma
        h = sigma_next - sigma
        sigma_eval = sigma + beta * h if lookahead_sigma == "shifted" else sigma
        return x + vel * (beta * h), sigma_eval

    return Rule(_no_state, heavy_ball(beta).update, evaluate_at)


def nesterov_trace(beta: float) -> Rule:
    """Nesterov momentum without a look-ahead evaluation: vel = ema(vel, grad), direction = beta vel +
    (1 - beta) grad (optax ``trace(nesterov=True)``, optax/_src/transform.py, in EMA form; Dozat 2016, NAdam)."""

    def update(grad, vel, info):
        vel = ema(vel, grad, beta)
        return ema(vel, grad, beta), vel

    return Rule(_no_state, update)


def adams_bashforth(order: int) -> Rule:
    """PLMS: fixed-coefficient Adams-Bashforth combination of the last ``order`` gradients (PNDM eq. 12;
    :data:`.adams.AB_COEFFICIENTS`), lower order while warming up. ``history`` holds them oldest first."""

    def update(grad, history, info):
        history = ((history or ()) + (grad,))[-order:]
        return combine(AB_COEFFICIENTS[len(history)], history[::-1]), history

    return Rule(_no_state, update)


def ghvb(order: float) -> Rule:
    """GHVB: vel = (1 - b) vel + b d, then the b-weighted Adams-Bashforth combination of the last
    ceil(order) velocities, b = fractional part of order (1 if integer) (Wizadwongsa et al. 2024, eq. 14;
    ``GHVBScheduler``). Integer order k: Adams-Bashforth of order k with lower-order warm-up (iPNDM's, not PLMS's
    Heun start); order 1 = Euler; 1.5 = order 2, b = 0.5."""
    steps_back = math.ceil(order)
    b = order - (steps_back - 1)

    def update(grad, state, info):
        vel, history = state if state is not None else (None, ())
        vel = ema(vel, grad, 1 - b)
        history = (history + (vel,))[-steps_back:]
        return ghvb_combination(history[::-1], b), (vel, history)

    return Rule(_no_state, update)


def scale_by_adam(beta1: float, beta2: float, eps: float, normalize: bool) -> Rule:
    """Adam's bias-corrected moments m_hat / (sqrt(v_hat) + eps) (Kingma & Ba 2015, Alg. 1); with
    ``normalize`` False only m_hat (bias-corrected momentum)."""

    def init(x):
        return torch.zeros_like(x), torch.zeros_like(x), 0

    def update(grad, state, info):
        m, v, t = state
        t += 1
        m = m * beta1 + grad * (1 - beta1)
        m_hat = m / (1 - beta1**t)
        if not normalize:
            return m_hat, (m, v, t)
        v = v * beta2 + grad.square() * (1 - beta2)
        v_hat = v / (1 - beta2**t)
        return safe_divide(m_hat, v_hat.sqrt() + eps), (m, v, t)

    return Rule(init, update)


def scale_by_lion(beta1: float, beta2: float) -> Rule:
    """Lion: sign(beta1 m + (1 - beta1) d), then m = beta2 m + (1 - beta2) d (Chen et al. 2023, Alg. 2)."""

    def update(grad, m, info):
        return torch.sign(m * beta1 + grad * (1 - beta1)), m * beta2 + grad * (1 - beta2)

    return Rule(torch.zeros_like, update)


def scale_by_loss(power: float) -> Rule:
    """direction / |loss|^power per sample (``info.loss``, [B]); 0 where the loss is 0. power 1 with the loss
    ||y - A x0_hat|| is AdamDPS's DPS baseline (christianbelardi/adam-guidance ``methods/dps.py``); power 0.5 on
    ||y - A x0_hat||^2 is DPS's zeta' / ||y - A x0_hat|| (Chung et al. 2023, Alg. 1)."""

    def scale(direction, info):
        if info.loss is None:
            raise ValueError("scale_by_loss needs the per-sample loss values (a Loss objective), got none")
        den = info.loss.abs().pow(power).reshape((-1,) + (1,) * (direction.ndim - 1)).to(direction.dtype)
        return safe_divide(direction, den)

    return stateless(scale)


def rescaled(mode: str) -> Rule:
    """:func:`rescale` as a rule."""
    return stateless(lambda direction, info: rescale(direction, info, mode))


def step_position(info: StepInfo) -> float:
    """t in [0, 1]: 1 at the first step, 0 at the last (the normalised diffusion time of the step)."""
    return 1.0 - info.index / max(info.n_steps - 1, 1)


def eps_scaling(k: float, b: float) -> Rule:
    """d / lambda_t with lambda_t = k t + b, t = :func:`step_position` (Ning et al. 2024, 'Elucidating
    the Exposure Bias', eq. 13; ADM-ES). A learning-rate multiplier 1 / lambda_t on the predicted noise."""
    return stateless(lambda grad, info: grad / (k * step_position(info) + b))


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(info: StepInfo, schedule: str, start: float, end: float, warmup: int) -> float:
    """Multiplier at the step: constant ``start``; linear / cosine from ``start`` to ``end`` over the
    schedule (Loshchilov & Hutter 2017, SGDR eq. 5 for cosine); times min(1, (i + 1) / (warmup + 1))
    (linear warm-up, Goyal et al. 2017)."""
    p = 1.0 - step_position(info)
    if schedule == "constant":
        value = start
    elif schedule == "linear":
        value = start + (end - start) * p
    else:
        value = end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))
    return value * min(1.0, (info.index + 1) / (warmup + 1))


def scale_by_schedule(schedule: str, start: float, end: float, warmup: int) -> Rule:
    """Multiply the direction by :func:`lr_multiplier` (optax ``scale_by_schedule``)."""
    return stateless(lambda direction, info: direction * lr_multiplier(info, schedule, start, end, warmup))


def ema_denoised(beta: float) -> Rule:
    """Direction (x - ema(D)) / sigma from a moving average of the denoised estimate (after Qian et al.
    2024, MASF, arXiv 2403.17870, without its frequency split). beta = 0 is Euler."""

    def update(grad, average, info):
        average = ema(average, info.denoised, beta)
        return direction_from_denoised(info, average), average

    return Rule(_no_state, update)


def dpmpp_2m_momentum(beta: float) -> Rule:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; k-diffusion ``sample_dpmpp_2m``): D' = (1 + 1/(2r)) D_i
    - 1/(2r) D_{i-1}, r = h_{i-1}/h_i, h = log(sigma/sigma_next), first order on the first and last step;
    heavy ball on D' (Wizadwongsa et al. 2024, ``MomentumDPMSolverMultistepScheduler``), then
    direction (x - D')/sigma, which lands exactly on the 2M update. beta = 0: DPM-Solver++(2M)."""

    def update(grad, state, info):
        old_denoised, old_sigma, average = state if state is not None else (None, None, None)
        combined = info.denoised
        if old_denoised is not None and info.sigma_next != 0:
            h = log(info.sigma / info.sigma_next)
            r = log(old_sigma / info.sigma) / h
            combined = info.denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
        average = ema(average, combined, beta)
        return direction_from_denoised(info, average), (info.denoised, info.sigma, average)

    return Rule(_no_state, update)
