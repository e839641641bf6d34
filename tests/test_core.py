"""The contract every registered sampler keeps: validation, NFE, callbacks, non-finite checks, dtypes."""

import math

import pytest
import torch

import optsample
from optsample.models import GaussianMixture
from optsample.samplers import NonFiniteError, UnknownSamplerError, get, measure_nfe, sample, steps_for_nfe

ALL = optsample.available()
GMM = GaussianMixture.random(dim=4, components=3, seed=0, spread=2.0)


def start(n=3, dim=4, sigma_max=10.0, dtype=torch.float64):
    return optsample.initial_noise(range(n), (dim,), dtype=dtype) * sigma_max


def sigmas_for(n_steps=6, sigma_max=10.0):
    return torch.cat([torch.exp(torch.linspace(math.log(sigma_max), math.log(0.05), n_steps)), torch.zeros(1)]).double()


class CountingModel:
    def __init__(self, inner, nan_after=None):
        self.inner, self.calls, self.nan_after = inner, 0, nan_after

    def __call__(self, x, sigma):
        self.calls += 1
        assert sigma.shape == (x.shape[0],), "the model must receive sigma as a [batch] tensor"
        out = self.inner(x, sigma)
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out.clone()
            out[1] = float("nan")
        return out


def test_registry_lists_every_sampler_of_the_core_issue():
    wanted = {
        "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
        "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "ddpm", "plms", "ipndm", "unipc", "restart",
    }
    assert wanted <= set(ALL), f"missing: {sorted(wanted - set(ALL))}"


def test_unknown_sampler_names_the_nearest():
    with pytest.raises(UnknownSamplerError, match=r"unknown sampler 'eulr'.*'euler'"):
        sample("eulr", GMM, start(), sigmas_for())
    with pytest.raises(KeyError):  # still a KeyError for code that catches that
        get("dpmpp2m")


def test_unknown_and_out_of_range_hyperparameters_fail_before_any_model_call():
    model = CountingModel(GMM)
    with pytest.raises(TypeError, match="etta"):
        sample("euler_ancestral", model, start(), sigmas_for(), etta=0.5)
    with pytest.raises(ValueError, match="'eta' = -1.0"):
        sample("euler_ancestral", model, start(), sigmas_for(), eta=-1)
    with pytest.raises(ValueError, match="'s_noise'"):
        sample("euler", model, start(), sigmas_for(), s_noise=float("nan"))
    assert model.calls == 0


@pytest.mark.parametrize("bad, message", [
    ([10.0, 5.0, 5.0, 0.0], r"sigmas\[1\]=5 <= sigmas\[2\]=5"),
    ([10.0, 12.0, 0.0], r"strictly decreasing"),
    ([10.0, -1.0], "non-negative"),
    ([10.0, float("nan"), 0.0], "finite"),
    ([10.0], "at least 2"),
])
def test_bad_sigmas_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        sample("euler", GMM, start(), torch.tensor(bad, dtype=torch.float64))


@pytest.mark.parametrize("name", ALL)
def test_non_finite_model_output_names_step_and_sigma(name):
    model = CountingModel(GMM, nan_after=2)
    with pytest.raises(NonFiniteError, match=r"non-finite values at step \d+ \(sigma=[0-9.e+-]+, NFE 3\) for batch item\(s\) \[1\]"):
        sample(name, model, start(), sigmas_for(), seeds=[0, 1, 2])


# Evaluation order on 6 steps: heun / dpm_2 evaluate twice per step (first, then the corrector after the
# callback) and once on the last step (sigma_next = 0, Euler): NFE 1,2 -> step 0, ..., 7,8 -> step 3, 9,10 -> 4,
# 11 -> 5; euler / dpmpp_2m evaluate once per step: NFE k -> step k - 1. (Old code named heun's NFE 8 step 4.)
@pytest.mark.parametrize("name, bad_nfe, step", [
    ("heun", 8, 3), ("heun", 7, 3), ("heun", 9, 4), ("heun", 11, 5), ("dpm_2", 8, 3),
    ("euler", 4, 3), ("dpmpp_2m", 5, 4), ("euler", 1, 0),
])
def test_non_finite_error_names_the_step_of_a_corrector_evaluation(name, bad_nfe, step):
    model = CountingModel(GMM, nan_after=bad_nfe - 1)
    with pytest.raises(NonFiniteError, match=rf"non-finite values at step {step} \(sigma=[0-9.e+-]+, NFE {bad_nfe}\)"):
        sample(name, model, start(), sigmas_for(6), seeds=[0, 1, 2])
    assert model.calls == bad_nfe  # raised before the model is called again


@pytest.mark.parametrize("name", ALL)
def test_nfe_is_counted_and_callback_sees_every_step(name):
    model = CountingModel(GMM)
    seen = []
    sigmas = sigmas_for(6)
    x, info = sample(name, model, start(), sigmas, seeds=[0, 1, 2], callback=seen.append, return_info=True)
    assert info.nfe == model.calls > 0
    assert info.steps == len(sigmas) - 1
    assert [s["i"] for s in seen] == list(range(len(sigmas) - 1))
    for s in seen:
        assert {"x", "i", "sigma", "sigma_next", "denoised"} <= set(s)
        assert s["sigma"] == pytest.approx(float(sigmas[s["i"]])) and s["sigma_next"] == pytest.approx(float(sigmas[s["i"] + 1]))
        assert s["denoised"].shape == x.shape
    assert bool(torch.isfinite(x).all())
    assert measure_nfe(name, len(sigmas) - 1) == info.nfe


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_steps_for_nfe_never_exceeds_the_budget(name):
    for nfe in (3, 4, 10):
        n = steps_for_nfe(name, nfe)
        assert measure_nfe(name, n) <= nfe < measure_nfe(name, n + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_comes_back_in_the_input_dtype_and_state_is_never_half(dtype):
    seen_dtypes = set()

    def model(x, sigma):
        seen_dtypes.add(x.dtype)
        return GMM(x, sigma)

    out = sample("euler", model, start(dtype=dtype), sigmas_for())
    assert out.dtype == dtype
    assert seen_dtypes == {torch.float64 if dtype == torch.float64 else torch.float32}


def test_extra_args_reach_the_model():
    got = {}

    def model(x, sigma, label=None):
        got["label"] = label
        return GMM(x, sigma)

    sample("euler", model, start(), sigmas_for(), extra_args={"label": 7})
    assert got["label"] == 7


def test_seeds_differing_only_above_32_bits_give_different_noise():
    """torch's CPU generator keeps the low 32 bits of a seed; the runner's seeds are (seed << 32) + k."""
    a = optsample.initial_noise([(1 << 32) + 5], (8,))
    b = optsample.initial_noise([(2 << 32) + 5], (8,))
    assert not torch.equal(a, b)
    assert torch.equal(optsample.initial_noise([5], (8,)), optsample.initial_noise([5], (8,)))
    x = torch.zeros(1, 8)
    first = optsample.samplers.SeededNoise(x, [(1 << 32) + 5])()
    second = optsample.samplers.SeededNoise(x, [(2 << 32) + 5])()
    assert not torch.equal(first, second)


# ---------------------------------------------------------------------------------------- inputs at the door


def _zero_model(x, sigma):
    return x * 0


@pytest.mark.parametrize("x, error, message", [
    (torch.ones(3) * 10, ValueError, r"x must be batch-first \[batch, ...\] with at least 2 dimensions, got shape \(3,\)"),
    (torch.ones(0, 3), ValueError, r"x must hold at least one sample .* got shape \(0, 3\)"),
    (torch.tensor([[1.0, 2.0], [math.nan, 0.0]]), ValueError,
     r"x \(the starting point\) has non-finite values in batch item\(s\) \[1\]"),
    (torch.ones(2, 3, dtype=torch.long), TypeError, "x must be a floating-point tensor, got dtype torch.int64"),
    ([[1.0, 2.0]], TypeError, "x must be a torch.Tensor, got list"),
], ids=["1-D", "empty batch", "NaN start", "integer", "list"])
def test_bad_x_is_refused_before_any_model_call(x, error, message):
    model = CountingModel(_zero_model)
    with pytest.raises(error, match=message):
        sample("euler", model, x, sigmas_for())
    assert model.calls == 0  # refused at the door, not reported as a model failure


@pytest.mark.parametrize("model, error, message", [
    (lambda x, sigma: x[:, :1], ValueError, r"the model returned shape \(3, 1\), but x has shape \(3, 4\)"),
    (lambda x, sigma: None, TypeError, r"the model must return a tensor \(denoised, shape \(3, 4\)\), got NoneType"),
], ids=["wrong shape", "None"])
def test_a_model_returning_the_wrong_thing_is_named(model, error, message):
    with pytest.raises(error, match=message):  # a [3, 1] output would otherwise broadcast silently
        sample("euler", model, start(), sigmas_for())


def test_registering_a_sampler_twice_replaces_it_with_a_warning():
    """A re-run notebook cell registers again: the second function wins (it returns x + 2, not x + 1)."""
    from optsample.samplers import register, registry

    try:
        @register("test_twice")
        def first(model, x, sigmas, *, callback, noise_sampler):
            return x + 1

        with pytest.warns(UserWarning, match="sampler 'test_twice' is already registered; replacing it"):
            @register("test_twice")
            def second(model, x, sigmas, *, callback, noise_sampler):
                return x + 2

        assert torch.equal(sample("test_twice", _zero_model, torch.zeros(1, 1), sigmas_for()), torch.full((1, 1), 2.0))
    finally:
        registry._REGISTRY.pop("test_twice", None)


def test_callback_gives_running_count_and_sigma_index_with_restarts():
    """sgd with one warm restart on 6 steps re-runs steps: ``i`` counts 0, 1, 2, ... and ``sigma_index`` is
    the position in ``sigmas`` (sigmas[sigma_index] == sigma), never past len(sigmas) - 2."""
    sigmas = sigmas_for(6)
    infos = []
    sample("sgd", GMM, start(), sigmas, callback=infos.append, restart_count=1, restart_sigma_min=1.0,
           restart_sigma_max=4.0)
    values = sigmas.tolist()
    assert len(infos) > len(values) - 1  # the restart re-runs steps
    assert [info["i"] for info in infos] == list(range(len(infos)))
    assert all(values[info["sigma_index"]] == info["sigma"] for info in infos)
    assert max(info["sigma_index"] for info in infos) == len(values) - 2
    assert [info["sigma_index"] for info in infos[-3:]] == [len(values) - 4, len(values) - 3, len(values) - 2]
    plain = []  # every other sampler: sigma_index == i
    sample("heun", GMM, start(), sigmas, callback=plain.append)
    assert [info["sigma_index"] for info in plain] == [info["i"] for info in plain] == list(range(len(values) - 1))
