"""Every registered sampler is differentiable in its sigmas (issue 14, method=gradient).

The check is the same for all: with the noise fixed by the seeds, d(loss)/d(sigma_k) by autograd through the
sampler equals the central finite difference (loss(sigma + h e_k) - loss(sigma - h e_k)) / 2h, h = 1e-6, to
1e-5 relative, at every interior sigma of a 6-step Karras schedule (float64, a 4-D, 3-component mixture).
Before this check covered the whole registry, the ancestral samplers, dpmpp_2s_ancestral, dpmpp_sde, churn
and restart ran through math.sqrt / python floats and gave gradients off by 10% to 200% without any error.
"""

from __future__ import annotations

import pytest
import torch

import optsample
from optsample import samplers, schedules
from optsample.models import GaussianMixture
from optsample.samplers import core

F64 = torch.float64
STEP = 1e-6

# Every sampler with its defaults, plus the branches the defaults skip: EDM churn, Langevin churn and warm
# restarts of the rule loop, a clipped ancestral step (eta > 1: sigma_up = sigma_next, sigma_down = 0), several
# restart passes, an asymmetric dpmpp_sde split, DDIM with noise, 2M SDE's heun form.
CASES = [(name, {}) for name in samplers.available()] + [
    ("euler", {"s_churn": 1.0}), ("heun", {"s_churn": 1.0}), ("sgd", {"langevin_churn": 1.0}),
    ("sgd", {"restart_count": 1, "restart_sigma_min": 0.5, "restart_sigma_max": 3.0}),
    ("euler_ancestral", {"eta": 1.5}), ("restart", {"restart_k": 2, "restart_steps": 3}),
    ("dpmpp_sde", {"r": 0.3}), ("ddim", {"eta": 0.5}), ("dpmpp_2m_sde", {"solver_type": "heun"}),
]


def _problem():
    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    x_unit = optsample.initial_noise(range(8), (4,), dtype=F64)
    weights = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    return gmm, x_unit, weights, schedules.karras(6, sigma_min=0.05, sigma_max=20.0).to(F64)


def _finite_differences(loss, base: torch.Tensor) -> torch.Tensor:
    """Central differences of ``loss`` at the interior sigmas base[1:-1]."""
    out = []
    for k in range(1, len(base) - 1):
        step = torch.zeros_like(base)
        step[k] = STEP
        out.append(float((loss(base + step) - loss(base - step)) / (2 * STEP)))
    return torch.tensor(out, dtype=F64)


def _assert_gradient_matches(loss, base: torch.Tensor) -> None:
    sigmas = base.clone().requires_grad_(True)
    value = loss(sigmas)
    assert value.requires_grad, "the output carries no gradient to the sigmas"
    (grad,) = torch.autograd.grad(value, sigmas)
    finite = _finite_differences(loss, base)
    error = float((grad[1:-1] - finite).abs().max()) / float(finite.abs().max())
    assert error <= 1e-5, f"autograd vs finite differences: relative error {error:.3g}"
    # the graph path computes the float path's numbers (its arithmetic is the same, in 0-dim tensors)
    assert abs(float(value.detach()) - float(loss(base))) <= 1e-12 * max(1.0, abs(float(value.detach())))


@pytest.mark.parametrize("name, hparams", CASES, ids=[f"{n}-{h}" if h else n for n, h in CASES])
def test_gradient_in_the_sigmas_matches_finite_differences(name, hparams):
    gmm, x_unit, weights, base = _problem()

    def loss(sigmas):
        return (optsample.sample(name, gmm, x_unit * sigmas[0], sigmas, seeds=range(8), **hparams) * weights).sum()

    _assert_gradient_matches(loss, base)


def test_every_registered_sampler_is_checked():
    assert {name for name, _ in CASES} == set(samplers.available())


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_sde", "restart"])
def test_brownian_path_noise_gradient_holds_the_standardised_increments_fixed(name, monkeypatch):
    """With k-diffusion's Brownian-tree noise (tests/helpers.py, torchsde) the gradient is that of the run which
    replays the same standardised increments z (core's module doc: a Brownian path has no time derivative, and
    torchsde's values carry none): autograd with the tree == central differences of a replay of the z's it gave,
    to 1e-5 relative. (Letting the tree's 1/sqrt(|s - s'|) carry a gradient, as the sigmas were passed through
    before, gives another number.)"""
    from helpers import BrownianTreeNoiseSampler

    gmm, x_unit, weights, base = _problem()
    drawn = []
    run_noise = core.run_noise

    def recording(*args):
        inner = run_noise(*args)

        def noise(sigma, sigma_next):
            z = inner(sigma, sigma_next)
            drawn.append(z.detach().clone())
            return z

        return noise

    class Replay:
        independent_calls = True  # handed to the sampler as it is

        def __init__(self):
            self.calls = 0

        def __call__(self, sigma, sigma_next):
            self.calls += 1
            return drawn[self.calls - 1]

    def loss(sigmas, noise_sampler):
        out = optsample.sample(name, gmm, x_unit * sigmas[0], sigmas, seeds=range(8), noise_sampler=noise_sampler)
        return (out * weights).sum()

    monkeypatch.setattr(core, "run_noise", recording)
    sigmas = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(sigmas, BrownianTreeNoiseSampler(x_unit, 0.05, 20.0, seed=list(range(8)))), sigmas)
    monkeypatch.setattr(core, "run_noise", run_noise)
    assert drawn

    def replayed(s):
        replay = Replay()
        value = loss(s, replay)
        assert replay.calls == len(drawn)
        return value

    finite = _finite_differences(replayed, base)
    assert float((grad[1:-1] - finite).abs().max()) <= 1e-5 * float(finite.abs().max())


# ----------------------------------------------------------------------------------------------
# learn(): every sampler can be given its own learned schedule.


def _budget(name: str, n_steps: int = 3) -> int:
    """The NFE of ``n_steps`` steps of ``name`` on the learned range's Karras schedule (learn's own measure)."""
    from optsample.learned_schedules.problem import Ends

    ends = Ends()
    return samplers.measure_nfe(name, n_steps, schedule=lambda n: schedules.karras(n, ends.sigma_min, ends.sigma_max))


@pytest.mark.parametrize("name", samplers.available())
def test_gradient_method_runs_for_every_sampler(name):
    """learn(method="gradient") at 3 steps, 2 RMSprop iterations, 4 tuning seeds: both iterations run (a non-finite
    loss would stop them) and the result is a valid 3-step schedule (learn refuses any other)."""
    from optsample.learned_schedules.learn import learn

    gmm = GaussianMixture.random(dim=2, components=2, seed=0)
    result = learn(gmm, name, _budget(name), (2,), method="gradient", seeds=range(4), options={"iters": 2})
    assert result.provenance["steps"] == 3 and len(result.sigmas) == 4
    assert result.provenance["info"]["iterations_run"] == 2


@pytest.mark.parametrize("name", ["restart", "dpmpp_sde"])
def test_learned_schedule_beats_its_karras_start_for_restart_and_an_sde_sampler(name):
    """restart (a Heun walk with a noisy jump back up) and dpmpp_sde (2 stages, Brownian increments) at 3 steps,
    15 iterations on 12 tuning seeds of a 4-D mixture: the learned schedule's RMSE to the exact ODE endpoint on the
    tuning seeds is below 0.9 x that of the Karras (rho 7) schedule it starts from (measured: restart 4.15 -> 2.06,
    dpmpp_sde 2.63 -> 2.28)."""
    from optsample.learned_schedules.learn import learn

    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    loss = learn(gmm, name, _budget(name), (4,), method="gradient", seeds=range(12), options={"iters": 15}).provenance["loss"]
    assert loss["rmse"] < 0.9 * loss["rmse_karras_default"]


def test_a_sampler_without_a_graph_is_refused_by_name():
    """A sampler of one's own that reads its sigmas as python floats gives an output without a graph: refused
    with one line naming it and why, before any optimiser step."""
    from optsample.learned_schedules.gradient import learn_gradient
    from optsample.learned_schedules.problem import Ends
    from optsample.samplers import registry

    @samplers.register("test_float_sigmas")
    def float_sigmas(model, x, sigmas, *, callback, noise_sampler):
        for i, (sigma, sigma_next) in enumerate(zip(sigmas.tolist(), sigmas.tolist()[1:])):
            x = x + (sigma_next - sigma) * (x - model(x, sigma)) / sigma
            callback({"x": x, "i": i, "sigma": sigma, "sigma_next": sigma_next, "denoised": x})
        return x

    gmm = GaussianMixture.random(dim=2, components=2, seed=0)
    x = optsample.initial_noise(range(4), (2,), dtype=F64) * 80.0
    try:
        with pytest.raises(ValueError, match=r"^sampler 'test_float_sigmas' does not carry gradients to its sigmas "
                                             r"\(its loop turns them into python floats.*use method=dp$"):
            learn_gradient("test_float_sigmas", gmm, x[:2], x[:2] * 0, x[2:], x[2:] * 0,
                           schedules.karras(3, 0.002, 80.0), Ends(), iters=1)
    finally:
        registry._REGISTRY.pop("test_float_sigmas")


# ----------------------------------------------------------------------------------------------
# dp for stochastic samplers: the student's state is the real run's, noise fixed by the seeds.


@pytest.mark.filterwarnings("ignore:restart. no interior sigma")  # restart on the DP's 1-step prefixes: plain Heun
@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "restart"])
def test_oss_dp_value_is_the_stochastic_samplers_true_error_with_its_seeds(name):
    """OSS (history="exact") on a 7-step grid of a 4-D mixture, 3 steps: the value it returns is bitwise the MSE
    to the teacher of a fresh run of the sampler on the returned schedule with the same seeds (every candidate
    re-runs the real sampler on its prefix, so the noise it sees is the run's)."""
    from optsample.learned_schedules import dp
    from optsample.learned_schedules.problem import Ends, ExactTeacher, mse, tuning_noise

    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    ends = Ends(sigma_max=20.0, sigma_min=0.05)
    grid = dp.make_grid(7, ends)
    x_start = tuning_noise(range(8), (4,), ends)
    teacher = ExactTeacher().states(gmm, x_start, grid)
    path, value = dp.oss_path(name, gmm, grid, teacher, x_start, 3, seeds=range(8))
    out = optsample.sample(name, gmm, x_start, grid[path], seeds=range(8))
    assert value == float(mse(out, teacher[-1]))
