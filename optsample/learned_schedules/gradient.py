"""``method=gradient``: LD3-style learning of the steps by backpropagating through the sampler.

LD3 (Tong et al., ICLR 2025; vinhsuhi/LD3 ``trainer.py``): logits -> softmax -> cumsum -> step locations with
fixed ends, monotone by construction; the loss is the distance between the student's output and the teacher's
from the same noise; RMSprop (momentum 0.9); the best checkpoint on validation samples is kept. Here, with
the ends policy of :mod:`.problem`: ``n_steps`` logits, fractions w = softmax(logits), and

    log sigma_k = log sigma_max - (w_1 + ... + w_k) (log sigma_max - log sigma_min),  k = 1 .. n_steps - 1,

then 0; the last fraction w_n is the slack between the last positive sigma and sigma_min, so every sigma is
strictly inside (sigma_min, sigma_max) for finite logits; it is learned like the others (an initial schedule
whose last sigma lies above sigma_min starts with that slack, :func:`logits_from_sigmas`). Loss: MSE to the
teacher's final state (LD3's L2 option; no LPIPS here). The sampler runs on the real sigma tensor
(``samplers.core.steps`` keeps it in the graph), so multistep history is exact. Validation: a part of the
tuning seeds held out from the gradient steps, always at their exact noise; the held-out test seeds are never
seen. Options (all off by default, the defaults give the plain method bitwise):

- ``ball_radius`` r > 0: LD3's relaxed "ball" objective (vinhsuhi/LD3 ``trainer.py`` ``_train_one_round`` and
  ``_update_latents``; ``utils.py`` default r = 0.001 D / steps^2): each training sample's student starts from
  sigma_max z'_k with z'_k kept within distance r of its unit noise z_k, moved by SGD (``ball_lr``, LD3's
  default 12 / steps) on its own loss, projected back onto the ball and kept only where its loss went down;
  the teacher's target stays the one from z_k. The schedule need only bring *some* point near z_k to the
  teacher's answer, which LD3 uses against overfitting a few samples.
- ``batch_size``: each step uses a random mini-batch of the training samples (a fixed generator), so a large
  tuning set costs one batch per step.
- ``lr_schedule="cosine"``: lr (1 + cos(pi t / iters)) / 2 at step t (Loshchilov & Hutter 2017, no restarts).
- restarts: :func:`learn_gradient_restarts` runs from several initial schedules and keeps the one best on
  the validation samples (so never worse there than any single run).
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
    """Logits whose :func:`sigmas_from_logits` is ``sigmas`` (from sigma_max down to its last positive sigma,
    then 0, e.g. Karras). If the last positive sigma lies at least a fraction ``slack`` of the log-span above
    ends.sigma_min, the map is exact (that gap is the initial slack); otherwise the log-sigma gaps are scaled by
    (1 - slack) towards sigma_max and a slack fraction ``slack`` is left above sigma_min."""
    positive = sigmas[:-1].to(F64)
    gaps = -torch.diff(torch.log(positive))
    span = math.log(ends.sigma_max) - math.log(ends.sigma_min)
    room = (math.log(float(positive[-1])) - math.log(ends.sigma_min)) / span
    if room >= slack and room > 0:
        return torch.log(torch.cat([gaps / span, gaps.new_full((1,), room)]))
    fractions = torch.cat([gaps / gaps.sum() * (1 - slack), gaps.new_full((1,), slack)])
    return torch.log(fractions)


LR_SCHEDULES = ("constant", "cosine")


def check_options(*, iters: int, lr: float, ball_radius: float = 0.0, ball_lr: float | None = None,
                  batch_size: int | None = None, lr_schedule: str = "constant") -> None:
    """One-line errors for bad option values, before any model evaluation."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not (isinstance(ball_radius, (int, float)) and 0 <= ball_radius < math.inf):
        raise ValueError(f"ball_radius must be a finite number >= 0, got {ball_radius!r}")
    if ball_lr is not None and not (isinstance(ball_lr, (int, float)) and 0 < ball_lr < math.inf):
        raise ValueError(f"ball_lr must be a finite number > 0 (or None: LD3's 12 / steps), got {ball_lr!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None: every training sample), got {batch_size!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {lr_schedule!r}")


def _project_to_ball(shift: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row of ``shift`` scaled back to norm ``radius`` where it is longer (LD3 ``_update_latents``)."""
    norms = shift.flatten(1).norm(dim=1).clamp_min(1e-300)
    scale = torch.where(norms > radius, radius / norms, torch.ones_like(norms))
    return shift * scale.view(-1, *([1] * (shift.dim() - 1)))


def _per_sample_mse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (x.to(F64) - target.to(F64)).pow(2).flatten(1).mean(dim=1)


def learn_gradient(sampler: str, model, x_train: torch.Tensor, target_train: torch.Tensor, x_val: torch.Tensor,
                   target_val: torch.Tensor, init: torch.Tensor, ends: Ends, *, hparams: dict | None = None,
                   iters: int = 60, lr: float = 0.01, momentum: float = 0.9, seeds_train=None, seeds_val=None,
                   ball_radius: float = 0.0, ball_lr: float | None = None, batch_size: int | None = None,
                   lr_schedule: str = "constant", batch_seed: int = 0):
    """RMSprop on the logits for ``iters`` steps from ``init`` (a sigma schedule of the right length); the
    options of the module docstring.

    Returns (best sigmas on validation, validation MSE of those, history of (train MSE, validation MSE)).
    Iteration 0 is ``init`` itself, so the result is never worse than ``init`` on the validation seeds.
    """
    hparams = dict(hparams or {})
    check_options(iters=iters, lr=lr, ball_radius=ball_radius, ball_lr=ball_lr, batch_size=batch_size,
                  lr_schedule=lr_schedule)
    n_train = x_train.shape[0]
    seeds_train = list(seeds_train) if seeds_train is not None else list(range(n_train))
    seeds_val = list(seeds_val) if seeds_val is not None else list(range(x_val.shape[0]))
    logits = logits_from_sigmas(init, ends).clone().requires_grad_(True)
    optimizer = torch.optim.RMSprop([logits], lr=lr, momentum=momentum)
    n_steps = len(init) - 1
    ball_lr = ball_lr if ball_lr is not None else 12.0 / n_steps  # LD3 utils.py: shift_lr = 3 * 4 / steps
    shift = torch.zeros_like(x_train, dtype=F64)  # z'_k - z_k (unit-noise units), LD3's moved latents
    batches = torch.Generator().manual_seed(batch_seed)

    def validation(sigmas):
        with torch.no_grad():
            return float(mse(samplers.sample(sampler, model, x_val, sigmas, seeds=seeds_val, **hparams), target_val))

    def run(sigmas, index, starts):
        seeds = [seeds_train[i] for i in index.tolist()] if index is not None else seeds_train
        return samplers.sample(sampler, model, starts, sigmas, seeds=seeds, **hparams)

    best_sigmas, best_val, history = init.detach().to(F64).clone(), validation(init.to(F64)), []
    for step in range(iters):
        if lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 + math.cos(math.pi * step / iters)) / 2
        index = None if batch_size is None or batch_size >= n_train else torch.randperm(n_train, generator=batches)[:batch_size]
        x_batch = x_train if index is None else x_train[index]
        target = target_train if index is None else target_train[index]
        optimizer.zero_grad()
        sigmas = sigmas_from_logits(logits, ends)
        if ball_radius > 0:
            moved = (shift if index is None else shift[index]).clone().requires_grad_(True)
            per_sample = _per_sample_mse(run(sigmas, index, x_batch + ends.sigma_max * moved), target)
            loss = per_sample.mean()
        else:
            loss = mse(run(sigmas, index, x_batch), target)
        if not loss.requires_grad:
            raise ValueError(f"sampler {sampler!r} does not carry gradients to its sigmas (its loop turns them into "
                             "python floats; samplers.core.steps keeps them in the graph); use method=dp")
        if not bool(torch.isfinite(loss)):
            break
        loss.backward()
        if ball_radius > 0:  # LD3: SGD on the moved latents, projected onto the ball, kept where the loss fell
            with torch.no_grad():
                grad = moved.grad * len(per_sample)  # d(loss_k) / d z'_k: each sample's own loss
                proposal = _project_to_ball(moved - ball_lr * grad, ball_radius)
                proposed = _per_sample_mse(run(sigmas.detach(), index, x_batch + ends.sigma_max * proposal), target)
                better = proposed < per_sample.detach()
                kept = torch.where(better.view(-1, *([1] * (moved.dim() - 1))), proposal, moved.detach())
                if index is None:
                    shift = kept
                else:
                    shift[index] = kept
        optimizer.step()
        with torch.no_grad():
            current = sigmas_from_logits(logits, ends)
        val = validation(current)
        history.append((float(loss.detach()), val))
        if val < best_val and bool((current[1:] < current[:-1]).all()):
            best_val, best_sigmas = val, current.clone()
    return best_sigmas, best_val, history


def learn_gradient_restarts(sampler: str, model, x_train, target_train, x_val, target_val, inits, ends, **options):
    """:func:`learn_gradient` from every schedule in ``inits`` (the same options); the run best on validation.

    Returns (sigmas, validation MSE, history of that run, index of that init, the validation MSE of every run)."""
    inits = list(inits)
    if not inits:
        raise ValueError("inits must hold at least one initial schedule, got []")
    runs = [learn_gradient(sampler, model, x_train, target_train, x_val, target_val, init, ends, **options)
            for init in inits]
    values = [run[1] for run in runs]
    best = min(range(len(runs)), key=values.__getitem__)
    return (*runs[best], best, values)
