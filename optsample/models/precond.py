"""Preconditioned networks as denoisers: EDM's preconditioning and continuous-time VP networks.

Both put a raw network into the convention ``denoised = D(x, sigma, **extra)`` with ``x = x0 + sigma * eps``.
"""

from __future__ import annotations

import math

import torch

from .wrappers import check_prediction_type, expand as _expand, sigma_batch as _sigma_batch, vp_denoised


class EDMPrecond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7 and Table 1).

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4, sd = ``sigma_data``
    (NVlabs/edm ``training/networks.py`` ``EDMPrecond``). ``net(x_in, c_noise, **extra)`` gets
    c_noise as a [B] tensor; extra keyword arguments (class labels, ...) are forwarded to it.
    """

    def __init__(self, net, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma`` (Karras et al. 2022, Table 1)."""
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return sd2 / total, sigma * self.sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma, **extra) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        out = self.net(x * _expand(c_in, x.ndim), c_noise, **extra)
        return _expand(c_skip, x.ndim) * x + _expand(c_out, x.ndim) * out.to(x.dtype)


class ContinuousVPDenoiser(torch.nn.Module):
    """A continuous-time VP network ``net(x_t, t, **extra)``, t in [eps_t, 1], as a denoiser.

    The VP SDE with linear beta(t) = beta_min + beta_d t has alpha_bar(t) = exp(-(beta_d t^2 / 2 + beta_min t)),
    so sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) and
    t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(sigma^2 + 1)) - beta_min) / beta_d
    (Song et al. 2021, eq. 11 / 29; Karras et al. 2022, Table 1 "VP" column; k-diffusion
    ``get_sigmas_vp``). The network sees x_t = x / sqrt(sigma^2 + 1); outputs are turned into D by
    :func:`optsample.models.wrappers.vp_denoised`. Sigmas outside [sigma(eps_t), sigma(1)] are passed through unclamped (t
    outside the trained range), as NVlabs/edm's ``VPPrecond`` does.
    """

    def __init__(self, net, prediction_type: str = "epsilon", beta_d: float = 19.9, beta_min: float = 0.1,
                 eps_t: float = 1e-5):
        super().__init__()
        check_prediction_type(prediction_type)
        if not beta_d > 0 or beta_min < 0:
            raise ValueError(f"need beta_d > 0 and beta_min >= 0, got {beta_d}, {beta_min}")
        self.net = net
        self.prediction_type = prediction_type
        self.beta_d, self.beta_min, self.eps_t = float(beta_d), float(beta_min), float(eps_t)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(expm1(beta_d t^2 / 2 + beta_min t)) (Karras et al. 2022, Table 1, VP)."""
        t = torch.as_tensor(t)
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma), the inverse of :meth:`t_to_sigma` (Karras et al. 2022, Table 1, VP sigma^-1)."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d

    @property
    def sigma_min(self) -> float:
        return math.sqrt(math.expm1(0.5 * self.beta_d * self.eps_t**2 + self.beta_min * self.eps_t))

    @property
    def sigma_max(self) -> float:
        return math.sqrt(math.expm1(0.5 * self.beta_d + self.beta_min))

    def forward(self, x: torch.Tensor, sigma, **extra) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        sigma_b = _expand(sigma, x.ndim)
        out = self.net(x / (sigma_b**2 + 1).sqrt(), self.sigma_to_t(sigma), **extra)
        return vp_denoised(x, sigma_b, out.to(x.dtype), self.prediction_type)
