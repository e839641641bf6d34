"""Parity with k-diffusion: its samplers, transcribed literally below, are the independent reference.

Source: crowsonkb/k-diffusion, k_diffusion/sampling.py (commit 686dbad0f39640ea25c8a8c6a6e56bb40eacefa2):
``to_d``, ``get_ancestral_step``, ``get_sigmas_karras``, ``sample_euler_ancestral``, ``sample_heun``,
``sample_dpmpp_2s_ancestral``, ``sample_dpmpp_sde``. Changes to the transcription, each marked ``# CHANGED``:
``trange`` -> ``range``; ``utils.append_dims`` inlined; ``sample_heun``'s churn noise comes from the
``noise_sampler`` (k-diffusion calls ``torch.randn_like``) and is drawn only when gamma > 0; the default
BrownianTree noise sampler of ``sample_dpmpp_sde`` is replaced by ``BrownianPath`` below, one Brownian
path on a grid queried the same way. Both sides get the same noise: a ``ReplayNoise`` replaying one fixed
list of tensors, or for ``dpmpp_sde`` the same ``BrownianPath``. float64 throughout.
"""

from __future__ import annotations

import math

import pytest
import torch

import optsample
from optsample.models import GaussianMixture
from optsample.samplers.restart import restart_index

TOL = 1e-12


# ------------------------------------------------------------------------------------------------
# k-diffusion, transcribed (see the module docstring for the source and the marked changes).


def append_dims(x, target_dims):  # CHANGED: k_diffusion.utils.append_dims, inlined
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x, sigma, denoised):
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    """Calculates the noise level (sigma_down) to step down to and the amount
    of noise to add (sigma_up) when doing an ancestral sampling step."""
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7., device='cpu'):
    """Constructs the noise schedule of Karras et al. (2022)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)  # CHANGED: float64 ramp (k-diffusion: default dtype)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    """Ancestral sampling with Euler method steps."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):  # CHANGED: trange
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        d = to_d(x, sigmas[i], denoised)
        # Euler method
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1., noise_sampler=None):
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):  # CHANGED: trange
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            eps = noise_sampler(sigma_hat, sigmas[i]) * s_noise  # CHANGED: was torch.randn_like(x), drawn every step
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigma_hat, 'denoised': denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            # Euler method
            x = x + d * dt
        else:
            # Heun's method
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731

    for i in range(len(sigmas) - 1):  # CHANGED: trange
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        if sigma_down == 0:
            # Euler method
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            # DPM-Solver++(2S)
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s) * s_in, **extra_args)
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        # Noise addition
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic)."""
    # CHANGED: the BrownianTreeNoiseSampler default is dropped; a noise_sampler is always passed.
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731

    for i in range(len(sigmas) - 1):  # CHANGED: trange
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        if sigmas[i + 1] == 0:
            # Euler method
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            x = x + d * dt
        else:
            # DPM-Solver++
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)

            # Step 1
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
            s_ = t_fn(sd)
            x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
            denoised_2 = model(x_2, sigma_fn(s) * s_in, **extra_args)

            # Step 2
            sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
            t_next_ = t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


# ------------------------------------------------------------------------------------------------
# Restart (Xu et al. 2023, Alg. 1) assembled from the transcribed ``sample_heun`` above.


def restart_reference(model, x, sigmas, t_min_index, t_max, restart_k, restart_steps, s_noise, noise_sampler):
    """Heun down to sigmas[j]; restart_k times: x += s_noise sqrt(t_max^2 - t_min^2) z, Heun on an EDM grid
    t_max -> t_min (k-diffusion's get_sigmas_karras with its trailing zero dropped and its last entry pinned to
    t_min, as the grid must land on sigmas[j]); then Heun down the rest of the sigmas."""
    j = t_min_index
    t_min = sigmas[j]
    x = sample_heun(model, x, sigmas[: j + 1])
    for _ in range(restart_k):
        x = x + noise_sampler(t_min, t_max) * s_noise * (t_max**2 - t_min**2) ** 0.5
        grid = get_sigmas_karras(restart_steps + 1, float(t_min), float(t_max))[:-1]
        grid[0], grid[-1] = t_max, t_min
        x = sample_heun(model, x, grid)
    return sample_heun(model, x, sigmas[j:])


# ------------------------------------------------------------------------------------------------
# Fixtures.


class ReplayNoise:
    """A noise_sampler(sigma, sigma_next) handing out a fixed list of standard normal tensors in order: a
    stream (new noise at every call; samplers/core.py, the noise contract)."""

    independent_calls = True

    def __init__(self, shape, count=400, seed=1234):
        g = torch.Generator().manual_seed(seed)
        self.noises = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(count)]
        self.used = 0

    def __call__(self, sigma, sigma_next):
        noise = self.noises[self.used]
        self.used += 1
        return noise


class BrownianPath:
    """One Brownian path W(sigma) on a fixed grid of noise levels, queried like k-diffusion's
    ``BrownianTreeNoiseSampler``: ``(sigma, sigma_next) -> (W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|)``.

    W = 0 at the lowest grid point and has independent N(0, dt) increments between grid points (drawn from
    a fixed seed), so every query between grid points is exact, whichever pairs of points a sampler asks
    for. A query is snapped to the nearest grid point (they must agree to 1e-12 relative).
    """

    def __init__(self, shape, points, seed=4321):
        g = torch.Generator().manual_seed(seed)
        self.points = sorted(set(points))
        walk = [torch.zeros(shape, dtype=torch.float64)]
        for low, high in zip(self.points[:-1], self.points[1:]):
            walk.append(walk[-1] + torch.randn(shape, generator=g, dtype=torch.float64) * (high - low) ** 0.5)
        self.values = walk
        self.used = 0

    def at(self, sigma):
        sigma = float(sigma)
        k = min(range(len(self.points)), key=lambda m: abs(self.points[m] - sigma))
        assert abs(self.points[k] - sigma) <= 1e-12 * sigma, (sigma, self.points[k])
        return self.values[k]

    def __call__(self, sigma, sigma_next):
        self.used += 1
        return (self.at(sigma_next) - self.at(sigma)) / abs(float(sigma) - float(sigma_next)) ** 0.5


def dpmpp_sde_points(sigmas, r):
    """The noise levels dpmpp_sde visits: the sigmas and exp(log s + r (log s_next - log s)) between them."""
    values = [v for v in sigmas.tolist() if v > 0]
    mids = [math.exp(math.log(a) + r * (math.log(b) - math.log(a))) for a, b in zip(values[:-1], values[1:])]
    return values + mids


MODELS = {
    "gmm2d": GaussianMixture.random(dim=2, components=4, seed=0),
    "gmm16d": GaussianMixture.random(dim=16, components=5, seed=1, spread=1.5),
}
SIGMAS = get_sigmas_karras(12, 0.03, 30.0)  # float64, ends in 0
BATCH = 6


def start(model_name, seed=0):
    dim = MODELS[model_name].dim
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, dim, generator=g, dtype=torch.float64) * SIGMAS[0]


def run_both(model_name, reference_fn, name, make_noise=ReplayNoise, **hparams):
    """(ours, reference, noise draws ours, noise draws reference) from the same start and the same noise."""
    model, x = MODELS[model_name], start(model_name)
    ours_noise, ref_noise = make_noise(x.shape), make_noise(x.shape)
    ours = optsample.sample(name, model, x.clone(), SIGMAS, noise_sampler=ours_noise, **hparams)
    ref = reference_fn(model, x.clone(), SIGMAS, noise_sampler=ref_noise, **hparams)
    return ours, ref, ours_noise.used, ref_noise.used


def max_abs(a, b):
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("eta,s_noise", [(1.0, 1.0), (0.5, 0.8), (0.0, 1.0), (1.7, 1.0)])
def test_dpmpp_2s_ancestral_matches_kdiffusion(model_name, eta, s_noise):
    ours, ref, used, ref_used = run_both(model_name, sample_dpmpp_2s_ancestral, "dpmpp_2s_ancestral", eta=eta, s_noise=s_noise)
    assert ours.dtype == torch.float64
    assert max_abs(ours, ref) <= TOL
    if eta:
        assert used == ref_used == len(SIGMAS) - 2  # one draw per step, none on the last


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("eta,s_noise,r", [(1.0, 1.0, 0.5), (0.7, 1.1, 0.3), (1.0, 1.0, 0.8), (0.0, 1.0, 0.5)])
def test_dpmpp_sde_matches_kdiffusion(model_name, eta, s_noise, r):
    """Both draw their noise from the same Brownian path (k-diffusion's default is a Brownian tree)."""
    path = lambda shape: BrownianPath(shape, dpmpp_sde_points(SIGMAS, r))  # noqa: E731
    ours, ref, used, ref_used = run_both(model_name, sample_dpmpp_sde, "dpmpp_sde", make_noise=path, eta=eta,
                                         s_noise=s_noise, r=r)
    assert max_abs(ours, ref) <= TOL
    if eta:
        assert used == ref_used == 2 * (len(SIGMAS) - 2)  # two draws per step, none on the last


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("eta,s_noise", [(1.0, 1.0), (0.6, 0.9)])
def test_euler_ancestral_matches_kdiffusion(model_name, eta, s_noise):
    ours, ref, used, ref_used = run_both(model_name, sample_euler_ancestral, "euler_ancestral", eta=eta, s_noise=s_noise)
    assert max_abs(ours, ref) <= TOL
    assert used == ref_used == len(SIGMAS) - 2


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("churn", [dict(), dict(s_churn=4.0, s_tmin=0.1, s_tmax=10.0, s_noise=1.003)])
def test_heun_matches_kdiffusion(model_name, churn):
    ours, ref, used, ref_used = run_both(model_name, sample_heun, "heun", **churn)
    assert max_abs(ours, ref) <= TOL
    assert used == ref_used
    assert (used > 0) == bool(churn)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_restart_k0_is_heun_bit_for_bit(model_name):
    """restart_k = 0 equals optsample's heun exactly (float64 and float32) and k-diffusion's sample_heun to
    rounding (optsample's Euler step is one fused add, k-diffusion's a multiply then an add)."""
    model, x = MODELS[model_name], start(model_name)
    ours, info = optsample.sample("restart", model, x, SIGMAS, seeds=list(range(BATCH)), restart_k=0, return_info=True)
    assert max_abs(ours, sample_heun(model, x.clone(), SIGMAS)) <= TOL
    assert info.nfe == 2 * (len(SIGMAS) - 1) - 1
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        heun = optsample.sample("heun", model, xd, SIGMAS, seeds=list(range(BATCH)))
        assert torch.equal(optsample.sample("restart", model, xd, SIGMAS, seeds=list(range(BATCH)), restart_k=0), heun)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("t_min,t_max,k,steps,s_noise", [(0.1, 2.0, 1, 4, 1.0), (0.5, 5.0, 3, 3, 0.9), (0.06, 0.3, 2, 1, 1.0)])
def test_restart_matches_algorithm_1_built_from_kdiffusion_heun(model_name, t_min, t_max, k, steps, s_noise):
    model, x = MODELS[model_name], start(model_name)
    sigma_list = SIGMAS.tolist()
    j = restart_index(sigma_list, t_min, t_max)
    # The snapping rule, checked by hand: the interior grid sigma nearest to t_min (all of them are below t_max here).
    nearest = min(range(1, len(sigma_list) - 1), key=lambda m: abs(sigma_list[m] - t_min))
    assert j == nearest and sigma_list[j] < t_max
    ours_noise, ref_noise = ReplayNoise(x.shape), ReplayNoise(x.shape)
    calls = []
    ours, info = optsample.sample("restart", model, x.clone(), SIGMAS, noise_sampler=ours_noise, callback=calls.append,
                                  restart_t_min=t_min, restart_t_max=t_max, restart_k=k, restart_steps=steps,
                                  s_noise=s_noise, return_info=True)
    ref = restart_reference(model, x.clone(), SIGMAS, j, t_max, k, steps, s_noise, ref_noise)
    assert max_abs(ours, ref) <= TOL
    assert ours_noise.used == ref_noise.used == k
    assert info.nfe == 2 * (len(SIGMAS) - 1) - 1 + k * 2 * steps
    assert [c["i"] for c in calls] == list(range(len(SIGMAS) - 1))
    assert [c["sigma"] for c in calls] == sigma_list[:-1]


def test_restart_rejects_bad_interval_before_any_evaluation():
    calls = []

    def model(x, sigma):
        calls.append(sigma)
        return x

    x = start("gmm2d")
    with pytest.raises(ValueError, match="restart_t_max"):
        optsample.sample("restart", model, x, SIGMAS, seeds=list(range(BATCH)), restart_t_min=1.0, restart_t_max=0.5)
    with pytest.raises(ValueError):
        optsample.sample("restart", model, x, SIGMAS, seeds=list(range(BATCH)), restart_steps=0)
    assert calls == []


def test_restart_without_a_grid_point_warns_and_runs_heun():
    model, x = MODELS["gmm2d"], start("gmm2d")
    sigmas = torch.tensor([30.0, 0.0], dtype=torch.float64)  # a single step: nowhere to restart from
    with pytest.warns(UserWarning, match="plain Heun"):
        out = optsample.sample("restart", model, x, sigmas, seeds=list(range(BATCH)))
    assert torch.equal(out, optsample.sample("heun", model, x, sigmas))
    assert max_abs(out, sample_heun(model, x.clone(), sigmas)) <= TOL
    assert math.isfinite(float(out.abs().max()))


# k_diffusion/sampling.py sample_dpmpp_2m (literal transcription; also the peer of tests/test_rules.py)
@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    old_denoised = None

    for i in range(len(sigmas) - 1):  # CHANGED: trange
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x
