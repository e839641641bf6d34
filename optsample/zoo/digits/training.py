"""Training of the digits denoiser (EDM, Karras et al. 2022) and of the FID-digits classifier.

EDM training (Karras et al. 2022, sec. 5 and Table 1; NVlabs/edm ``training/loss.py`` ``EDMLoss``):
ln sigma ~ N(P_mean, P_std^2), loss = lambda(sigma) |D(y + sigma n; sigma, label) - y|^2 with
lambda = (sigma^2 + sd^2) / (sigma sd)^2. Labels are replaced by the null class with probability
``label_dropout`` (classifier-free guidance, Ho & Salimans 2022, Algorithm 1). The weights kept are an
exponential moving average (edm ``training_loop.py``: ema_halflife; here a per-step decay).
All randomness comes from one seeded ``torch.Generator``; weights are initialised under ``torch.manual_seed``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from ...models import EDMPrecond
from . import data
from .nets import NULL_CLASS, DigitsClassifier, DigitsUNet


@dataclass
class History:
    steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    seconds: float = 0.0

    def mean_loss(self, first: int | None = None, last: int | None = None) -> float:
        values = self.losses[:first] if first else self.losses[-last:] if last else self.losses
        return sum(values) / len(values)


def edm_loss(denoiser: EDMPrecond, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
             p_mean: float, p_std: float, label_dropout: float) -> torch.Tensor:
    """The EDM loss of one batch (Karras et al. 2022, eq. 2 weighted by lambda, Table 1 "Training")."""
    batch = images.shape[0]
    sigma = (p_mean + p_std * torch.randn(batch, generator=generator)).exp()
    sd = denoiser.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    noise = torch.randn(images.shape, generator=generator)
    drop = torch.rand(batch, generator=generator) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
    denoised = denoiser(images + sigma[:, None, None, None] * noise, sigma, class_labels=labels)
    return (weight[:, None, None, None] * (denoised - images) ** 2).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p, 1 - decay)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled index batches (a new permutation each epoch)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def train_denoiser(*, iterations: int, batch_size: int, lr: float, warmup: int, ema_decay: float, channels: int,
                   emb_dim: int, p_mean: float, p_std: float, label_dropout: float, seed: int,
                   on_step=None) -> tuple[EDMPrecond, History]:
    """Train the UNet on the train split; returns (EMA denoiser in eval mode, loss history).

    ``on_step(step, loss)`` is called after every step (progress bar, checkpoints)."""
    images, labels = data.load("train")
    torch.manual_seed(seed)
    denoiser = EDMPrecond(DigitsUNet(channels=channels, emb_dim=emb_dim), sigma_data=round(data.sigma_data(), 4))
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup, 1)))
    generator = torch.Generator().manual_seed(seed)
    history, start = History(), time.perf_counter()
    batches = _batches(len(images), min(batch_size, len(images)), generator)
    denoiser.train()
    for step in range(1, iterations + 1):
        index = next(batches)
        loss = edm_loss(denoiser, images[index], labels[index], generator, p_mean=p_mean, p_std=p_std,
                        label_dropout=label_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ema_update(ema, denoiser, ema_decay)
        history.steps.append(step)
        history.losses.append(loss.item())
        if on_step is not None:
            on_step(step, history.losses[-1], ema)
    history.seconds = time.perf_counter() - start
    return ema.eval(), history


def shift_augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels, padded with the background value -1."""
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    size = images.shape[-1]
    out = torch.empty_like(images)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        out[k] = padded[k, :, dy:dy + size, dx:dx + size]
    return out


def train_classifier(*, epochs: int, batch_size: int, lr: float, seed: int,
                     make_net=DigitsClassifier) -> tuple[torch.nn.Module, History]:
    """The FID-digits classifier (or ``make_net()``, e.g. the judge): cross-entropy on the train split with
    +-1 pixel shifts (eval mode on return)."""
    images, labels = data.load("train")
    torch.manual_seed(seed)
    net = make_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = len(images) // batch_size
    batches = _batches(len(images), batch_size, generator)
    history, start = History(), time.perf_counter()
    net.train()
    for step in range(1, epochs * steps_per_epoch + 1):
        index = next(batches)
        loss = F.cross_entropy(net(shift_augment(images[index], generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.steps.append(step)
        history.losses.append(loss.item())
    history.seconds = time.perf_counter() - start
    return net.eval().requires_grad_(False), history


@torch.no_grad()
def accuracy(classifier: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to ``labels``."""
    return float((classifier(images.float()).argmax(1) == labels).float().mean())
