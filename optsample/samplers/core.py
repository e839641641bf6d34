"""The scaffolding every sampler shares: the counting denoiser, noise, callbacks and the entry point.

Convention (../shared/DESIGN.md): ``denoised = model(x, sigma, **extra)`` with ``x = x0 + sigma * eps``
and ``sigma`` a [batch] tensor. The probability-flow ODE is ``dx/dsigma = d`` with
``d = (x - denoised) / sigma`` (Karras et al. 2022, eq. 3 with s(t)=1, sigma(t)=t).

A sampler is ``fn(model, x, sigmas, *, callback, noise_sampler, **hparams) -> x`` where ``model`` is
the :class:`Denoiser` built here: it takes a python-float sigma, binds ``extra_args``, counts every
evaluation (NFE) and refuses non-finite outputs. Samplers never count, seed or check anything
themselves.

The noise contract. ``noise_sampler(sigma, sigma_next)`` returns N(0, I) noise shaped like ``x``, the noise
of the noise-level interval between its two arguments (k-diffusion's signature). There are two kinds:

- *streams* give fresh, independent noise at every call whatever the arguments (:class:`SeededNoise`,
  ``torch.randn_like``); they say so with ``independent_calls = True``;
- *path samplers* are functions of the interval: the standardised increment of one fixed Brownian path
  W over [sigma_min, sigma_max], (W(sigma) - W(sigma_next)) / sqrt(|sigma - sigma_next|) (k-diffusion's
  ``BrownianTreeNoiseSampler``). Disjoint intervals give independent noise, the same interval the same
  noise, and outside [sigma_min, sigma_max] the path is clamped (torchsde), i.e. no noise at all. Any
  noise sampler without ``independent_calls`` is treated as one.

Samplers ask for the noise of the interval a step spans (sigma_next..sigma for a step, sigma..sigma_hat
for churn, t_min..t_max for a restart jump), and may split an interval into disjoint pieces
(``dpmpp_sde``). They may ask again for an interval already served (each of Restart's K jumps, the
re-run steps of a warm restart) or above the schedule (churn at sigma_max): :class:`PathNoise` then gives
fresh noise from the run's stream instead of the path's, since the process needs new noise there. So a
path sampler drives every step of a sample's first pass through the schedule, and every request is
independent of every other that the process needs independent.

Sigmas that carry gradients (a schedule learned by backpropagation, optsample/learned_schedules/gradient.py):
every sampler's output is then a differentiable function of the sigmas, with the noise held fixed as
standardised draws z (the reparameterisation x + std(sigmas) z). A stream's z does not depend on the sigmas
at all, so for fixed seeds the gradient is the exact derivative of the run (tests/test_sampler_gradients.py
checks it against finite differences for every registered sampler). A path's z does: (W(s) - W(s')) /
sqrt(|s - s'|) moves with s, and a Brownian path has no derivative in time (torchsde also reads the times as
python floats, so its values carry no gradient); :class:`PathNoise` therefore hands the path detached floats
and the gradient treats the path's standardised increments as fixed, i.e. it is the derivative of the run
that replays those z's, not of the run that re-draws the path at the moved sigmas.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from . import registry

# Seeds of the per-sample step-noise streams are offset from the seeds of the initial noise so the
# two never share a stream (see :func:`initial_noise`).
STEP_NOISE_SEED_OFFSET = 0x5EED_0F_57E9


class NonFiniteError(FloatingPointError):
    """The model returned NaN or inf; the message names the step, sigma and NFE."""


def on_host(tensor: torch.Tensor) -> bool:
    """True when reading ``tensor``'s values in python (``float``, ``bool``, ``.item()``) costs no device
    synchronisation: the CPU. The fast paths that read values are taken only then; the hot path on an
    accelerator never reads a tensor (tests pretend a CPU tensor is not on the host by patching this)."""
    return tensor.device.type == "cpu"


class Denoiser:
    """Wraps a model in the convention: sigma broadcast to [batch], NFE counted, outputs checked.

    ``nfe`` counts model evaluations (one per call, whatever the batch size). ``step`` is the index of
    the latest step callback. Every sampler calls the callback after a step's first evaluation, so an
    evaluation belongs to the step of the *next* event if that is a callback (a step's first evaluation),
    else to ``step`` (a corrector evaluation, e.g. heun's). On the CPU a non-finite output therefore
    raises at the next event (next evaluation, callback or the end), before the model is called again; on
    an accelerator the check is deferred to :meth:`raise_if_non_finite` (called by :func:`sample` at the
    end, and after every 64 evaluations) so that it costs no device synchronisation per evaluation. A
    deferred evaluation keeps only a [batch] bool tensor of which samples were finite (never ``denoised``
    itself: 64 of those would be 3 GB for a 64x3x256x256 batch).
    """

    DEFER_LIMIT = 64  # deferred evaluations checked together (one synchronisation each 64 evaluations)

    def __init__(self, model: Callable, extra_args: dict | None = None, check_finite: bool = True):
        self.inner = model
        self.extra_args = dict(extra_args or {})
        self.check_finite = check_finite
        self.nfe = 0
        self.step = 0
        self._pending: list = []  # [per-sample finite flags on the device, step, sigma, nfe] for deferred checks
        self._latest: list | None = None  # the latest evaluation's record, until the next event fixes its step
        self._bad: list | None = None  # a non-finite CPU evaluation's record, raised at the next event

    def at_callback(self, i: int) -> None:
        """Step ``i``'s callback: the evaluation just before it was step ``i``'s first one."""
        if self._latest is not None:
            self._latest[1] = i
            self._latest = None
        self.step = i
        if self._bad is not None:
            self._raise(*self._bad)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor, **extra) -> torch.Tensor:
        self._latest = None  # an evaluation follows: the previous one belonged to the step in progress
        if self._bad is not None:
            self._raise(*self._bad)
        if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
            sigma_batch = sigma.to(x.dtype)
        elif isinstance(sigma, torch.Tensor) and sigma.requires_grad:  # a learned step: keep the graph
            sigma_batch = sigma.to(x.dtype).expand(x.shape[0])
        else:
            sigma_batch = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        denoised = self.inner(x, sigma_batch, **self.extra_args, **extra)
        self.nfe += 1
        check_model_output(denoised, x)
        if self.check_finite:
            if on_host(denoised):
                # min and max are NaN if any element is, and +-inf if any element is: two numbers to test
                # instead of a full boolean mask (about 10x cheaper than isfinite(denoised).all()).
                low, high = torch.aminmax(denoised.detach() if denoised.requires_grad else denoised)
                if not math.isfinite(float(low) + float(high)):  # python floats: no overflow, NaN/inf propagate
                    self._bad = self._latest = [_finite_per_sample(denoised), self.step, sigma_batch[:1], self.nfe]
            else:
                if len(self._pending) >= self.DEFER_LIMIT:
                    self.raise_if_non_finite()
                self._latest = [_finite_per_sample(denoised), self.step, sigma_batch[:1], self.nfe]
                self._pending.append(self._latest)
        return denoised.to(x.dtype)

    def raise_if_non_finite(self) -> None:
        """Raise for the first deferred evaluation that was not finite (one synchronisation)."""
        if self._bad is not None:
            self._raise(*self._bad)
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.stack([finite for finite, *_ in pending]).cpu()  # [evaluations, batch]
        bad = (~flags.all(dim=1)).nonzero()
        if len(bad):
            _, step, sigma, nfe = pending[int(bad[0])]
            self._raise(flags[int(bad[0])], step, sigma, nfe)

    def _raise(self, finite, step, sigma, nfe):
        self._bad = self._latest = None
        self._pending = []
        bad = (~finite).nonzero().flatten().tolist()
        # a model may say why its output is not finite (a guided denoiser: its guidance gradient was not)
        what = getattr(self.inner, "non_finite_reason", None) or "model returned non-finite values"
        raise NonFiniteError(f"{what} at step {step} (sigma={float(sigma[0]):.6g}, NFE {nfe}) for batch item(s) {bad[:10]}")


def check_model_output(denoised, x: torch.Tensor) -> None:
    """The model must return a tensor of ``x``'s shape (a wrong shape would broadcast silently)."""
    if not isinstance(denoised, torch.Tensor):
        raise TypeError(f"the model must return a tensor (denoised, shape {tuple(x.shape)}), got {type(denoised).__name__}")
    if denoised.shape != x.shape:
        raise ValueError(f"the model returned shape {tuple(denoised.shape)}, but x has shape {tuple(x.shape)}")


def _finite_per_sample(denoised: torch.Tensor) -> torch.Tensor:
    """[batch] bool: sample k's output is all finite (its min and max are, per sample, as in the CPU check)."""
    low, high = torch.aminmax(denoised.reshape(denoised.shape[0], -1), dim=1)
    return torch.isfinite(low) & torch.isfinite(high)


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
    values = sigma_values(sigmas)
    return ((i, values[i], values[i + 1]) for i in range(len(values) - 1))


def sigma_values(sigmas: torch.Tensor) -> list:
    """The entries of a sigma array as python floats (one ``tolist``), or as 0-dim tensors that stay in the
    autograd graph when ``sigmas`` requires grad (see :func:`steps`)."""
    return list(sigmas.unbind()) if sigmas.requires_grad else sigmas.tolist()


def _scalar_fn(math_fn: Callable, torch_fn: Callable) -> Callable:
    def apply(value):
        if type(value) is float:  # the ordinary path first: isinstance(x, torch.Tensor) costs ~0.3 us (torch's metaclass)
            return math_fn(value)
        return torch_fn(value) if isinstance(value, torch.Tensor) else math_fn(value)

    apply.__name__ = math_fn.__name__
    apply.__doc__ = f"math.{math_fn.__name__} of a python float, torch.{torch_fn.__name__} of a (0-dim) tensor."
    return apply


# Scalar functions of sigmas that accept a python float (the ordinary path) or a tensor (see steps()).
log = _scalar_fn(math.log, torch.log)
exp = _scalar_fn(math.exp, torch.exp)
expm1 = _scalar_fn(math.expm1, torch.expm1)
sqrt = _scalar_fn(math.sqrt, torch.sqrt)


def report_step(callback, x: torch.Tensor, i: int, sigma: float, sigma_next: float, denoised: torch.Tensor,
                sigma_hat: float | None = None) -> None:
    """Call the step callback with k-diffusion's keys (``x, i, sigma, sigma_hat, denoised``) and ``sigma_next``;
    ``sigma_hat`` (the churned noise level) defaults to ``sigma``."""
    callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
              "sigma_next": sigma_next, "denoised": denoised})


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic move to ``sigma_down`` and fresh noise of std ``sigma_up``.

    sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)  (k-diffusion ``get_ancestral_step``; with eta = 1 it
    is DDPM's posterior variance, with eta in [0, 1] DDIM's sigma_t(eta), Song et al. 2021, eq. 16).
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    if sigma_up is sigma_next:  # clipped (eta > 1 can ask for more): sigma_down = sqrt(0) = 0, derivative 0, not NaN
        return 0.0, sigma_up
    sigma_down = sqrt(sigma_next**2 - sigma_up**2)
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
    return add_noise(x, noise_sampler, sigma_hat, sigma, sqrt(sigma_hat**2 - sigma**2), s_noise), sigma_hat


# ----------------------------------------------------------------------------------------------
# Noise: per-sample streams so that sample k is identical whatever the batch size.


def fold_seed(seed: int) -> int:
    """A 64-bit seed folded to the 32 bits torch's CPU generator keeps (mt19937 seeds from the low 32 bits
    only, so seeds (s << 32) + k would all collide with k). Seeds below 2**32 are unchanged."""
    return (seed ^ ((seed >> 32) * 0x9E3779B9)) & 0xFFFFFFFF


class PathNoise:
    """A path noise sampler held to the contract (module doc): requests inside [sigma_low, sigma_high] that
    overlap no interval served before come from ``path``; the rest from ``fresh``, a stream."""

    def __init__(self, path: Callable, fresh: Callable, sigma_low: float, sigma_high: float):
        self.path, self.fresh = path, fresh
        self.sigma_low, self.sigma_high = sigma_low, sigma_high
        self.served: list[tuple[float, float]] = []  # disjoint (low, high) intervals taken from the path

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        # sigmas that carry gradients (0-dim tensors): the increments are held fixed (module doc)
        sigma, sigma_next = _value(sigma), _value(sigma_next)
        low, high = sorted((float(sigma), float(sigma_next)))
        inside = self.sigma_low <= low < high <= self.sigma_high
        if inside and not any(low < b and a < high for a, b in self.served):  # touching ends do not overlap
            self.served.append((low, high))
            return self.path(sigma, sigma_next)
        return self.fresh(sigma, sigma_next)


def _value(sigma: float | torch.Tensor) -> float:
    """A python float for a sigma, detached from any autograd graph."""
    return sigma.item() if isinstance(sigma, torch.Tensor) else sigma


def run_noise(noise_sampler: Callable | None, x: torch.Tensor, sigmas: torch.Tensor, seeds) -> Callable:
    """The noise sampler a run uses: the per-sample stream of ``seeds`` (torch's global RNG without seeds),
    or the user's ``noise_sampler``; a path sampler is wrapped in :class:`PathNoise` over the schedule's
    positive range, its fresh noise from that same stream."""
    stream = SeededNoise(x, seeds) if seeds is not None else _GlobalNoise(x)
    if noise_sampler is None:
        return stream
    if getattr(noise_sampler, "independent_calls", False):
        return noise_sampler
    values = sigmas.tolist()
    positive = [s for s in values if s > 0]
    return PathNoise(noise_sampler, stream, min(positive), max(positive))


class _GlobalNoise:
    """torch.randn_like(x) from torch's global RNG: a stream."""

    independent_calls = True

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn_like(self.x)


class SeededNoise:
    """A k-diffusion compatible ``noise_sampler(sigma, sigma_next)`` with one generator per sample.

    Sample k's noise depends only on ``seeds[k]`` (never on the batch size or on the other samples):
    the fix for k-diffusion issue #25 / AUTOMATIC1111 #5210. Noise is drawn on the CPU, so a seed
    gives the same numbers on every device, then moved to ``x``'s device and dtype. A stream: every call
    gives new noise (the noise contract, module doc).
    """

    independent_calls = True

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
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))  # a CUDA generator draws on CUDA
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
        info.setdefault("sigma_index", info["i"])  # differs from i only where restarts re-run steps
        self.denoiser.at_callback(info["i"])
        if self.progress is not None:
            self.progress.update(1)
        if self.user_callback is not None:
            self.user_callback(info)


def check_x(x) -> None:
    """``x`` must be a finite floating-point tensor [batch, ...] with batch >= 1 (checked before any model call)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype} (convert it: x.float())")
    if x.ndim < 2:
        raise ValueError(f"x must be batch-first [batch, ...] with at least 2 dimensions, got shape {tuple(x.shape)} "
                         "(one sample: x[None])")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x must hold at least one sample with at least one element, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x (the starting point) has non-finite values in batch item(s) {bad[:10]}")


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
    (one base seed drawn from it), else from torch's global RNG; a Brownian-tree ``noise_sampler`` takes
    its fresh noise (repeated and out-of-range requests, module doc) from ``seeds`` / ``generator`` too. Hyper-parameters are validated
    before the first model evaluation. Returns ``x`` at ``sigmas[-1]`` in ``x``'s dtype, or
    ``(x, SampleInfo)`` with ``return_info=True``.
    """
    spec = _spec_of(sampler)
    params = spec.make_params(**hparams)
    check_x(x)
    input_dtype = x.dtype
    x = x.to(state_dtype(x.dtype))
    sigmas = check_sigmas(sigmas, x)
    if seeds is None and generator is not None and not getattr(noise_sampler, "independent_calls", False):
        seeds = seeds_from_generator(generator, x.shape[0])
    noise_sampler = run_noise(noise_sampler, x, sigmas, seeds)
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model, extra_args)
    if isinstance(model, Denoiser) and extra_args:
        raise ValueError("pass extra_args to the Denoiser, not to sample(), when giving a Denoiser")
    start_run = getattr(denoiser.inner, "start_run", None)
    if start_run is not None:  # a stateful model (a guided denoiser) starts a new run: its rule state resets
        start_run(denoiser)
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


def dummy_schedule(n_steps: int) -> torch.Tensor:
    """linspace(10, 0): the stand-in schedule of :func:`measure_nfe` when none is given."""
    return torch.linspace(10.0, 0.0, n_steps + 1, dtype=torch.float64)


def measure_nfe(sampler: str | Callable, n_steps: int, *, schedule: Callable[[int], torch.Tensor] | None = None,
                **hparams) -> int:
    """NFE that ``sampler`` really uses for ``n_steps`` steps of ``schedule(n_steps)`` (a sigma array), measured
    on a one-sample dummy run. Give the schedule that will be run: restarts, warm restarts and a final-sigma
    step depend on it (``schedule=None``: the stand-in :func:`dummy_schedule`)."""
    sigmas = (schedule or dummy_schedule)(n_steps)
    x = torch.zeros(1, 1, dtype=torch.float64)
    with warnings.catch_warnings():  # a sampler's warnings about this schedule belong to the real run
        warnings.simplefilter("ignore")
        _, info = sample(sampler, lambda x, sigma: x * 0, x, sigmas, seeds=[0], return_info=True, **hparams)
    return info.nfe


class BudgetError(ValueError):
    """An NFE budget that even one step of the schedule exceeds."""


def steps_for_nfe(sampler: str | Callable, nfe: int, *, schedule: Callable[[int], torch.Tensor] | None = None,
                  **hparams) -> int:
    """The largest step count n whose measured NFE on ``schedule(n)`` does not exceed ``nfe``.

    NFE grows with n, so the search doubles n until the budget is passed, then bisects: at most about
    2 log2(nfe) dummy runs. ``measure_nfe(n) <= nfe < measure_nfe(n + 1)`` holds for the answer, so the run
    leaves less than one step's cost unused. A sampler that rejects short schedules (warm restarts need a
    sigma inside their range) starts the search at the first step count it accepts. Raises
    :class:`BudgetError` if the shortest schedule it runs already costs more.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")

    def fits(n_steps: int) -> bool:
        return measure_nfe(sampler, n_steps, schedule=schedule, **hparams) <= nfe

    low = 1
    while True:  # the shortest schedule the sampler accepts (every step costs >= 1, so at most nfe tries)
        try:
            cost = measure_nfe(sampler, low, schedule=schedule, **hparams)
            break
        except ValueError:
            if low >= nfe:
                raise
            low += 1
    if cost > nfe:
        name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", sampler)
        raise BudgetError(f"nfe = {nfe} is below the {cost} evaluations of {low} step(s) of {name}, "
                          f"the fewest it runs on this schedule")
    high = low + 1  # fits(low); find high with not fits(high)
    while high <= nfe and fits(high):
        low, high = high, 2 * high
    high = min(high, nfe + 1)  # every step costs >= 1 evaluation, so nfe + 1 steps never fit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low
