"""Linear multistep solvers: PLMS, iPNDM, DPM-Solver++ 2M / 2M SDE / 3M (SDE), UniPC.

In optimization terms a multistep solver is momentum with fixed coefficients: each step combines the
current gradient ``d`` (or the current ``denoised``) with the last few, kept in a :class:`History`, at
the cost of one model evaluation per step. Two coordinates are used (both VE, alpha = 1):

- sigma: PLMS / iPNDM are Adams-Bashforth on ``dx/dsigma = d`` (Euler = DDIM is their first order);
- lambda = -log sigma: DPM-Solver++ and UniPC are exponential integrators in data prediction, whose
  coefficients depend on sigma ratios only, e.g. ``e^{-h} = sigma_next / sigma`` with
  ``h = log(sigma / sigma_next)``. A step to sigma_next == 0 never takes a log: it returns
  ``denoised`` (the h -> inf limit of the first-order update; k-diffusion's and diffusers'
  ``final_sigmas_type="zero"`` last step; avoids the NaN of diffusers #9007).
"""

from __future__ import annotations

import collections
from typing import Annotated

import numpy
import torch

from .adams import AB_COEFFICIENTS, combine
from .core import add_noise, euler_step, exp, expm1, log, report_step, sqrt, steps, to_d
from .transforms import ema
from .registry import Choice, Decay, NonNegative, Range, register


class History:
    """The last ``size`` (sigma, value) pairs of a multistep solver, newest first."""

    def __init__(self, size: int):
        self._items: collections.deque = collections.deque(maxlen=max(size, 0))

    def push(self, sigma: float, value: torch.Tensor) -> None:
        if self._items.maxlen:
            self._items.appendleft((sigma, value))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def sigmas(self) -> list[float]:
        return [sigma for sigma, _ in self._items]

    @property
    def values(self) -> list[torch.Tensor]:
        return [value for _, value in self._items]


def _log_ratio(sigma_a: float, sigma_b: float) -> float:
    """lambda_b - lambda_a = log(sigma_a / sigma_b) for lambda = -log sigma (both sigmas > 0)."""
    return log(sigma_a / sigma_b)


# ----------------------------------------------------------------------------------------------
# PLMS and iPNDM: Adams-Bashforth on dx/dsigma = d.


def _adams_bashforth(ds: list[torch.Tensor]) -> torch.Tensor:
    """sum_j c_j d_{i-j} with the AB coefficients of order len(ds), ``ds`` newest first (PNDM eq. 12; :mod:`.adams`)."""
    return combine(AB_COEFFICIENTS[len(ds)], ds)


def _adams_bashforth_sampler(model, x, sigmas, callback, order: int, heun_start: bool):
    """Euler (= DDIM transfer) steps along the AB combination of the last ``order`` d's.

    ``heun_start`` (PLMS): the first step is Heun's (trapezoidal) step and takes 2 NFE, as diffusers'
    PNDMScheduler(skip_prk_steps=True) / CompVis PLMS do it (Liu et al. 2022, "pseudo improved Euler"),
    and a last step to sigma = 0 is AB too, as in diffusers. Otherwise (iPNDM) the order grows
    1, 2, 3, 4 over the first steps and a step to sigma = 0 is first order, x = denoised
    (k-diffusion's convention; ComfyUI ``sample_ipndm``).
    """
    n_steps = len(sigmas) - 1
    past_ds = History(order - 1)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        if sigma_next == 0 and not heun_start:  # first order to 0: x - sigma d = denoised
            x = denoised
            continue
        d = to_d(x, sigma, denoised)
        if heun_start and i == 0 and n_steps > 1:
            x_euler = euler_step(x, d, sigma, sigma_next)
            d_step = (d + to_d(x_euler, sigma_next, model(x_euler, sigma_next))) / 2
        else:
            d_step = _adams_bashforth([d, *past_ds.values])
        past_ds.push(sigma, d)
        x = euler_step(x, d_step, sigma, sigma_next)
    return x


@register("plms")
def plms(model, x, sigmas, *, callback, noise_sampler):
    """PLMS: Heun first step, then AB2, AB3, AB4 on d (Liu et al. 2022, eq. 12; diffusers PNDM skip_prk_steps).

    NFE = steps + 1 (the Heun start); with a single step it is Euler (as diffusers).
    """
    return _adams_bashforth_sampler(model, x, sigmas, callback, order=4, heun_start=True)


@register("ipndm")
def ipndm(model, x, sigmas, *, callback, noise_sampler, order: Annotated[int, Range(1, 4)] = 4):
    """iPNDM: AB of order min(order, i + 1) on d, lower-order warm-up (Zhang & Chen 2023, DEIS, iPNDM).

    ``order`` as in ``lms`` / ``unipc`` (ComfyUI's ``sample_ipndm`` calls it ``max_order``).
    """
    return _adams_bashforth_sampler(model, x, sigmas, callback, order=order, heun_start=False)


# ----------------------------------------------------------------------------------------------
# DPM-Solver++ multistep (2M, 2M SDE, 3M, 3M SDE): one loop, k-diffusion's formulas.


def _dpmpp_correction(denoised, past: History, sigma: float, h: float, h_eta: float, solver_type: str):
    """The multistep (2nd / 3rd order) terms added to the first-order DPM-Solver++ update.

    One past output: midpoint 0.5 (1 - e^{-h_eta}) (D - D_1) / r or heun phi_2 (D - D_1) / r, with
    r = h_1 / h and phi_2 = (e^{-h_eta} - 1) / h_eta + 1 (Lu et al. 2022, DPM-Solver++(2M), Alg. 2;
    k-diffusion ``sample_dpmpp_2m_sde``). Two: phi_2 d1 - phi_3 d2 with divided differences
    (k-diffusion ``sample_dpmpp_3m_sde``; diffusers ``multistep_dpm_solver_third_order_update``).
    """
    if len(past) == 0:
        return 0.0
    phi_2 = expm1(-h_eta) / h_eta + 1
    sigma_1 = past.sigmas[0]
    r0 = _log_ratio(sigma_1, sigma) / h
    d1_0 = (denoised - past.values[0]) / r0
    if len(past) == 1:
        return d1_0 * (-0.5 * expm1(-h_eta) if solver_type == "midpoint" else phi_2)
    r1 = _log_ratio(past.sigmas[1], sigma_1) / h
    d1_1 = (past.values[0] - past.values[1]) / r1
    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return d1 * phi_2 - d2 * phi_3


def _dpmpp_multistep(model, x, sigmas, callback, noise_sampler, *, order: int, eta: float, s_noise: float,
                     solver_type: str = "heun"):
    """DPM-Solver++(2M/3M) with optional SDE noise (k-diffusion ``sample_dpmpp_2m_sde`` / ``_3m_sde``).

    x <- (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D + correction
         + sigma_next sqrt(1 - e^{-2 eta h}) s_noise z        (Lu et al. 2022, DPM-Solver++ SDE, eq. 18;
    with eta = 0 it is the ODE solver of k-diffusion ``sample_dpmpp_2m``). Last step: x = denoised.
    """
    past = History(order - 1)  # (sigma, denoised) of the previous steps
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = _log_ratio(sigma, sigma_next)
            h_eta = h * (1 + eta)
            x = x * exp(-h_eta) + denoised * -expm1(-h_eta)
            x = x + _dpmpp_correction(denoised, past, sigma, h, h_eta, solver_type)
            noise_std = sigma_next * sqrt(-expm1(-2 * eta * h))
            x = add_noise(x, noise_sampler, sigma, sigma_next, noise_std, s_noise)
        past.push(sigma, denoised)
    return x


@register("dpmpp_2m")
def dpmpp_2m(model, x, sigmas, *, callback, noise_sampler):
    """DPM-Solver++(2M), first order on the first and last step (Lu et al. 2022, Alg. 2; k-diffusion ``sample_dpmpp_2m``)."""
    return _dpmpp_multistep(model, x, sigmas, callback, noise_sampler, order=2, eta=0.0, s_noise=1.0,
                            solver_type="midpoint")


@register("dpmpp_2m_sde", stochastic=True)
def dpmpp_2m_sde(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0,
                 solver_type: Annotated[str, Choice("midpoint", "heun")] = "midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, eq. 18; k-diffusion ``sample_dpmpp_2m_sde``); eta = 0 is the 2M ODE solver."""
    return _dpmpp_multistep(model, x, sigmas, callback, noise_sampler, order=2, eta=eta, s_noise=s_noise,
                            solver_type=solver_type)


@register("dpmpp_3m_sde", stochastic=True)
def dpmpp_3m_sde(model, x, sigmas, *, callback, noise_sampler, eta: NonNegative = 1.0, s_noise: NonNegative = 1.0):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): orders 1, 2 (heun form), 3, and x = denoised last."""
    return _dpmpp_multistep(model, x, sigmas, callback, noise_sampler, order=3, eta=eta, s_noise=s_noise)


@register("dpmpp_3m")
def dpmpp_3m(model, x, sigmas, *, callback, noise_sampler):
    """DPM-Solver++(3M) ODE solver = ``dpmpp_3m_sde`` with eta = 0 (Lu et al. 2022, multistep 3rd order)."""
    return _dpmpp_multistep(model, x, sigmas, callback, noise_sampler, order=3, eta=0.0, s_noise=1.0)


# ----------------------------------------------------------------------------------------------
# UniPC (data prediction, B(h) variants).


def _unipc_phi(hh: float, order: int, variant: str) -> tuple[float, float, list[float]]:
    """(h phi_1, B(h), b) of UniPC with hh = -h = log(sigma_t / sigma_s0).

    b_k = k! h phi_{k+1}(hh) / B(h), B(h) = hh ("bh1") or e^hh - 1 ("bh2") (Zhao et al. 2023, Alg. 2 and
    Thm. 3.1; diffusers ``multistep_uni_p_bh_update`` with predict_x0).
    """
    h_phi_1 = expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else expm1(hh)
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, b


def _solve(rks: list[float], b: list[float]) -> list[float]:
    """rho with sum_k rho_k r_k^(i-1) = b_i, i = 1..len(b) (the Vandermonde system of UniPC, eq. 8).

    Solved with numpy on the host (at most 3x3): no tensor, so nothing for an accelerator run to wait on;
    sigmas that carry gradients (learned_schedules' gradient method) solve it in torch to stay differentiable."""
    if any(isinstance(value, torch.Tensor) for value in (*rks, *b)):  # a learned schedule: stay differentiable
        vandermonde = torch.stack([torch.stack([torch.as_tensor(r, dtype=torch.float64) ** i for r in rks])
                                   for i in range(len(b))])
        return list(torch.linalg.solve(vandermonde, torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in b])))
    vandermonde = numpy.array([[r**i for r in rks] for i in range(len(b))], dtype=numpy.float64)
    return numpy.linalg.solve(vandermonde, numpy.array(b, dtype=numpy.float64)).tolist()


def _unipc_update(x, sigma_s0: float, sigma_t: float, past: History, order: int, variant: str, denoised_t=None,
                  velocity: list | None = None):
    """UniP (``denoised_t`` None) or UniC step of ``order`` from sigma_s0 to sigma_t (0 < sigma_t < sigma_s0).

    x_t = (sigma_t / sigma_s0) x - h phi_1 m0 - B(h) (sum_k rho_k D1_k [+ rho_c (m_t - m0)]),
    D1_k = (m_k - m0) / r_k, r_k = (lambda_k - lambda_s0) / h (Zhao et al. 2023, Alg. 2 / eq. 8;
    diffusers ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``). ``past`` holds
    (sigma, denoised) newest first, m0 = the output at sigma_s0.
    """
    h = _log_ratio(sigma_s0, sigma_t)
    h_phi_1, b_h, b = _unipc_phi(-h, order, variant)
    m0 = past.values[0]
    rks = [_log_ratio(sigma_s0, sigma_k) / h for sigma_k in past.sigmas[1:order]]
    d1s = [(m_k - m0) / r_k for m_k, r_k in zip(past.values[1:order], rks)]
    if denoised_t is None:  # predictor; order 2 uses rho = 1/2 (diffusers' simplified UniP-2)
        rhos = [] if order == 1 else [0.5] if order == 2 else _solve(rks, b[:-1])
    else:  # corrector: order 1 uses rho = 1/2 (UniC-1)
        rhos = [0.5] if order == 1 else _solve(rks + [1.0], b)
        d1s = d1s + [denoised_t - m0]
    correction = sum(rho * d1 for rho, d1 in zip(rhos, d1s)) * b_h if d1s else None
    if velocity is not None:  # heavy ball on the combined data estimate m0 + correction / h phi_1
        combined = m0 if correction is None else m0 + correction / h_phi_1
        velocity[0] = ema(velocity[0], combined, velocity[1])
        return x * (sigma_t / sigma_s0) - velocity[0] * h_phi_1
    x_t = x * (sigma_t / sigma_s0) - m0 * h_phi_1
    return x_t if correction is None else x_t - correction


def _unipc_loop(model, x, sigmas, callback, order, variant, lower_order_final, corrector, beta=None):
    """UniPC's loop; with ``beta`` the predictor and the corrector each keep a heavy-ball velocity of their
    combined data estimates (Wizadwongsa et al. 2024, ``MomentumUniPCMultistepScheduler``)."""
    n_steps = len(sigmas) - 1
    past = History(order)  # (sigma, denoised), newest first
    velocity_p, velocity_c = ([None, beta], [None, beta]) if beta is not None else (None, None)
    x_last, last_order = None, 0
    for i, sigma, sigma_next in steps(sigmas):
        denoised = model(x, sigma)
        if x_last is not None and corrector:
            x = _unipc_update(x_last, past.sigmas[0], sigma, past, last_order, variant, denoised_t=denoised,
                              velocity=velocity_c)
        report_step(callback, x, i, sigma, sigma_next, denoised)
        past.push(sigma, denoised)
        # diffusers UniPCMultistepScheduler.step: min(solver_order, len(timesteps) - step_index) at every
        # length (unlike DPMSolverMultistep, whose lower_order_final only applies below 15 steps)
        last_order = min(order, i + 1, n_steps - i if lower_order_final else order)
        x_last = x
        x = denoised if sigma_next == 0 else _unipc_update(x, sigma, sigma_next, past, last_order, variant,
                                                           velocity=velocity_p)
    return x


UniPCOrder = Annotated[int, Range(1, 3)]
UniPCVariant = Annotated[str, Choice("bh1", "bh2")]


@register("unipc", revision=2)  # 2: lower order near the end at every length, as diffusers
def unipc(model, x, sigmas, *, callback, noise_sampler, order: UniPCOrder = 2, variant: UniPCVariant = "bh2",
          lower_order_final: bool = True, corrector: bool = True):
    """UniPC: UniP-p predictor + UniC corrector reusing the next model output (Zhao et al. 2023, Alg. 2).

    Data prediction, lower-order warm-up (order min(order, i + 1)) and, with ``lower_order_final``,
    lower orders at the end (min(order, steps - i)) at every length, as diffusers'
    UniPCMultistepScheduler does; no corrector after the last step, so NFE = steps. UniC raises the
    order of accuracy by one (Zhao et al. 2023, Thm. 3.3): ``order=p`` converges with order p + 1, and
    ``corrector=False`` (diffusers' ``disable_corrector`` on every step) leaves the order-p predictor.
    The callback's ``x`` is the corrected iterate (``denoised`` was evaluated before the correction).
    """
    return _unipc_loop(model, x, sigmas, callback, order, variant, lower_order_final, corrector)


@register("unipc_momentum", revision=2)  # 2: inherits unipc's end-of-run order
def unipc_momentum(model, x, sigmas, *, callback, noise_sampler, beta: Decay = 0.2,
                   order: UniPCOrder = 2, variant: UniPCVariant = "bh2", lower_order_final: bool = True,
                   corrector: bool = True):
    """UniPC with heavy ball on the predictor's and the corrector's combined data estimates,
    vel = beta vel + (1 - beta) D_comb (Wizadwongsa et al. 2024, ``MomentumUniPCMultistepScheduler``, their
    b = 1 - beta; their released code overwrites the predictor's velocity, so only its corrector has
    momentum). beta = 0: UniPC (to rounding: the combination is divided by h phi_1 and multiplied back)."""
    return _unipc_loop(model, x, sigmas, callback, order, variant, lower_order_final, corrector, beta)
