"""Optimizer-inspired update rules as samplers: one shared loop, rules from :mod:`.transforms`.

The loop (:func:`run_rule`) takes x <- x + (sigma_next - sigma) * direction with the direction from an
update rule (DESIGN.md: Euler == SGD, lr = sigma - sigma_next). Each registered rule is a factory of
keyword-only hyper-parameters returning a :class:`~.transforms.Rule`; :func:`register_rule` turns it
into a sampler whose hyper-parameters are the rule's plus the loop's own, shared by every rule:

* ``lr_schedule``, ``lr_start``, ``lr_end``, ``lr_warmup``: a learning-rate multiplier on the step
  (:func:`~.transforms.lr_multiplier`). Any multiplier != 1 moves x by m*(sigma_next - sigma) while
  the model is told the noise level fell by (sigma_next - sigma): the sum of the effective steps no
  longer equals sigma_max - sigma_min, so the ODE is no longer followed consistently.
* ``langevin_churn``, ``langevin_tmin``, ``langevin_tmax``, ``langevin_noise``: Langevin noise
  injection, the SGLD view of EDM's churn (:func:`core.churn`, Karras et al. 2022, Alg. 2).
* ``restart_count``, ``restart_sigma_min``, ``restart_sigma_max``: warm restarts, the SGDR view of
  Restart sampling (Xu et al. 2023, Alg. 1): on reaching the first schedule sigma <= restart_sigma_min,
  add noise up to the first schedule sigma <= restart_sigma_max and re-run the schedule steps in between,
  ``restart_count`` times; the rule's state is reset at each restart. The noise levels snap to the schedule.

NFE counting, the callback, noise and non-finite checks come from :mod:`.core` (the ``Denoiser``, the
callback and ``noise_sampler`` the loop is given).
"""

from __future__ import annotations

import inspect
import math
from typing import Annotated, Callable

from . import transforms as T
from .core import add_noise, churn, euler_step, sigma_values, sqrt, steps, to_d
from .registry import Choice, Decay, NonNegative, Positive, Range, register

Rescale = Annotated[str, Choice(*T.RESCALE_MODES)]
Count = Annotated[int, Range(0)]


def loop_options(
    *,
    lr_schedule: Annotated[str, Choice(*T.LR_SCHEDULES)] = "constant",
    lr_start: NonNegative = 1.0,
    lr_end: NonNegative = 1.0,
    lr_warmup: Count = 0,
    langevin_churn: NonNegative = 0.0,
    langevin_tmin: NonNegative = 0.0,
    langevin_tmax: float = math.inf,
    langevin_noise: NonNegative = 1.0,
    restart_count: Count = 0,
    restart_sigma_min: NonNegative = 0.06,
    restart_sigma_max: Positive = 0.3,
):
    """The shared loop's hyper-parameters (the signature is the source of truth; see the module doc)."""


def _check_loop_options(params) -> None:
    if params.restart_count and not params.restart_sigma_min < params.restart_sigma_max:
        raise ValueError(
            f"restart_sigma_min ({params.restart_sigma_min}) must be below restart_sigma_max ({params.restart_sigma_max})"
        )


def step_plan(sigmas, restart_count: int, restart_sigma_min: float, restart_sigma_max: float) -> list[tuple]:
    """The steps to take: ('step', index, sigma, sigma_next) and ('restart', None, sigma_low, sigma_high)."""
    plan = [("step", i, sigma, sigma_next) for i, sigma, sigma_next in steps(sigmas)]
    if not restart_count:
        return plan
    values = sigmas.tolist()
    low = next((k for k, s in enumerate(values) if s <= restart_sigma_min), None)
    high = next((k for k, s in enumerate(values) if s <= restart_sigma_max), None)
    if low is None or high is None or not high < low or values[low] == 0:
        raise ValueError(
            f"restart needs schedule sigmas inside [{restart_sigma_min}, {restart_sigma_max}] with a positive one "
            f"at or below restart_sigma_min; sigmas are {[round(s, 6) for s in values]}"
        )
    segment = plan[high:low]
    points = sigma_values(sigmas)  # the jump's ends stay in the graph when the sigmas carry gradients
    jump = [("restart", None, points[low], points[high])]
    return plan[:low] + (jump + segment) * restart_count + plan[low:]


def run_rule(model, x, sigmas, rule: T.Rule, *, callback, noise_sampler, lr_schedule="constant", lr_start=1.0,
             lr_end=1.0, lr_warmup=0, langevin_churn=0.0, langevin_tmin=0.0, langevin_tmax=math.inf,
             langevin_noise=1.0, restart_count=0, restart_sigma_min=0.06, restart_sigma_max=0.3):
    """The shared loop: x <- x + (sigma_next - sigma_hat) * direction, direction = rule(d) (module doc)."""
    if (lr_schedule, lr_start, lr_end, lr_warmup) != ("constant", 1.0, 1.0, 0):
        rule = T.chain(rule, T.scale_by_schedule(lr_schedule, lr_start, lr_end, lr_warmup))
    plan = step_plan(sigmas, restart_count, restart_sigma_min, restart_sigma_max)  # raises before any model call
    n_steps = len(sigmas) - 1
    state = rule.init(x)
    i = 0
    for kind, index, sigma, sigma_next in plan:
        if kind == "restart":  # Restart sampling's forward jump (Xu et al. 2023, Alg. 1, line 4)
            x = add_noise(x, noise_sampler, sigma_next, sigma, sqrt(sigma_next**2 - sigma**2))
            state = rule.init(x)
            continue
        x, sigma_hat = churn(x, sigma, n_steps, noise_sampler, langevin_churn, langevin_tmin, langevin_tmax, langevin_noise)
        x_eval, sigma_eval = rule.evaluate_at(x, state, sigma_hat, sigma_next) if rule.evaluate_at else (x, sigma_hat)
        denoised = model(x_eval, sigma_eval)
        callback({"x": x, "i": i, "sigma_index": index, "sigma": sigma, "sigma_hat": sigma_hat, "sigma_next": sigma_next,
                  "denoised": denoised})
        grad = to_d(x_eval, sigma_eval, denoised)
        info = T.StepInfo(i, index, n_steps, sigma_hat, sigma_next, x, denoised, grad)
        direction, state = rule.update(grad, state, info)
        x = euler_step(x, direction, sigma_hat, sigma_next)
        i += 1
    return x


def register_rule(name: str, check: Callable | None = None):
    """Register rule factory ``make_rule(**rule_hparams) -> Rule`` as sampler ``name``.

    The sampler's hyper-parameters are the factory's keyword-only arguments followed by
    :func:`loop_options`'; the registry derives the validating dataclass from that signature.
    """

    def wrap(make_rule):
        rule_params = list(inspect.signature(make_rule, eval_str=True).parameters.values())
        loop_params = list(inspect.signature(loop_options, eval_str=True).parameters.values())
        rule_names = [p.name for p in rule_params]

        def sampler(model, x, sigmas, *, callback, noise_sampler, **hparams):
            rule = make_rule(**{k: hparams.pop(k) for k in rule_names})
            return run_rule(model, x, sigmas, rule, callback=callback, noise_sampler=noise_sampler, **hparams)

        positional = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in ("model", "x", "sigmas")]
        framework = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in ("callback", "noise_sampler")]
        sampler.__signature__ = inspect.Signature(positional + framework + rule_params + loop_params)
        sampler.__annotations__ = {p.name: p.annotation for p in rule_params + loop_params}
        sampler.__name__ = sampler.__qualname__ = name
        sampler.__doc__ = make_rule.__doc__
        sampler.make_rule = make_rule

        def check_all(params):
            _check_loop_options(params)
            if check is not None:
                check(params)

        register(name, check=check_all)(sampler)
        return make_rule

    return wrap


# ----------------------------------------------------------------------------------------------
# The registered rules. Each docstring: source, equation, and the setting in which it is Euler.


@register_rule("sgd")
def sgd():
    """SGD: direction = d; exactly Euler (DESIGN.md; Karras et al. 2022, Alg. 2 without the 2nd-order step)."""
    return T.identity()


@register_rule("momentum")
def momentum(*, beta: Decay = 0.2):
    """Heavy-ball momentum on d: vel = beta vel + (1 - beta) d, vel_0 = d (Wizadwongsa et al. 2024, eq. 9, with
    their b = 1 - beta). beta = 0: Euler."""
    return T.heavy_ball(beta)


@register_rule("nesterov")
def nesterov(*, beta: Decay = 0.2, lookahead_sigma: Annotated[str, Choice("shifted", "same")] = "shifted"):
    """Nesterov momentum: heavy ball with d evaluated at the look-ahead x + beta h vel (Sutskever et al. 2013,
    eq. 3-4); 'shifted' evaluates at noise level sigma + beta h. beta = 0: Euler."""
    return T.nesterov(beta, lookahead_sigma)


@register_rule("ghvb")
def ghvb(*, order: Annotated[float, Range(0.0, 4.0, low_open=True)] = 1.5):
    """Generalised heavy ball of fractional order (Wizadwongsa et al. 2024, eq. 14, ``GHVBScheduler``):
    order 1.5 = 2nd-order Adams-Bashforth on velocities with b = 0.5. order 1: Euler. Integer order k: Adams-Bashforth
    of order k with lower-order warm-up, i.e. ``ipndm(order=k)`` bit for bit on a schedule ending above 0
    (ending at 0, ipndm's last step is x = denoised, this one the AB step); not ``plms``, which starts with Heun."""
    return T.ghvb(order)


@register_rule("plms_momentum")
def plms_momentum(*, order: Annotated[int, Range(1, 4)] = 4, beta: Decay = 0.2):
    """PLMS (fixed Adams-Bashforth weights on d, PNDM eq. 12) with heavy ball on the combination
    (Wizadwongsa et al. 2024, ``PLMSWithHBScheduler``; b = 1 - beta). order 1 and beta 0: Euler; beta 0: ``ghvb`` of
    the same integer order bit for bit (Adams-Bashforth with lower-order warm-up, = ``ipndm``; not ``plms``)."""
    return T.chain(T.adams_bashforth(order), T.heavy_ball(beta))


@register_rule("dpmpp_2m_momentum")
def dpmpp_2m_momentum(*, beta: Decay = 0.2):
    """DPM-Solver++(2M) with heavy ball on its denoised combination (Wizadwongsa et al. 2024,
    ``MomentumDPMSolverMultistepScheduler``), written as direction (x - D')/sigma. beta = 0: DPM-Solver++(2M);
    with a single step (or every step to sigma 0) it is Euler."""
    return T.dpmpp_2m_momentum(beta)


@register_rule("adam")
def adam(*, beta1: Decay = 0.9, beta2: Decay = 0.999, eps: NonNegative = 1e-8,
         normalize: Annotated[str, Choice("elementwise", "off")] = "elementwise", rescale: Rescale = "grad_rms"):
    """Adam (Kingma & Ba 2015, Alg. 1): m_hat / (sqrt(v_hat) + eps), then ``rescale`` (transforms.rescale: the
    per-sample RMS of d, unit RMS, or none). normalize 'off' keeps only m_hat (no rescale). Euler when
    beta1 = 0 and normalize 'off'; also (1-D data) beta1 = beta2 = eps = 0 with rescale 'grad_rms'."""
    if normalize == "off":
        return T.scale_by_adam(beta1, beta2, eps, normalize=False)
    return T.chain(T.scale_by_adam(beta1, beta2, eps, normalize=True), T.rescaled(rescale))


@register_rule("rmsprop")
def rmsprop(*, beta2: Decay = 0.99, eps: NonNegative = 1e-8, rescale: Rescale = "grad_rms"):
    """RMSprop (Tieleman & Hinton 2012, lecture 6.5) with bias correction = Adam with beta1 = 0: d / (sqrt(v_hat)
    + eps), then ``rescale``. Euler for 1-D data with eps = 0 and rescale 'grad_rms' (any beta2)."""
    return T.chain(T.scale_by_adam(0.0, beta2, eps, normalize=True), T.rescaled(rescale))


@register_rule("lion")
def lion(*, beta1: Decay = 0.9, beta2: Decay = 0.99, rescale: Rescale = "grad_rms"):
    """Lion (Chen et al. 2023, 'Symbolic Discovery of Optimization Algorithms', Alg. 2): sign(beta1 m + (1 - beta1)
    d), m = beta2 m + (1 - beta2) d, then ``rescale``. Euler for 1-D data with beta1 = 0 and rescale 'grad_rms'."""
    return T.chain(T.scale_by_lion(beta1, beta2), T.rescaled(rescale))


def _check_eps_scaling(params) -> None:
    if min(params.scale, params.scale + params.slope) <= 0:
        raise ValueError(f"eps_scaling: lambda_t = slope t + scale must stay positive on t in [0, 1], got {params}")


@register_rule("eps_scaling", check=_check_eps_scaling)
def eps_scaling(*, scale: Positive = 1.01, slope: float = 0.0):
    """Epsilon scaling (Ning et al. 2024, ADM-ES, eq. 13): d / lambda_t, lambda_t = slope t + scale, t from 1 at
    the first step to 0 at the last (normalised step position). scale 1, slope 0: Euler."""
    return T.eps_scaling(slope, scale)


@register_rule("ema_x0")
def ema_x0(*, beta: Decay = 0.2):
    """Moving average of the denoised estimate, direction (x - ema)/sigma (after Qian et al. 2024, MASF,
    arXiv 2403.17870, one band). beta = 0: Euler. With Euler steps it is ``momentum`` (heavy ball on d) with the
    same beta, to rounding (tests/test_rules.py), so studies list only ``momentum``."""
    return T.ema_denoised(beta)

