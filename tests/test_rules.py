"""Optimizer-inspired update rules (optsample/samplers/rules.py, transforms.py).

Reductions to Euler bit for bit in float64; parity with literal transcriptions of peer code
(k-diffusion ``sample_dpmpp_2m``, momentum-diffusion ``PLMSWithHBScheduler`` / ``GHVBScheduler`` /
``AdamBmixer``); convergence to the reference ODE solution on Gaussian mixtures; determinism and
batch independence; hyper-parameter validation before any model call.
"""

import math

import pytest
import torch

import optsample
from optsample import initial_noise, reference, sample, schedules
from optsample.models import GaussianMixture
from test_kdiffusion_parity import sample_dpmpp_2m  # k-diffusion's loop, transcribed

RULES = ["sgd", "momentum", "nesterov", "ghvb", "plms_momentum", "dpmpp_2m_momentum", "adam", "rmsprop", "lion",
         "eps_scaling", "ema_x0"]
NORMALISING = {"adam", "rmsprop", "lion"}  # element-wise / sign directions: not consistent with the ODE

MODEL_2D = GaussianMixture.random(2, 3, seed=0)
SIGMAS = schedules.karras(12, 0.002, 80.0, 7.0)
X_2D = initial_noise(range(8), (2,), dtype=torch.float64) * 80.0


def run(name, model=MODEL_2D, x=X_2D, sigmas=SIGMAS, **hparams):
    return sample(name, model, x, sigmas, seeds=range(x.shape[0]), **hparams)


# ----------------------------------------------------------------------------------------------
# Exact reductions to Euler (torch.equal, float64).


@pytest.mark.parametrize("name, hparams", [
    ("sgd", {}),
    ("momentum", {"beta": 0.0}),
    ("nesterov", {"beta": 0.0}),
    ("ghvb", {"order": 1.0}),
    ("plms_momentum", {"order": 1, "beta": 0.0}),
    ("adam", {"beta1": 0.0, "normalize": "off"}),
    ("eps_scaling", {"scale": 1.0, "slope": 0.0}),
    ("ema_x0", {"beta": 0.0}),
    ("sgd", {"lr_schedule": "constant", "lr_start": 1.0}),
    ("sgd", {"lr_schedule": "linear", "lr_start": 1.0, "lr_end": 1.0}),
    ("momentum", {"beta": 0.0, "lr_schedule": "cosine", "lr_start": 1.0, "lr_end": 1.0}),
])
def test_reduces_to_euler_bitwise(name, hparams):
    assert torch.equal(run(name, **hparams), run("euler"))


def test_sgd_with_langevin_churn_is_euler_with_churn_bitwise():
    churn = dict(s_churn=5.0, s_tmin=0.05, s_tmax=20.0, s_noise=1.003)
    ours = run("sgd", langevin_churn=5.0, langevin_tmin=0.05, langevin_tmax=20.0, langevin_noise=1.003)
    assert torch.equal(ours, run("euler", **churn))
    assert not torch.equal(ours, run("euler"))


@pytest.mark.parametrize("name, hparams", [
    ("adam", {"beta1": 0.0, "beta2": 0.0, "eps": 0.0}),
    ("rmsprop", {"eps": 0.0}),  # any beta2: one element, one scale
    ("lion", {"beta1": 0.0}),
])
def test_normalising_rules_reduce_to_euler_in_one_dimension(name, hparams):
    """sign(d) rescaled to the per-sample RMS of d is d itself when d has one element."""
    model = GaussianMixture.random(1, 3, seed=2)
    x = initial_noise(range(8), (1,), dtype=torch.float64) * 80.0
    assert torch.equal(run(name, model, x, **hparams), run("euler", model, x))
    assert max_diff(run(name), run("euler")) > 1e-3  # in two dimensions they do differ


# ----------------------------------------------------------------------------------------------
# Parity with peer implementations, transcribed literally (independent references).


def momentum_diffusion_AdamBmixer(order, ets, b=1):
    """sWizad/momentum-diffusion stable_diffusion/diffusion/momentum_scheduler.py ``AdamBmixer``, transcribed."""
    cur_order = min(order, len(ets))
    if cur_order == 1:
        prime = b * ets[-1]
    elif cur_order == 2:
        prime = ((2 + b) * ets[-1] - (2 - b) * ets[-2]) / 2
    elif cur_order == 3:
        prime = ((18 + 5 * b) * ets[-1] - (24 - 8 * b) * ets[-2] + (6 - 1 * b) * ets[-3]) / 12
    elif cur_order == 4:
        prime = ((46 + 9 * b) * ets[-1] - (78 - 19 * b) * ets[-2] + (42 - 5 * b) * ets[-3] - (10 - b) * ets[-4]) / 24
    return prime / b


def momentum_diffusion_sampler(model, x, sigmas, order, kind):
    """``PLMSWithHBScheduler`` (kind 'hb') / ``GHVBScheduler`` (kind 'ghvb'), sigma branch of ``step``, transcribed."""
    steps_back = order // 1 + 1 if order % 1 > 0 else order // 1
    beta = order % 1 if order % 1 > 0 else 1
    ets, vel = [], None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        grads = (x - model(x, sigma.expand(x.shape[0]))) / sigma
        if vel is None:
            vel = grads
        if kind == "hb":
            ets = (ets + [grads])[-int(steps_back):]
            prime = momentum_diffusion_AdamBmixer(steps_back, ets, 1.0)
            vel = (1 - beta) * vel + beta * prime
            update = vel
        else:
            vel = (1 - beta) * vel + beta * grads
            ets = (ets + [vel])[-int(steps_back):]
            update = momentum_diffusion_AdamBmixer(steps_back, ets, beta)
        x = x + (sigma_next - sigma) * update
    return x


def max_diff(a, b):
    return float((a - b).abs().max())


def test_dpmpp_2m_momentum_beta0_matches_kdiffusion_dpmpp_2m():
    expected = sample_dpmpp_2m(MODEL_2D, X_2D, SIGMAS)
    assert max_diff(run("dpmpp_2m_momentum", beta=0.0), expected) < 1e-12
    assert max_diff(run("dpmpp_2m_momentum"), expected) > 1e-3  # momentum does change it


@pytest.mark.parametrize("order", [1.5, 2.0, 2.7, 3.0, 4.0, 0.6])
def test_ghvb_matches_momentum_diffusion(order):
    expected = momentum_diffusion_sampler(MODEL_2D, X_2D, SIGMAS, order, "ghvb")
    assert max_diff(run("ghvb", order=order), expected) < 1e-12


@pytest.mark.parametrize("order, paper_beta", [(2, 0.8), (4, 0.5), (3, 1.0)])
def test_plms_momentum_matches_momentum_diffusion(order, paper_beta):
    """Their PLMS-HB order ``k + b`` with b in (0, 1) is our order k+1, beta = 1 - b."""
    paper_order = order - 1 + paper_beta
    expected = momentum_diffusion_sampler(MODEL_2D, X_2D, SIGMAS, paper_order, "hb")
    assert max_diff(run("plms_momentum", order=order, beta=1 - paper_beta), expected) < 1e-12


def test_ema_of_denoised_equals_heavy_ball_on_d():
    """(x_n - E_{n-1})/sigma_n equals the previous direction because Euler maps x - E by sigma_next/sigma, so the
    EMA of x0 and heavy ball on d are the same sampler (exact identity, up to rounding)."""
    for beta in (0.2, 0.7):
        assert max_diff(run("ema_x0", beta=beta), run("momentum", beta=beta)) < 1e-12


# Issue 9: "ghvb at integer order is PLMS" and "plms_momentum with beta 0 is PLMS" were 1.6e-2 off ``plms``
# (which takes a Heun first step, 2 NFE). What they are: Adams-Bashforth of order k with lower-order warm-up
# (Euler first), i.e. ``ipndm(order=k)``; exactly so on a schedule ending above 0, while on one ending
# at 0 ipndm's last step is x = denoised and theirs is the AB step.
POSITIVE_END = SIGMAS[:-1]  # karras 12 steps, 80 -> 0.002, no trailing 0


@pytest.mark.parametrize("order", [2, 3, 4])
def test_integer_order_ghvb_and_beta0_plms_momentum_are_ipndm(order):
    ipndm = run("ipndm", sigmas=POSITIVE_END, order=order)
    assert torch.equal(run("ghvb", sigmas=POSITIVE_END, order=float(order)), ipndm)
    assert torch.equal(run("plms_momentum", sigmas=POSITIVE_END, order=order, beta=0.0), ipndm)
    # on any schedule the two rules are one sampler
    assert torch.equal(run("ghvb", order=float(order)), run("plms_momentum", order=order, beta=0.0))
    # ... and neither is ``plms`` (Heun start): the gap the old docstrings hid
    assert max_diff(run("ghvb", order=float(order)), run("plms")) > 1e-3


def test_integer_order_ghvb_differs_from_ipndm_only_in_the_last_step_to_zero():
    """With a final 0, ghvb's last step is the AB step x - sigma AB(d), ipndm's x = denoised (k-diffusion)."""
    order, seen = 4, []
    run("ghvb", order=4.0, callback=seen.append)
    last = seen[-1]
    before_last = run("ipndm", sigmas=SIGMAS[:-1], order=order)
    assert torch.equal(last["x"], before_last)
    assert torch.equal(run("ipndm", order=order), last["denoised"])


def test_unipc_momentum_beta0_is_unipc_to_rounding():
    """rules.py / multistep.py: beta = 0 is UniPC up to rounding (divided by h phi_1 and multiplied back)."""
    for order in (1, 2, 3):
        assert max_diff(run("unipc_momentum", beta=0.0, order=order), run("unipc", order=order)) < 1e-12


def nesterov_reference(model, x, sigmas, beta):
    """Nesterov (Sutskever et al. 2013, eq. 3-4) in velocity form: gradient at x + beta h vel, noise level shifted."""
    vel = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        h = sigma_next - sigma
        x_look, sigma_look = (x, sigma) if vel is None else (x + beta * h * vel, sigma + beta * h)
        d = (x_look - model(x_look, torch.full((x.shape[0],), sigma_look, dtype=x.dtype))) / sigma_look
        vel = d if vel is None else beta * vel + (1 - beta) * d
        x = x + h * vel
    return x


def test_nesterov_evaluates_at_the_lookahead():
    assert max_diff(run("nesterov", beta=0.4), nesterov_reference(MODEL_2D, X_2D, SIGMAS, 0.4)) < 1e-12
    assert max_diff(run("nesterov", beta=0.4), run("momentum", beta=0.4)) > 1e-3


# ----------------------------------------------------------------------------------------------
# Convergence to the reference ODE solution.

NFES = (4, 16, 64)


def errors_against_reference(dim, components, seed):
    model = GaussianMixture.random(dim, components, seed=seed)
    x = initial_noise(range(32), (dim,), dtype=torch.float64) * 80.0
    x_ref = reference.solve(model, x, 80.0, 0.0, rtol=1e-9, atol=1e-9)
    table = {}
    for name in RULES:
        table[name] = []
        for nfe in NFES:
            out, info = sample(name, model, x, schedules.karras(nfe, 0.002, 80.0, 7.0), seeds=range(32), return_info=True)
            assert info.nfe == nfe
            assert bool(torch.isfinite(out).all()), name
            table[name].append(reference.rmse(out, x_ref))
    return table


@pytest.mark.parametrize("dim, components, seed", [(2, 4, 0), (64, 8, 1)])
def test_every_rule_converges(dim, components, seed):
    table = errors_against_reference(dim, components, seed)
    for name, errs in table.items():
        assert errs[-1] < errs[0], f"{name}: {errs}"
        if name not in NORMALISING:  # consistent with the ODE: the error must really shrink
            assert errs[-1] < 0.25 * errs[0], f"{name}: {errs}"


# ----------------------------------------------------------------------------------------------
# Shared loop features: restarts, Langevin noise, LR schedules, determinism, batch independence.


def test_restart_reruns_the_segment_and_calls_back_once_per_step():
    calls = []
    out, info = sample("momentum", MODEL_2D, X_2D, SIGMAS, seeds=range(8), return_info=True, restart_count=2,
                       restart_sigma_min=0.06, restart_sigma_max=0.3, callback=calls.append)
    values = SIGMAS.tolist()
    segment = sum(1 for s in values[:-1] if 0.06 < s <= 0.3)
    assert segment >= 1
    assert info.nfe == 12 + 2 * segment == len(calls)
    assert [c["i"] for c in calls] == list(range(info.nfe))
    assert bool(torch.isfinite(out).all()) and not torch.equal(out, run("momentum"))


def test_stochastic_options_are_deterministic_per_seed_and_batch_independent():
    options = dict(langevin_churn=4.0, langevin_tmin=0.1, langevin_tmax=10.0, restart_count=1)
    first = run("adam", **options)
    assert torch.equal(first, run("adam", **options))
    x_64 = initial_noise(range(4), (64,), dtype=torch.float64) * 80.0
    model = GaussianMixture.random(64, 8, seed=1)
    batch = sample("adam", model, x_64, SIGMAS, seeds=[10, 11, 12, 13], **options)
    alone = sample("adam", model, x_64[2:3], SIGMAS, seeds=[12], **options)
    assert max_diff(batch[2:3], alone) < 1e-12


def test_lr_schedule_changes_the_step():
    """A warm-up multiplier below 1 on the first step leaves the first update at half Euler's length."""
    calls = []
    run("sgd", lr_warmup=1, callback=calls.append)
    first = calls[1]["x"] - calls[0]["x"]
    euler_calls = []
    run("euler", callback=euler_calls.append)
    euler_first = euler_calls[1]["x"] - euler_calls[0]["x"]
    assert max_diff(first, 0.5 * euler_first) < 1e-9 * float(euler_first.abs().max())


def test_float32_runs_and_stays_float32():
    out = run("ghvb", x=X_2D.float())
    assert out.dtype == torch.float32 and max_diff(out.double(), run("ghvb")) < 1e-3


# ----------------------------------------------------------------------------------------------
# Validation before any model evaluation.


def exploding_model(x, sigma):
    raise AssertionError("the model must not be called")


@pytest.mark.parametrize("name, hparams", [
    ("momentum", {"beta": 1.0}),
    ("momentum", {"beta": -0.1}),
    ("nesterov", {"lookahead_sigma": "later"}),
    ("ghvb", {"order": 0.0}),
    ("ghvb", {"order": 4.5}),
    ("plms_momentum", {"order": 5}),
    ("adam", {"beta2": 1.0}),
    ("adam", {"eps": -1e-8}),
    ("adam", {"rescale": "l2"}),
    ("lion", {"beta1": math.nan}),
    ("eps_scaling", {"scale": 0.0}),
    ("eps_scaling", {"scale": 1.0, "slope": -1.5}),
    ("sgd", {"lr_start": -1.0}),
    ("sgd", {"lr_schedule": "step"}),
    ("sgd", {"langevin_churn": -1.0}),
    ("sgd", {"restart_count": 1, "restart_sigma_min": 1.0, "restart_sigma_max": 0.5}),
    ("sgd", {"restart_count": 1, "restart_sigma_min": 0.0001, "restart_sigma_max": 0.001}),  # no schedule sigma inside
    ("sgd", {"restart_count": -1}),
])
def test_bad_hyperparameters_raise_before_sampling(name, hparams):
    with pytest.raises(ValueError):
        sample(name, exploding_model, X_2D, SIGMAS, **hparams)


def test_registered_with_typed_params():
    spec = optsample.get("adam")
    assert spec.params().beta1 == 0.9 and spec.params().rescale == "grad_rms"
    assert set(RULES) <= set(optsample.available())
    with pytest.raises(TypeError):
        sample("adam", exploding_model, X_2D, SIGMAS, beta3=0.5)
