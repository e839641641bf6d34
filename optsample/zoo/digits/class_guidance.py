"""Digits class guidance of the unconditional (null-class) model: a *guide* classifier steers, a separate
*judge* scores.

Sample k is guided towards class k % 10 by ``ClassifierLoss(guide, labels)`` on the denoised estimate
x0_hat (noise-free inputs, so the guide is the shipped FID-digits CNN trained on clean digits; UGD forward
guidance, Bansal et al. 2023; AdamCG, ``methods/adam_cg.py``). Guidance exploits its own guide's
adversarial gradients (Shen et al., NeurIPS 2024), so the judge is another network (a pixel MLP, another
seed: :mod:`.judge`). Metrics: judge accuracy, guide accuracy, FID-digits.
"""

from __future__ import annotations

import math

import torch

from .checkpoints import shipped_classifier, shipped_judge
from .inverse import check_images, classifier_accuracy, fid_digits


def target_labels(n: int) -> torch.Tensor:
    """Sample k's class, k % 10 (every class equally often in any 10 consecutive samples)."""
    return torch.arange(n) % 10


def class_guidance_metrics(samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """judge_accuracy, guide_accuracy (fractions of samples each network assigns to its target label), fid_digits."""
    check_images(samples, "samples")
    if not bool(torch.isfinite(samples).all()):
        return {"judge_accuracy": 0.0, "guide_accuracy": 0.0, "fid_digits": math.inf}
    images = samples.clamp(-1, 1)
    return {"judge_accuracy": classifier_accuracy(shipped_judge(), images, labels),
            "guide_accuracy": classifier_accuracy(shipped_classifier(), images, labels),
            "fid_digits": fid_digits(images)}
