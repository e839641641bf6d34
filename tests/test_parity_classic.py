"""Parity of the classic samplers with diffusers' schedulers and with k-diffusion (transcribed here).

Set-up: tests/helpers.py's 8-D Gaussian mixture, seen by diffusers as a discrete eps network
(DenoiserAsDiscreteEps) and by optsample as a denoiser (DiscreteVPDenoiser around that same network), on
Stable Diffusion's scaled_linear schedule. Every diffusers scheduler uses timestep_spacing="trailing" with
1000 % n_steps == 0, so its timesteps are integers where its linear sigma interpolation and the wrappers'
log-sigma interpolation agree exactly; the midpoint timesteps of KDPM2 are found by diffusers' own
log-sigma interpolation, which the wrappers share. With a final sigma of 0 the final samples of the
VE-scaled (Euler family) and VP-scaled (DDIM, DDPM) schedulers are both the clean sample, so they are
compared directly with our final x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, LMSDiscreteScheduler,
)
from scipy import integrate

import optsample
from optsample.models import GaussianMixture
from optsample.samplers.adams import lms_coefficients

from helpers import SCHEDULER_KWARGS, CountingEps, run_diffusers, vp_models

N_STEPS = 10
BATCH, DIM = 4, 8
TOL = 1e-5  # float32 parity bound (max abs diff over the batch)




def make_scheduler(cls, **config):
    scheduler = cls(**SCHEDULER_KWARGS, timestep_spacing="trailing", **config)
    scheduler.set_timesteps(N_STEPS)
    return scheduler


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(seed))


def plain_sigmas(scheduler) -> torch.Tensor:
    """The step sigmas without diffusers' interleaving (Heun / KDPM2 repeat each inner sigma)."""
    return torch.unique_consecutive(scheduler.sigmas)


def generator_noise(seed: int):
    """A noise_sampler drawing from one torch.Generator in order, as diffusers' randn_tensor does."""
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(BATCH, DIM, generator=generator)


def run_euler_family(name: str, scheduler_cls, noise_seed: int | None = None, **hparams):
    """(ours, diffusers, our NFE, diffusers' model calls) for a VE-scaled (Euler family) scheduler."""
    scheduler = make_scheduler(scheduler_cls)
    eps_net, denoiser = vp_models(scheduler.alphas_cumprod, dim=DIM)
    counting = CountingEps(eps_net)
    noise = start_noise()
    generator = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    theirs = run_diffusers(scheduler, counting, noise, generator=generator)
    sigmas = plain_sigmas(scheduler)
    assert float(sigmas[-1]) == 0.0 and len(sigmas) == N_STEPS + 1
    noise_sampler = None if noise_seed is None else generator_noise(noise_seed)
    ours, info = optsample.sample(name, denoiser, noise * sigmas[0], sigmas, noise_sampler=noise_sampler,
                                  seeds=list(range(BATCH)), return_info=True, **hparams)
    return ours, theirs, info.nfe, counting.calls


@pytest.mark.parametrize(
    "name, scheduler_cls, noise_seed, expected_nfe",
    [
        ("euler", EulerDiscreteScheduler, None, N_STEPS),
        ("euler_ancestral", EulerAncestralDiscreteScheduler, 7, N_STEPS),
        ("heun", HeunDiscreteScheduler, None, 2 * N_STEPS - 1),
        ("dpm_2", KDPM2DiscreteScheduler, None, 2 * N_STEPS - 1),
        ("dpm_2_ancestral", KDPM2AncestralDiscreteScheduler, 7, 2 * N_STEPS - 1),
        ("lms", LMSDiscreteScheduler, None, N_STEPS),
    ],
)
def test_euler_family_matches_diffusers(name, scheduler_cls, noise_seed, expected_nfe):
    ours, theirs, nfe, calls = run_euler_family(name, scheduler_cls, noise_seed)
    assert ours.dtype == theirs.dtype == torch.float32
    assert float((ours - theirs).abs().max()) <= TOL
    assert nfe == calls == expected_nfe  # 2nd-order ones: Euler on the last step, as diffusers


def vp_sigmas(scheduler) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) at DDIM/DDPM's integer timesteps, then 0 (final alpha_cumprod 1)."""
    abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
    return torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()


def run_vp(name: str, scheduler, noise_sampler, generator=None, step_kwargs=None, **hparams):
    """(ours, diffusers, our NFE, diffusers' model calls) for a VP-scaled (DDIM / DDPM) scheduler."""
    eps_net, denoiser = vp_models(scheduler.alphas_cumprod, dim=DIM)
    counting = CountingEps(eps_net)
    noise = start_noise()
    theirs = run_diffusers(scheduler, counting, noise, generator=generator, **(step_kwargs or {}))
    sigmas = vp_sigmas(scheduler)
    x_ve = noise * (sigmas[0] ** 2 + 1).sqrt()  # x_T / sqrt(abar_T): DDIM starts from unit noise in VP coordinates
    ours, info = optsample.sample(name, denoiser, x_ve, sigmas, noise_sampler=noise_sampler, return_info=True, **hparams)
    return ours, theirs, info.nfe, counting.calls


class SharedNoise:
    """DDIM's variance_noise for step i and our noise_sampler's i-th draw are the same tensor."""

    def __init__(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.tensors = [torch.randn(BATCH, DIM, generator=generator) for _ in range(N_STEPS)]
        self.drawn = 0

    def __call__(self, sigma, sigma_next):
        self.drawn += 1
        return self.tensors[self.drawn - 1]


class DDIMWithNoise(DDIMScheduler):
    """DDIM fed the i-th shared noise tensor as ``variance_noise`` at step i."""

    def step(self, model_output, timestep, sample, **kwargs):
        index = int((self.timesteps == timestep).nonzero()[0, 0])
        return super().step(model_output, timestep, sample, variance_noise=self.shared.tensors[index], **kwargs)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    scheduler = DDIMWithNoise(**SCHEDULER_KWARGS, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(N_STEPS)
    scheduler.shared = SharedNoise(3)
    ours_noise = SharedNoise(3)
    ours, theirs, nfe, calls = run_vp("ddim", scheduler, ours_noise, step_kwargs={"eta": eta}, eta=eta)
    assert float((ours - theirs).abs().max()) <= TOL
    assert nfe == calls == N_STEPS
    # eta = 0 draws no noise; eta = 1 draws on every step but the last (sigma_next = 0 adds none)
    assert ours_noise.drawn == (0 if eta == 0 else N_STEPS - 1)


def test_ddpm_matches_diffusers_fixed_small():
    scheduler = DDPMScheduler(**SCHEDULER_KWARGS, timestep_spacing="trailing", clip_sample=False,
                              variance_type="fixed_small")
    scheduler.set_timesteps(N_STEPS)
    generator = torch.Generator().manual_seed(11)
    ours, theirs, nfe, calls = run_vp("ddpm", scheduler, generator_noise(11), generator=generator)
    assert float((ours - theirs).abs().max()) <= TOL
    assert nfe == calls == N_STEPS
    # and "fixed_large" (variance beta_t) is a different sampler: our ddpm is the posterior variance
    large = DDPMScheduler(**SCHEDULER_KWARGS, timestep_spacing="trailing", clip_sample=False, variance_type="fixed_large")
    large.set_timesteps(N_STEPS)
    eps_net = vp_models(large.alphas_cumprod, dim=DIM)[0]
    theirs_large = run_diffusers(large, eps_net, start_noise(), generator=torch.Generator().manual_seed(11))
    assert float((ours - theirs_large).abs().max()) > 100 * TOL


# ----------------------------------------------------------------------------------------------
# k-diffusion (crowsonkb/k-diffusion, k_diffusion/sampling.py, master) transcribed literally as independent
# references, in float64 on the Gaussian mixture used directly as a denoiser. randn_like is replaced by the
# noise_sampler both sides share.


def kd_to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def kd_sample_heun(model, x, sigmas, noise_sampler, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = kd_to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = kd_to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


def kd_sample_dpm_2(model, x, sigmas, noise_sampler, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = kd_to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            dt = sigmas[i + 1] - sigma_hat
            x = x + d * dt
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = kd_to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


def kd_sample_dpm_2_ancestral(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = kd_get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = kd_to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            sigma_mid = sigmas[i].log().lerp(torch.as_tensor(sigma_down, dtype=sigmas.dtype).log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = kd_to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
        if sigma_up > 0:  # k-diffusion draws (and multiplies by 0) on the last step; we do not draw there
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def kd_linear_multistep_coeff(order, t, i, j):
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def kd_sample_lms(model, x, sigmas, order=4):
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = kd_to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [kd_linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def karras_sigmas(n: int, sigma_min=0.02, sigma_max=20.0, rho=7.0) -> torch.Tensor:
    """k-diffusion get_sigmas_karras (ending in 0), float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


GMM = GaussianMixture.random(dim=DIM, components=3, seed=1, spread=2.0)


def kd_case(seed: int = 5):
    sigmas = karras_sigmas(12)
    x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigmas[0]
    return x, sigmas


def float64_noise(seed: int):
    """A stream (new noise at every call; samplers/core.py, the noise contract)."""
    generator = torch.Generator().manual_seed(seed)
    noise = lambda sigma, sigma_next: torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)  # noqa: E731
    noise.independent_calls = True
    return noise


KD_CASES = {
    "heun churn": ("heun", kd_sample_heun, dict(s_churn=4.0, s_noise=1.003)),
    "heun": ("heun", kd_sample_heun, {}),
    "dpm_2 churn": ("dpm_2", kd_sample_dpm_2, dict(s_churn=4.0, s_noise=1.003)),
    "dpm_2_ancestral eta .5": ("dpm_2_ancestral", kd_sample_dpm_2_ancestral, dict(eta=0.5, s_noise=0.9)),
    "dpm_2_ancestral eta 1.3": ("dpm_2_ancestral", kd_sample_dpm_2_ancestral, dict(eta=1.3)),  # sigma_up capped
    "lms order 3": ("lms", None, dict(order=3)),
}


@pytest.mark.parametrize("case", list(KD_CASES))
def test_matches_kdiffusion_float64(case):
    name, reference, hparams = KD_CASES[case]
    x, sigmas = kd_case()
    if name == "lms":
        expected = kd_sample_lms(GMM, x, sigmas, **hparams)
    else:
        expected = reference(GMM, x, sigmas, float64_noise(9), **hparams)
    ours = optsample.sample(name, GMM, x, sigmas, noise_sampler=float64_noise(9), **hparams)
    assert ours.dtype == torch.float64
    # k-diffusion's quad has epsrel 1e-4 but integrates these cubics exactly up to rounding
    assert float((ours - expected).abs().max()) <= 1e-11


@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("n_steps", [10, 15, 20, 25, 50])  # issue 9: multistep parity at every length
def test_lms_matches_kdiffusion_at_every_length_float64(n_steps, order):
    sigmas = karras_sigmas(n_steps)
    x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * sigmas[0]
    expected = kd_sample_lms(GMM, x, sigmas, order=order)
    ours = optsample.sample("lms", GMM, x, sigmas, order=order)
    assert float((ours - expected).abs().max()) <= 1e-11  # as test_matches_kdiffusion_float64


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_coefficients_exact(order):
    sigmas = karras_sigmas(8).numpy()
    i = 5
    history = [float(sigmas[i - k]) for k in range(order)]
    ours = lms_coefficients(history, float(sigmas[i + 1]))
    quad = [kd_linear_multistep_coeff(order, sigmas, i, j) for j in range(order)]
    np.testing.assert_allclose(ours, quad, rtol=1e-12, atol=1e-14)
    # the Lagrange basis sums to 1, so the weights sum to the step length sigma_next - sigma
    assert math.isclose(sum(ours), float(sigmas[i + 1] - sigmas[i]), rel_tol=1e-13)


# ----------------------------------------------------------------------------------------------
# Exact identities and determinism.


class CountingNoise:
    def __init__(self, seed: int):
        self.sampler, self.calls = float64_noise(seed), 0

    def __call__(self, sigma, sigma_next):
        self.calls += 1
        return self.sampler(sigma, sigma_next)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
@pytest.mark.parametrize("churn_off", [dict(s_churn=0.0, s_noise=0.7), dict(s_churn=5.0, s_tmin=30.0),
                                       dict(s_churn=5.0, s_tmax=0.01)])
def test_churn_off_is_bitwise_no_churn(name, churn_off):
    """s_churn = 0, or a churn window [s_tmin, s_tmax] holding no sigma, is bitwise the plain sampler and draws no noise."""
    x, sigmas = kd_case()
    noise = CountingNoise(1)
    plain = optsample.sample(name, GMM, x, sigmas, noise_sampler=CountingNoise(1))
    off = optsample.sample(name, GMM, x, sigmas, noise_sampler=noise, **churn_off)
    assert torch.equal(plain, off)
    assert noise.calls == 0


def test_heun_churn_deterministic_given_seeds():
    x, sigmas = kd_case()
    x32 = x.float()
    first = optsample.sample("heun", GMM, x32, sigmas, seeds=[1, 2, 3, 4], s_churn=10.0)
    again = optsample.sample("heun", GMM, x32, sigmas, seeds=[1, 2, 3, 4], s_churn=10.0)
    other = optsample.sample("heun", GMM, x32, sigmas, seeds=[1, 2, 3, 5], s_churn=10.0)
    no_churn = optsample.sample("heun", GMM, x32, sigmas, seeds=[1, 2, 3, 4])
    assert torch.equal(first, again)
    assert torch.equal(first[:3], other[:3])  # per-sample streams: sample k depends on seeds[k] only
    assert float((first[3] - other[3]).abs().max()) > 1e-3
    assert float((first - no_churn).abs().max()) > 1e-3  # the churn noise really entered


def test_ddim_identities():
    """ddim(eta=0) is bitwise euler; ddim(eta=1), ddpm and euler_ancestral(eta=1) are bitwise one sampler."""
    x, sigmas = kd_case()
    euler = optsample.sample("euler", GMM, x, sigmas)
    assert torch.equal(optsample.sample("ddim", GMM, x, sigmas, seeds=[0] * BATCH), euler)
    runs = [optsample.sample(name, GMM, x, sigmas, seeds=[1, 2, 3, 4], **hp)
            for name, hp in [("ddim", dict(eta=1.0)), ("ddpm", {}), ("euler_ancestral", {})]]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert float((runs[0] - euler).abs().max()) > 1e-3


def test_hyperparameter_bounds():
    x, sigmas = kd_case()
    with pytest.raises(ValueError):
        optsample.sample("ddim", GMM, x, sigmas, eta=1.5)  # DDIM's sigma_t(eta) exceeds the posterior for eta > 1
    with pytest.raises(ValueError):
        optsample.sample("lms", GMM, x, sigmas, order=0)
    with pytest.raises(TypeError):
        optsample.sample("ddpm", GMM, x, sigmas, eta=0.5)


# ----------------------------------------------------------------------------------------------
# Convergence on the probability-flow ODE of the mixture against scipy's DOP853 (rtol 1e-12).


def reference_ode(x, sigma_from: float, sigma_to: float):
    def rhs(sigma, flat):
        xs = torch.from_numpy(flat).reshape(x.shape)
        return ((xs - GMM(xs, torch.full((x.shape[0],), sigma, dtype=torch.float64))) / sigma).flatten().numpy()

    sol = integrate.solve_ivp(rhs, (sigma_from, sigma_to), x.flatten().numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    return torch.from_numpy(sol.y[:, -1]).reshape(x.shape)


@pytest.mark.parametrize("name, min_order", [("euler", 0.9), ("heun", 1.8), ("dpm_2", 1.8), ("lms", 3.5)])
def test_convergence_order(name, min_order):
    """Halving the log-sigma step from 64 to 128 steps cuts the error by about 2^order (measured: euler 1.01,
    heun 2.02, dpm_2 1.95, lms(order 4) 3.75; lms needs the fine grid to leave its low-order start-up behind)."""
    sigma_max, sigma_min = 20.0, 0.1
    x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigma_max
    exact = reference_ode(x, sigma_max, sigma_min)
    errors = []
    for n in (64, 128):
        sigmas = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64)
        errors.append(float((optsample.sample(name, GMM, x, sigmas) - exact).abs().max()))
    assert math.log2(errors[0] / errors[1]) >= min_order
