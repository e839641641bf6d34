"""Sigma schedules: parity with k-diffusion's formulas and diffusers' spacings, identities, validation."""

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import AysSchedules

import optsample
from optsample import schedules as S

from helpers import SCHEDULER_KWARGS, run_diffusers, vp_models


# ----------------------------------------------------------------------------------------------
# k-diffusion's schedules, transcribed literally (crowsonkb/k-diffusion, k_diffusion/sampling.py)
# as the independent reference. They build tensors in torch's default dtype, so the tests run them
# under float64 as the default.


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7., device='cpu'):
    """Constructs the noise schedule of Karras et al. (2022)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device='cpu'):
    """Constructs an exponential noise schedule."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return append_zero(sigmas)


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1., device='cpu'):
    """Constructs an polynomial in log sigma noise schedule."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas)


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device='cpu'):
    """Constructs a continuous VP noise schedule."""
    t = torch.linspace(1, eps_s, n, device=device)
    sigmas = torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1)
    return append_zero(sigmas)


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


N_SWEEP = [1, 2, 3, 7, 10, 18, 50, 200]


@pytest.mark.parametrize("n", N_SWEEP)
@pytest.mark.parametrize("sigma_min,sigma_max,rho", [(0.002, 80.0, 7.0), (0.0292, 14.6146, 7.0), (0.1, 10.0, 3.0)])
def test_karras_matches_k_diffusion(float64_default, n, sigma_min, sigma_max, rho):
    ours = S.karras(n, sigma_min, sigma_max, rho)
    ref = get_sigmas_karras(n, sigma_min, sigma_max, rho)
    assert torch.equal(ours, ref)  # same float64 operations in the same order: bitwise equal


@pytest.mark.parametrize("n", N_SWEEP)
def test_exponential_and_polyexponential_match_k_diffusion(float64_default, n):
    assert torch.equal(S.exponential(n, 0.03, 14.6), get_sigmas_exponential(n, 0.03, 14.6))
    for rho in (0.5, 1.0, 2.5):
        ours = S.polyexponential(n, 0.002, 80.0, rho)
        assert torch.equal(ours, get_sigmas_polyexponential(n, 0.002, 80.0, rho))


@pytest.mark.parametrize("n", N_SWEEP)
@pytest.mark.parametrize("beta_d,beta_min,eps_s", [(19.9, 0.1, 1e-3), (10.0, 0.5, 1e-2)])
def test_vp_matches_k_diffusion(float64_default, n, beta_d, beta_min, eps_s):
    # ours uses expm1; k-diffusion exp(.) - 1, which loses ~1e-13 relative at t = eps_s
    torch.testing.assert_close(S.vp(n, beta_d, beta_min, eps_s), get_sigmas_vp(n, beta_d, beta_min, eps_s), rtol=1e-11, atol=0)


# ----------------------------------------------------------------------------------------------
# Shape, monotonicity, identities.

CONTINUOUS = {
    "karras": lambda n, **kw: S.karras(n, 0.002, 80.0, **kw),
    "exponential": lambda n, **kw: S.exponential(n, 0.002, 80.0, **kw),
    "polyexponential": lambda n, **kw: S.polyexponential(n, 0.002, 80.0, 2.0, **kw),
    "vp": lambda n, **kw: S.vp(n, **kw),
    "linear": lambda n, **kw: S.linear(n, 0.002, 80.0, **kw),
}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_decreasing_float64_ending_at_zero(name):
    for n in range(1, 41):
        sigmas = CONTINUOUS[name](n)
        assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,)
        assert sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all()), (name, n, sigmas)


def test_discrete_and_ays_decreasing_ending_at_zero():
    ac = EulerDiscreteScheduler(**SCHEDULER_KWARGS).alphas_cumprod
    for n in range(1, 41):
        for spacing in S.SPACINGS:
            sigmas = S.discrete(ac, n, spacing, 1)
            assert sigmas.shape == (n + 1,) and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())
        sigmas = S.ays(n)
        assert sigmas.shape == (n + 1,) and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())


def test_schedule_shapes_are_what_their_formulas_say():
    # Karras eq. 5: sigma^(1/rho) is uniform; exponential: log sigma is uniform; linear: sigma is uniform.
    karras = S.karras(12, 0.002, 80.0, 7.0)[:-1]
    steps = torch.diff(karras ** (1 / 7))
    torch.testing.assert_close(steps, steps[:1].expand(11), rtol=1e-12, atol=0)
    assert karras[0] == 80.0 and abs(float(karras[-1]) - 0.002) < 1e-15
    log_steps = torch.diff(S.exponential(12, 0.002, 80.0)[:-1].log())
    torch.testing.assert_close(log_steps, torch.full((11,), math.log(0.002 / 80.0) / 11, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.diff(S.linear(12, 0.002, 80.0)[:-1]), torch.full((11,), (0.002 - 80.0) / 11, dtype=torch.float64), rtol=1e-12, atol=0)
    # vp: sigma(t) at t = 1 and t = eps_s
    vp = S.vp(5)
    assert abs(float(vp[0]) - math.sqrt(math.exp(19.9 / 2 + 0.1) - 1)) < 1e-12
    assert abs(float(vp[-2]) - math.sqrt(math.expm1(19.9 * 1e-6 / 2 + 1e-4))) < 1e-15


def test_identities_between_schedules():
    for n in (1, 2, 9, 30):
        torch.testing.assert_close(S.linear(n, 0.1, 20.0), S.karras(n, 0.1, 20.0, rho=1.0), rtol=1e-13, atol=0)
        torch.testing.assert_close(S.polyexponential(n, 0.1, 20.0, rho=1.0), S.exponential(n, 0.1, 20.0), rtol=1e-13, atol=0)


def test_device_argument():
    assert S.karras(4, device="cpu").device.type == "cpu"
    assert S.karras(4, device=torch.device("meta")).device.type == "meta"


# ----------------------------------------------------------------------------------------------
# Final-sigma policy.


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_final_sigma_min_policy_on_continuous_schedules(name):
    for n in (2, 5, 20):  # the schedule already lands on sigma_min: both policies agree exactly
        assert torch.equal(CONTINUOUS[name](n, final="sigma_min"), CONTINUOUS[name](n, final="zero"))
    one = CONTINUOUS[name](1, final="sigma_min")  # a 1-point schedule stops at sigma_max: sigma_min is inserted
    sigma_min = float(CONTINUOUS[name](2)[-2])
    assert one.shape == (3,) and one[0] == CONTINUOUS[name](1)[0] and one[2] == 0
    assert abs(float(one[1]) / sigma_min - 1) < 1e-14  # exp(log(sigma_min)) may differ from sigma_min by an ulp


def test_every_schedule_takes_final():
    """README: every schedule has final=; ays and custom too (a bad policy is named, as for karras)."""
    import inspect

    for name in S.available():
        if name == "learned":  # a learned file's sigmas already end as they were learned (they must end at 0)
            continue
        assert "final" in inspect.signature(S._SCHEDULES[name]).parameters, name
    # AYS sd15: a 1-point schedule is [14.615], so sigma_min = the table's last entry 0.152 is inserted
    assert S.ays(1, final="sigma_min").tolist() == [14.615, 0.152, 0.0]
    assert S.ays(1).tolist() == [14.615, 0.0]
    for n in (2, 10, 15):  # every n >= 2 lands on 0.152 already: both policies agree exactly
        assert torch.equal(S.ays(n, final="sigma_min"), S.ays(n))
    assert S.custom([80.0, 10.0, 1.0, 0.1], final="sigma_min").tolist() == [80.0, 10.0, 1.0, 0.1, 0.0]
    assert S.get("custom", values=[3.0, 1.0], final="sigma_min").tolist() == [3.0, 1.0, 0.0]
    for fn, kwargs in ((S.ays, {}), (S.custom, {"values": [1.0]})):
        with pytest.raises(ValueError, match=r"final must be one of \['zero', 'sigma_min'\], got 'last'"):
            fn(final="last", **kwargs)


# ----------------------------------------------------------------------------------------------
# diffusers parity: EulerDiscreteScheduler timestep spacings.

BETAS = {
    "scaled_linear": SCHEDULER_KWARGS,
    "linear": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
}
DISCRETE_N = [1, 2, 3, 4, 7, 10, 20, 25, 50, 100]


def diffusers_schedule(betas, n, spacing, steps_offset, final):
    scheduler = EulerDiscreteScheduler(
        **BETAS[betas], timestep_spacing=spacing, steps_offset=steps_offset, final_sigmas_type=final
    )
    scheduler.set_timesteps(n)
    return scheduler


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_discrete_matches_diffusers_zero_final(betas, spacing, steps_offset):
    for n in DISCRETE_N:
        ref = diffusers_schedule(betas, n, spacing, steps_offset, "zero")
        ours = S.discrete(ref.alphas_cumprod, n, spacing, steps_offset)
        assert ours.shape == ref.sigmas.shape == (n + 1,)
        # diffusers computes in float32: agreement to float32 rounding (measured max 3.1e-7 relative)
        torch.testing.assert_close(ours.float(), ref.sigmas, rtol=1e-6, atol=0)
        timesteps = S.discrete_timesteps(1000, n, spacing, steps_offset)
        assert torch.equal(timesteps.float(), ref.timesteps)  # fractional (linspace) ones too, after float32 rounding


@pytest.mark.parametrize("spacing", S.SPACINGS)
def test_discrete_matches_diffusers_sigma_min_final(spacing):
    for n in DISCRETE_N:
        ref = diffusers_schedule("scaled_linear", n, spacing, 1, "sigma_min")
        ours = S.discrete(ref.alphas_cumprod, n, spacing, 1, final="sigma_min")
        sigma_min = math.sqrt((1 - float(ref.alphas_cumprod[0])) / float(ref.alphas_cumprod[0]))
        assert ours[-1] == 0 and abs(float(ours[-2]) - sigma_min) < 1e-12
        # diffusers stops at sigma_min (no 0); where its last timestep is 0 (linspace) it repeats sigma_min
        expected = torch.unique_consecutive(ref.sigmas)
        assert len(ours) == len(expected) + 1 == (n + 1 if spacing == "linspace" else n + 2)
        torch.testing.assert_close(ours[:-1].float(), expected, rtol=1e-6, atol=0)


def test_trailing_spacing_has_n_steps_where_diffusers_has_n_plus_one():
    # diffusers' arange(T, 0, -T/n) gives 62 timesteps for n = 61, the last -1; ours gives exactly n
    ref = diffusers_schedule("scaled_linear", 61, "trailing", 0, "zero")
    assert len(ref.timesteps) == 62 and float(ref.timesteps[-1]) == -1
    ours = S.discrete(ref.alphas_cumprod, 61, "trailing")
    assert ours.shape == (62,)
    torch.testing.assert_close(ours[:-1].float(), ref.sigmas[:61], rtol=1e-6, atol=0)


def test_discrete_schedule_drives_euler_like_diffusers():
    """End to end: optsample euler on discrete(trailing) sigmas == diffusers' Euler loop on the same model."""
    scheduler = EulerDiscreteScheduler(**SCHEDULER_KWARGS, timestep_spacing="trailing")
    scheduler.set_timesteps(12)
    eps_net, denoiser = vp_models(scheduler.alphas_cumprod)
    noise = optsample.initial_noise(range(6), (8,), dtype=torch.float64)
    sigmas = S.discrete(scheduler.alphas_cumprod, 12, "trailing")
    ours = optsample.sample("euler", denoiser, noise * sigmas[0], sigmas)
    ref = run_diffusers(scheduler, eps_net, noise.float())
    err = float((ours.float() - ref).abs().max())
    assert err < 2e-6, err  # measured 2.4e-7: float32 rounding only


# ----------------------------------------------------------------------------------------------
# Align Your Steps.


@pytest.mark.parametrize("model,key", [("sd15", "StableDiffusionSigmas"), ("sdxl", "StableDiffusionXLSigmas"),
                                       ("svd", "StableDiffusionVideoSigmas")])
def test_ays_ten_steps_is_the_diffusers_table(model, key):
    assert S.ays(10, model).tolist() == AysSchedules[key]


def test_ays_interpolation_is_log_linear():
    table = torch.tensor(AysSchedules["StableDiffusionXLSigmas"][:-1], dtype=torch.float64)
    fine = S.ays(19, "sdxl")
    torch.testing.assert_close(fine[0:-1:2], table, rtol=1e-14, atol=0)  # every other point is a table entry
    torch.testing.assert_close(fine[1:-1:2], (table[:-1] * table[1:]).sqrt(), rtol=1e-13, atol=0)  # geometric means
    np.testing.assert_allclose(S.ays(4, "sdxl")[:-1].numpy(), np.exp(np.interp([0, 3, 6, 9], range(10), np.log(table.numpy()))), rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# custom lists and the registry.


def test_custom_values():
    assert S.custom([3.0, 2.0, 0.5]).tolist() == [3.0, 2.0, 0.5, 0.0]
    assert S.custom([3.0, 2.0, 0.0]).tolist() == [3.0, 2.0, 0.0]
    assert S.custom(torch.tensor([5.0])).dtype == torch.float64


def test_registry():
    assert S.available() == sorted(["ays", "custom", "discrete", "exponential", "karras", "learned", "linear", "polyexponential", "vp"])
    assert torch.equal(S.get("karras", 10, sigma_max=14.6, sigma_min=0.03), S.karras(10, 0.03, 14.6))
    ac = EulerDiscreteScheduler(**SCHEDULER_KWARGS).alphas_cumprod
    assert torch.equal(S.get("discrete", 8, alphas_cumprod=ac, spacing="leading"), S.discrete(ac, 8, "leading"))
    assert S.get("custom", values=[2.0, 1.0]).tolist() == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unknown schedule 'kerras'.*karras"):
        S.get("kerras", 10)
    with pytest.raises(ValueError, match="no parameter.*'sigma_mx'"):
        S.get("karras", 10, sigma_mx=3.0)
    with pytest.raises(ValueError, match="n = 3 but"):
        S.get("custom", 3, values=[2.0, 1.0])
    with pytest.raises(ValueError, match="needs n"):
        S.get("karras")


AC = torch.linspace(0.999, 0.01, 100, dtype=torch.float64)
BAD = [
    (S.karras, dict(n=0), "n "),
    (S.karras, dict(n=2.0), "n "),
    (S.karras, dict(n=True), "n "),
    (S.karras, dict(n=5, sigma_min=0.0), "sigma_min"),
    (S.karras, dict(n=5, sigma_min=-1.0), "sigma_min"),
    (S.karras, dict(n=5, sigma_min=80.0, sigma_max=80.0), "sigma_min .* < sigma_max"),
    (S.karras, dict(n=5, sigma_max=math.inf), "sigma_max"),
    (S.karras, dict(n=5, sigma_max=math.nan), "sigma_max"),
    (S.karras, dict(n=5, rho=0.0), "rho"),
    (S.karras, dict(n=5, final="last"), "final"),
    (S.exponential, dict(n=5, sigma_min=0.0), "sigma_min"),
    (S.exponential, dict(n=5, sigma_min=2.0, sigma_max=1.0), "sigma_min"),
    (S.polyexponential, dict(n=5, rho=-1.0), "rho"),
    (S.polyexponential, dict(n=0), "n "),
    (S.linear, dict(n=5, sigma_min=0.0), "sigma_min"),
    (S.vp, dict(n=5, eps_s=0.0), "eps_s"),
    (S.vp, dict(n=5, eps_s=1.0), "eps_s"),
    (S.vp, dict(n=5, beta_d=-1.0), "beta_d"),
    (S.vp, dict(n=5, beta_d=0.0, beta_min=0.0), "beta_d and beta_min"),
    (S.vp, dict(n=5, beta_min=math.inf), "beta_min"),
    (S.discrete, dict(alphas_cumprod=AC, n=0), "n "),
    (S.discrete, dict(alphas_cumprod=AC, n=5, spacing="uniform"), "spacing"),
    (S.discrete, dict(alphas_cumprod=AC, n=5, steps_offset=-1), "steps_offset"),
    (S.discrete, dict(alphas_cumprod=AC, n=100, spacing="leading", steps_offset=1), "steps_offset"),
    (S.discrete, dict(alphas_cumprod=AC, n=101, spacing="trailing"), "n = 101"),
    (S.discrete, dict(alphas_cumprod=torch.tensor([0.5, 1.5]), n=1), "alphas_cumprod"),
    (S.custom, dict(values=[]), "values"),
    (S.custom, dict(values=[0.0]), "values"),
    (S.custom, dict(values=[1.0, 2.0]), r"strictly decreasing: values\[0\]"),
    (S.custom, dict(values=[2.0, 1.0, 1.0]), r"values\[1\]"),
    (S.custom, dict(values=[2.0, 0.0, 0.0]), r"values\[1\]"),
    (S.custom, dict(values=[2.0, math.nan]), "finite"),
    (S.custom, dict(values=[2.0, -1.0]), ">= 0"),
    (S.custom, dict(values=[[2.0, 1.0]]), "1-D"),
    (S.ays, dict(n=10, model="sd3"), "model"),
]


@pytest.mark.parametrize("fn,kwargs,match", BAD, ids=[f"{fn.__name__}-{i}" for i, (fn, _, _) in enumerate(BAD)])
def test_impossible_parameters_raise_value_error_naming_them(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
