"""optsample samplers inside diffusers pipelines (optsample.integrations.diffusers.scheduler).

Every pipeline result is compared with optsample's own loop (``optsample.samplers.sample``) on the same
network, wrapped by ``DiscreteVPDenoiser``: the scheduler must reproduce it, evaluation for evaluation.
The Stable Diffusion / DDPM pipelines are tiny random models built from configs (no network).
On an accelerator: ``OPTSAMPLE_TEST_DEVICE=cuda pytest tests/test_as_scheduler.py`` runs the pipeline
tests there (TF32 off, so both sides do the same float32 arithmetic).
"""

from __future__ import annotations

import gc
import json
import math
import os
import threading
import weakref

import pytest
import torch
from diffusers import (
    UniPCMultistepScheduler,
    AutoencoderKL, DDPMPipeline, DDPMScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
    UNet2DConditionModel, UNet2DModel,
)
from helpers import SCHEDULER_KWARGS, run_diffusers, vp_models
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from optsample import schedules
from optsample.integrations.diffusers.scheduler import OptSampleScheduler, as_scheduler
from optsample.models import DiscreteVPDenoiser
from optsample.samplers import NonFiniteError, UnknownSamplerError, available, initial_noise, register, registry, sample

# A Stable Diffusion v1 style scheduler config (PNDM, steps_offset 1) with leading spacing: from_config must read it.
SD_SCHEDULER = PNDMScheduler(**SCHEDULER_KWARGS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                             timestep_spacing="leading")
ALPHAS_CUMPROD = DDPMScheduler(**SCHEDULER_KWARGS).alphas_cumprod  # diffusers' own, not ours
PROMPTS = ["a red cat", "a blue dog"]
DEVICE = torch.device(os.environ.get("OPTSAMPLE_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 would round the pipeline's and the reference's (rounding-different) inputs apart on CUDA."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "optsample-sampler" and t.is_alive()]


# ------------------------------------------------------------------------------ every sampler, analytic model


@pytest.mark.parametrize("scaling", ["ve", "vp"])
def test_every_registered_sampler_matches_its_own_loop(scaling):
    """The diffusers loop over an exact eps network (a Gaussian mixture) equals sample(), NFE = len(timesteps)."""
    n_steps = 6
    sigmas = schedules.discrete(ALPHAS_CUMPROD, n_steps)
    eps_net, denoiser = vp_models(ALPHAS_CUMPROD)
    noise = initial_noise([1, 2, 3], (8,))
    for name in available():
        scheduler = as_scheduler(name, SCHEDULER_KWARGS, latent_scaling=scaling)
        scheduler.set_timesteps(n_steps)
        out = run_diffusers(scheduler, eps_net, noise, generator=torch.Generator().manual_seed(5))
        ref, info = sample(name, denoiser, noise * float(sigmas[0]), sigmas, generator=torch.Generator().manual_seed(5),
                           return_info=True)
        assert len(scheduler.timesteps) == info.nfe, name
        assert torch.allclose(scheduler.schedule_sigmas, sigmas), name
        if scaling == "ve":  # the same float operations in the same order: identical bits
            assert torch.equal(out, ref), (name, (out - ref).abs().max())
        else:  # latents carried as x / sqrt(sigma^2 + 1) and back: float32 rounding only
            assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), (name, (out - ref).abs().max())
    assert not _workers()


@pytest.mark.parametrize("n_steps", [10, 20])
def test_unipc_order_3_scheduler_matches_diffusers_unipc(n_steps):
    """as_scheduler("unipc", order=3) on UniPC's own sigmas equals diffusers' UniPCMultistepScheduler (issue 9:
    the lower_order_final rule; at 20 steps it was 1.07e-2 off, fixed in samplers/multistep.py)."""
    theirs_scheduler = UniPCMultistepScheduler(solver_order=3, **SCHEDULER_KWARGS)
    theirs_scheduler.set_timesteps(n_steps)
    ours_scheduler = as_scheduler("unipc", SCHEDULER_KWARGS, order=3)
    ours_scheduler.set_timesteps(sigmas=theirs_scheduler.sigmas[:-1].tolist())
    eps_net, _ = vp_models(ALPHAS_CUMPROD)
    noise = initial_noise(range(16), (8,))
    theirs = run_diffusers(theirs_scheduler, eps_net, noise)
    # the same starting latents: UniPC's init_noise_sigma is 1, ours sigma_0 / sqrt(sigma_0^2 + 1)
    ours = run_diffusers(ours_scheduler, eps_net, noise * (theirs_scheduler.init_noise_sigma / ours_scheduler.init_noise_sigma))
    assert len(ours_scheduler.timesteps) == n_steps
    assert (ours - theirs).abs().max().item() <= 1e-5  # float32 rounding, as tests/test_parity_multistep.py


def test_timesteps_are_the_fractional_training_timesteps_of_the_evaluation_sigmas():
    scheduler = as_scheduler("heun", SCHEDULER_KWARGS)
    scheduler.set_timesteps(4)
    sigmas = schedules.discrete(ALPHAS_CUMPROD, 4)
    # heun: each step evaluates at sigma_i and sigma_{i+1}; the last step (to 0) once (Karras et al. 2022, Alg. 1)
    expected = [sigmas[0], sigmas[1], sigmas[1], sigmas[2], sigmas[2], sigmas[3], sigmas[3]]
    assert torch.allclose(scheduler.sigmas[:-1].double(), torch.stack(expected), rtol=1e-6)
    # the linspace spacing's timesteps 999, 666, 333, 0 (diffusers EulerDiscreteScheduler)
    assert torch.allclose(scheduler.timesteps, torch.tensor([999, 666, 666, 333, 333, 0, 0.0]), atol=2e-3)
    assert scheduler.order == 2 and scheduler.sigmas[-1] == 0
    assert scheduler.init_noise_sigma == pytest.approx(float(sigmas[0]) / math.sqrt(float(sigmas[0]) ** 2 + 1))

    scheduler.set_timesteps(sigmas=[10.0, 3.0, 1.0])  # a pipeline's custom sigmas= (0 appended)
    assert scheduler.schedule_sigmas.tolist() == [10.0, 3.0, 1.0, 0.0] and len(scheduler.timesteps) == 5
    scheduler.set_timesteps(timesteps=[999, 500])  # custom timesteps=: their training sigmas
    assert torch.allclose(scheduler.schedule_sigmas[:2], schedules.discrete(ALPHAS_CUMPROD, 1000)[[0, 499]], rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one of num_inference_steps, sigmas, timesteps"):
        scheduler.set_timesteps(4, sigmas=[1.0])


def test_final_sigmas_type_reaches_every_schedule():
    """AYS sd15 with one step is [14.615, 0]; final_sigmas_type="sigma_min" inserts its sigma_min 0.152."""
    scheduler = as_scheduler("euler", SCHEDULER_KWARGS, schedule="ays", final_sigmas_type="sigma_min")
    scheduler.set_timesteps(1)
    assert scheduler.schedule_sigmas.tolist() == [14.615, 0.152, 0.0]


# ------------------------------------------------------------------------------ tiny Stable Diffusion


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    """Tiny random UNet / VAE / CLIP text encoder and a character-level CLIP tokenizer written to disk."""
    path = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(set("".join(PROMPTS).replace(" ", ""))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=12)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    vae, text_encoder, unet = vae.to(DEVICE), text_encoder.to(DEVICE), unet.to(DEVICE)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def _cfg_denoiser(pipe, guidance_scale):
    """optsample's side: classifier-free guided eps (Ho & Salimans 2022, eq. 6) under DiscreteVPDenoiser."""
    cond, uncond = pipe.encode_prompt(PROMPTS, DEVICE, 1, True)
    embeds = torch.cat([uncond, cond])

    def eps(x_t, t):
        out = pipe.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=embeds).sample
        out_uncond, out_text = out.chunk(2)
        return out_uncond + guidance_scale * (out_text - out_uncond)

    return DiscreteVPDenoiser(eps, ALPHAS_CUMPROD)


CASES = [  # (sampler, as_scheduler options): classic, multi-evaluation, multistep, stochastic, update rule
    ("euler", {}),
    ("heun", {"use_karras_sigmas": True}),
    ("dpmpp_2m", {"latent_scaling": "ve"}),
    ("euler_ancestral", {"eta": 1.0}),
    ("nesterov", {"beta": 0.5}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[c[0] for c in CASES])
@torch.no_grad()
def test_stable_diffusion_pipeline_equals_optsample_loop(sd_parts, name, options):
    pipe = StableDiffusionPipeline(**sd_parts, scheduler=SD_SCHEDULER)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = as_scheduler(name, pipe.scheduler.config, **options)
    n_steps, guidance = 5, 7.5
    noise = initial_noise([10, 11], (4, 8, 8), device=DEVICE)
    latents = pipe(PROMPTS, num_inference_steps=n_steps, guidance_scale=guidance, height=16, width=16, latents=noise,
                   generator=torch.Generator().manual_seed(3), output_type="latent").images

    if options.get("use_karras_sigmas"):
        train = schedules.discrete(ALPHAS_CUMPROD, 1000)  # every training sigma: the range diffusers' karras uses
        sigmas = schedules.karras(n_steps, float(train[-2]), float(train[0]))
    else:  # SD's leading spacing with steps_offset 1 (from the PNDM config)
        sigmas = schedules.discrete(ALPHAS_CUMPROD, n_steps, "leading", 1)
    hparams = {k: v for k, v in options.items() if k not in ("use_karras_sigmas", "latent_scaling")}
    ref, info = sample(name, _cfg_denoiser(pipe, guidance), noise * float(sigmas[0]), sigmas,
                       generator=torch.Generator().manual_seed(3), return_info=True, **hparams)
    assert len(pipe.scheduler.timesteps) == info.nfe
    assert (latents - ref).abs().max() <= 1e-4, (latents - ref).abs().max()
    assert ref.abs().max() > 0.1  # a real sample, not a collapsed one
    assert not _workers()


def test_from_config_keeps_the_training_schedule_and_takes_sampler_kwargs():
    scheduler = OptSampleScheduler.from_config(SD_SCHEDULER.config, sampler="dpmpp_2m_sde", sampler_kwargs={"eta": 0.5})
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.timestep_spacing == "leading"
    assert torch.equal(scheduler.alphas_cumprod, ALPHAS_CUMPROD)
    assert scheduler.config.sampler_kwargs == {"eta": 0.5}
    round_trip = OptSampleScheduler.from_config(scheduler.config)
    assert round_trip.config.sampler == "dpmpp_2m_sde" and round_trip.config.sampler_kwargs == {"eta": 0.5}


@torch.no_grad()
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_img2img_strength_half_equals_loop_started_midway(sd_parts, name):
    pipe = StableDiffusionImg2ImgPipeline(**sd_parts, scheduler=SD_SCHEDULER)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = as_scheduler(name, pipe.scheduler.config)
    n_steps, guidance = 6, 5.0
    init = initial_noise([20, 21], (4, 8, 8), device=DEVICE)  # 4-channel images are taken as latents (no VAE encode)
    latents = pipe(PROMPTS, image=init, strength=0.5, num_inference_steps=n_steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(4), output_type="latent").images

    t_start = n_steps - int(n_steps * 0.5)  # diffusers' img2img get_timesteps
    sigmas = schedules.discrete(ALPHAS_CUMPROD, n_steps, "leading", 1)[t_start:]
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)  # the pipeline's first draw
    ref, info = sample(name, _cfg_denoiser(pipe, guidance), init + noise * float(sigmas[0]), sigmas, return_info=True)
    assert len(pipe.scheduler.timesteps) - pipe.scheduler.begin_index == info.nfe
    assert (latents - ref).abs().max() <= 1e-4, (latents - ref).abs().max()


@torch.no_grad()
def test_ddpm_pipeline_equals_optsample_loop():
    """DDPMPipeline uses neither scale_model_input nor init_noise_sigma: the 'vp' latents still fit."""
    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4,
    ).eval().to(DEVICE)
    ddpm_config = DDPMScheduler(num_train_timesteps=1000).config
    pipe = DDPMPipeline(unet=unet, scheduler=as_scheduler("dpm_2", ddpm_config)).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np").images

    alphas_cumprod = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    sigmas = schedules.discrete(alphas_cumprod, 4)
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).to(DEVICE)  # the pipeline's x_T
    denoiser = DiscreteVPDenoiser(lambda x_t, t: unet(x_t, t).sample, alphas_cumprod)
    ref = sample("dpm_2", denoiser, noise * math.sqrt(float(sigmas[0]) ** 2 + 1), sigmas)
    ref_images = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # DDPMPipeline's post-processing
    assert len(pipe.scheduler.timesteps) == 7
    assert abs(images - ref_images).max() <= 1e-4, abs(images - ref_images).max()


# ------------------------------------------------------------------------------ errors and threads


def test_unknown_sampler_and_bad_hyperparameters_give_the_registry_errors():
    with pytest.raises(UnknownSamplerError) as caught:
        as_scheduler("eulr", SCHEDULER_KWARGS)
    with pytest.raises(UnknownSamplerError) as expected:
        registry.get("eulr")
    assert str(caught.value) == str(expected.value) and "did you mean ['euler'" in str(caught.value)
    with pytest.raises(TypeError, match="sampler 'heun' has no hyper-parameter"):
        as_scheduler("heun", SCHEDULER_KWARGS, beta=0.9)
    with pytest.raises(ValueError, match="'eta' = -1.0 is outside"):
        OptSampleScheduler.from_config(SD_SCHEDULER.config, sampler="euler_ancestral", sampler_kwargs={"eta": -1.0})
    with pytest.raises(ValueError, match="latent_scaling 'vq'"):
        as_scheduler("euler", latent_scaling="vq")


def test_misspelt_scheduler_option_is_named_as_one():
    # the old message: "sampler 'dpmpp_2m' has no hyper-parameter(s) ['use_karas_sigmas']; it takes [...]"
    message = "as_scheduler: unknown scheduler option 'use_karas_sigmas'; did you mean 'use_karras_sigmas'?"
    with pytest.raises(TypeError) as caught:
        as_scheduler("dpmpp_2m", SCHEDULER_KWARGS, use_karas_sigmas=True)
    assert str(caught.value) == message
    # a sampler hyper-parameter that looks like no scheduler option still gets the registry's error
    with pytest.raises(TypeError, match=r"sampler 'heun' has no hyper-parameter\(s\) \['beta'\]"):
        as_scheduler("heun", SCHEDULER_KWARGS, beta=0.9)


def test_samplers_the_pipeline_cannot_follow_fail_clearly():
    with pytest.raises(ValueError, match="changes x before its first model evaluation"):
        as_scheduler("euler", SCHEDULER_KWARGS, s_churn=10.0).set_timesteps(5)  # churn at sigma_max
    scheduler = as_scheduler("nesterov", SCHEDULER_KWARGS)  # look-ahead sigmas depend on the run's history
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="cannot start at evaluation 2 of 5"):
        scheduler.set_begin_index(2)

    @register("test_data_dependent_sigma")
    def data_dependent(model, x, sigmas, *, callback, noise_sampler):
        for i, sigma, sigma_next in zip(range(len(sigmas) - 1), sigmas.tolist(), sigmas.tolist()[1:]):
            sigma_eval = sigma * (1.5 if float(x.abs().mean()) > 1 else 1.0) if i else sigma
            x = x + (sigma_next - sigma) * (x - model(x, sigma_eval)) / sigma_eval
            callback({"i": i})
        return x

    try:
        with pytest.raises(ValueError, match="calls the model at data-dependent sigmas"):
            as_scheduler("test_data_dependent_sigma", SCHEDULER_KWARGS).set_timesteps(4)
    finally:
        registry._REGISTRY.pop("test_data_dependent_sigma")


def test_sampler_exceptions_surface_and_threads_never_leak():
    baseline = len(_workers())
    scheduler = as_scheduler("heun", SCHEDULER_KWARGS)
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, device=DEVICE) * scheduler.init_noise_sigma
    with pytest.raises(NonFiniteError, match="non-finite values at step 0"):
        # on the CPU the first step raises; on an accelerator the check is deferred (no device sync per
        # evaluation) and the error, still naming step 0, surfaces when the run ends
        for t in scheduler.timesteps:
            x = scheduler.step(torch.full_like(x, math.nan), t, x).prev_sample
    assert len(_workers()) == baseline

    scheduler.set_timesteps(4)
    x = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x).prev_sample
    assert len(_workers()) == baseline + 1  # suspended at evaluation 1
    scheduler.set_timesteps(4)  # a new run cancels the old one
    assert len(_workers()) == baseline
    x = torch.randn(2, 3, device=DEVICE) * scheduler.init_noise_sigma
    out = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)  # kept: the run stays suspended
    assert len(_workers()) == baseline + 1 and out.prev_sample.shape == x.shape
    del scheduler
    gc.collect()  # garbage collection cancels a suspended run
    assert len(_workers()) == baseline


class _Stop(Exception):
    """Raised by a callback_on_step_end to interrupt a pipeline call."""


@torch.no_grad()
def test_an_interrupted_pipeline_call_releases_its_worker_at_once(sd_parts):
    """Three StableDiffusionPipeline calls stopped at step 2 by callback_on_step_end: no worker thread is left
    after any of them (before: one per interrupted call, alive until the next set_timesteps), the run's
    latents are freed, and the next full call equals a full call made before the interruptions, bit for bit."""
    pipe = StableDiffusionPipeline(**sd_parts, scheduler=SD_SCHEDULER)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = as_scheduler("dpmpp_2m", pipe.scheduler.config)
    noise = initial_noise([10, 11], (4, 8, 8), device=DEVICE)
    run = dict(num_inference_steps=5, height=16, width=16, latents=noise, output_type="latent")
    baseline = len(_workers())
    full = pipe(PROMPTS, **run).images
    handed_out = []

    def stop_at_step_2(pipeline, i, t, tensors):
        handed_out.append(weakref.ref(tensors["latents"]))
        if i == 2:
            raise _Stop
        return tensors

    for _ in range(3):
        with pytest.raises(_Stop):
            pipe(PROMPTS, **run, callback_on_step_end=stop_at_step_2)
        assert len(_workers()) == baseline
        assert handed_out[-1]() is None and pipe.scheduler._pending is None  # nothing of that run is kept
    assert torch.equal(pipe(PROMPTS, **run).images, full)
    assert len(_workers()) == baseline


def test_latents_copied_after_release_are_refused():
    """A copy of prev_sample whose original was released cannot be followed: ValueError, worker gone."""
    baseline = len(_workers())
    scheduler = as_scheduler("heun", SCHEDULER_KWARGS)
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, device=DEVICE) * scheduler.init_noise_sigma
    x = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x).prev_sample.clone()  # the original is released
    assert len(_workers()) == baseline
    with pytest.raises(ValueError, match="are not the prev_sample the scheduler returned"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[1], x)
    scheduler.set_timesteps(4)  # a copy made while the original is still held is followed, as before
    x = torch.randn(2, 3, device=DEVICE) * scheduler.init_noise_sigma
    out = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)
    out = scheduler.step(torch.zeros_like(x), scheduler.timesteps[1], out.prev_sample.clone())
    assert len(_workers()) == baseline + 1 and out.prev_sample.shape == x.shape
    scheduler.set_timesteps(4)
    assert len(_workers()) == baseline


def test_step_noise_seeds_follow_optsample_sample():
    """One generator: seeds base + k exactly as sample(generator=...); a list: one seed per sample; else noise_seed."""
    from optsample.integrations.diffusers.scheduler import seeds_for
    from optsample.samplers.core import seeds_from_generator

    assert seeds_for(3, torch.Generator().manual_seed(7)) == seeds_from_generator(torch.Generator().manual_seed(7), 3)
    per_sample = seeds_for(2, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert per_sample == [seeds_from_generator(torch.Generator().manual_seed(s), 1)[0] for s in (1, 2)]
    assert seeds_for(2, None, noise_seed=40) == [40, 41] and seeds_for(2) is None
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        seeds_for(2, [torch.Generator()] * 3)
