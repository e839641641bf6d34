"""Wrappers that put networks with other parameterisations into the denoiser convention.

A discrete VP (DDPM-style) network sees ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at integer
timestep t. Dividing by sqrt(abar_t) gives the VE form ``x = x0 + sigma eps`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)`` (Karras et al. 2022, Table 1; k-diffusion ``external.py``).
"""

from __future__ import annotations

import bisect
import math

import torch

from ..samplers.core import on_host

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def expand(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] so it broadcasts against an x of ``ndim`` dimensions."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [B] tensor in x's dtype and device (a scalar is broadcast to the batch)."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


def vp_denoised(x: torch.Tensor, sigma_b: torch.Tensor, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """D from a VP network's output, the network having seen x_t = x / sqrt(sigma^2 + 1).

    - epsilon:      D = x - sigma * eps_hat
    - v_prediction: D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v_hat  (Salimans & Ho 2022, eq. 9,
      with alpha = 1 / sqrt(sigma^2 + 1); k-diffusion ``VDenoiser`` with sigma_data = 1)
    - sample:       D = x0_hat
    (k-diffusion ``external.py`` DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser.)
    """
    if prediction_type == "epsilon":
        return x - sigma_b * out
    if prediction_type == "v_prediction":
        return x / (sigma_b**2 + 1) - sigma_b / (sigma_b**2 + 1).sqrt() * out
    return out


class DiscreteSchedule(torch.nn.Module):
    """sigma <-> t for a discrete VP schedule, by linear interpolation of log sigma.

    The same interpolation as k-diffusion's ``DiscreteSchedule`` and diffusers' ``_sigma_to_t``, so a
    sigma between two table entries maps to a fractional timestep.
    """

    def __init__(self, alphas_cumprod, quantize: bool = False):
        super().__init__()
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if alphas_cumprod.ndim != 1 or not bool(((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D array of values in (0, 1]")
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self._log_sigma_list = self.log_sigmas.tolist()
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _scalar_sigma_to_t(self, sigma: float) -> float:
        """sigma_to_t of one sigma in python floats: the same formula, without a dozen tiny tensor ops."""
        log_sigmas = self._log_sigma_list
        log_sigma = math.log(sigma)
        low_idx = min(max(bisect.bisect_right(log_sigmas, log_sigma) - 1, 0), len(log_sigmas) - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = min(max((low - log_sigma) / (low - high), 0.0), 1.0)
        return (1 - w) * low_idx + w * (low_idx + 1)

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Fractional timestep of each sigma (nearest integer with ``quantize``)."""
        quantize = self.quantize if quantize is None else quantize
        if not quantize and sigma.ndim == 1 and len(sigma) > 0 and on_host(sigma):  # reading sigma syncs a GPU
            first = float(sigma[0])
            if first > 0 and bool((sigma == first).all()):  # samplers give every sample the same sigma
                return torch.full_like(sigma, self._scalar_sigma_to_t(first))
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(log_sigmas.dtype).log()
        if quantize:
            dists = (log_sigma.reshape(-1)[None, :] - log_sigmas[:, None]).abs()
            return dists.argmin(dim=0).view(sigma.shape).to(sigma.dtype)
        # the last table entry at or below log sigma (k-diffusion's cumsum/argmax, as one binary search)
        low_idx = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - log_sigma.reshape(-1)) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma at a (fractional) timestep: log sigma interpolated between the neighbouring entries."""
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.to(log_sigmas.dtype)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp()


class DiscreteVPDenoiser(DiscreteSchedule):
    """A discrete-time VP network ``net(x_t, t, **extra)`` predicting eps, v or x0, as a denoiser.

    The network sees x_t = x / sqrt(sigma^2 + 1) and t = sigma_to_t(sigma); its output becomes D by
    :func:`vp_denoised` (k-diffusion ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``).
    """

    def __init__(self, net, alphas_cumprod, prediction_type: str = "epsilon", quantize: bool = False):
        super().__init__(alphas_cumprod, quantize)
        check_prediction_type(prediction_type)
        self.net = net
        self.prediction_type = prediction_type

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        sigma_b = expand(sigma, x.ndim)
        out = self.net(x / (sigma_b**2 + 1).sqrt(), self.sigma_to_t(sigma), **extra)
        return vp_denoised(x, sigma_b, out.to(x.dtype), self.prediction_type)


def DiscreteEpsDDPMDenoiser(net, alphas_cumprod, quantize: bool = False) -> DiscreteVPDenoiser:
    """k-diffusion's name for an eps-prediction discrete VP wrapper."""
    return DiscreteVPDenoiser(net, alphas_cumprod, "epsilon", quantize)


def DiscreteVDDPMDenoiser(net, alphas_cumprod, quantize: bool = False) -> DiscreteVPDenoiser:
    """k-diffusion's name for a v-prediction discrete VP wrapper."""
    return DiscreteVPDenoiser(net, alphas_cumprod, "v_prediction", quantize)


class DenoiserAsDiscreteEps(DiscreteSchedule):
    """The inverse wrapper: a denoiser seen as a discrete eps network ``eps(x_t, t)``.

    Gives diffusers' schedulers (and any DDPM-style code) an analytic model with an exact answer:
    sigma = t_to_sigma(t), x = x_t * sqrt(sigma^2 + 1), eps = (x - D(x; sigma)) / sigma.
    """

    def __init__(self, denoiser, alphas_cumprod):
        super().__init__(alphas_cumprod)
        self.denoiser = denoiser

    def forward(self, x_t: torch.Tensor, t, **extra) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        sigma = self.t_to_sigma(t.reshape(-1)).to(x_t.dtype).expand(x_t.shape[0])
        sigma_b = expand(sigma, x_t.ndim)
        x = x_t * (sigma_b**2 + 1).sqrt()
        return (x - self.denoiser(x, sigma, **extra)) / sigma_b
