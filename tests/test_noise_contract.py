"""The noise contract (samplers/core.py, module doc) with k-diffusion's Brownian-tree noise (issue 9, item 5).

Closed form used throughout: the data is a point mass at 0, D(x, sigma) = 0. Then the probability-flow
ODE is dx/dsigma = x / sigma and Euler and Heun solve it exactly (x_next = x sigma_next / sigma), and the
marginal at noise level sigma is N(0, sigma^2). Every correct stochastic process started from N(0, sigma_0^2)
- churn (Karras et al. 2022, Alg. 2: noise raising the level to sigma_hat), Restart's jumps (Xu et al. 2023,
Alg. 1), warm restarts - keeps that marginal, so the output at the last (positive) sigma has variance
sigma_end^2 exactly, PROVIDED each jump's noise is independent of the state. Noise that repeats (every
restart pass given the tree's same interval) or vanishes (churn above the tree's sigma_max, clamped by
torchsde) breaks the variance: 1.75 sigma_end^2 for two restarts with t_max / t_min = 2, and
sigma_end^2 / (1 + gamma)^2 for churn at sigma_max.
"""

from __future__ import annotations

import math

import pytest
import torch

import optsample
from optsample.samplers.core import PathNoise
from helpers import BrownianTreeNoiseSampler

N = 4000  # samples: the variance estimate has relative std sqrt(2 / N) = 2.2 %, so 8 % is ~3.6 std
REL_TOL = 0.08
SIGMAS = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)  # ends at 0.25 > 0


def zero_denoiser(x, sigma):
    return torch.zeros_like(x)


def start():
    return optsample.initial_noise(range(N), (1,), dtype=torch.float64) * SIGMAS[0]


def tree_noise(x, seed=5):
    """k-diffusion's construction: a tree over the schedule's positive range."""
    return BrownianTreeNoiseSampler(x, float(SIGMAS[-1]), float(SIGMAS[0]), seed=seed)


def output_variance(name, **hparams):
    x = start()
    out = optsample.sample(name, zero_denoiser, x, SIGMAS, noise_sampler=tree_noise(x), seeds=range(N), **hparams)
    return float(out.var()) / float(SIGMAS[-1]) ** 2  # 1.0 when the marginal N(0, sigma^2) is kept


def test_deterministic_baseline_keeps_the_marginal():
    assert output_variance("euler") == pytest.approx(1.0, rel=REL_TOL)


@pytest.mark.parametrize("k", [2, 3])
def test_restart_passes_get_independent_noise_from_a_brownian_tree(k):
    # t_min 1 (a grid sigma), t_max 2: before, every pass reused the tree's noise of [1, 2]: variance 1.75 (k=2)
    ratio = output_variance("restart", restart_t_min=1.0, restart_t_max=2.0, restart_k=k, restart_steps=2)
    assert ratio == pytest.approx(1.0, rel=REL_TOL)


def test_rule_warm_restarts_get_independent_noise_from_a_brownian_tree():
    # sgd (= Euler) restarting from sigma 1 up to 4, twice: before, both jumps had the tree's noise of [1, 4]
    ratio = output_variance("sgd", restart_count=2, restart_sigma_min=1.0, restart_sigma_max=4.0)
    assert ratio == pytest.approx(1.0, rel=REL_TOL)


@pytest.mark.parametrize("name, hparams", [
    ("euler", {"s_churn": 2.0, "s_tmin": 7.0}),  # churn on the first step only: sigma_hat = 8 (1 + 0.4) > 8
    ("heun", {"s_churn": 2.0, "s_tmin": 7.0}),
    ("sgd", {"langevin_churn": 2.0, "langevin_tmin": 7.0}),
])
def test_churn_above_sigma_max_gets_noise(name, hparams):
    # before: the tree clamps [8, 11.2] to [8, 8], no noise: variance 1 / 1.4^2 = 0.51
    assert output_variance(name, **hparams) == pytest.approx(1.0, rel=REL_TOL)


def test_ancestral_steps_take_the_trees_noise():
    """First-pass requests inside the range come from the tree itself (a Brownian path drives the SDE):
    euler_ancestral with the tree equals euler_ancestral given the tree's increments as a plain stream."""
    x = start()
    ours = optsample.sample("euler_ancestral", zero_denoiser, x, SIGMAS, noise_sampler=tree_noise(x))
    tree = tree_noise(x)
    increments = iter([tree(s, sn) for s, sn in zip(SIGMAS[:-1].tolist(), SIGMAS[1:].tolist())])

    def stream(sigma, sigma_next):
        return next(increments)

    stream.independent_calls = True
    assert torch.equal(ours, optsample.sample("euler_ancestral", zero_denoiser, x, SIGMAS, noise_sampler=stream))


def test_path_noise_routing():
    """Inside [low, high] and not overlapping a served interval: the path; otherwise: the fresh stream."""
    calls = []
    noise = PathNoise(lambda s, sn: calls.append(("path", s, sn)), lambda s, sn: calls.append(("fresh", s, sn)),
                      0.5, 8.0)
    for s, sn in [(8.0, 4.0), (4.0, 2.0), (6.0, 3.0), (2.0, 4.0), (11.2, 8.0), (1.0, 0.25), (1.0, 0.5), (2.0, 2.0)]:
        noise(s, sn)
    assert [kind for kind, *_ in calls] == ["path", "path", "fresh", "fresh", "fresh", "fresh", "path", "fresh"]


def test_restart_jump_noise_is_standard_normal_and_uncorrelated():
    """The K jumps' noises, read back from the closed form, are N(0, 1) and mutually uncorrelated."""
    x = start()
    t_min, t_max, k = 1.0, 2.0, 2
    seen = []
    stream = tree_noise(x)

    def recording(sigma, sigma_next):
        z = stream(sigma, sigma_next)
        seen.append(z)
        return z

    optsample.sample("restart", zero_denoiser, x, SIGMAS, noise_sampler=recording, seeds=range(N),
                     restart_t_min=t_min, restart_t_max=t_max, restart_k=k, restart_steps=2)
    assert len(seen) == 1  # only the first jump may use the tree's [1, 2]; the second is fresh
    assert math.isclose(float(seen[0].std()), 1.0, rel_tol=REL_TOL)
