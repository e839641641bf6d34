"""The guided denoiser: D_y(x, sigma) = D(x, sigma) + sigma^2 * lr_t * direction, direction = rule(g).

With ``rule="sgd"``, ``lr=1`` and a :class:`~.objectives.LikelihoodScore` it is Tweedie's posterior
denoiser E[x0 | x_sigma, y] = D + sigma^2 grad_x log p(y | x_sigma) (Efron 2011; Chung et al. 2023, eq. 5),
so every sampler and update rule runs guided unchanged and samples the posterior as well as it samples
the prior. The model keeps the convention, so the framework's :class:`~optsample.samplers.core.Denoiser`
still counts one NFE per call and checks D_y for non-finite values; the guidance gradient g is checked
here, naming the step and sigma.

**Rule state** (momenta, Adam moments) belongs to one sampling run: it resets when
:func:`optsample.sample` starts a run (it calls :meth:`GuidedDenoiser.start_run`), when the batch shape
changes, and on :meth:`GuidedDenoiser.reset`. One call of the model is one step of the rule (a
second-order sampler's two evaluations per step are two rule steps). Calling a sampler function
directly (the k-diffusion convention) does not start a run: call ``reset()`` between runs.
"""

from __future__ import annotations

import math

import torch

from ..samplers import transforms as T
from ..samplers.core import NonFiniteError, ancestral_step
from .rules import make_rule

LR_SCHEDULES = ("constant", "inverse_sigma2", "cosine", "dps", "adam_dps", "mpgd", "fastai")
POST_STEP_SCHEDULES = ("dps", "adam_dps", "mpgd", "fastai")  # need the run's sigmas: they translate a per-step update


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)


class GuidedDenoiser:
    """``D_y(x, sigma) = D(x, sigma) + sigma^2 * lr_t * rule(c_g g)``; see the module docstring.

    The schedule sets lr_t and the gradient's scale c_g (1 unless stated). Per-step schedules translate a
    method's update after an ancestral step of eta ``eta`` along ``sigmas`` into a shift on D: with
    c = sigma / (sigma - sigma_down) a shift delta of x_next is a shift c delta of D (README, "Guidance as
    optimization"; EDM coordinates x = x_vp sqrt(1 + sigma^2)):

    * ``constant``: sigma^2 lr_t = lr sigma^2: Tweedie's form (lr 1 with the exact score is the posterior
      denoiser), Bansal et al. 2023 forward guidance (the fast.ai deep dive's x -= lambda sigma^2 grad L
      before the step is ``fastai`` below, which adds the factor c).
    * ``inverse_sigma2``: sigma^2 lr_t = lr: a step of lr * direction on x0_hat.
    * ``cosine``: lr sigma^2 (lr_end + (1 - lr_end) (1 + cos(pi p)) / 2), p = log(sigma_max / sigma) /
      log(sigma_max / sigma_min) clipped to [0, 1] (SGDR, Loshchilov & Hutter 2017, eq. 5, over log sigma).
    * ``dps``: DPS's x_{t-1,vp} += lr rule(g_vp) (DPS2022 ``condition_methods.py``); c_g = sqrt(1 + sigma^2)
      (g_vp, the gradient in VP coordinates), sigma^2 lr_t = lr c sqrt(1 + sigma_next^2).
    * ``adam_dps``: AdamDPS's x_{t-1,vp} += lr rule(g_vp) / sqrt(alpha_t) (christianbelardi/adam-guidance
      ``methods/adam_dps.py``, alpha_t = abar_t / abar_prev); c_g = sqrt(1 + sigma^2), sigma^2 lr_t = lr c
      sqrt(1 + sigma^2).
    * ``mpgd``: MPGD's x0_hat += lr rule(g) with eps kept (He et al. 2024, Alg. 1; ``methods/mpgd.py``):
      sigma^2 lr_t = lr c. Use with ``Loss(..., through="x0")``.
    * ``fastai``: the fast.ai Stable Diffusion deep dive's loss guidance, x <- x + lr sigma^2 rule(g) (sgd:
      x - lr sigma^2 grad L) before the sampler step, eps_hat kept (fastai/diffusion-nbs, "Guidance"; lr 200
      there): sigma^2 lr_t = lr c sigma^2. Use with ``DecodedLoss(..., through="x0")`` (``colour_loss``).
    """

    def __init__(self, model, objective, *, rule: str = "sgd", lr: float = 1.0, lr_schedule: str = "constant",
                 lr_end: float = 0.0, sigma_max: float = 80.0, sigma_min: float = 0.002, sigmas=None,
                 eta: float = 1.0, **rule_hparams):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {lr_schedule!r}")
        if lr_schedule == "cosine" and not 0 < sigma_min < sigma_max:
            raise ValueError(f"cosine needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if lr_schedule in POST_STEP_SCHEDULES and sigmas is None:
            raise ValueError(f"lr_schedule={lr_schedule!r} needs sigmas, the run's sigma schedule")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.model, self.objective = model, objective
        self.rule_name, self.rule_hparams = rule, dict(rule_hparams)
        self.rule = make_rule(rule, **rule_hparams)
        self.lr, self.lr_schedule, self.lr_end = float(lr), lr_schedule, float(lr_end)
        self.sigma_max, self.sigma_min, self.eta = float(sigma_max), float(sigma_min), float(eta)
        self.sigmas = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        self.reset()

    def reset(self) -> None:
        """Forget the rule state: the next call starts a new run."""
        self.state, self.shape, self.calls, self.denoiser = None, None, 0, None
        self.non_finite_reason = None  # read by the sampler's Denoiser when it reports a non-finite output

    def start_run(self, denoiser=None) -> None:
        """Called by :func:`optsample.sample` before a run; ``denoiser`` gives the step index for errors."""
        self.reset()
        self.denoiser = denoiser

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_g, sigma^2 lr_t), each [B] (class docstring)."""
        ones = torch.ones_like(sigma)
        if self.lr_schedule == "constant":
            return ones, self.lr * sigma**2
        if self.lr_schedule == "inverse_sigma2":
            return ones, self.lr * ones
        if self.lr_schedule == "cosine":
            p = (math.log(self.sigma_max) - sigma.log()) / math.log(self.sigma_max / self.sigma_min)
            return ones, self.lr * sigma**2 * (self.lr_end + (1 - self.lr_end) * 0.5 * (1 + torch.cos(math.pi * p.clamp(0, 1))))
        pairs = [self._post_step(s) for s in sigma.tolist()]
        return tuple(torch.tensor(column, dtype=sigma.dtype, device=sigma.device) for column in zip(*pairs))

    def _post_step(self, sigma: float) -> tuple[float, float]:
        k = min(range(len(self.sigmas) - 1), key=lambda j: abs(self.sigmas[j] - sigma))
        if abs(self.sigmas[k] - sigma) > 1e-6 * sigma:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}: sigma={sigma:.6g} is not a step of the sigmas it was given")
        sigma_next = self.sigmas[k + 1]
        sigma_down, _ = ancestral_step(sigma, sigma_next, self.eta)
        c = sigma / (sigma - sigma_down)
        if self.lr_schedule == "dps":
            return math.sqrt(1 + sigma**2), self.lr * c * math.sqrt(1 + sigma_next**2)
        if self.lr_schedule == "adam_dps":
            return math.sqrt(1 + sigma**2), self.lr * c * math.sqrt(1 + sigma**2)
        if self.lr_schedule == "fastai":
            return 1.0, self.lr * c * sigma**2
        return 1.0, self.lr * c

    def __call__(self, x: torch.Tensor, sigma, **extra) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor) or sigma.ndim != 1:
            sigma = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        if self.shape != tuple(x.shape):
            self.state, self.shape = self.rule.init(x), tuple(x.shape)
        denoised, g, loss = self.objective.gradient(self.model, x, sigma, **extra)
        finite = self._check_finite(g, sigma)
        grad_scale, shift = self.coefficients(sigma)
        g = g * _column(grad_scale, x) if self.lr_schedule in ("dps", "adam_dps") else g
        info = T.StepInfo(self.calls, self.calls, 0, float(sigma[0]), math.nan, x, denoised, g, loss)
        direction, self.state = self.rule.update(g, self.state, info)
        self.calls += 1
        out = denoised + _column(shift, x) * direction
        return out if finite is None else torch.where(_column(finite, x).bool(), out, math.nan)

    def _check_finite(self, g: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor | None:
        """None if g is finite. Inside :func:`optsample.sample` a non-finite g makes those samples' output NaN and
        names itself as the reason, so the sampler's Denoiser raises naming the step the evaluation belongs to
        (known only at its next event: a corrector evaluation is its step's); alone, it raises here."""
        low, high = torch.aminmax(g)
        if math.isfinite(float(low) + float(high)):
            return None
        finite = torch.isfinite(g).flatten(1).all(1)
        if self.denoiser is not None and self.denoiser.check_finite:
            self.non_finite_reason = self.non_finite_reason or "guidance gradient is non-finite"
            return finite
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"guidance gradient is non-finite at evaluation {self.calls} (sigma={float(sigma[0]):.6g}) "
            f"for batch item(s) {bad[:10]}"
        )


def guided(model, objective, *, rule: str = "sgd", lr: float = 1.0, lr_schedule: str = "constant", **options):
    """A guided denoiser ``D_y = D + sigma^2 * lr_t * rule(g)`` in the model's convention (:class:`GuidedDenoiser`).

    ``objective``: a :class:`~.objectives.LikelihoodScore` or :class:`~.objectives.Loss`; ``rule``: a name from
    :func:`~.rules.available_rules` with its hyper-parameters in ``options`` (e.g. ``beta1=0.9``), together with
    the schedule's (``lr_end``, ``sigma_max``, ``sigma_min``, ``sigmas``, ``eta``).
    """
    return GuidedDenoiser(model, objective, rule=rule, lr=lr, lr_schedule=lr_schedule, **options)
