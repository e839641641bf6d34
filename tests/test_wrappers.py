"""Wrappers into the denoiser convention: discrete VP (eps / v / x0), EDM preconditioning, continuous VP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from optsample.models import (
    ContinuousVPDenoiser, DenoiserAsDiscreteEps, DiscreteSchedule, DiscreteVPDenoiser, EDMPrecond, GaussianMixture,
)
from helpers import SCHEDULER_KWARGS

F64 = torch.float64


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled_linear schedule, written out (DDPM: abar_t = prod (1 - beta_s))."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    return torch.cumprod(1 - betas, 0)


def gmm8():
    return GaussianMixture.random(dim=8, components=3, seed=1, spread=1.0)


def test_sd_alphas_cumprod_matches_diffusers():
    sched = EulerDiscreteScheduler(**SCHEDULER_KWARGS)
    assert (sd_alphas_cumprod() - sched.alphas_cumprod.to(F64)).abs().max() < 1e-6  # diffusers keeps float32


def probe_sigmas(schedule: DiscreteSchedule) -> torch.Tensor:
    """Sigmas on table entries, between neighbours (geometric midpoints) and at the ends."""
    idx = torch.tensor([0, 1, 10, 250, 500, 998, 999])
    on = schedule.sigmas[idx]
    between = (schedule.sigmas[idx[:-1]] * schedule.sigmas[idx[:-1] + 1]).sqrt()
    return torch.cat([on, between])


def probe_batch(sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return gmm8().sample(4, generator=g) + sigma * torch.randn(4, 8, generator=g, dtype=F64)


def test_discrete_vp_eps_round_trip_gives_gmm_denoiser():
    ac = sd_alphas_cumprod()
    gmm = gmm8()
    denoiser = DiscreteVPDenoiser(DenoiserAsDiscreteEps(gmm, ac), ac)
    for sigma in probe_sigmas(denoiser).tolist():
        x = probe_batch(sigma)
        s = torch.full((4,), sigma, dtype=F64)
        assert (denoiser(x, s) - gmm(x, s)).abs().max() < 1e-10 * max(1.0, sigma)


class AnalyticVPNet(torch.nn.Module):
    """A discrete VP network built from the GMM: predicts v (Salimans & Ho 2022, eq. 9) or x0 exactly.

    Written independently of the wrapper: x_t = alpha x0 + s eps with alpha = 1/sqrt(1+sigma^2),
    s = sigma/sqrt(1+sigma^2); v = alpha eps - s x0.
    """

    def __init__(self, gmm, alphas_cumprod, prediction_type):
        super().__init__()
        self.gmm, self.prediction_type = gmm, prediction_type
        self.schedule = DiscreteSchedule(alphas_cumprod)

    def forward(self, x_t, t):
        sigma = self.schedule.t_to_sigma(t).to(x_t.dtype)[:, None]
        alpha, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
        x = x_t / alpha
        x0 = self.gmm(x, sigma[:, 0])
        if self.prediction_type == "sample":
            return x0
        eps = (x_t - alpha * x0) / s
        return alpha * eps - s * x0


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_discrete_vp_v_and_x0_prediction_give_gmm_denoiser(prediction_type):
    ac = sd_alphas_cumprod()
    gmm = gmm8()
    denoiser = DiscreteVPDenoiser(AnalyticVPNet(gmm, ac, prediction_type), ac, prediction_type)
    for sigma in probe_sigmas(denoiser).tolist():
        x = probe_batch(sigma, seed=1)
        s = torch.full((4,), sigma, dtype=F64)
        assert (denoiser(x, s) - gmm(x, s)).abs().max() < 1e-10 * max(1.0, sigma)


def test_discrete_sigma_t_inverse_pair():
    schedule = DiscreteSchedule(sd_alphas_cumprod())
    t = torch.cat([torch.arange(1000, dtype=F64), torch.linspace(0, 999, 3001, dtype=F64) + 0.123]).clamp(max=999)
    assert (schedule.sigma_to_t(schedule.t_to_sigma(t)) - t).abs().max() < 1e-9
    sigma = schedule.sigmas[0] * (schedule.sigmas[-1] / schedule.sigmas[0]) ** torch.rand(500, dtype=F64)
    assert ((schedule.t_to_sigma(schedule.sigma_to_t(sigma)) - sigma) / sigma).abs().max() < 1e-12


def test_sigma_to_t_matches_diffusers():
    sched = EulerDiscreteScheduler(**SCHEDULER_KWARGS)
    ac = sched.alphas_cumprod.to(F64)
    schedule = DiscreteSchedule(ac)
    log_sigmas = np.log(((1 - ac) / ac).sqrt().numpy())
    sigma = np.concatenate([np.exp(log_sigmas[::37]), np.geomspace(0.0292, 14.6, 400)])
    ours = schedule.sigma_to_t(torch.from_numpy(sigma)).numpy()
    theirs = sched._sigma_to_t(sigma, log_sigmas)
    assert np.abs(ours - theirs).max() < 1e-9


# ---------------------------------------------------------------------------------------------- EDMPrecond


def edm_table1(sigma, sigma_data):
    """Karras et al. 2022, Table 1 (EDM column), transcribed: c_skip, c_out, c_in, c_noise."""
    return (
        sigma_data**2 / (sigma**2 + sigma_data**2),
        sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2),
        1 / math.sqrt(sigma**2 + sigma_data**2),
        math.log(sigma) / 4,
    )


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_precond_with_zero_and_ideal_networks(sigma_data):
    gmm = gmm8()
    seen = {}

    def ideal_net(x_in, c_noise, class_labels=None):
        """F with D = c_skip x + c_out F equal to the GMM denoiser; recovers sigma and x from Table 1."""
        seen["class_labels"] = class_labels
        sigma = float((4 * c_noise[0]).exp())
        c_skip, c_out, c_in, _ = edm_table1(sigma, sigma_data)
        x = x_in / c_in
        return (gmm(x, torch.full((len(x),), sigma, dtype=F64)) - c_skip * x) / c_out

    zero = EDMPrecond(lambda x_in, c_noise: torch.zeros_like(x_in), sigma_data=sigma_data)
    ideal = EDMPrecond(ideal_net, sigma_data=sigma_data)
    for sigma in [0.002, 0.1, 1.0, 80.0]:
        x = probe_batch(sigma, seed=2)
        s = torch.full((4,), sigma, dtype=F64)
        c_skip = edm_table1(sigma, sigma_data)[0]
        assert (zero(x, s) - c_skip * x).abs().max() < 1e-14 * max(1.0, sigma)
        assert (ideal(x, s, class_labels="dog") - gmm(x, s)).abs().max() < 1e-10 * max(1.0, sigma)
        assert seen["class_labels"] == "dog"


def test_edm_precond_passes_scaled_input_and_c_noise():
    captured = {}

    def net(x_in, c_noise):
        captured.update(x_in=x_in, c_noise=c_noise)
        return torch.zeros_like(x_in)

    x = torch.randn(3, 2, 4, 4, dtype=F64)
    sigmas = torch.tensor([0.01, 1.0, 50.0], dtype=F64)
    EDMPrecond(net)(x, sigmas)
    for k, sigma in enumerate(sigmas.tolist()):
        _, _, c_in, c_noise = edm_table1(sigma, 0.5)
        assert (captured["x_in"][k] - c_in * x[k]).abs().max() < 1e-15
        assert abs(float(captured["c_noise"][k]) - c_noise) < 1e-15


# ---------------------------------------------------------------------------------------------- continuous VP


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    """Karras et al. 2022 Table 1 VP sigma(t) (k-diffusion ``get_sigmas_vp``), transcribed (expm1 for small t)."""
    return np.sqrt(np.expm1(beta_d * t**2 / 2 + beta_min * t))


@pytest.mark.parametrize("beta_d,beta_min", [(19.9, 0.1), (5.0, 0.0)])
def test_continuous_vp_sigma_t_inverse_pair(beta_d, beta_min):
    vp = ContinuousVPDenoiser(None, beta_d=beta_d, beta_min=beta_min)
    t = np.linspace(1e-5, 1, 2001)
    sigma = vp.t_to_sigma(torch.from_numpy(t))
    assert np.abs(sigma.numpy() / vp_sigma(t, beta_d, beta_min) - 1).max() < 1e-10
    assert np.abs(vp.sigma_to_t(sigma).numpy() - t).max() < 1e-12
    assert abs(vp.sigma_max - vp_sigma(1.0, beta_d, beta_min)) < 1e-12 * vp.sigma_max


class AnalyticContinuousVPNet:
    """A continuous-time VP network from the GMM, using the transcribed sigma(t): predicts eps, v or x0."""

    def __init__(self, gmm, prediction_type):
        self.gmm, self.prediction_type = gmm, prediction_type

    def __call__(self, x_t, t):
        sigma = torch.from_numpy(vp_sigma(t.numpy()))[:, None]
        alpha, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
        x = x_t / alpha
        x0 = self.gmm(x, sigma[:, 0])
        eps = (x_t - alpha * x0) / s
        return {"epsilon": eps, "v_prediction": alpha * eps - s * x0, "sample": x0}[self.prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_continuous_vp_round_trip_gives_gmm_denoiser(prediction_type):
    gmm = gmm8()
    denoiser = ContinuousVPDenoiser(AnalyticContinuousVPNet(gmm, prediction_type), prediction_type)
    for sigma in [denoiser.sigma_min * 10, 0.01, 0.5, 3.0, denoiser.sigma_max]:
        x = probe_batch(sigma, seed=3)
        s = torch.full((4,), sigma, dtype=F64)
        assert (denoiser(x, s) - gmm(x, s)).abs().max() < 1e-9 * max(1.0, sigma)


def test_continuous_vp_rejects_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        ContinuousVPDenoiser(None, prediction_type="flow")
