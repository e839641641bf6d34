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
from torch.nn import functional as F

from . import data

IMAGE_SHAPE = data.IMAGE_SHAPE
DATA_RANGE = 2.0  # pixels in [-1, 1]
SSIM_KERNEL = 3  # an 8x8 image: torchmetrics' default 11x11 window does not fit; a 3x3 Gaussian, sigma 0.5
SSIM_SIGMA = 0.5


def check_images(x: torch.Tensor, what: str = "x") -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{what} must have shape [N, 1, 8, 8] (digits), got {tuple(x.shape)}")


class Operator(nn.Module):
    """A linear measurement A: [N, 1, 8, 8] -> [N, *measurement_shape]."""

    measurement_shape: tuple = IMAGE_SHAPE

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        check_images(x0, f"{type(self).__name__}'s input")
        return self.apply_checked(x0)

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement as an 8x8 image (for pictures only)."""
        return y

    def check_measurement(self, y: torch.Tensor) -> None:
        if y.ndim != 4 or tuple(y.shape[1:]) != tuple(self.measurement_shape):
            raise ValueError(f"measurement y must have shape [N, {', '.join(map(str, self.measurement_shape))}] "
                             f"for {type(self).__name__}, got {tuple(y.shape)}")


class Mask(Operator):
    """y = m * x0 with a 0/1 mask m [N or 1, 1, 8, 8] (inpainting; dropped pixels read 0)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask[None, None]
        check_images(mask, "mask")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1")
        self.register_buffer("mask", mask)

    def apply_checked(self, x0):
        if self.mask.shape[0] not in (1, x0.shape[0]):
            raise ValueError(f"mask has {self.mask.shape[0]} masks but x has {x0.shape[0]} samples")
        return self.mask.to(x0) * x0

    def select(self, index: torch.Tensor) -> "Mask":
        """The masks of samples ``index`` (a shared mask stays shared)."""
        return self if self.mask.shape[0] == 1 else Mask(self.mask[index])

    def display(self, y):
        return torch.where(self.mask.to(y.dtype) > 0, y, torch.zeros_like(y))


def random_mask(n: int, drop: float, generator: torch.Generator) -> torch.Tensor:
    """n masks [n, 1, 8, 8], each pixel dropped independently with probability ``drop`` (DPS's random inpainting)."""
    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    return (torch.rand((n,) + IMAGE_SHAPE, generator=generator) >= drop).float()


def box_mask(top: int = 2, left: int = 2, size: int = 4) -> torch.Tensor:
    """One [1, 1, 8, 8] mask that drops a size x size box at (top, left) (DPS's box inpainting, at 8x8: the centre 4x4)."""
    if not (0 <= top and 0 <= left and size > 0 and top + size <= 8 and left + size <= 8):
        raise ValueError(f"box (top={top}, left={left}, size={size}) does not fit in 8x8")
    mask = torch.ones((1,) + IMAGE_SHAPE)
    mask[..., top:top + size, left:left + size] = 0
    return mask


class AvgPool(Operator):
    """y = avg_pool(x0, factor): 2x -> 4x4, 4x -> 2x2 (DPS's super-resolution operator ``bicubic``/``avgpool``)."""

    def __init__(self, factor: int):
        super().__init__()
        if factor not in (2, 4):
            raise ValueError(f"factor must be 2 or 4, got {factor}")
        self.factor = factor
        self.measurement_shape = (1, 8 // factor, 8 // factor)

    def apply_checked(self, x0):
        return F.avg_pool2d(x0, self.factor)

    def display(self, y):
        return F.interpolate(y, scale_factor=float(self.factor), mode="nearest")


class GaussianBlur(Operator):
    """y = k * x0, a 3x3 Gaussian kernel of width ``sigma`` (normalised), zero padding: 8x8 -> 8x8 (DPS's
    ``gaussian_blur`` at toy scale)."""

    def __init__(self, sigma: float = 1.0, size: int = 3):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        k1 = torch.exp(-r**2 / (2 * sigma**2))
        kernel = torch.outer(k1, k1)
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])

    def apply_checked(self, x0):
        return F.conv2d(x0, self.kernel.to(x0), padding=self.kernel.shape[-1] // 2)


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
    gap = torch.full((reconstruction.shape[0], 1, 8, 1), -1.0)
    parts = [problem.operator.display(problem.y.float()).cpu(), reconstruction.detach().float().cpu(), problem.truth]
    return torch.cat([parts[0], gap, parts[1], gap, parts[2]], dim=3).clamp(-1, 1)


def psnr_ssim(reconstruction: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM over the batch, torchmetrics.functional, data range 2."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    check_images(reconstruction, "reconstruction")
    x, t = reconstruction.detach().double().cpu().clamp(-1, 1), truth.double()
    psnr = peak_signal_noise_ratio(x, t, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, t, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL,
                                               sigma=SSIM_SIGMA, reduction="none")
    psnr = psnr.clamp(max=100.0)  # an exact reconstruction has infinite PSNR
    return float(psnr.mean()), float(ssim.mean())


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
