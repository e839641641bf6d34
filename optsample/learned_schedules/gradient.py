"""``method=gradient``: LD3-style learning of the steps by backpropagating through the sampler.

LD3 (Tong et al., ICLR 2025; vinhsuhi/LD3 ``trainer.py``): logits -> softmax -> cumsum -> step locations with
fixed ends, monotone by construction; the loss is the distance between the student's output and the teacher's
from the same noise; RMSprop (momentum 0.9); the best checkpoint on validation samples is kept. Here, with
the ends policy of :mod:`.problem`: ``n_steps`` logits, fractions w = softmax(logits), and

    log sigma_k = log sigma_max - (w_1 + ... + w_k) (log sigma_max - log sigma_min),  k = 1 .. n_steps - 1,

then 0; the last fraction w_n is the slack between the last positive sigma and sigma_min, so every sigma is
strictly inside (sigma_min, sigma_max) for finite logits. Loss: MSE to the teacher's final state (LD3's L2
option; no LPIPS here, and no relaxed "ball" around the starting noise). The sampler runs on the real sigma
tensor (``samplers.core.steps`` keeps it in the graph), so multistep history is exact. Validation: a part of
the tuning seeds held out from the gradient steps; the held-out test seeds are never seen.
"""

from __future__ import annotations

import math

import torch

from .. import samplers
from .problem import Ends, mse

# Every registered sampler is differentiable in its sigmas, stochastic ones with their noise fixed by the seeds
# (tests/test_sampler_gradients.py checks each against finite differences); a sampler of one's own whose loop
# turns the sigmas into python floats has no graph and is refused below.
F64 = torch.float64


def sigmas_from_logits(logits: torch.Tensor, ends: Ends) -> torch.Tensor:
    """[sigma_max, sigma_1, ..., sigma_{n-1}, 0] of the module docstring (n = len(logits)); differentiable."""
    fractions = torch.softmax(logits.to(F64), dim=0)
    span = math.log(ends.sigma_max) - math.log(ends.sigma_min)
    interior = torch.exp(math.log(ends.sigma_max) - torch.cumsum(fractions, dim=0)[:-1] * span)
    top, zero = logits.new_full((1,), ends.sigma_max, dtype=F64), logits.new_zeros(1, dtype=F64)
    return torch.cat([top, interior, zero])


def logits_from_sigmas(sigmas: torch.Tensor, ends: Ends, slack: float = 0.01) -> torch.Tensor:
    """Logits whose :func:`sigmas_from_logits` is ``sigmas`` with the log-sigma gaps scaled by (1 - slack)
    towards sigma_max and a slack fraction ``slack`` left above sigma_min (``sigmas`` from sigma_max to
    sigma_min, then 0, e.g. Karras)."""
    positive = sigmas[:-1].to(F64)
    gaps = -torch.diff(torch.log(positive))
    fractions = torch.cat([gaps / gaps.sum() * (1 - slack), gaps.new_full((1,), slack)])
    return torch.log(fractions)


def learn_gradient(sampler: str, model, x_train: torch.Tensor, target_train: torch.Tensor, x_val: torch.Tensor,
                   target_val: torch.Tensor, init: torch.Tensor, ends: Ends, *, hparams: dict | None = None,
                   iters: int = 60, lr: float = 0.01, momentum: float = 0.9, seeds_train=None, seeds_val=None):
    """RMSprop on the logits for ``iters`` steps from ``init`` (a sigma schedule of the right length).

    Returns (best sigmas on validation, validation MSE of those, history of (train MSE, validation MSE)).
    Iteration 0 is ``init`` itself, so the result is never worse than ``init`` on the validation seeds.
    """
    hparams = dict(hparams or {})
    if iters < 0 or lr <= 0:
        raise ValueError(f"need iters >= 0 and lr > 0, got iters={iters}, lr={lr}")
    seeds_train = list(seeds_train) if seeds_train is not None else list(range(x_train.shape[0]))
    seeds_val = list(seeds_val) if seeds_val is not None else list(range(x_val.shape[0]))
    logits = logits_from_sigmas(init, ends).clone().requires_grad_(True)
    optimizer = torch.optim.RMSprop([logits], lr=lr, momentum=momentum)

    def validation(sigmas):
        with torch.no_grad():
            return float(mse(samplers.sample(sampler, model, x_val, sigmas, seeds=seeds_val, **hparams), target_val))

    best_sigmas, best_val, history = init.detach().to(F64).clone(), validation(init.to(F64)), []
    for _ in range(iters):
        optimizer.zero_grad()
        sigmas = sigmas_from_logits(logits, ends)
        loss = mse(samplers.sample(sampler, model, x_train, sigmas, seeds=seeds_train, **hparams), target_train)
        if not loss.requires_grad:
            raise ValueError(f"sampler {sampler!r} does not carry gradients to its sigmas (its loop turns them into "
                             "python floats; samplers.core.steps keeps them in the graph); use method=dp")
        if not bool(torch.isfinite(loss)):
            break
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            current = sigmas_from_logits(logits, ends)
        val = validation(current)
        history.append((float(loss.detach()), val))
        if val < best_val and bool((current[1:] < current[:-1]).all()):
            best_val, best_sigmas = val, current.clone()
    return best_sigmas, best_val, history
