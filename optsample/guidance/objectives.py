"""Guidance objectives: what the guidance gradient g is, given the model, x and sigma.

Every objective's :meth:`gradient` returns ``(denoised, g, loss)``: the model's estimate D(x, sigma)
(detached), g the *ascent* direction of log p(y | x_sigma) (minus a loss gradient) and the per-sample
loss [B] (None for a likelihood score). No autograd graph survives the call.

* :class:`LikelihoodScore` ``fn(x, sigma) -> grad_x log p(y | x_sigma)`` given directly (exact on the
  Gaussian-mixture testbed, :mod:`.gmm_inverse`).
* :class:`Loss` ``fn(x0_hat, **cond) -> [B]``; ``through="denoiser"``: g = -grad_x fn(D(x)) through the network
  (DPS, Chung et al. 2023; UGD forward, Bansal et al. 2023; FreeDoM, Yu et al. 2023; AdamDPS, Belardi et al.
  2026); ``through="x0"``: g = -grad_{x0_hat} fn(x0_hat), no backpropagation through the network (MPGD,
  He et al. 2024, Alg. 1).
* Ready losses: :class:`MeasurementLoss`, :class:`ClassifierLoss`, :class:`DecodedLoss` (a loss on decoded
  images for latent models; :func:`colour_loss` / :func:`blue_loss`, the fast.ai deep dive's colour loss).

**Per-sample problems across batches.** A measurement (or label) per sample of a whole run, [N, ...], is
used batch by batch when the model is called with ``sample_index`` [B] (the run's sample numbers of the
batch; the runner passes it as conditioning): the ready losses take rows ``sample_index`` of ``y``, of the
labels and of an operator with a ``select(index)`` method. The model never sees ``sample_index``.
"""

from __future__ import annotations

from typing import Callable

import torch


class LikelihoodScore:
    """g = fn(x, sigma) = grad_x log p(y | x_sigma), given in closed form (no network gradient)."""

    needs_model_grad = False

    def __init__(self, fn: Callable):
        self.fn = fn

    def gradient(self, model, x, sigma, sample_index=None, **extra):
        if sample_index is not None:
            raise ValueError("LikelihoodScore has one measurement for all samples: it takes no sample_index")
        with torch.no_grad():
            denoised = model(x, sigma, **extra)
        g = self.fn(x, sigma)
        if g.shape != x.shape:
            raise ValueError(f"LikelihoodScore fn returned shape {tuple(g.shape)}, expected x's {tuple(x.shape)}")
        return denoised.detach(), g.detach().to(x.dtype), None


THROUGH = ("denoiser", "x0")


class Loss:
    """A loss of the denoised estimate, ``fn(x0_hat, **cond) -> [B]`` (one value per sample), minimised.

    ``through="denoiser"`` differentiates through the model (a vector-Jacobian product per step);
    ``through="x0"`` differentiates only the loss at x0_hat (backprop-free, MPGD).
    """

    indexed = False  # True: fn takes sample_index= (the ready losses; module docstring)

    def __init__(self, fn: Callable, through: str = "denoiser", **cond):
        if through not in THROUGH:
            raise ValueError(f"through must be one of {list(THROUGH)}, got {through!r}")
        self.fn, self.through, self.cond = fn, through, cond

    @property
    def needs_model_grad(self) -> bool:
        return self.through == "denoiser"

    def loss(self, x0_hat: torch.Tensor, sample_index=None) -> torch.Tensor:
        if sample_index is None:
            value = self.fn(x0_hat, **self.cond)
        elif not self.indexed:
            raise ValueError(f"{type(self).__name__} has no per-sample measurements: it takes no sample_index")
        else:
            value = self.fn(x0_hat, sample_index=torch.as_tensor(sample_index).long().cpu(), **self.cond)
        if not isinstance(value, torch.Tensor) or value.shape != (x0_hat.shape[0],):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"the loss must return one value per sample, shape ({x0_hat.shape[0]},), got {shape}")
        return value

    def gradient(self, model, x, sigma, sample_index=None, **extra):
        if self.through == "x0":
            with torch.no_grad():
                denoised = model(x, sigma, **extra)
            with torch.enable_grad():
                x0 = denoised.detach().requires_grad_(True)
                value = self.loss(x0, sample_index)
                (grad,) = torch.autograd.grad(value.sum(), x0)
            return denoised.detach(), -grad.detach(), value.detach()
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            denoised = model(x_in, sigma, **extra)
            if not denoised.requires_grad:
                raise TypeError(
                    "Loss(through='denoiser') needs a model differentiable in x, but its output has no gradient "
                    "(run under torch.no_grad or detached?); use through='x0' for a backprop-free step"
                )
            value = self.loss(denoised, sample_index)
            (grad,) = torch.autograd.grad(value.sum(), x_in)
        return denoised.detach(), -grad.detach(), value.detach()


def as_operator(operator) -> Callable:
    """A callable A(x0) from a callable or a [d_y, d] matrix applied to flattened x0 as sum_j A_ij x0_j per
    sample (products then a per-row sum, not a matmul: BLAS picks gemv for one row and gemm for many, which
    round differently, and sample k must not depend on the batch size)."""
    if callable(operator):
        return operator
    matrix = torch.as_tensor(operator)
    if matrix.ndim != 2:
        raise ValueError(f"operator must be a callable or a [d_y, d] matrix, got shape {tuple(matrix.shape)}")

    def apply(x0):
        flat = x0.flatten(1)
        if flat.shape[1] != matrix.shape[1]:
            raise ValueError(f"operator has {matrix.shape[1]} columns but x has {flat.shape[1]} features")
        return (flat[:, None, :] * matrix.to(flat.dtype)[None]).sum(-1)

    return apply


NORMS = ("l2", "squared")


def measurement_residual_norm(y, prediction, norm: str, sigma_y: float) -> torch.Tensor:
    """Per-sample ||y - A x0|| (``l2``, DPS2022 ``condition_methods.py`` per sample) or ||y - A x0||^2 /
    (2 sigma_y^2) (``squared``: the Gaussian negative log-likelihood, DPS's approximation, Chung et al. 2023 eq. 10)."""
    if prediction.shape[1:] != y.shape[1:] or y.shape[0] not in (1, prediction.shape[0]):
        raise ValueError(f"y has shape {tuple(y.shape)} but operator(x0_hat) has shape {tuple(prediction.shape)}")
    residual = (y.to(prediction.dtype) - prediction).flatten(1)
    if norm == "l2":
        return residual.norm(dim=1)
    return residual.square().sum(1) / (2 * sigma_y**2)


class MeasurementLoss(Loss):
    """||y - A(x0_hat)|| (``norm="l2"``) or ||y - A(x0_hat)||^2 / (2 sigma_y^2) (``norm="squared"``).

    ``y``: [B, *m] (one measurement per sample) or [1, *m] / [*m] (shared); ``operator``: a callable or a
    [d_y, d] matrix. ``sigma_y`` >= 0, and > 0 for the squared norm. With ``sample_index`` (module
    docstring) y is [N, *m] for the run's N samples and an operator with ``select(index)`` is narrowed too.
    """

    indexed = True

    def __init__(self, operator, y, sigma_y: float = 0.0, norm: str = "l2", through: str = "denoiser"):
        if not sigma_y >= 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        if norm == "squared" and sigma_y == 0:
            raise ValueError("sigma_y must be > 0 for norm='squared' (it divides the squared residual), got 0")
        self.operator, self.sigma_y, self.norm = as_operator(operator), float(sigma_y), norm
        y = torch.as_tensor(y)
        self.y = y if y.ndim >= 2 else y[None]
        super().__init__(self._value, through=through)

    def _value(self, x0_hat, sample_index=None):
        y, operator = self.y, self.operator
        if sample_index is not None:
            if int(sample_index.max()) >= y.shape[0] and y.shape[0] != 1:
                raise ValueError(f"sample_index {int(sample_index.max())} is past the {y.shape[0]} measurements y")
            y = y if y.shape[0] == 1 else y[sample_index]
            operator = operator.select(sample_index) if hasattr(operator, "select") else operator
        return measurement_residual_norm(y.to(x0_hat.device), operator(x0_hat), self.norm, self.sigma_y)


class ClassifierLoss(Loss):
    """-log p_phi(c | x0_hat) = cross-entropy of ``classifier(x0_hat) -> logits [B, C]`` at ``labels`` [B]
    (classifier guidance on the denoised estimate: UGD forward / AdamCG, ``methods/adam_cg.py``). With
    ``sample_index`` the labels are the run's [N] and rows ``sample_index`` are used."""

    indexed = True

    def __init__(self, classifier: Callable, labels, through: str = "denoiser"):
        self.classifier, self.labels = classifier, torch.as_tensor(labels).long()
        super().__init__(self._value, through=through)

    def _value(self, x0_hat, sample_index=None):
        logits = self.classifier(x0_hat)
        labels = (self.labels if sample_index is None else self.labels[sample_index]).to(logits.device)
        if labels.shape != (x0_hat.shape[0],):
            raise ValueError(f"labels must have shape ({x0_hat.shape[0]},), got {tuple(labels.shape)}")
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


class DecodedLoss(Loss):
    """``fn(decoder(x0_hat)) -> [B]``: a loss on decoded images for latent models (Stable Diffusion's latents
    through its VAE decoder), minimised. ``through="denoiser"``: the gradient goes through the decoder and the
    network (with its classifier-free guidance: wrap the CFG'd model); ``through="x0"``: through the decoder
    only, as the fast.ai deep dive and MPGD do. ``decoder`` must be differentiable (for Stable Diffusion:
    :meth:`~optsample.integrations.diffusers.adapters.StableDiffusionDenoiser.vae_decode`, not its
    ``decode``, which runs under ``torch.no_grad``). Ready image loss: :func:`colour_loss`.
    """

    def __init__(self, decoder: Callable, fn: Callable, through: str = "denoiser"):
        if not callable(decoder):
            raise ValueError(f"DecodedLoss needs decoder=, a differentiable latents -> images function "
                             f"(e.g. StableDiffusionDenoiser.vae_decode), got {decoder!r}")
        self.decoder, self.image_loss = decoder, fn
        super().__init__(self._value, through=through)

    def _value(self, x0_hat):
        images = self.decoder(x0_hat)
        if torch.is_grad_enabled() and x0_hat.requires_grad and not images.requires_grad:
            raise TypeError("DecodedLoss: the decoder's images carry no gradient (it runs under torch.no_grad or "
                            "detaches?); pass a differentiable decoder, e.g. StableDiffusionDenoiser.vae_decode")
        return self.image_loss(images)


def colour_loss(images: torch.Tensor, channel: int = 2, target: float = 0.9) -> torch.Tensor:
    """Per-sample mean |image[channel] - target| with the image in [0, 1] (``images`` [B, C, H, W] in [-1, 1]).

    The fast.ai Stable Diffusion deep dive's ``blue_loss`` (fastai/diffusion-nbs ``Stable Diffusion Deep
    Dive.ipynb``, "Guidance": ``torch.abs(images[:, 2] - 0.9).mean()`` on ``vae.decode(...) / 2 + 0.5``), per
    sample instead of over the batch. Its loop, every 5th of 50 LMS steps, takes ``x <- x - 200 sigma^2
    grad_x L(decode(x0_hat))`` with x0_hat = x - sigma eps_hat and eps_hat held fixed (so the gradient is
    through the decoder only, ``through="x0"``), then the scheduler step from the shifted x with the same
    eps_hat. A shift ``delta`` of x before an Euler step from sigma to sigma_next moves x_next by ``delta``,
    and so does a shift ``delta sigma / (sigma - sigma_next)`` of D: that is ``guided(..., rule="sgd",
    lr=200, lr_schedule="fastai", sigmas=sigmas, eta=0)`` (D_y = D + sigma^2 lr_t rule(g) with sigma^2 lr_t =
    lr sigma^2 sigma / (sigma - sigma_next); :class:`~.guided.GuidedDenoiser`), exactly for ``euler`` with
    guidance at every step (tests/test_guidance_sd.py transcribes the loop); the deep dive's every-5th-step
    is about lr / 5 at every step.
    """
    if images.ndim != 4 or not 0 <= channel < images.shape[1]:
        raise ValueError(f"colour_loss needs images [B, C, H, W] with channel {channel} < C, got shape {tuple(images.shape)}")
    return ((images[:, channel] + 1) / 2 - target).abs().mean((1, 2))


def blue_loss(images: torch.Tensor) -> torch.Tensor:
    """The fast.ai deep dive's ``blue_loss``: :func:`colour_loss` of the blue channel towards 0.9."""
    return colour_loss(images, channel=2, target=0.9)
