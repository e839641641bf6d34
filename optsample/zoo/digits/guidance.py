"""Classifier-free guidance on a class-conditional denoiser (Ho & Salimans 2022, eq. 6).

With guidance scale g (diffusers' ``guidance_scale`` convention: g = 1 is the plain conditional model,
g = 0 the unconditional one): D_g = D(x; sigma, null) + g (D(x; sigma, c) - D(x; sigma, null)). Since
D = x - sigma eps, this is the same combination of the eps predictions, eps_g = (1 + w) eps_c - w eps_null
with w = g - 1. Both branches run as one batch of 2B.
"""

from __future__ import annotations

import torch

from ...models.wrappers import sigma_batch
from .nets import NULL_CLASS


class GuidedDenoiser(torch.nn.Module):
    """``D(x, sigma, class_labels=None)`` of a class-conditional denoiser with guidance scale ``guidance``."""

    def __init__(self, denoiser: torch.nn.Module, guidance: float = 1.0):
        super().__init__()
        if not guidance >= 0:
            raise ValueError(f"guidance must be >= 0 (1 = conditional, 0 = unconditional), got {guidance}")
        self.denoiser, self.guidance = denoiser, float(guidance)

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        null = torch.full((x.shape[0],), NULL_CLASS, dtype=torch.long, device=x.device)
        if class_labels is None or self.guidance == 0:
            return self.denoiser(x, sigma, class_labels=null)
        class_labels = torch.as_tensor(class_labels, device=x.device).long().reshape(-1)
        if class_labels.shape[0] != x.shape[0] or bool(((class_labels < 0) | (class_labels > 9)).any()):
            raise ValueError(f"class_labels must be {x.shape[0]} integers in 0..9, got {class_labels.tolist()[:12]}")
        if self.guidance == 1:
            return self.denoiser(x, sigma, class_labels=class_labels)
        sigma = sigma_batch(sigma, x)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), class_labels=torch.cat([class_labels, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.guidance * (conditional - unconditional)
