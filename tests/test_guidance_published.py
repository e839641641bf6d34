"""DPS and AdamDPS as published: optsample.guidance.published against literal transcriptions of the peers'
loops (DPS2022/diffusion-posterior-sampling, christianbelardi/adam-guidance), <= 1e-10 in float64.

Transcriptions change only: torch.randn_like / randn_tensor -> the shared per-sample noise stream, the
float32 cast in ``extract_and_expand`` -> the target's dtype, and the noisy-measurement ``q_sample`` of
``p_sample_loop`` (used only by the 'projection' and 'mcg' methods, not 'ps') is dropped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optsample
from optsample.guidance import GMMInverse, MeasurementLoss, guided
from optsample.guidance.published import adam_dps, dps
from optsample.models import DenoiserAsDiscreteEps, GaussianMixture
from optsample.samplers import SeededNoise

F64 = torch.float64
LINEAR_BETAS = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # DPS2022 get_named_beta_schedule("linear", 1000)
ALPHAS_CUMPROD = torch.from_numpy(np.cumprod(1.0 - LINEAR_BETAS))


# ----------------------------------------------------------------------------------------------
# DPS2022 guided_diffusion/gaussian_diffusion.py + posterior_mean_variance.py + condition_methods.py ('ps').


def extract_and_expand(array, time, target):
    array = torch.from_numpy(array).to(target.device)[time].to(target.dtype)
    while array.ndim < target.ndim:
        array = array.unsqueeze(-1)
    return array.expand_as(target)


class PeerDDPM:
    def __init__(self, use_timesteps, betas, model_var_type, clip_denoised):
        # SpacedDiffusion.__init__
        self.use_timesteps = set(use_timesteps)
        self.timestep_map = []
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(np.cumprod(1.0 - betas, axis=0)):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        betas = np.array(new_betas)
        # GaussianDiffusion.__init__
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.model_var_type, self.clip_denoised = model_var_type, clip_denoised

    def p_sample_loop(self, model, x_start, measurement, measurement_cond_fn, noise):
        img = x_start
        for idx in list(range(self.num_timesteps))[::-1]:
            time = torch.tensor([idx] * img.shape[0], device=img.device)
            img = img.requires_grad_()
            out = self.p_sample(x=img, t=time, model=model, noise=noise)
            img, distance = measurement_cond_fn(x_t=out["sample"], measurement=measurement, x_prev=img,
                                                x_0_hat=out["pred_xstart"])
            img = img.detach_()
        return img

    def p_mean_variance(self, model, x, t):
        map_tensor = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)  # _WrappedModel
        model_output = model(x, map_tensor[t])
        # EpsilonXMeanProcessor
        pred_xstart = extract_and_expand(self.sqrt_recip_alphas_cumprod, t, x) * x - extract_and_expand(
            self.sqrt_recipm1_alphas_cumprod, t, model_output) * model_output
        if self.clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean = extract_and_expand(self.posterior_mean_coef1, t, pred_xstart) * pred_xstart + extract_and_expand(
            self.posterior_mean_coef2, t, x) * x
        if self.model_var_type == "fixed_small":  # FixedSmallVarianceProcessor (log 0 = -inf at t = 0, unused there)
            with np.errstate(divide="ignore"):
                model_log_variance = extract_and_expand(np.log(self.posterior_variance), t, x)
        else:  # FixedLargeVarianceProcessor
            model_log_variance = extract_and_expand(np.log(np.append(self.posterior_variance[1], self.betas[1:])), t, x)
        return {"mean": model_mean, "log_variance": model_log_variance, "pred_xstart": pred_xstart}

    def p_sample(self, model, x, t, noise):  # DDPM.p_sample
        out = self.p_mean_variance(model, x, t)
        sample = out["mean"]
        if t != 0:  # no noise when t == 0
            sample += torch.exp(0.5 * out["log_variance"]) * noise(x)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def peer_posterior_sampling(operator, scale):
    def conditioning(x_prev, x_t, x_0_hat, measurement):  # PosteriorSampling.conditioning + grad_and_value
        difference = measurement - operator(x_0_hat)
        norm = torch.linalg.norm(difference)
        norm_grad = torch.autograd.grad(outputs=norm, inputs=x_prev)[0]
        x_t -= norm_grad * scale
        return x_t, norm

    return conditioning


# ----------------------------------------------------------------------------------------------
# christianbelardi/adam-guidance diffusion/ddim.py ImageSampler.sample + methods/base.py + methods/adam_dps.py.


class PeerAdamDPS:
    def __init__(self, b1, b2, guidance_strength, clip_sample_range, get_guidance, noise):
        self.b1, self.b2 = b1, b2
        self.m, self.v, self.s = None, None, 1
        self.one_minus_b1, self.one_minus_b2 = 1 - self.b1, 1 - self.b2
        self.guidance_strength, self.clip_sample_range = guidance_strength, clip_sample_range
        self.get_guidance = get_guidance
        self.noise_fn = lambda x, sigma: sigma * noise(x) + x

    def reset(self):
        self.m = None
        self.v = None
        self.s = 1

    def adaptive_moment_estimate(self, g):
        if self.m is None and self.v is None:
            self.m = torch.zeros_like(g)
            self.v = torch.zeros_like(g)
        self.m.mul_(self.b1).add_(g, alpha=self.one_minus_b1)
        self.v.mul_(self.b2).add_(torch.square(g), alpha=self.one_minus_b2)
        m_hat = self.m / (1 - self.b1**self.s)
        v_hat = self.v / (1 - self.b2**self.s)
        self.s += 1
        return m_hat / (torch.sqrt(v_hat) + 1e-8)

    @torch.no_grad()
    def guide_step(self, x, t, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta):
        alpha_prod_t = alpha_prod_ts[t]
        alpha_prod_t_prev = alpha_prod_t_prevs[t]
        t = ts[t]
        with torch.enable_grad():
            x_need_grad = x.clone().detach().requires_grad_()
            epsilon = unet(x_need_grad, t)
        sqrt_one_minus_alpha = (1 - alpha_prod_t) ** 0.5
        sqrt_alpha = alpha_prod_t**0.5
        with torch.enable_grad():
            x0 = (x_need_grad - sqrt_one_minus_alpha * epsilon) / sqrt_alpha
            logp_norm = self.get_guidance(x0)
            gradient = torch.autograd.grad(logp_norm.sum(), x_need_grad)[0]
        guidance = self.adaptive_moment_estimate(gradient)
        guidance.mul_(self.guidance_strength)
        alpha_t = alpha_prod_t / alpha_prod_t_prev
        x0 = torch.clamp(x0.detach(), -self.clip_sample_range, self.clip_sample_range)
        x_prev = self._predict_x_prev_from_zero(x, x0, alpha_prod_t, alpha_prod_t_prev, eta, t)
        x_prev += guidance / alpha_t**0.5
        return x_prev

    def _predict_x_prev_from_zero(self, xt, x0, alpha_prod_t, alpha_prod_t_prev, eta, t):
        new_epsilon = (xt - alpha_prod_t ** (0.5) * x0) / (1 - alpha_prod_t) ** (0.5)
        return self._predict_x_prev_from_eps(xt, new_epsilon, alpha_prod_t, alpha_prod_t_prev, eta, t)

    def _predict_x_prev_from_eps(self, xt, eps, alpha_prod_t, alpha_prod_t_prev, eta, t):
        sigma = eta * ((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)) ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - sigma**2) ** (0.5) * eps
        pred_x0_direction = (xt - (1 - alpha_prod_t) ** (0.5) * eps) / (alpha_prod_t ** (0.5))
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_x0_direction + pred_sample_direction
        if eta > 0 and t.item() > 0:
            prev_sample = self.noise_fn(prev_sample, sigma)
        return prev_sample


class PeerMPGD(PeerAdamDPS):
    """methods/mpgd.py ``MPGDGuidance.guide_step`` (args.clip_x0 False), on methods/base.py's DDIM helpers."""

    def guide_step(self, x, t, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta):
        alpha_prod_t = alpha_prod_ts[t]
        alpha_prod_t_prev = alpha_prod_t_prevs[t]
        t = ts[t]
        eps = unet(x, t)
        x0 = (x - (1 - alpha_prod_t) ** (0.5) * eps) / (alpha_prod_t ** (0.5))  # _predict_x0
        x0 += self.guidance_strength * self.get_guidance(x0.clone().detach().requires_grad_())
        xt = (1 - alpha_prod_t) ** (0.5) * eps + alpha_prod_t ** (0.5) * x0
        return self._predict_x_prev_from_zero(xt, x0, alpha_prod_t, alpha_prod_t_prev, eta, t)


def peer_adam_sample(guidance, x, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta):  # ImageSampler.sample, one batch
    guidance.reset()
    for t in range(len(ts)):
        x = guidance.guide_step(x, t, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta)
    return x


# ----------------------------------------------------------------------------------------------


def problems():
    """The GMM inverse problem (no clipping) and a small-scale one whose x0 estimates leave [-1, 1] (clipping)."""
    big = GMMInverse.mcgdiff(8, 2, seed=1)
    small_prior = GaussianMixture.random(dim=6, components=3, seed=2, spread=0.8, std_range=(0.2, 0.5))
    A = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    small = GMMInverse(small_prior, A, A @ small_prior.means[0], 0.05)
    return [(big, False), (small, True)]


@pytest.mark.parametrize("n_steps", [10, 25, 50])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_dps_matches_the_peer_loop(n_steps, variance):
    """Our DPS == DPS2022's DDPM loop with PosteriorSampling (scale 0.3 and 0.5), batch size 1 per sample as
    their scripts run; ours runs the batch of 3 at once. Max abs difference <= 1e-10. Not at 250 steps: there
    the peer's own loop is chaotic on this problem (a 1e-15 change of x_T moves its output by up to 9e-3,
    measured), so no implementation that is not bitwise the same can agree to 1e-10."""
    use = set(range(0, 1000, 1000 // n_steps))
    for (problem, clip), scale in zip(problems(), (0.3, 0.5)):
        eps_net = DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD)
        seeds = [11, 12, 13]
        x_start = optsample.initial_noise(seeds, (problem.dim,), dtype=F64)
        loss = MeasurementLoss(problem.A, problem.y, norm="l2")
        ours = dps(eps_net, x_start, loss, ALPHAS_CUMPROD, sorted(use, reverse=True), scale=scale, variance=variance,
                   clip=1.0 if clip else None, seeds=seeds)
        peer = PeerDDPM(use, LINEAR_BETAS, variance, clip)
        operator = lambda x0: x0 @ problem.A.T  # noqa: E731
        for k, seed in enumerate(seeds):
            x_k = x_start[k:k + 1].clone()
            stream = SeededNoise(x_k, [seed])
            theirs = peer.p_sample_loop(eps_net, x_k, problem.y[None], peer_posterior_sampling(operator, scale),
                                        noise=lambda x: stream())
            assert (ours[k] - theirs[0]).abs().max() <= 1e-10


@pytest.mark.parametrize("n_steps", [10, 50, 100])
def test_adam_dps_matches_the_peer_loop(n_steps):
    """Our AdamDPS == christianbelardi/adam-guidance's ImageSampler loop with AdamDPSGuidance (DDIM eta 1 and 0.5,
    the tuned cats SR x4 hyper-parameters s .028, b1 .14, b2 .03 and an ImageNet-like set), <= 1e-10."""
    ts = torch.arange(0, 1000, 1000 // n_steps).flip(0)  # diffusers DDIMScheduler.set_timesteps, steps_offset 0
    alpha_prod_ts = ALPHAS_CUMPROD[ts]
    alpha_prod_t_prevs = torch.cat([alpha_prod_ts[1:], torch.ones(1, dtype=F64)])
    for (problem, clip), (s, b1, b2, eta) in zip(problems(), [(0.028, 0.14, 0.03, 1.0), (0.05, 0.21, 0.06, 0.5)]):
        eps_net = DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD)
        seeds = [5, 6, 7, 8]
        x_start = optsample.initial_noise(seeds, (problem.dim,), dtype=F64)
        loss = MeasurementLoss(problem.A, problem.y, norm="l2")
        clip_range = 1.0 if clip else 1e6
        ours = adam_dps(eps_net, x_start, loss, ALPHAS_CUMPROD, ts.tolist(), scale=s, beta1=b1, beta2=b2, eta=eta,
                        clip=clip_range, seeds=seeds)
        stream = SeededNoise(x_start, seeds)
        get_guidance = lambda x0: -torch.norm(problem.y - x0 @ problem.A.T, p=2, dim=1)  # noqa: E731
        peer = PeerAdamDPS(b1, b2, s, clip_range, get_guidance, noise=lambda x: stream())
        theirs = peer_adam_sample(peer, x_start.clone(), eps_net, ts, alpha_prod_ts, alpha_prod_t_prevs, eta)
        assert (ours - theirs).abs().max() <= 1e-10


@pytest.mark.parametrize("n_steps", [10, 50])
def test_dps_is_the_guided_denoiser_with_the_dps_schedule(n_steps):
    """README relation: euler_ancestral (eta 1) on sigma_t = sqrt((1 - abar_t) / abar_t) with
    guided(rule sgd, lr = scale, lr_schedule 'dps') == published DPS (fixed_small, no clipping), EDM x = x_vp / sqrt(abar)."""
    problem, _ = problems()[0]
    timesteps = list(range(0, 1000, 1000 // n_steps))[::-1]
    abar = ALPHAS_CUMPROD[timesteps]
    sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=F64)])
    seeds = [1, 2, 3]
    x_start = optsample.initial_noise(seeds, (problem.dim,), dtype=F64)
    loss = MeasurementLoss(problem.A, problem.y, norm="l2")
    published = dps(DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD), x_start, loss, ALPHAS_CUMPROD, timesteps,
                    scale=0.3, seeds=seeds)
    model = guided(problem.prior, loss, rule="sgd", lr=0.3, lr_schedule="dps", sigmas=sigmas, eta=1.0)
    ours = optsample.sample("euler_ancestral", model, x_start / abar[0].sqrt(), sigmas, seeds=seeds)
    assert (ours - published).abs().max() <= 1e-10 * (1 + published.abs().max())
    unguided = optsample.sample("euler_ancestral", problem.prior, x_start / abar[0].sqrt(), sigmas, seeds=seeds)
    assert (unguided - published).abs().max() > 1e-2  # guidance moved the samples: the check can fail


def test_published_loops_reject_bad_input():
    problem, _ = problems()[0]
    eps_net = DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD)
    x = torch.zeros(2, 8, dtype=F64)
    loss = MeasurementLoss(problem.A, problem.y)
    with pytest.raises(ValueError, match="timesteps must be strictly decreasing"):
        dps(eps_net, x, loss, ALPHAS_CUMPROD, [0, 10], scale=0.3)
    with pytest.raises(TypeError, match="through='denoiser'"):
        adam_dps(eps_net, x, MeasurementLoss(problem.A, problem.y, through="x0"), ALPHAS_CUMPROD, [10, 0], scale=0.1)
    with pytest.raises(ValueError, match="variance must be"):
        dps(eps_net, x, loss, ALPHAS_CUMPROD, [10, 0], scale=0.3, variance="learned_range")


def vp_setup(n_steps):
    timesteps = list(range(0, 1000, 1000 // n_steps))[::-1]
    abar = ALPHAS_CUMPROD[timesteps]
    sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=F64)])
    alpha_prod_t_prevs = torch.cat([abar[1:], torch.ones(1, dtype=F64)])
    return timesteps, abar, sigmas, alpha_prod_t_prevs


@pytest.mark.parametrize("sampler,eta", [("euler_ancestral", 1.0), ("ddim", 0.5)])
def test_adam_dps_is_the_guided_denoiser_with_the_adam_dps_schedule(sampler, eta):
    """README relation: our samplers + guided(rule adam, lr_schedule 'adam_dps': Adam on the VP gradient) ==
    published AdamDPS (no clipping), 50 steps, <= 1e-10."""
    problem, _ = problems()[0]
    timesteps, abar, sigmas, _ = vp_setup(50)
    seeds = [4, 5]
    x_start = optsample.initial_noise(seeds, (problem.dim,), dtype=F64)
    loss = MeasurementLoss(problem.A, problem.y, norm="l2")
    published = adam_dps(DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD), x_start, loss, ALPHAS_CUMPROD, timesteps,
                         scale=0.05, beta1=0.2, beta2=0.3, eta=eta, seeds=seeds)
    model = guided(problem.prior, loss, rule="adam", lr=0.05, beta1=0.2, beta2=0.3, lr_schedule="adam_dps",
                   sigmas=sigmas, eta=eta)
    ours = optsample.sample(sampler, model, x_start / abar[0].sqrt(), sigmas, seeds=seeds, eta=eta)
    assert (ours - published).abs().max() <= 1e-10 * (1 + published.abs().max())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mpgd_is_the_guided_denoiser_with_the_mpgd_schedule(eta):
    """ddim + guided(Loss through x0, lr_schedule 'mpgd') == adam-guidance's MPGD loop (transcribed), 50 steps,
    <= 1e-10 (the x0 step is carried into x_next with eps kept)."""
    problem, _ = problems()[0]
    timesteps, abar, sigmas, prevs = vp_setup(50)
    seeds = [9, 10]
    x_start = optsample.initial_noise(seeds, (problem.dim,), dtype=F64)
    stream = SeededNoise(x_start, seeds)

    def get_guidance(x0):  # tasks/super_resolution.py get_guidance: grad of -||y - A x0|| w.r.t. x0
        with torch.enable_grad():
            log_probs = -torch.norm(problem.y - x0 @ problem.A.T, p=2, dim=1)
            return torch.autograd.grad(log_probs.sum(), x0)[0]

    peer = PeerMPGD(0.0, 0.0, 0.4, 1e6, get_guidance, noise=lambda x: stream())
    eps_net = DenoiserAsDiscreteEps(problem.prior, ALPHAS_CUMPROD)
    theirs = peer_adam_sample(peer, x_start.clone(), eps_net, torch.tensor(timesteps), abar, prevs, eta)
    model = guided(problem.prior, MeasurementLoss(problem.A, problem.y, through="x0"), lr=0.4, lr_schedule="mpgd",
                   sigmas=sigmas, eta=eta)
    ours = optsample.sample("ddim", model, x_start / abar[0].sqrt(), sigmas, seeds=seeds, eta=eta)
    assert (ours - theirs).abs().max() <= 1e-10 * (1 + theirs.abs().max())
