"""Learned schedules' options (issue 14 item 3): dp's beam, gradient's LD3 ball, mini-batches, cosine lr, restarts."""

from __future__ import annotations

import math

import pytest
import torch

import optsample
from optsample import schedules
from optsample.models import GaussianMixture
from test_learned_schedules import CountingModel

F64 = torch.float64


def _grid_problem():
    from optsample.learned_schedules import dp
    from optsample.learned_schedules.problem import Ends, ExactTeacher, tuning_noise

    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    ends = Ends(sigma_max=20.0, sigma_min=0.05)
    grid = dp.make_grid(7, ends)
    x_start = tuning_noise(range(8), (4,), ends)
    return gmm, grid, x_start, ExactTeacher().states(gmm, x_start, grid)


def _oss_single_state(sampler, model, grid, teacher, x_start, n_steps):
    """The single-state OSS DP as it was before ``beam`` (commit 9896dbd, dp.py ``oss_path``, history='exact'),
    transcribed: one best (path, cost) per (k, j), replaced only by a strictly lower cost."""
    last, best = len(grid) - 1, {}
    for k in range(1, n_steps + 1):
        for j in [last] if k == n_steps else range(k, last - (n_steps - k) + 1):
            sources = [()] if k == 1 else [best[(k - 1, i)][0] for i in range(k - 1, j) if (k - 1, i) in best]
            for path in sources:
                new_path = (*path, j) if path else (0, j)
                with torch.no_grad():
                    out = optsample.sample(sampler, model, x_start, grid[list(new_path)]).to(F64)
                cost = float((out - teacher[j]).pow(2).mean())
                if (k, j) not in best or cost < best[(k, j)][1]:
                    best[(k, j)] = (new_path, cost)
    path, cost = best[(n_steps, last)]
    return list(path), cost


def test_dp_beam_one_is_the_old_dp_and_a_wide_beam_is_the_brute_force_optimum():
    """beam=1 returns the single-state DP's path and bitwise value (the transcription above) for four samplers;
    UniPC at 4 steps on the 7-step grid is a case where that greedy DP misses: its path [0, 1, 2, 3, 7] has MSE
    0.555 while the best of all C(6, 3) = 20 paths, [0, 1, 2, 4, 7], has 0.185 (numbers of this test's problem);
    beam=10 (>= C(6, 3) prefixes into any (k, j)) is exhaustive and returns that optimum."""
    from optsample.learned_schedules import dp
    from optsample.learned_schedules.problem import mse

    gmm, grid, x_start, teacher = _grid_problem()
    for sampler in ("euler", "dpmpp_2m", "unipc", "ipndm"):
        for n_steps in (3, 4):
            assert dp.oss_path(sampler, gmm, grid, teacher, x_start, n_steps, beam=1) == \
                _oss_single_state(sampler, gmm, grid, teacher, x_start, n_steps)

    def final_error(path):
        return float(mse(optsample.sample("unipc", gmm, x_start, grid[path]), teacher[-1]))

    greedy, greedy_value = dp.oss_path("unipc", gmm, grid, teacher, x_start, 4)
    wide, wide_value = dp.oss_path("unipc", gmm, grid, teacher, x_start, 4, beam=10)
    brute = min(dp.brute_force_paths(7, 4), key=final_error)
    assert greedy == [0, 1, 2, 3, 7] and greedy_value == pytest.approx(0.5553, abs=1e-3)
    assert wide == brute == [0, 1, 2, 4, 7] and wide_value == pytest.approx(0.1851, abs=1e-3)
    assert wide_value == final_error(brute)


def _gradient_problem(n=24, dim=8):
    from optsample.learned_schedules.problem import Ends, ExactTeacher, tuning_noise

    gmm = GaussianMixture.random(dim=dim, components=4, seed=0)
    ends = Ends()
    x = tuning_noise(range(n), (dim,), ends)
    return gmm, ends, x, ExactTeacher().states(gmm, x, [80.0, 0.0])[-1]


def _plain_descent(sampler, model, x_train, target_train, x_val, target_val, init, ends, iters, lr=0.01, momentum=0.9):
    """learn_gradient as it was before the options (commit 9896dbd, gradient.py), transcribed: full-batch RMSprop
    on the logits, plain MSE, the best validation schedule kept."""
    from optsample.learned_schedules.gradient import logits_from_sigmas, sigmas_from_logits

    def mse(a, b):
        return (a.to(F64) - b.to(F64)).pow(2).mean()

    logits = logits_from_sigmas(init, ends).clone().requires_grad_(True)
    optimizer = torch.optim.RMSprop([logits], lr=lr, momentum=momentum)
    with torch.no_grad():
        best_val = float(mse(optsample.sample(sampler, model, x_val, init), target_val))
    best, history = init.clone(), []
    for _ in range(iters):
        optimizer.zero_grad()
        loss = mse(optsample.sample(sampler, model, x_train, sigmas_from_logits(logits, ends)), target_train)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            current = sigmas_from_logits(logits, ends)
            val = float(mse(optsample.sample(sampler, model, x_val, current), target_val))
        history.append((float(loss.detach()), val))
        if val < best_val:
            best_val, best = val, current.clone()
    return best, best_val, history


def test_gradient_defaults_ball_zero_and_a_full_batch_are_the_old_descent_bitwise():
    """dpmpp_2m, 4 steps, 16 + 8 samples of an 8-D mixture, 12 iterations: learn_gradient with its defaults,
    with ball_radius=0.0 explicitly and with batch_size=16 (= every training sample) returns the transcribed old
    loop's sigmas, validation MSE and history bitwise."""
    from optsample.learned_schedules.gradient import learn_gradient

    gmm, ends, x, target = _gradient_problem()
    karras = schedules.karras(4, 0.002, 80.0)
    old = _plain_descent("dpmpp_2m", gmm, x[:16], target[:16], x[16:], target[16:], karras, ends, 12)
    for options in ({}, {"ball_radius": 0.0}, {"batch_size": 16}):
        new = learn_gradient("dpmpp_2m", gmm, x[:16], target[:16], x[16:], target[16:], karras, ends, iters=12, **options)
        assert torch.equal(new[0], old[0]) and new[1] == old[1] and new[2] == old[2], options


def test_ld3_ball_mini_batches_and_cosine_change_the_descent_as_stated():
    """The same problem: LD3's ball (radius 0.3 in unit-noise units) leaves the first training loss unchanged (the
    starts begin at z_k) and then lowers the training loss below the plain descent's at the last iteration (the
    relaxed objective is a minimum over the ball, and the moved starts are kept only where they lower the loss);
    a mini-batch of 4 changes the first training loss (a different sample set); cosine lr gives the same first
    step (lr (1 + cos 0) / 2 = lr) and a different schedule after 12; the projection leaves rows of norm <= r
    as they are and scales longer ones to norm r exactly."""
    from optsample.learned_schedules.gradient import _project_to_ball, learn_gradient

    gmm, ends, x, target = _gradient_problem()
    karras = schedules.karras(4, 0.002, 80.0)

    def run(**options):
        return learn_gradient("dpmpp_2m", gmm, x[:16], target[:16], x[16:], target[16:], karras, ends, **options)

    plain, ball = run(iters=12), run(iters=12, ball_radius=0.3)
    assert ball[2][0][0] == pytest.approx(plain[2][0][0], rel=1e-14)  # mean of per-sample means
    assert ball[2][-1][0] < plain[2][-1][0]
    assert run(iters=1, batch_size=4)[2][0][0] != plain[2][0][0]
    cosine_one, plain_one = run(iters=1, lr_schedule="cosine"), run(iters=1)
    assert cosine_one[2] == plain_one[2]
    cosine = run(iters=12, lr_schedule="cosine")
    assert [h[1] for h in cosine[2]] != [h[1] for h in plain[2]]
    shift = torch.tensor([[0.1, 0.0], [3.0, 4.0]], dtype=F64)
    projected = _project_to_ball(shift, 1.0)
    assert torch.equal(projected[0], shift[0]) and float(projected[1].norm()) == pytest.approx(1.0, rel=1e-15)


def test_restarts_are_never_worse_than_one_run_on_the_validation_seeds():
    """learn_gradient_restarts from Karras rho 7, rho 3 and rho 3 with sigma_min 0.05 returns the run whose
    validation MSE is the least of the three single runs (equal to it, and <= the rho-7 run alone); through
    learn(), init_rho=[7.0, 3.0] reports a validation MSE <= init_rho=7.0's and names the chosen restart."""
    from optsample.learned_schedules.gradient import learn_gradient, learn_gradient_restarts
    from optsample.learned_schedules.learn import learn

    gmm, ends, x, target = _gradient_problem()
    inits = [schedules.karras(4, 0.002, 80.0, 7.0), schedules.karras(4, 0.002, 80.0, 3.0),
             schedules.karras(4, 0.05, 80.0, 3.0)]
    split = (x[:16], target[:16], x[16:], target[16:])
    singles = [learn_gradient("dpmpp_2m", gmm, *split, init, ends, iters=8)[1] for init in inits]
    sigmas, value, _, chosen, values = learn_gradient_restarts("dpmpp_2m", gmm, *split, inits, ends, iters=8)
    assert values == singles and value == min(singles) == singles[chosen] and value <= singles[0]
    one = learn(gmm, "dpmpp_2m", 4, (8,), method="gradient", seeds=range(16), options={"iters": 8})
    two = learn(gmm, "dpmpp_2m", 4, (8,), method="gradient", seeds=range(16), options={"iters": 8, "init_rho": [7.0, 3.0]})
    assert two.provenance["info"]["validation_mse"] <= one.provenance["info"]["validation_mse"]
    assert two.provenance["info"]["restart_chosen"] in (0, 1)


def test_an_init_above_sigma_min_starts_with_that_slack_exactly():
    """logits_from_sigmas(karras(5, 0.2, 80, rho 3)) maps back to that schedule to 1e-12 (its slack fraction
    log(0.2 / 0.002) / log(80 / 0.002) = 0.434 is kept, not squeezed to 1 %)."""
    from optsample.learned_schedules.gradient import logits_from_sigmas, sigmas_from_logits
    from optsample.learned_schedules.problem import Ends

    ends = Ends()
    init = schedules.karras(5, 0.2, 80.0, 3.0)
    logits = logits_from_sigmas(init, ends)
    assert torch.allclose(sigmas_from_logits(logits, ends), init, rtol=1e-12, atol=0)
    assert float(torch.softmax(logits, 0)[-1]) == pytest.approx(math.log(100) / math.log(40000), rel=1e-12)


@pytest.mark.parametrize("method, options, message", [
    ("dp", {"beam": 0}, "beam must be an integer >= 1, got 0"),
    ("gradient", {"ball_radius": -0.1}, "ball_radius must be a finite number >= 0, got -0.1"),
    ("gradient", {"ball_lr": 0.0}, "ball_lr must be a finite number > 0"),
    ("gradient", {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ("gradient", {"lr_schedule": "step"}, "lr_schedule must be one of \\['constant', 'cosine'\\], got 'step'"),
    ("gradient", {"init_rho": []}, "init_rho must be a number > 0 or a non-empty list of them, got \\[\\]"),
    ("gradient", {"init_sigma_min": 100.0}, "init_sigma_min must lie in \\[sigma_min, sigma_max\\)"),
    ("gradient", {"init_schedules": [[80.0, 1.0, 0.0]]}, "init_schedules\\[0\\] must have 5 sigmas"),
])
def test_bad_option_values_are_one_line_errors_before_any_model_call(method, options, message):
    from optsample.learned_schedules.learn import learn

    model = CountingModel(GaussianMixture.random(dim=4, components=3, seed=0))
    with pytest.raises(ValueError, match=message) as err:
        learn(model, "euler", 4, (4,), method=method, seeds=range(8), options=options)
    assert "\n" not in str(err.value) and model.calls == 0
