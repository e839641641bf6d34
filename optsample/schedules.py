"""Sigma schedules = learning-rate schedules.

A sampler's step ``sigma_i -> sigma_{i+1}`` is a gradient step with learning rate
``lr_i = sigma_i - sigma_{i+1}`` (../shared/DESIGN.md), so choosing the sigmas is choosing the
learning-rate schedule. Every function here returns a strictly decreasing 1-D ``torch.float64``
tensor that ends at 0, in k-diffusion's convention: ``n`` steps = the schedule's ``n`` points,
from ``sigma_max`` down to ``sigma_min``, then an appended 0 (``n + 1`` entries).

Final-sigma policy (keyword ``final``), made explicit because diffusers has two (its
``final_sigmas_type``, added after diffusers issue #5689 on residual noise):

- ``final="zero"`` (default): ``[p_0, ..., p_{n-1}, 0]``. The last step goes from the schedule's
  last point straight to 0 (k-diffusion ``append_zero``; diffusers ``final_sigmas_type="zero"``).
- ``final="sigma_min"``: the steps along the schedule land exactly on ``sigma_min`` and a final
  jump ``sigma_min -> 0`` follows: ``[p_0, ..., p_{n-1}, sigma_min, 0]`` when the schedule's last
  point ``p_{n-1}`` stops above ``sigma_min`` (one extra step, so ``n + 2`` entries), and the same
  as ``"zero"`` when ``p_{n-1}`` already is ``sigma_min``. Dropping the trailing 0 gives exactly
  diffusers' ``final_sigmas_type="sigma_min"`` sigmas, which stop at sigma_min and leave noise of
  that std in the output; the jump to 0 (for every sampler a first-order step, i.e. ``x = denoised``
  for Euler) removes it. The continuous schedules already end at ``sigma_min`` for ``n >= 2``, so
  there the two policies differ only for ``n = 1``; for :func:`discrete` spacings whose last
  timestep is above 0 (``leading``, ``trailing``) ``sigma_min`` is the training schedule's smallest
  sigma, as in diffusers.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch

FINAL_POLICIES = ("zero", "sigma_min")
SPACINGS = ("linspace", "leading", "trailing")
F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Validation: every impossible parameter raises ValueError naming it.


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of steps) must be an integer >= 1, got {n!r}")
    return n


def _check_real(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _check_range(sigma_min, sigma_max) -> tuple[float, float]:
    sigma_min = _check_real("sigma_min", sigma_min, positive=True)
    sigma_max = _check_real("sigma_max", sigma_max, positive=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min!r}) must be < sigma_max ({sigma_max!r})")
    return sigma_min, sigma_max


def _check_final(final) -> str:
    if final not in FINAL_POLICIES:
        raise ValueError(f"final must be one of {list(FINAL_POLICIES)}, got {final!r}")
    return final


def _finish(points: torch.Tensor, sigma_min: float, reaches_sigma_min: bool, final: str, device) -> torch.Tensor:
    """Apply the final-sigma policy (module docstring) and append 0 (k-diffusion ``append_zero``)."""
    _check_final(final)
    tail = [0.0] if final == "zero" or reaches_sigma_min else [sigma_min, 0.0]
    sigmas = torch.cat([points.to(F64), torch.tensor(tail, dtype=F64)])
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"n = {len(points)} points do not give a strictly decreasing finite schedule: {sigmas.tolist()}")
    return sigmas.to(device if device is not None else "cpu")


def _ramp(start: float, end: float, n: int) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=F64)


# ----------------------------------------------------------------------------------------------
# Continuous schedules (k-diffusion ``sampling.py`` ``get_sigmas_*``).


def karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *, final: str = "zero",
           device=None) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Karras et al. 2022, eq. 5 (k-diffusion ``get_sigmas_karras``); defaults are EDM's (NVlabs/edm
    ``generate.py``). rho = 1 is :func:`linear`; rho -> inf tends to :func:`exponential`.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = _check_real("rho", rho, positive=True)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    points = (max_inv_rho + _ramp(0, 1, n) * (min_inv_rho - max_inv_rho)) ** rho
    return _finish(points, sigma_min, n >= 2, final, device)


def exponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, final: str = "zero",
                device=None) -> torch.Tensor:
    """Uniform in log sigma (= uniform in half log-SNR): exp(linspace(log sigma_max, log sigma_min, n)).

    k-diffusion ``get_sigmas_exponential``; a geometric learning-rate decay.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    points = _ramp(math.log(sigma_max), math.log(sigma_min), n).exp()
    return _finish(points, sigma_min, n >= 2, final, device)


def polyexponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 1.0, *,
                    final: str = "zero", device=None) -> torch.Tensor:
    """log sigma = ramp^rho (log sigma_max - log sigma_min) + log sigma_min, ramp from 1 to 0.

    k-diffusion ``get_sigmas_polyexponential``; rho = 1 is :func:`exponential`.
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = _check_real("rho", rho, positive=True)
    ramp = _ramp(1, 0, n) ** rho
    points = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _finish(points, sigma_min, n >= 2, final, device)


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, *, final: str = "zero",
       device=None) -> torch.Tensor:
    """Continuous VP (Song et al. 2021): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t from 1 to eps_s.

    k-diffusion ``get_sigmas_vp`` (Karras et al. 2022, Table 1, VP column); written with expm1 for
    accuracy at small t. Here sigma_min = sigma(eps_s).
    """
    n = _check_n(n)
    beta_d = _check_real("beta_d", beta_d, nonnegative=True)
    beta_min = _check_real("beta_min", beta_min, nonnegative=True)
    if beta_d + beta_min <= 0:
        raise ValueError("beta_d and beta_min cannot both be 0 (sigma would be 0 everywhere)")
    eps_s = _check_real("eps_s", eps_s, positive=True)
    if eps_s >= 1:
        raise ValueError(f"eps_s must be in (0, 1), got {eps_s!r}")
    t = _ramp(1, eps_s, n)
    points = torch.special.expm1(beta_d * t**2 / 2 + beta_min * t).sqrt()
    sigma_min = math.sqrt(math.expm1(beta_d * eps_s**2 / 2 + beta_min * eps_s))
    return _finish(points, sigma_min, n >= 2, final, device)


def linear(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, final: str = "zero",
           device=None) -> torch.Tensor:
    """Uniform in sigma: linspace(sigma_max, sigma_min, n), a constant learning rate.

    Karras et al. 2022, eq. 5 with rho = 1 (so it equals :func:`karras` with ``rho=1``).
    """
    n = _check_n(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    return _finish(_ramp(sigma_max, sigma_min, n), sigma_min, n >= 2, final, device)


# ----------------------------------------------------------------------------------------------
# Discrete (DDPM-trained) models: diffusers' timestep spacings.


def discrete_timesteps(num_train_timesteps: int, n: int, spacing: str = "linspace", steps_offset: int = 0,
                       *, device=None) -> torch.Tensor:
    """The n (possibly fractional) training timesteps, decreasing, of diffusers' ``timestep_spacing``.

    diffusers ``EulerDiscreteScheduler.set_timesteps`` (Lin et al. 2024, arXiv 2305.08891, Table 2):
    linspace: linspace(0, T-1, n) reversed; leading: arange(n) * (T // n), reversed, + steps_offset;
    trailing: round(T - i T/n) - 1. As in diffusers, ``steps_offset`` only moves ``leading``.
    """
    num_train = num_train_timesteps
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train!r}")
    n = _check_n(n)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {list(SPACINGS)}, got {spacing!r}")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
    if spacing != "linspace" and n > num_train:
        raise ValueError(f"n = {n} exceeds num_train_timesteps = {num_train}: {spacing} spacing would repeat timesteps")
    if spacing == "linspace":
        timesteps = _ramp(0, num_train - 1, n).flip(0)
    elif spacing == "leading":
        timesteps = (torch.arange(n - 1, -1, -1, dtype=F64) * (num_train // n)) + steps_offset
        if float(timesteps[0]) > num_train - 1:
            raise ValueError(f"steps_offset = {steps_offset} pushes the first timestep past {num_train - 1}")
    else:
        # arange(n) rather than diffusers' arange(T, 0, -T/n): for some n (61, 103, ... of T = 1000) the
        # float step gives diffusers n + 1 timesteps, the last one -1; here there are always n.
        timesteps = torch.round(num_train - torch.arange(n, dtype=F64) * (num_train / n)) - 1
    return timesteps.to(device if device is not None else "cpu")


def _train_sigmas(alphas_cumprod) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) (Karras et al. 2022, Table 1; diffusers ``set_timesteps``)."""
    alphas_cumprod = torch.as_tensor(alphas_cumprod).to(F64)
    if alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 2 or not bool(
        ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()
    ):
        raise ValueError("alphas_cumprod must be a 1-D array of at least 2 values in (0, 1)")
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def _interp(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table at fractional index t, linear in the table's values (numpy ``np.interp`` as diffusers uses it)."""
    low = t.floor().long().clamp(0, len(table) - 1)
    high = (low + 1).clamp(max=len(table) - 1)
    w = t - low
    return table[low] + w * (table[high] - table[low])


def discrete(alphas_cumprod, n: int, spacing: str = "linspace", steps_offset: int = 0, *, final: str = "zero",
             device=None) -> torch.Tensor:
    """Sigmas of a discrete VP model at diffusers' spacings: sigma_train interpolated at :func:`discrete_timesteps`.

    Equals diffusers ``EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=...,
    final_sigmas_type=final).set_timesteps(n).sigmas`` (``interpolation_type="linear"``: linear in sigma
    between integer timesteps), up to float32 rounding and the trailing 0 of ``final="sigma_min"``
    (module docstring). ``sigma_min`` is the training schedule's sigma at t = 0. The model timestep of
    ``sigmas[i]`` is ``discrete_timesteps(len(alphas_cumprod), n, spacing, steps_offset)[i]`` for i < n.
    """
    train_sigmas = _train_sigmas(alphas_cumprod)
    timesteps = discrete_timesteps(len(train_sigmas), n, spacing, steps_offset)
    return _finish(_interp(timesteps, train_sigmas), float(train_sigmas[0]), float(timesteps[-1]) == 0, final, device)


# ----------------------------------------------------------------------------------------------
# User lists and Align Your Steps.


def custom(values: Sequence[float], *, final: str = "zero", device=None) -> torch.Tensor:
    """A user's sigma list, validated: finite, >= 0, strictly decreasing; 0 appended if it does not end at 0.

    The list's last positive value is its sigma_min, so ``final="sigma_min"`` gives the same sigmas as
    ``"zero"`` (module docstring); it is accepted so that every schedule takes ``final=``.
    """
    _check_final(final)
    try:
        sigmas = torch.as_tensor(values, dtype=F64).cpu()
    except (TypeError, ValueError) as err:
        raise ValueError(f"values must be a list of numbers: {err}") from None
    if sigmas.ndim != 1 or len(sigmas) < 1:
        raise ValueError(f"values must be a non-empty 1-D list, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError(f"values must be finite and >= 0, got {sigmas.tolist()}")
    if float(sigmas[-1]) != 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    if len(sigmas) < 2:
        raise ValueError("values must hold at least one sigma > 0")
    rising = (sigmas[1:] >= sigmas[:-1]).nonzero().flatten().tolist()
    if rising:
        i = rising[0]
        raise ValueError(f"values must be strictly decreasing: values[{i}]={float(sigmas[i])!r} <= values[{i + 1}]={float(sigmas[i + 1])!r}")
    return sigmas.to(device if device is not None else "cpu")


# Align Your Steps (Sabour, Fidler, Kreis, ICML 2024): 10-step sigmas optimised per model, as in
# diffusers ``schedulers/scheduling_utils.py`` ``AysSchedules`` (without their trailing 0).
AYS_SIGMAS = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034),
}


def ays(n: int = 10, model: str = "sd15", *, final: str = "zero", device=None) -> torch.Tensor:
    """Align Your Steps sigmas for ``model``, log-linearly interpolated to n points, then 0.

    The interpolation is the AYS authors' ``loglinear_interp`` (NVIDIA AYS how-to page): log sigma
    linear in the step fraction between table entries; n = 10 gives the table itself. The table's last
    entry is sigma_min: every n >= 2 ends on it, so ``final="sigma_min"`` differs from ``"zero"`` only for
    n = 1 (``[sigma_max, sigma_min, 0]``).
    """
    n = _check_n(n)
    if model not in AYS_SIGMAS:
        raise ValueError(f"model must be one of {sorted(AYS_SIGMAS)}, got {model!r}")
    table = torch.tensor(AYS_SIGMAS[model], dtype=F64)
    return _finish(loglinear_interp(table, n), float(table[-1]), n >= 2, final, device)


def loglinear_interp(points: torch.Tensor, n: int) -> torch.Tensor:
    """``points`` (positive, decreasing) resampled to n points: log sigma linear in the step fraction.

    The AYS authors' ``loglinear_interp`` (NVIDIA AYS how-to page; ComfyUI ``nodes_align_your_steps.py``):
    np.interp of log sigma at linspace(0, 1, n) over linspace(0, 1, len(points)). Written on the fractional
    index with a^(1-w) b^w, so n = len(points) returns ``points`` bitwise and the first and last points are
    kept exactly for every n >= 2. Used by :func:`ays` and by learned schedules at another step count
    (optsample.learned_schedules.files.interpolate).
    """
    n = _check_n(n)
    points = torch.as_tensor(points, dtype=F64)
    position = _ramp(0, len(points) - 1, n)  # fractional index into points
    low = position.floor().long()
    high, w = (low + 1).clamp(max=len(points) - 1), position - low
    return points[low] ** (1 - w) * points[high] ** w


# ----------------------------------------------------------------------------------------------
# Registry: a config says ``schedule=karras`` and passes the parameters.

_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "ays": ays, "custom": custom, "discrete": discrete, "exponential": exponential, "karras": karras,
    "linear": linear, "polyexponential": polyexponential, "vp": vp,
}


def available() -> list[str]:
    """Names of the schedules :func:`get` knows, sorted."""
    return sorted(_SCHEDULES)


def register(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Add schedule ``name`` = ``fn(..., n, **params)`` from a higher layer (``learned``, registered by
    optsample.learned_schedules.files, which ``import optsample`` loads); an ``n`` that defaults to None may be omitted."""
    if name in _SCHEDULES:
        raise ValueError(f"schedule {name!r} is already registered")
    _SCHEDULES[name] = fn


def function(name: str) -> Callable[..., torch.Tensor]:
    """The function behind schedule ``name``."""
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; available: {available()}")
    return _SCHEDULES[name]


def get(name: str, n: int | None = None, **params) -> torch.Tensor:
    """Schedule ``name`` with n steps, e.g. ``get("karras", 20, sigma_max=14.6)``.

    ``custom`` takes ``values=[...]`` and, when n is given, checks it has n steps. An unknown name
    or parameter raises ValueError listing what exists.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; available: {available()}")
    fn = _SCHEDULES[name]
    accepted = [p for p in inspect.signature(fn).parameters if p != "n"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"schedule {name!r} has no parameter(s) {unknown}; it takes {accepted}")
    if name == "custom":
        sigmas = fn(**params)
        if n is not None and len(sigmas) - 1 != n:
            raise ValueError(f"n = {n} but the custom values give {len(sigmas) - 1} steps")
        return sigmas
    if n is None and inspect.signature(fn).parameters["n"].default is inspect.Parameter.empty:
        raise ValueError(f"schedule {name!r} needs n (the number of steps)")
    return fn(n=n, **params)
