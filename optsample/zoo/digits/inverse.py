"""Digits inverse problems on the shipped model: measurement operators, the problems and their metrics.

``y = A(x0) + sigma_y n`` for held-out digits x0 [N, 1, 8, 8] in [-1, 1] (DPS's tasks, Chung et al. 2023,
sec. 4, at 8x8): random inpainting (each pixel kept with probability 1 - p, a mask per sample), a box
mask, average-pool super-resolution and a 3x3 Gaussian blur. Each operator is a small module with a
shape check and a ``display(y)`` that shows a measurement as an 8x8 image (the W&B / logger picture:
measurement | reconstruction | truth). The prior is the shipped UNet's unconditional (null-class) branch.

Metrics (:func:`reconstruction_metrics`): PSNR and SSIM against the truth (torchmetrics.functional, data
range 2), FID-digits of the reconstructions against the held-out split, and the label accuracy of the
reconstructions under the shipped classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...guidance import operators
from . import data

IMAGE_SHAPE = data.IMAGE_SHAPE
DATA_RANGE = 2.0  # pixels in [-1, 1]
SSIM_KERNEL = 3  # an 8x8 image: torchmetrics' default 11x11 window does not fit; a 3x3 Gaussian, sigma 0.5
SSIM_SIGMA = 0.5
FAMILY = "digits"


def check_images(x: torch.Tensor, what: str = "x") -> None:
    operators.check_image_batch(x, what, IMAGE_SHAPE, FAMILY)


Operator = operators.Operator  # the digits operators are the generic ones (optsample.guidance.operators) at 8x8


class Mask(operators.Mask):
    """y = m * x0 with a 0/1 mask m [N or 1, 1, 8, 8] (inpainting; dropped pixels read 0)."""

    def __init__(self, mask: torch.Tensor, image_shape: tuple = IMAGE_SHAPE, family: str = FAMILY):
        super().__init__(mask, image_shape, family)


def random_mask(n: int, drop: float, generator: torch.Generator) -> torch.Tensor:
    """n masks [n, 1, 8, 8], each pixel dropped independently with probability ``drop`` (DPS's random inpainting)."""
    return operators.random_mask(n, IMAGE_SHAPE[1:], drop, generator)


def box_mask(top: int = 2, left: int = 2, size: int = 4) -> torch.Tensor:
    """One [1, 1, 8, 8] mask that drops a size x size box at (top, left) (DPS's box inpainting, at 8x8: the centre 4x4)."""
    return operators.box_mask(IMAGE_SHAPE[1:], top, left, size)


class AvgPool(operators.AvgPool):
    """y = avg_pool(x0, factor): 2x -> 4x4, 4x -> 2x2 (DPS's super-resolution operator ``bicubic``/``avgpool``)."""

    def __init__(self, factor: int):
        if factor not in (2, 4):
            raise ValueError(f"factor must be 2 or 4, got {factor}")
        super().__init__(factor, IMAGE_SHAPE, FAMILY)


class GaussianBlur(operators.GaussianBlur):
    """y = k * x0, a 3x3 Gaussian kernel of width ``sigma`` (normalised), zero padding: 8x8 -> 8x8 (DPS's
    ``gaussian_blur`` at toy scale)."""

    def __init__(self, sigma: float = 1.0, size: int = 3):
        super().__init__(sigma, size, image_shape=IMAGE_SHAPE, family=FAMILY)


OPERATORS = ("inpaint", "box", "sr", "blur")


@dataclass
class DigitsInverse:
    """One inverse problem: truth [N, 1, 8, 8], labels [N], its operator and y = A(truth) + sigma_y n."""

    operator: Operator
    truth: torch.Tensor
    labels: torch.Tensor
    y: torch.Tensor
    sigma_y: float


def make_problem(kind: str, n: int, *, sigma_y: float = 0.0, drop: float = 0.5, factor: int = 2,
                 blur_sigma: float = 1.0, seed: int = 0, offset: int = 0) -> DigitsInverse:
    """The problem on held-out digits offset, offset + 1, ... (cycling over the 450): masks and noise come
    from ``Generator(seed)`` for the whole held-out set, so sample k's problem does not depend on n."""
    if kind not in OPERATORS:
        raise ValueError(f"inverse problem kind must be one of {list(OPERATORS)}, got {kind!r}")
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    images, labels = data.load("heldout")
    index = (offset + torch.arange(n)) % images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if kind == "inpaint":
        operator: Operator = Mask(random_mask(images.shape[0], drop, generator)[index])
    elif kind == "box":
        operator = Mask(box_mask())
    elif kind == "sr":
        operator = AvgPool(factor)
    else:
        operator = GaussianBlur(blur_sigma)
    truth = images[index]
    clean = operator(truth)
    noise = torch.randn((images.shape[0],) + tuple(clean.shape[1:]), generator=generator)[index]
    return DigitsInverse(operator, truth, labels[index], clean + sigma_y * noise, float(sigma_y))


def side_by_side(problem: DigitsInverse, reconstruction: torch.Tensor) -> torch.Tensor:
    """[N, 1, 8, 26]: measurement | reconstruction | truth, one pixel of -1 between them (the logger picture)."""
    check_images(reconstruction, "reconstruction")
    return operators.side_by_side(problem.operator.display(problem.y.float()), reconstruction, problem.truth)


def psnr_ssim(reconstruction: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM over the batch, torchmetrics.functional, data range 2, a 3x3 window."""
    check_images(reconstruction, "reconstruction")
    return operators.psnr_ssim(reconstruction, truth, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA)


def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = classifier(images.detach().float().cpu()).argmax(1)
    return float((predicted == labels.cpu()).double().mean())


def fid_digits(images: torch.Tensor) -> float:
    """FID-digits: Frechet distance of the shipped classifier's features, images vs the held-out split
    (biased at small N: compare runs of the same size). NaN below 2 images."""
    from ...metrics.image import frechet_distance
    from .checkpoints import shipped_classifier

    if images.shape[0] < 2 or not bool(torch.isfinite(images).all()):
        return math.nan
    net = shipped_classifier()
    with torch.no_grad():
        real = net.features(data.load("heldout")[0])
        fake = net.features(images.detach().float().cpu().clamp(-1, 1))
    return frechet_distance(real, fake)


def reconstruction_metrics(problem: DigitsInverse, reconstruction: torch.Tensor) -> dict[str, float]:
    """psnr, ssim, fid_digits, accuracy (the shipped classifier on the reconstructions vs the truth's labels)."""
    from .checkpoints import shipped_classifier

    check_images(reconstruction, "reconstruction")
    if reconstruction.shape[0] != problem.truth.shape[0]:
        raise ValueError(f"{reconstruction.shape[0]} reconstructions for {problem.truth.shape[0]} problems")
    if not bool(torch.isfinite(reconstruction).all()):
        return {"psnr": -math.inf, "ssim": -math.inf, "fid_digits": math.inf, "accuracy": 0.0}
    psnr, ssim = psnr_ssim(reconstruction, problem.truth)
    return {"psnr": psnr, "ssim": ssim, "fid_digits": fid_digits(reconstruction),
            "accuracy": classifier_accuracy(shipped_classifier(), reconstruction.clamp(-1, 1), problem.labels)}
