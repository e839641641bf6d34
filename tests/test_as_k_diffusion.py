"""``optsample.as_k_diffusion``: optsample samplers in k-diffusion's calling convention (ComfyUI's KSAMPLER,
AUTOMATIC1111's sampler list). The references are the literal k-diffusion transcriptions of
test_kdiffusion_parity.py plus ``sample_euler`` / ``sample_dpmpp_2m`` below (same source and commit,
``trange`` -> ``range``); float64, the same noise on both sides, agreement to 1e-12."""

from __future__ import annotations

import pytest
import torch

import optsample
from test_kdiffusion_parity import (
    BATCH, MODELS, SIGMAS, TOL, BrownianPath, ReplayNoise, dpmpp_sde_points, max_abs, sample_dpmpp_2m, sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde, sample_euler_ancestral, sample_heun, start, to_d,
)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):  # CHANGED: trange
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigma_hat, 'denoised': denoised})
        dt = sigmas[i + 1] - sigma_hat
        # Euler method
        x = x + d * dt
    return x


# (optsample name, k-diffusion function, hyper-parameters both take, noise) for every sampler the two share here
SHARED = [
    ("euler", sample_euler, {}, None),
    ("dpmpp_2m", sample_dpmpp_2m, {}, None),
    ("euler_ancestral", sample_euler_ancestral, dict(eta=0.7, s_noise=0.9), ReplayNoise),
    ("heun", sample_heun, dict(s_churn=4.0, s_tmin=0.1, s_tmax=10.0, s_noise=1.003), ReplayNoise),
    ("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, dict(eta=1.0, s_noise=1.0), ReplayNoise),
    ("dpmpp_sde", sample_dpmpp_sde, dict(eta=0.7, s_noise=1.1, r=0.3), "brownian"),
]


def make_noise(kind, x, hparams):
    if kind == "brownian":
        return BrownianPath(x.shape, dpmpp_sde_points(SIGMAS, hparams["r"]))
    return kind(x.shape) if kind is not None else None


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name,reference,hparams,noise", SHARED, ids=[s[0] for s in SHARED])
def test_equals_kdiffusion_on_shared_samplers(model_name, name, reference, hparams, noise):
    model, x = MODELS[model_name], start(model_name)
    ours_noise, ref_noise = make_noise(noise, x, hparams), make_noise(noise, x, hparams)
    ref_kwargs = {} if noise is None else {"noise_sampler": ref_noise}
    ref = reference(model, x.clone(), SIGMAS, **hparams, **ref_kwargs)
    ours = optsample.as_k_diffusion(name, **hparams)(model, x.clone(), SIGMAS, noise_sampler=ours_noise, disable=True)
    assert ours.dtype == torch.float64
    assert max_abs(ours, ref) < TOL, max_abs(ours, ref)
    if noise is not None:
        assert ours_noise.used == ref_noise.used > 0  # the same draws, in the same number


@pytest.mark.parametrize("name,reference,hparams", [
    ("euler_ancestral", sample_euler_ancestral, dict(eta=1.0)), ("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, {}),
])
def test_default_noise_is_kdiffusions_given_the_global_seed(name, reference, hparams):
    """No noise_sampler: k-diffusion's default_noise_sampler, torch.randn_like(x) per call, so a global
    torch.manual_seed(7) gives k-diffusion's numbers (the reference gets that default, written out)."""
    model, x = MODELS["gmm16d"], start("gmm16d")
    torch.manual_seed(7)
    ref = reference(model, x.clone(), SIGMAS, noise_sampler=lambda sigma, sigma_next: torch.randn_like(x), **hparams)
    torch.manual_seed(7)
    ours = optsample.as_k_diffusion(name, **hparams)(model, x.clone(), SIGMAS, disable=True)
    assert max_abs(ours, ref) < TOL
    torch.manual_seed(8)  # and the noise really enters: another seed, another result (differs by > 1e-3)
    assert max_abs(optsample.as_k_diffusion(name, **hparams)(model, x.clone(), SIGMAS, disable=True), ref) > 1e-3


class RecordingModel:
    """k-diffusion's model contract: model(x, sigma_tensor[batch], **extra_args); records each call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, sigma, **extra):
        self.calls.append((tuple(sigma.shape), sigma.dtype, sorted(extra)))
        return self.inner(x, sigma)


@pytest.mark.parametrize("name", optsample.available())
def test_every_sampler_and_rule_runs_in_the_convention(name):
    """Each of optsample.available() (classic samplers and update rules): bit-identical to optsample.sample with
    the same noise; the model sees a [batch] sigma tensor and extra_args; the callback gets exactly
    k-diffusion's five keys once per step, i = 0..n-1, sigma a 0-d tensor equal to sigmas[i]."""
    model, x = MODELS["gmm2d"], start("gmm2d")
    recording, infos = RecordingModel(model), []
    fn = optsample.as_k_diffusion(name)
    ours = fn(recording, x.clone(), SIGMAS, extra_args={"cond": None}, callback=infos.append, disable=True,
              noise_sampler=ReplayNoise(x.shape))
    direct = optsample.sample(name, model, x.clone(), SIGMAS, noise_sampler=ReplayNoise(x.shape))
    assert torch.equal(ours, direct)
    assert recording.calls and all(c == ((BATCH,), torch.float64, ["cond"]) for c in recording.calls)
    n = len(SIGMAS) - 1
    assert [info["i"] for info in infos] == list(range(n))
    assert all(set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"} for info in infos)
    assert all(info["sigma"].ndim == 0 and float(info["sigma"]) == float(SIGMAS[info["i"]]) for info in infos)


def test_overrides_and_bad_hyper_parameters():
    model, x = MODELS["gmm2d"], start("gmm2d")
    by_call = optsample.as_k_diffusion("euler_ancestral")(model, x.clone(), SIGMAS, eta=0.3, noise_sampler=ReplayNoise(x.shape), disable=True)
    by_make = optsample.as_k_diffusion("euler_ancestral", eta=0.3)(model, x.clone(), SIGMAS, noise_sampler=ReplayNoise(x.shape), disable=True)
    default = optsample.as_k_diffusion("euler_ancestral")(model, x.clone(), SIGMAS, noise_sampler=ReplayNoise(x.shape), disable=True)
    assert torch.equal(by_call, by_make) and max_abs(by_call, default) > 1e-3
    with pytest.raises(ValueError, match="eta"):
        optsample.as_k_diffusion("euler_ancestral", eta=-1.0)
    with pytest.raises(KeyError):
        optsample.as_k_diffusion("no_such_sampler")


def test_called_the_way_comfyui_and_a1111_call_it():
    """ComfyUI's KSAMPLER.sample: sampler_function(model_k, noise, sigmas, extra_args=..., callback=k_callback,
    disable=disable_pbar, **extra_options); AUTOMATIC1111's KDiffusionSampler: func(model_wrap_cfg, x,
    extra_args=..., disable=False, callback=..., sigmas=sigmas, **extra_params). Both give the same samples."""
    model, x = MODELS["gmm16d"], start("gmm16d")
    fn = optsample.as_k_diffusion("adam")
    steps = []
    comfy = fn(model, x.clone(), SIGMAS, extra_args={}, callback=lambda d: steps.append(d["i"]), disable=True,
               noise_sampler=ReplayNoise(x.shape))
    a1111 = fn(model, x.clone(), extra_args={}, disable=True, callback=None, sigmas=SIGMAS, noise_sampler=ReplayNoise(x.shape))
    assert torch.equal(comfy, a1111) and steps == list(range(len(SIGMAS) - 1))
    assert fn.__name__ == "sample_adam"
