"""Linear measurement operators y = A(x0) on image batches [N, C, H, W], any size (the digits inverse problems
use them at 8x8, the published-image tasks at 32x32 and 256x256).

* :class:`Mask`: inpainting, y = m * x0 with a 0/1 mask per sample (or shared), one mask for all channels;
  :func:`random_mask` (each pixel kept with probability 1 - drop: christianbelardi/adam-guidance
  ``tasks/inpainting.py``, ``rand > 0.9``), :func:`exact_random_mask` (exactly int(H W drop) pixels dropped:
  DPS2022 ``util/img_utils.py`` ``mask_generator._retrieve_random``), :func:`box_mask`.
* :class:`AvgPool`: average-pool super-resolution.
* :class:`BicubicDown`: the peers' super-resolution operator, Shocher's antialiased bicubic ``Resizer``
  (DPS2022 ``util/resizer.py``, adam-guidance ``tasks/networks/image_inverse_operator.py``), as two matrices.
* :class:`GaussianBlur`: a separable Gaussian kernel per channel, zero or reflection padding; with
  ``truncate`` it is the peers' kernel, ``scipy.ndimage.gaussian_filter`` of a centred delta
  (``Blurkernel``: 61x61, sigma 3, ``ReflectionPad2d(30)``).

Each operator checks its input's shape (``image_shape``, when it has one) and names the problem in one line;
``display(y)`` shows a measurement at the image's size (the logger picture: measurement | reconstruction |
truth, :func:`side_by_side`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def check_image_batch(x: torch.Tensor, what: str, shape: tuple | None = None, family: str = "") -> None:
    """x must be [N, C, H, W] (and [N, *shape] when ``shape`` is given): else a one-line ValueError."""
    if shape is None:
        if x.ndim != 4:
            raise ValueError(f"{what} must be an image batch [N, C, H, W], got shape {tuple(x.shape)}")
    elif x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        label = f" ({family})" if family else ""
        raise ValueError(f"{what} must have shape [N, {', '.join(map(str, shape))}]{label}, got {tuple(x.shape)}")


class Operator(nn.Module):
    """A linear measurement A: [N, C, H, W] -> [N, *measurement]; ``image_shape`` (C, H, W) if fixed."""

    image_shape: tuple | None = None
    family: str = ""  # named in shape errors, e.g. "digits"

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        check_image_batch(x0, f"{type(self).__name__}'s input", self.image_shape, self.family)
        return self.apply_checked(x0)

    def apply_checked(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def display(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement at the image's size (for pictures only)."""
        return y


class Mask(Operator):
    """y = m * x0 with a 0/1 mask m [N or 1, 1, H, W], one mask for every channel (dropped pixels read 0)."""

    def __init__(self, mask: torch.Tensor, image_shape: tuple | None = None, family: str = ""):
        super().__init__()
        self.image_shape, self.family = image_shape, family
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask[None, None]
        if image_shape is not None:
            check_image_batch(mask, "mask", (1, *image_shape[1:]), family)
        elif mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must have shape [N, 1, H, W], got {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1")
        self.register_buffer("mask", mask)

    def apply_checked(self, x0):
        if self.mask.shape[0] not in (1, x0.shape[0]):
            raise ValueError(f"mask has {self.mask.shape[0]} masks but x has {x0.shape[0]} samples")
        if self.mask.shape[2:] != x0.shape[2:]:
            raise ValueError(f"mask is {tuple(self.mask.shape[2:])} but x is {tuple(x0.shape[2:])} pixels")
        return self.mask.to(x0) * x0

    def select(self, index: torch.Tensor) -> "Mask":
        """The masks of samples ``index`` (a shared mask stays shared)."""
        return self if self.mask.shape[0] == 1 else type(self)(self.mask[index], self.image_shape, self.family)

    def display(self, y):
        return torch.where(self.mask.to(y.device, y.dtype) > 0, y, torch.zeros_like(y))


def _check_drop(drop: float) -> None:
    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")


def random_mask(n: int, size: tuple, drop: float, generator: torch.Generator) -> torch.Tensor:
    """n masks [n, 1, H, W], each pixel kept iff U(0, 1) >= drop (adam-guidance ``tasks/inpainting.py``:
    ``torch.rand((N, 1, H, W), generator) > 0.9``, the same draws; ties have probability 0)."""
    _check_drop(drop)
    return (torch.rand((n, 1, *size), generator=generator) >= drop).float()


def exact_random_mask(n: int, size: tuple, drop: float, generator: torch.Generator) -> torch.Tensor:
    """n masks [n, 1, H, W], each with exactly int(H W drop) pixels dropped, chosen without replacement
    (DPS2022 ``util/img_utils.py`` ``mask_generator._retrieve_random`` at a fixed probability)."""
    _check_drop(drop)
    pixels = size[0] * size[1]
    dropped = int(pixels * drop)
    masks = torch.ones(n, pixels)
    for k in range(n):
        masks[k, torch.randperm(pixels, generator=generator)[:dropped]] = 0
    return masks.reshape(n, 1, *size)


def box_mask(size: tuple, top: int, left: int, box: int) -> torch.Tensor:
    """One [1, 1, H, W] mask dropping a box x box square at (top, left) (DPS's box inpainting)."""
    if not (0 <= top and 0 <= left and box > 0 and top + box <= size[0] and left + box <= size[1]):
        raise ValueError(f"box (top={top}, left={left}, size={box}) does not fit in {size[0]}x{size[1]}")
    mask = torch.ones(1, 1, *size)
    mask[..., top:top + box, left:left + box] = 0
    return mask


class AvgPool(Operator):
    """y = avg_pool(x0, factor): the mean of each factor x factor block."""

    def __init__(self, factor: int, image_shape: tuple | None = None, family: str = ""):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        self.factor, self.image_shape, self.family = factor, image_shape, family

    def apply_checked(self, x0):
        if x0.shape[2] % self.factor or x0.shape[3] % self.factor:
            raise ValueError(f"image size {tuple(x0.shape[2:])} is not a multiple of the factor {self.factor}")
        return F.avg_pool2d(x0, self.factor)

    def display(self, y):
        return F.interpolate(y, scale_factor=float(self.factor), mode="nearest")


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel, a = -0.5 (Shocher's ``resizer.py`` ``cubic``)."""
    a = x.abs()
    return ((1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
            + (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def bicubic_down_matrix(in_length: int, factor: int) -> torch.Tensor:
    """[in_length / factor, in_length] float64: one dimension of Shocher's antialiased bicubic downscale
    (``Resizer.contributions`` with scale 1 / factor: kernel scale cubic(scale d), width 4 / scale, rows
    normalised to 1, mirror-reflected borders), as a matrix."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    if in_length % factor:
        raise ValueError(f"image size {in_length} is not a multiple of the factor {factor}")
    scale, out_length = 1.0 / factor, in_length // factor
    width = 4.0 / scale
    out = torch.arange(1, out_length + 1, dtype=torch.float64)
    match = out / scale + 0.5 * (1 - 1 / scale)  # output pixel centres on input coordinates (1-based)
    left = torch.floor(match - width / 2)
    offsets = torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    field = left[:, None] + offsets[None] - 1  # [out, taps], 0-based input indices before reflection
    weights = scale * _cubic(scale * (match[:, None] - field - 1))
    sums = weights.sum(1, keepdim=True)
    weights = weights / torch.where(sums == 0, torch.ones_like(sums), sums)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length - 1, -1, -1)])
    index = mirror[torch.remainder(field.long(), 2 * in_length)]
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    return matrix.scatter_add_(1, index, weights)


class BicubicDown(Operator):
    """y = W_h x0 W_w^T: the peers' super-resolution by ``factor`` (:func:`bicubic_down_matrix` per dimension;
    DPS2022 ``SuperResolutionOperator`` / adam-guidance ``super_resolution`` with ``Resizer(in_shape, 1/factor)``)."""

    def __init__(self, factor: int, size: tuple, image_shape: tuple | None = None, family: str = ""):
        super().__init__()
        self.factor, self.image_shape, self.family = factor, image_shape, family
        self.register_buffer("rows", bicubic_down_matrix(size[0], factor).float())
        self.register_buffer("cols", bicubic_down_matrix(size[1], factor).float())

    def apply_checked(self, x0):
        if tuple(x0.shape[2:]) != (self.rows.shape[1], self.cols.shape[1]):
            raise ValueError(f"BicubicDown was built for {self.rows.shape[1]}x{self.cols.shape[1]} images, "
                             f"got {x0.shape[2]}x{x0.shape[3]}")
        return torch.einsum("ih,nchw,jw->ncij", self.rows.to(x0), x0, self.cols.to(x0))

    def display(self, y):
        return F.interpolate(y, scale_factor=float(self.factor), mode="nearest")


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """scipy.ndimage's ``reflect`` boundary (d c b a | a b c d | d c b a) for any integer index."""
    period = torch.remainder(index, 2 * n)
    return torch.where(period < n, period, 2 * n - 1 - period)


def gaussian_kernel_1d(size: int, sigma: float, truncate: float | None = None) -> torch.Tensor:
    """[size] float64, summing to 1. ``truncate`` None: exp(-r^2 / 2 sigma^2) over the window, normalised;
    else ``scipy.ndimage.gaussian_filter1d`` of a delta at size // 2: radius int(truncate sigma + 0.5),
    normalised over the radius, folded back into the window by ``reflect`` where it reaches past it."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"blur size must be an integer >= 1, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    if truncate is None:
        r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        weights = torch.exp(-r**2 / (2 * sigma**2))
        return weights / weights.sum()
    radius = int(truncate * float(sigma) + 0.5)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 / sigma**2 * r**2)
    weights = weights / weights.sum()
    positions = torch.arange(size)
    hits = _reflect(positions[:, None] + r.long()[None], size) == size // 2  # [size, taps]: where the delta is read
    return (hits * weights[None]).sum(1)


class GaussianBlur(Operator):
    """y = k * x0 per channel, k = outer(k1, k1) of :func:`gaussian_kernel_1d`, the same spatial size:
    ``padding="zeros"`` or ``"reflect"`` (the peers' ``nn.ReflectionPad2d(size // 2)``)."""

    def __init__(self, sigma: float = 1.0, size: int = 3, *, truncate: float | None = None, padding: str = "zeros",
                 image_shape: tuple | None = None, family: str = ""):
        super().__init__()
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        k1 = gaussian_kernel_1d(size, sigma, truncate)
        self.padding, self.image_shape, self.family = padding, image_shape, family
        self.register_buffer("kernel", torch.outer(k1, k1).float()[None, None])

    def apply_checked(self, x0):
        channels, half = x0.shape[1], self.kernel.shape[-1] // 2
        weight = self.kernel.to(x0).expand(channels, 1, -1, -1)
        if self.padding == "reflect":
            if half >= min(x0.shape[2:]):
                raise ValueError(f"a {self.kernel.shape[-1]}x{self.kernel.shape[-1]} reflection-padded blur needs "
                                 f"images larger than {half} pixels, got {tuple(x0.shape[2:])}")
            return F.conv2d(F.pad(x0, (half,) * 4, mode="reflect"), weight, groups=channels)
        return F.conv2d(x0, weight, padding=half, groups=channels)


def side_by_side(measurement: torch.Tensor, reconstruction: torch.Tensor, truth: torch.Tensor,
                 background: float = -1.0) -> torch.Tensor:
    """[N, C, H, 3 W + 2]: measurement | reconstruction | truth, one pixel of ``background`` between them."""
    parts = [p.detach().float().cpu() for p in (measurement, reconstruction, truth)]
    gap = torch.full((*parts[1].shape[:3], 1), background)
    return torch.cat([parts[0], gap, parts[1], gap, parts[2]], dim=3).clamp(-1, 1)


def psnr_ssim(reconstruction: torch.Tensor, truth: torch.Tensor, *, data_range: float = 2.0,
              kernel_size: int = 11, sigma: float = 1.5, chunk: int = 16) -> tuple[float, float]:
    """Mean per-image PSNR (dB, capped at 100: an exact reconstruction is infinite) and SSIM over the batch
    (torchmetrics.functional, Gaussian window ``kernel_size`` / ``sigma``: torchmetrics' defaults 11 / 1.5),
    reconstruction clipped to the data range [-1, 1]; ``chunk`` images at a time (bounded memory at 256x256)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnrs, ssims = [], []
    for start in range(0, reconstruction.shape[0], chunk):
        x = reconstruction[start:start + chunk].detach().double().cpu().clamp(-1, 1)
        t = truth[start:start + chunk].detach().double().cpu()
        psnrs.append(peak_signal_noise_ratio(x, t, data_range=data_range, reduction="none", dim=(1, 2, 3)))
        ssims.append(structural_similarity_index_measure(x, t, data_range=data_range, kernel_size=kernel_size,
                                                         sigma=sigma, reduction="none"))
    return float(torch.cat(psnrs).clamp(max=100.0).mean()), float(torch.cat(ssims).mean())
