"""Runner options for the embedded default (optsample/zoo/digits/):

- ``model=digits``: the shipped class-conditional UNet (EDM preconditioning) with classifier-free guidance
  ``model.guidance`` (1 = conditional, 0 = unconditional; default 2); sample k is conditioned on class
  k % 10. ``model.checkpoint`` loads other weights (an ``optsample-train`` output) instead.
- ``model=digits_empirical``: the exact denoiser of the digits train split (:class:`EmpiricalDenoiser`,
  Karras et al. 2022 eq. 57), the network's ideal; ``model.class_conditional=true`` uses each sample's
  class alone (label k % 10 as above), so "accuracy" applies too.

Both point FID / KID at feature net "digits" (the shipped classifier) and the held-out split, whose
features are cached under a key that names the split and the classifier's SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import digits as _digits  # noqa: F401  (registers feature net "digits" and metric "accuracy")
from ...models.registry import BuiltModel, ModelConfig, register_model
from ...models.wrappers import sigma_batch

SAMPLE_SHAPE = (1, 8, 8)


@dataclass
class DigitsConfig(ModelConfig):
    name: str = "digits"
    guidance: float = 1.5  # classifier-free guidance scale (Ho & Salimans 2022): 1 = conditional model
    checkpoint: Optional[str] = None  # None: the shipped weights (optsample/zoo/digits/assets/digits_edm.safetensors)


@dataclass
class DigitsEmpiricalConfig(ModelConfig):
    name: str = "digits_empirical"
    split: str = "train"  # train | heldout | all
    class_conditional: bool = False


def cycle_labels(indices: list) -> dict:
    """Sample k gets class k % 10: every class equally often in any run of 10 consecutive samples."""
    return {"class_labels": torch.as_tensor(list(indices), dtype=torch.long) % 10}


def digits_metric_args() -> dict:
    """FID / KID against the held-out split under the shipped classifier's features (optsample.zoo.digits.metrics)."""
    from ..digits import checkpoints, data

    digest = checkpoints.file_digest(checkpoints.asset(checkpoints.CLASSIFIER_FILE))[:12]
    return {
        "feature_net": "digits",
        "reference": lambda: data.load("heldout")[0],
        "reference_key": f"digits-heldout-s{data.SPLIT_SEED}-n{data.HELD_OUT}-{digest}",
    }


def build_digits(cfg: dict) -> BuiltModel:
    from ..digits import GuidedDenoiser, load_denoiser

    denoiser = GuidedDenoiser(load_denoiser(cfg.get("checkpoint")), guidance=cfg["guidance"])
    return BuiltModel(denoiser, SAMPLE_SHAPE, conditioning=cycle_labels, metric_args=digits_metric_args())


class ClassConditionalEmpirical:
    """The exact denoiser of each class's data: sample b uses the data of class ``class_labels[b]`` alone."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from ...models import EmpiricalDenoiser

        self.data = images
        self.per_class = {int(c): EmpiricalDenoiser(images[labels == c]) for c in labels.unique()}

    def __call__(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None, **_) -> torch.Tensor:
        if class_labels is None:
            raise ValueError("digits_empirical with class_conditional=true needs class_labels")
        sigma = sigma_batch(sigma, x)
        class_labels = torch.as_tensor(class_labels, device=x.device).reshape(-1)
        out = torch.empty_like(x)
        for c in class_labels.unique().tolist():
            if c not in self.per_class:
                raise ValueError(f"class label {c} has no data (classes: {sorted(self.per_class)})")
            rows = class_labels == c
            out[rows] = self.per_class[c](x[rows], sigma[rows])
        return out


def build_digits_empirical(cfg: dict) -> BuiltModel:
    from ..digits import data
    from ...models import EmpiricalDenoiser

    images, labels = data.load(cfg["split"])
    if cfg["class_conditional"]:
        return BuiltModel(ClassConditionalEmpirical(images, labels), SAMPLE_SHAPE, conditioning=cycle_labels,
                          metric_args=digits_metric_args())
    return BuiltModel(EmpiricalDenoiser(images), SAMPLE_SHAPE, metric_args=digits_metric_args())


register_model(DigitsConfig(), build_digits)
register_model(DigitsEmpiricalConfig(), build_digits_empirical)
