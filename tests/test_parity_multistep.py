"""Multistep samplers (plms, ipndm, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m(_sde), unipc) against peer implementations.

diffusers' VP schedulers carry x_vp = x_ve / sqrt(sigma^2 + 1); both runs end at sigma = 0, where the two
coordinates coincide, so final samples are compared directly. Our sigma array is the scheduler's own
(``scheduler.sigmas``, VE sigmas; PNDM has none, so it is built from its timesteps and alphas_cumprod).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

import optsample
from optsample.models import GaussianMixture
from helpers import SCHEDULER_KWARGS, CountingEps, run_diffusers, vp_models

# float32 parity bound. diffusers does its step arithmetic in float32 on alphas_cumprod / sigmas
# (sqrt, log, products); samples are of size ~4 here, so rounding differences reach a few 1e-6.
ATOL = 1e-5
# PNDM's DDIM transfer (PNDM eq. 9) is evaluated in float32 from alphas_cumprod; the largest difference
# seen was 1.2e-5 (5 steps, float32), and with float64 samples it stays <= 3e-6: rounding in diffusers.
ATOL_PNDM = 2e-5
# Issue 9: parity at one length hid a rule that only differs on long schedules (UniPC's lower_order_final
# was DPMSolverMultistep's "< 15 steps" rule: 3.4e-2 off diffusers at 20 steps, 1.5e-6 at 10), so every
# multistep sampler with a peer is compared at these lengths.
LENGTHS = [10, 15, 20, 25, 50]


def start_noise(batch: int = 16, dim: int = 8, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(0), dtype=dtype)


def run_both(scheduler, sigmas, name, *, noises=None, dtype=torch.float32, **hparams):
    """(ours, diffusers', our NFE, diffusers' model calls) from the same unit noise."""
    eps_net, denoiser = vp_models(scheduler.alphas_cumprod)
    counting = CountingEps(eps_net)
    x_unit = start_noise(dtype=dtype)
    if noises is not None:  # diffusers takes the step noise as variance_noise, one per step
        stream = iter(noises)
        original_step = scheduler.step
        scheduler.step = lambda *a, **k: original_step(*a, variance_noise=next(stream), **k)
    theirs = run_diffusers(scheduler, counting, x_unit)
    x_ve = x_unit * scheduler.init_noise_sigma * math.sqrt(1 + float(sigmas[0]) ** 2)
    noise_sampler = None
    if noises is not None:
        our_stream = iter(noises)
        noise_sampler = lambda sigma, sigma_next: next(our_stream)  # noqa: E731
    ours, info = optsample.sample(name, denoiser, x_ve, sigmas.to(dtype), noise_sampler=noise_sampler, return_info=True, **hparams)
    return ours, theirs, info.nfe, counting.calls


def pndm_sigmas(scheduler) -> torch.Tensor:
    """VE sigmas of PNDM's distinct timesteps (decreasing), then 0 (set_alpha_to_one=True)."""
    alphas_cumprod = scheduler.alphas_cumprod.double()
    timesteps = scheduler._timesteps[::-1].tolist()
    sigmas = [math.sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) for t in timesteps]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


@pytest.mark.parametrize("n_steps", [1, 2, 5, *LENGTHS])
def test_plms_matches_diffusers_pndm(n_steps):
    scheduler = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True, **SCHEDULER_KWARGS)
    scheduler.set_timesteps(n_steps)
    ours, theirs, nfe, calls = run_both(scheduler, pndm_sigmas(scheduler), "plms")
    assert (ours - theirs).abs().max().item() <= ATOL_PNDM
    assert nfe == calls == n_steps + (n_steps > 1)


def dpm_solver(order: int, **kwargs) -> DPMSolverMultistepScheduler:
    config = dict(solver_order=order, algorithm_type="dpmsolver++", final_sigmas_type="zero", lower_order_final=True)
    return DPMSolverMultistepScheduler(**{**SCHEDULER_KWARGS, **config, **kwargs})


@pytest.mark.parametrize("n_steps", [5, *LENGTHS])
def test_dpmpp_2m_matches_diffusers(n_steps):
    scheduler = dpm_solver(2)
    scheduler.set_timesteps(n_steps)
    ours, theirs, nfe, calls = run_both(scheduler, scheduler.sigmas, "dpmpp_2m")
    assert (ours - theirs).abs().max().item() <= ATOL
    assert nfe == calls == n_steps


# k-diffusion's 3M takes its 2nd-order warm-up step in the phi_2 ("heun") form, diffusers by default in
# the midpoint form, so diffusers is set to solver_type="heun". With lower_order_final and < 15 steps
# diffusers also drops to order 2 on the second-to-last step (k-diffusion does not): hence 20 steps, or
# lower_order_final=False below 15 steps (the last step is first order anyway with final_sigmas_type="zero").
@pytest.mark.parametrize("name, hparams", [("dpmpp_3m", {}), ("dpmpp_3m_sde", {"eta": 0.0})])
@pytest.mark.parametrize("n_steps", LENGTHS)
def test_dpmpp_3m_matches_diffusers(name, hparams, n_steps):
    scheduler = dpm_solver(3, solver_type="heun", lower_order_final=n_steps >= 15)
    scheduler.set_timesteps(n_steps)
    ours, theirs, nfe, calls = run_both(scheduler, scheduler.sigmas, name, **hparams)
    assert (ours - theirs).abs().max().item() <= ATOL
    assert nfe == calls == n_steps


# The SDE path visits points between mixture components, where the last step's denoiser is steep: the
# float32 rounding differences (a few 1e-6 along the path, as for the ODE solvers) grow to 2.4e-5 in the
# final sample. With float64 samples and noise (diffusers' coefficients stay float32) the gap is 9e-7.
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 5e-5), (torch.float64, ATOL)])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_matches_diffusers_with_shared_noise(solver_type, dtype, atol):
    n_steps = 10
    scheduler = dpm_solver(2, algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    scheduler.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(7)
    noises = [torch.randn(16, 8, generator=g, dtype=dtype) for _ in range(n_steps)]
    ours, theirs, nfe, calls = run_both(scheduler, scheduler.sigmas, "dpmpp_2m_sde", noises=noises,
                                        solver_type=solver_type, dtype=dtype)
    assert (ours - theirs).abs().max().item() <= atol
    assert nfe == calls == n_steps
    # the noise matters: with other noise the result moves by far more than the tolerance
    scheduler = dpm_solver(2, algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    scheduler.set_timesteps(n_steps)
    other = [torch.randn(16, 8, generator=g, dtype=dtype) for _ in range(n_steps)]
    moved, _, _, _ = run_both(scheduler, scheduler.sigmas, "dpmpp_2m_sde", noises=other, solver_type=solver_type,
                              dtype=dtype)
    assert (moved - theirs).abs().max().item() > 1e-2


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n_steps", [3, *LENGTHS])
def test_unipc_matches_diffusers(order, variant, n_steps):
    scheduler = UniPCMultistepScheduler(solver_order=order, solver_type=variant, **SCHEDULER_KWARGS)
    scheduler.set_timesteps(n_steps)
    ours, theirs, nfe, calls = run_both(scheduler, scheduler.sigmas, "unipc", order=order, variant=variant)
    # diffusers' last step to sigma = 0 is order 1: x = x0 prediction, which it keeps in model_outputs[-1].
    # With bh1 it computes that as x0 - alpha_t * B(h) * 0 with B(h) = h = -inf and returns NaN (the
    # log(0) problem of diffusers #9007); there its own stored x0 prediction is the reference.
    last_x0 = scheduler.model_outputs[-1]
    if variant == "bh2":
        assert torch.equal(theirs, last_x0)
    reference = torch.where(torch.isfinite(theirs), theirs, last_x0)
    assert (ours - reference).abs().max().item() <= ATOL
    assert nfe == calls == n_steps


# unipc_momentum shares UniPC's loop (the order schedule included): at beta = 0 it is diffusers' UniPC to
# rounding at every length (before the lower_order_final fix both were 1.07e-2 off at 20 steps, order 3).
@pytest.mark.parametrize("n_steps", LENGTHS)
def test_unipc_momentum_beta_zero_matches_diffusers_unipc(n_steps):
    scheduler = UniPCMultistepScheduler(solver_order=3, solver_type="bh2", **SCHEDULER_KWARGS)
    scheduler.set_timesteps(n_steps)
    ours, theirs, nfe, calls = run_both(scheduler, scheduler.sigmas, "unipc_momentum", order=3, beta=0.0)
    assert (ours - theirs).abs().max().item() <= ATOL
    assert nfe == calls == n_steps


# lower_order_final=False keeps the full order to the end; a full-order step to sigma = 0 is the log(0)
# of diffusers #9007 (inf), so this is compared on diffusers' final_sigmas_type="sigma_min" schedule,
# which ends at sigma_min > 0: there the two coordinates differ by sqrt(sigma_min^2 + 1) (x_vp = x_ve / that).
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("n_steps", [10, 20])
def test_unipc_matches_diffusers_ending_at_sigma_min(order, variant, n_steps, lower_order_final):
    scheduler = UniPCMultistepScheduler(solver_order=order, solver_type=variant, lower_order_final=lower_order_final,
                                        final_sigmas_type="sigma_min", **SCHEDULER_KWARGS)
    scheduler.set_timesteps(n_steps)
    sigmas = scheduler.sigmas
    assert float(sigmas[-1]) > 0
    ours, theirs, nfe, calls = run_both(scheduler, sigmas, "unipc", order=order, variant=variant,
                                        lower_order_final=lower_order_final)
    ours_vp = ours / math.sqrt(float(sigmas[-1]) ** 2 + 1)
    assert (ours_vp - theirs).abs().max().item() <= ATOL
    assert nfe == calls == n_steps


# ----------------------------------------------------------------------------------------------
# Literal transcriptions of k-diffusion's samplers (crowsonkb/k-diffusion, k_diffusion/sampling.py) as
# an independent reference for eta != 1 and s_noise != 1, which diffusers does not offer.


def kdiff_sample_dpmpp_2m_sde(model, x, sigmas, eta=1., s_noise=1., noise_sampler=None, solver_type='midpoint'):
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == 'heun':
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                elif solver_type == 'midpoint':
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def kdiff_sample_dpmpp_3m_sde(model, x, sigmas, eta=1., s_noise=1., noise_sampler=None):
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def comfy_sample_ipndm(model, x, sigmas, max_order=4):
    """ComfyUI ``comfy/k_diffusion/sampling.py`` sample_ipndm (from zju-pi/diff-sampler solvers.py), literal."""
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur = sigmas[i]
        t_next = sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i+1)
        if t_next == 0:     # Denoising step
            x_next = denoised
        elif order == 1:    # First Euler step.
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:    # Use one history point.
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:    # Use two history points.
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        elif order == 4:    # Use three history points.
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k+1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


def karras_sigmas(n: int, sigma_min=0.02, sigma_max=20.0, rho=7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, then 0 (k-diffusion ``get_sigmas_karras``)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


GMM = GaussianMixture.random(dim=4, components=3, seed=3)


@pytest.mark.parametrize("name, reference, hparams", [
    ("dpmpp_2m_sde", kdiff_sample_dpmpp_2m_sde, {"eta": 0.5, "s_noise": 0.8, "solver_type": "midpoint"}),
    ("dpmpp_2m_sde", kdiff_sample_dpmpp_2m_sde, {"eta": 0.7, "s_noise": 1.1, "solver_type": "heun"}),
    ("dpmpp_2m_sde", kdiff_sample_dpmpp_2m_sde, {"eta": 0.0, "s_noise": 1.0, "solver_type": "midpoint"}),
    ("dpmpp_3m_sde", kdiff_sample_dpmpp_3m_sde, {"eta": 0.5, "s_noise": 0.8}),
    ("dpmpp_3m_sde", kdiff_sample_dpmpp_3m_sde, {"eta": 1.0, "s_noise": 1.0}),
])
def test_dpmpp_sde_matches_kdiffusion_transcription_float64(name, reference, hparams):
    sigmas = karras_sigmas(12)
    x = start_noise(6, 4, torch.float64) * sigmas[0]
    noises = [torch.randn(6, 4, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(12)]
    stream_ours, stream_theirs = iter(noises), iter(noises)
    ours = optsample.sample(name, GMM, x, sigmas, noise_sampler=lambda s, sn: next(stream_ours), **hparams)
    theirs = reference(GMM, x, sigmas, noise_sampler=lambda s, sn: next(stream_theirs), **hparams)
    assert ours.dtype == torch.float64
    assert (ours - theirs).abs().max().item() <= 1e-12
    n_noise_draws = 11 if hparams["eta"] else 0  # 12 steps: none on the last (sigma_next = 0), none at eta = 0
    assert len(list(stream_ours)) == len(noises) - n_noise_draws


@pytest.mark.parametrize("max_order", [2, 3, 4])  # the transcription's buffer handling fails for max_order=1
@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("n_steps", [12, *LENGTHS])
def test_ipndm_matches_comfyui_transcription_float64(max_order, final_zero, n_steps):
    sigmas = karras_sigmas(n_steps)
    sigmas = sigmas if final_zero else sigmas[:-1]
    x = start_noise(6, 4, torch.float64) * sigmas[0]
    ours = optsample.sample("ipndm", GMM, x, sigmas, order=max_order)
    theirs = comfy_sample_ipndm(GMM, x, sigmas, max_order=max_order)
    assert (ours - theirs).abs().max().item() <= 1e-12


def test_ipndm_first_order_is_euler_float64():
    sigmas = karras_sigmas(12)
    x = start_noise(6, 4, torch.float64) * sigmas[0]
    ours = optsample.sample("ipndm", GMM, x, sigmas, order=1)
    euler = optsample.sample("euler", GMM, x, sigmas)  # classic.py: x + (sigma_next - sigma) d
    assert (ours - euler).abs().max().item() <= 1e-12


def test_multistep_orders_share_one_name():
    """lms, ipndm and unipc all call their order ``order``; ipndm's old ``max_order`` is refused by name."""
    import dataclasses

    for name in ("lms", "ipndm", "unipc"):
        assert "order" in {f.name for f in dataclasses.fields(optsample.samplers.get(name).params)}, name
    with pytest.raises(TypeError, match=r"sampler 'ipndm' has no hyper-parameter\(s\) \['max_order'\]; it takes \['order'\]"):
        optsample.sample("ipndm", GMM, torch.ones(1, 4), karras_sigmas(3), max_order=2)


# ----------------------------------------------------------------------------------------------
# sigma_next = 0 in float64: no log(0), no NaN, the NFE each solver promises.

ALL_CONFIGS = [
    ("plms", {}), ("ipndm", {}), ("ipndm", {"order": 2}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}), ("dpmpp_2m_sde", {"solver_type": "midpoint"}), ("dpmpp_3m_sde", {}),
] + [("unipc", {"order": order, "variant": variant}) for order in (1, 2, 3) for variant in ("bh1", "bh2")]


@pytest.mark.parametrize("n_steps", [1, 2, 6])
def test_final_sigma_zero_is_finite_in_float64(n_steps):
    sigmas = karras_sigmas(n_steps, sigma_max=40.0)
    x = optsample.initial_noise(range(5), (4,), dtype=torch.float64) * sigmas[0]
    for name, hparams in ALL_CONFIGS:
        seen = []
        out, info = optsample.sample(name, GMM, x, sigmas, seeds=range(5), return_info=True,
                                     callback=lambda step: seen.append(step["denoised"]), **hparams)
        assert out.dtype == torch.float64 and bool(torch.isfinite(out).all()), (name, hparams)
        assert info.nfe == n_steps + (name == "plms" and n_steps > 1), (name, hparams)
        assert len(seen) == n_steps, (name, hparams)
        if n_steps == 1:  # one step to 0 is the denoiser itself (Euler: x - sigma (x - D) / sigma = D)
            assert (out - GMM.denoise(x, sigmas[0].expand(5))).abs().max().item() <= 1e-12, (name, hparams)
        elif name != "plms":  # their last step is x = denoised (k-diffusion, diffusers; plms is AB as diffusers)
            assert torch.equal(out, seen[-1]), (name, hparams)


# Convergence orders of these solvers are measured in tests/test_convergence.py.
