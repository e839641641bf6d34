"""The scaffolding every sampler shares: the counting denoiser, noise, callbacks and the entry point.

Convention (../shared/DESIGN.md): ``denoised = model(x, sigma, **extra)`` with ``x = x0 + sigma * eps``
and ``sigma`` a [batch] tensor. The probability-flow ODE is ``dx/dsigma = d`` with
``d = (x - denoised) / sigma`` (Karras et al. 2022, eq. 3 with s(t)=1, sigma(t)=t).

A sampler is ``fn(model, x, sigmas, *, callback, noise_sampler, **hparams) -> x`` where ``model`` is
the :class:`Denoiser` built here: it takes a python-float sigma, binds ``extra_args``, counts every
evaluation (NFE) and refuses non-finite outputs. Samplers never count, seed or check anything
themselves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from . import registry

# Seeds of the per-sample step-noise streams are offset from the seeds of the initial noise so the
# two never share a stream (see :func:`initial_noise`).
STEP_NOISE_SEED_OFFSET = 0x5EED_0F_57E9


class NonFiniteError(FloatingPointError):
    """The model returned NaN or inf; the message names the step, sigma and NFE."""


class Denoiser:
    """Wraps a model in the convention: sigma broadcast to [batch], NFE counted, outputs checked.

    ``nfe`` counts model evaluations (one per call, whatever the batch size). ``step`` is the
    index of the step being taken; the callback wrapper advances it. On the CPU a non-finite output
    raises at once; on an accelerator the check is deferred to :meth:`raise_if_non_finite` (called by
    :func:`sample` at the end) so that it costs no device synchronisation per evaluation.
    """

    def __init__(self, model: Callable, extra_args: dict | None = None, check_finite: bool = True):
        self.inner = model
        self.extra_args = dict(extra_args or {})
        self.check_finite = check_finite
        self.nfe = 0
        self.step = 0
        self._pending: list = []  # (finite flag on device, step, sigma, nfe, output) for deferred checks

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor, **extra) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
            sigma_batch = sigma.to(x.dtype)
        elif isinstance(sigma, torch.Tensor) and sigma.requires_grad:  # a learned step: keep the graph
            sigma_batch = sigma.to(x.dtype).expand(x.shape[0])
        else:
            sigma_batch = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        denoised = self.inner(x, sigma_batch, **self.extra_args, **extra)
        self.nfe += 1
        if self.check_finite:
            # min and max are NaN if any element is, and +-inf if any element is: two numbers to test
            # instead of a full boolean mask (about 10x cheaper than isfinite(denoised).all()).
            low, high = torch.aminmax(denoised.detach() if denoised.requires_grad else denoised)
            if denoised.device.type == "cpu":
                if not math.isfinite(float(low) + float(high)):  # python floats: no overflow, NaN/inf propagate
                    self._raise(denoised, self.step, sigma_batch, self.nfe)
            else:
                self._pending.append((torch.stack((low, high)), self.step, sigma_batch, self.nfe, denoised))
                if len(self._pending) >= 64:
                    self.raise_if_non_finite()
        return denoised.to(x.dtype)

    def raise_if_non_finite(self) -> None:
        """Raise for the first deferred evaluation that was not finite (one synchronisation)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.isfinite(torch.stack([extremes for extremes, *_ in pending]).float()).all(dim=1).cpu()
        if not bool(flags.all()):
            _, step, sigma_batch, nfe, denoised = pending[int((~flags).nonzero()[0])]
            self._raise(denoised, step, sigma_batch, nfe)

    @staticmethod
    def _raise(denoised, step, sigma_batch, nfe):
        bad = (~torch.isfinite(denoised)).flatten(1).any(1).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"model returned non-finite values at step {step} (sigma={float(sigma_batch[0]):.6g}, "
            f"NFE {nfe}) for batch item(s) {bad[:10]}"
        )


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative = the 'gradient': d = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def add_scaled(x: torch.Tensor, d: torch.Tensor, scale) -> torch.Tensor:
    """x + scale * d as one fused ``add`` for a python-float scale; ``x + d * scale`` for a tensor scale
    (a sigma that carries gradients, see :func:`steps`), which ``add(alpha=)`` does not accept."""
    if isinstance(scale, torch.Tensor):
        return x + d * scale
    return x.add(d, alpha=scale)


def euler_step(x: torch.Tensor, d: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x + (sigma_next - sigma) * d: one Euler / SGD step with lr = sigma - sigma_next (DESIGN.md), as one
    fused ``add`` (half the tensor operations of ``x + d * dt``; every sampler uses it, so identities
    such as sgd == euler stay bitwise)."""
    return add_scaled(x, d, sigma_next - sigma)


def steps(sigmas: torch.Tensor) -> Iterator[tuple[int, float, float]]:
    """``(i, sigma, sigma_next)`` as python floats for each step of a sigma array.

    A sigma tensor that requires grad (a schedule being learned by backpropagation through the sampler,
    optsample/learned_schedules/gradient.py) gives 0-dim tensor entries instead, so every step stays in the
    autograd graph; the samplers' scalar arithmetic then goes through :func:`log`, :func:`exp`, ...
    below, which take either. The ordinary path (no grad) is unchanged: one ``tolist``.
    """
    if sigmas.requires_grad:
        return ((i, sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1))
    values = sigmas.tolist()
    return ((i, values[i], values[i + 1]) for i in range(len(values) - 1))


def _scalar_fn(math_fn: Callable, torch_fn: Callable) -> Callable:
    def apply(value):
        return torch_fn(value) if isinstance(value, torch.Tensor) else math_fn(value)

    apply.__name__ = math_fn.__name__
    apply.__doc__ = f"math.{math_fn.__name__} of a python float, torch.{torch_fn.__name__} of a (0-dim) tensor."
    return apply


# Scalar functions of sigmas that accept a python float (the ordinary path) or a tensor (see steps()).
log = _scalar_fn(math.log, torch.log)
exp = _scalar_fn(math.exp, torch.exp)
expm1 = _scalar_fn(math.expm1, torch.expm1)
sqrt = _scalar_fn(math.sqrt, torch.sqrt)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic move to ``sigma_down`` and fresh noise of std ``sigma_up``.

    sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)  (k-diffusion ``get_ancestral_step``; with eta = 1 it
    is DDPM's posterior variance, with eta in [0, 1] DDIM's sigma_t(eta), Song et al. 2021, eq. 16).
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def add_noise(x: torch.Tensor, noise_sampler, sigma: float, sigma_next: float, std: float, s_noise: float = 1.0):
    """x + std * s_noise * z, z from ``noise_sampler(sigma, sigma_next)``; a no-op when std == 0."""
    if std == 0:
        return x
    return x + noise_sampler(sigma, sigma_next) * (s_noise * std)


def churn(x, sigma: float, n_steps: int, noise_sampler, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float):
    """EDM's stochastic 'churn': raise the noise level to sigma_hat = sigma (1 + gamma) before a step.

    gamma = min(s_churn / n_steps, sqrt(2) - 1) inside [s_tmin, s_tmax], else 0; the added noise has
    std sqrt(sigma_hat^2 - sigma^2) (Karras et al. 2022, Algorithm 2, lines 5-6; k-diffusion
    ``sample_euler``). Returns ``(x_hat, sigma_hat)``.
    """
    gamma = min(s_churn / n_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    return add_noise(x, noise_sampler, sigma_hat, sigma, math.sqrt(sigma_hat**2 - sigma**2), s_noise), sigma_hat


# ----------------------------------------------------------------------------------------------
# Noise: per-sample streams so that sample k is identical whatever the batch size.


def fold_seed(seed: int) -> int:
    """A 64-bit seed folded to the 32 bits torch's CPU generator keeps (mt19937 seeds from the low 32 bits
    only, so seeds (s << 32) + k would all collide with k). Seeds below 2**32 are unchanged."""
    return (seed ^ ((seed >> 32) * 0x9E3779B9)) & 0xFFFFFFFF


class SeededNoise:
    """A k-diffusion compatible ``noise_sampler(sigma, sigma_next)`` with one generator per sample.

    Sample k's noise depends only on ``seeds[k]`` (never on the batch size or on the other samples):
    the fix for k-diffusion issue #25 / AUTOMATIC1111 #5210. Noise is drawn on the CPU, so a seed
    gives the same numbers on every device, then moved to ``x``'s device and dtype.
    """

    def __init__(self, x: torch.Tensor, seeds: Sequence[int]):
        if len(seeds) != x.shape[0]:
            raise ValueError(f"seeds has {len(seeds)} entries but the batch has {x.shape[0]} samples")
        self.shape = tuple(x.shape[1:])
        self.dtype, self.device = x.dtype, x.device
        self.generators = [torch.Generator().manual_seed(fold_seed((int(s) + STEP_NOISE_SEED_OFFSET) % 2**63)) for s in seeds]

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.generators])
        return noise.to(self.device)


def initial_noise(seeds: Sequence[int], shape: Sequence[int], *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normal starting noise [len(seeds), *shape], sample k drawn from ``seeds[k]`` alone.

    Multiply by ``sigmas[0]`` to start a sampler. Uses a stream distinct from :class:`SeededNoise`.
    """
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(fold_seed(int(s))), dtype=dtype) for s in seeds]
    return torch.stack(noise).to(device)


def seeds_from_generator(generator: torch.Generator, n: int) -> list[int]:
    """Per-sample seeds base + k, with ``base`` one draw from ``generator`` (batch-size independent)."""
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    return [base + k for k in range(n)]


# ----------------------------------------------------------------------------------------------
# The entry point.


@dataclass
class SampleInfo:
    """What a sampling call really did."""

    sampler: str
    nfe: int
    steps: int
    hparams: Any


class _Reporter:
    """The callback every sampler calls once per step; advances the denoiser's step index."""

    def __init__(self, denoiser: Denoiser, user_callback: Callable | None, progress):
        self.denoiser = denoiser
        self.user_callback = user_callback
        self.progress = progress

    def __call__(self, info: dict) -> None:
        self.denoiser.step = info["i"] + 1
        if self.progress is not None:
            self.progress.update(1)
        if self.user_callback is not None:
            self.user_callback(info)


def check_sigmas(sigmas, x: torch.Tensor) -> torch.Tensor:
    """A 1-D, finite, non-negative, strictly decreasing sigma tensor in the state dtype."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).to(x.device, x.dtype)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D array with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError(f"sigmas must be finite and non-negative, got {sigmas.tolist()}")
    rising = (sigmas[1:] >= sigmas[:-1]).nonzero().flatten().tolist()
    if rising:
        i = rising[0]
        raise ValueError(
            f"sigmas must be strictly decreasing: sigmas[{i}]={float(sigmas[i]):.6g} <= sigmas[{i + 1}]={float(sigmas[i + 1]):.6g}"
        )
    return sigmas


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Samplers keep their state in float64 when given float64, else float32 (never half precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample(
    sampler: str | Callable,
    model: Callable,
    x: torch.Tensor,
    sigmas,
    *,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    noise_sampler: Callable | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    return_info: bool = False,
    **hparams,
):
    """Run sampler ``sampler`` (a registered name or a registered function) from ``x`` along ``sigmas``.

    ``x`` is the starting point at ``sigmas[0]`` (noise already scaled by ``sigmas[0]``). Randomness
    comes from ``noise_sampler`` if given, else from per-sample ``seeds``, else from ``generator``
    (one base seed drawn from it), else from torch's global RNG. Hyper-parameters are validated
    before the first model evaluation. Returns ``x`` at ``sigmas[-1]`` in ``x``'s dtype, or
    ``(x, SampleInfo)`` with ``return_info=True``.
    """
    spec = _spec_of(sampler)
    params = spec.make_params(**hparams)
    input_dtype = x.dtype
    x = x.to(state_dtype(x.dtype))
    sigmas = check_sigmas(sigmas, x)
    if noise_sampler is None:
        if seeds is None and generator is not None:
            seeds = seeds_from_generator(generator, x.shape[0])
        noise_sampler = SeededNoise(x, seeds) if seeds is not None else (lambda sigma, sigma_next: torch.randn_like(x))
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model, extra_args)
    if isinstance(model, Denoiser) and extra_args:
        raise ValueError("pass extra_args to the Denoiser, not to sample(), when giving a Denoiser")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sigmas) - 1, desc=spec.name, leave=False)
    nfe_before = denoiser.nfe
    try:
        out = spec.fn(
            denoiser, x, sigmas, callback=_Reporter(denoiser, callback, bar), noise_sampler=noise_sampler,
            **dataclasses.asdict(params),
        )
        denoiser.raise_if_non_finite()
    finally:
        if bar is not None:
            bar.close()
    out = out.to(input_dtype)
    if return_info:
        return out, SampleInfo(spec.name, denoiser.nfe - nfe_before, len(sigmas) - 1, params)
    return out


def _spec_of(sampler: str | Callable) -> registry.SamplerSpec:
    if isinstance(sampler, str):
        return registry.get(sampler)
    for spec in registry._REGISTRY.values():
        if spec.fn is sampler:
            return spec
    raise TypeError(f"{sampler!r} is not a registered sampler; register it with optsample.samplers.register")


def measure_nfe(sampler: str | Callable, n_steps: int, **hparams) -> int:
    """NFE that ``sampler`` really uses for ``n_steps`` steps, measured on a one-sample dummy run."""
    sigmas = torch.linspace(10.0, 0.0, n_steps + 1, dtype=torch.float64)
    x = torch.zeros(1, 1, dtype=torch.float64)
    _, info = sample(sampler, lambda x, sigma: x * 0, x, sigmas, seeds=[0], return_info=True, **hparams)
    return info.nfe


def steps_for_nfe(sampler: str | Callable, nfe: int, **hparams) -> int:
    """The largest step count whose measured NFE does not exceed ``nfe`` (at least 1 step)."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    best = 1
    for n_steps in range(1, nfe + 1):
        if measure_nfe(sampler, n_steps, **hparams) > nfe:
            break
        best = n_steps
    return best
