"""diffusers adapters against the diffusers pipelines themselves, on tiny random models built here.

The same UNet / VAE / CLIP text encoder / tokenizer (random weights, written by this file: no network) run
through optsample's samplers via the adapters and through DDPMPipeline / StableDiffusionPipeline /
StableDiffusionImg2ImgPipeline with the matching scheduler. The start noise is the pipeline's: our VE state
is x = x_VP * sqrt(sigma^2 + 1) (optsample/models/wrappers.py), and Euler's x_T = noise * init_noise_sigma.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline, UNet2DModel,
)

import optsample
from optsample.integrations.diffusers.adapters import (
    StableDiffusionDenoiser, img2img_sigmas, load_stable_diffusion, load_unet_denoiser, unet_denoiser,
)
from optsample.integrations.diffusers.prompts import coco_captions, load_prompts, prompt_conditioning

from helpers import SCHEDULER_KWARGS, cli
from tiny_pipeline import save_tiny_clip, tiny_stable_diffusion

TOL = 1e-4  # max abs diff, float32
N_STEPS = 5
PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]  # words of TINY_WORDS


def tiny_sd_components(tmp_path, scheduler) -> dict:
    return tiny_stable_diffusion(tmp_path / "tokenizer_files", scheduler)


def ddim():
    return DDIMScheduler(**SCHEDULER_KWARGS, clip_sample=False, set_alpha_to_one=True, steps_offset=1)


def euler():
    return EulerDiscreteScheduler(**SCHEDULER_KWARGS, steps_offset=1)


def dpm_solver():
    return DPMSolverMultistepScheduler(**SCHEDULER_KWARGS, solver_order=2, algorithm_type="dpmsolver++",
                                       final_sigmas_type="zero", lower_order_final=True, steps_offset=1)


SCHEDULERS = {"ddim": ddim, "euler": euler, "dpmpp_2m": dpm_solver}


def scheduler_sigmas(scheduler) -> torch.Tensor:
    """The sigmas a diffusers scheduler steps through after set_timesteps (ending in 0)."""
    if isinstance(scheduler, DDIMScheduler):  # VP steps at integer timesteps; final alpha_cumprod 1 -> sigma 0
        abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
        return torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()
    return scheduler.sigmas.float()


def start_state(scheduler, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Our VE start from the pipeline's ``noise * init_noise_sigma``: Euler is VE already, DDIM / DPM are VP."""
    if isinstance(scheduler, EulerDiscreteScheduler):
        return noise * scheduler.init_noise_sigma
    return noise * (sigmas[0] ** 2 + 1).sqrt()


def latent_noise(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def to_np(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> the pipelines' np output: [0, 1] NHWC."""
    return ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------- Stable Diffusion


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m"])
def test_text2image_matches_stable_diffusion_pipeline(tmp_path, name):
    """Guided (scale 7.5) sampling through the adapter = StableDiffusionPipeline (DDIM: decoded images too)."""
    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_path, SCHEDULERS[name]()))
    noise = latent_noise()
    output_type = "np" if name == "ddim" else "latent"
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=N_STEPS, guidance_scale=7.5, latents=noise.clone(),
                      output_type=output_type).images
    denoiser = StableDiffusionDenoiser.from_pipeline(pipe, guidance_scale=7.5)
    sigmas = scheduler_sigmas(pipe.scheduler)
    with torch.no_grad():
        ours, info = optsample.sample(name, denoiser, start_state(pipe.scheduler, noise, sigmas), sigmas,
                                      extra_args={"prompts": PROMPTS}, return_info=True)
        if output_type == "np":
            ours = to_np(denoiser.decode(ours))
    diff = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
    assert diff <= TOL, diff
    assert info.nfe == N_STEPS
    assert float(np.abs(np.asarray(theirs)).max()) > 0.05  # not a trivially small output


def test_guidance_rescale_matches_pipeline(tmp_path):
    """CFG scale 5 with guidance_rescale 0.7 (Lin et al. 2024, eq. 15-16) and a negative prompt."""
    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_path, euler()))
    noise = latent_noise(seed=1)
    kwargs = dict(guidance_scale=5.0, guidance_rescale=0.7)
    negative = ["a dog", "the grass"]
    with torch.no_grad():
        theirs = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=N_STEPS, latents=noise.clone(),
                      output_type="latent", **kwargs).images
        plain = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=N_STEPS, latents=noise.clone(),
                     output_type="latent", guidance_scale=5.0).images
    denoiser = StableDiffusionDenoiser.from_pipeline(pipe, **kwargs)
    sigmas = scheduler_sigmas(pipe.scheduler)
    with torch.no_grad():
        ours = optsample.sample("euler", denoiser, start_state(pipe.scheduler, noise, sigmas), sigmas,
                                extra_args={"prompts": PROMPTS, "negative_prompts": negative})
    assert float((ours - theirs).abs().max()) <= TOL
    assert float((plain - theirs).abs().max()) > 100 * TOL  # the rescale matters at this size


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_img2img_matches_pipeline(tmp_path, name):
    """Same strength and step count: encode (posterior sample), noise to the kept start sigma, sample."""
    strength = 0.6  # 5 steps -> the last int(5 * 0.6) = 3
    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd_components(tmp_path, SCHEDULERS[name]()))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # [0, 1], as the pipeline takes
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=images, strength=strength, num_inference_steps=N_STEPS, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(9), output_type="latent").images
    denoiser = StableDiffusionDenoiser.from_pipeline(pipe, guidance_scale=3.0)
    full = scheduler_sigmas(pipe.scheduler)
    with torch.no_grad():
        x_start, sigmas = denoiser.img2img_start(images * 2 - 1, full, strength, generator=torch.Generator().manual_seed(9))
        ours, info = optsample.sample(name, denoiser, x_start, sigmas, extra_args={"prompts": PROMPTS}, return_info=True)
    assert len(sigmas) == 4 and info.nfe == 3
    assert float((ours - theirs).abs().max()) <= TOL


def test_img2img_sigmas_and_errors(tmp_path):
    sigmas = torch.linspace(10, 0, 11)
    assert torch.equal(img2img_sigmas(sigmas, 0.35), sigmas[7:])  # int(10 * 0.35) = 3 steps kept
    assert torch.equal(img2img_sigmas(sigmas, 1.0), sigmas)
    with pytest.raises(ValueError, match="strength 0.05 with 10 steps keeps no step"):
        img2img_sigmas(sigmas, 0.05)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\], got 1.5"):
        img2img_sigmas(sigmas, 1.5)
    components = tiny_sd_components(tmp_path, ddim())
    pipe = StableDiffusionPipeline(**components)
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\], got 2"):
        StableDiffusionDenoiser.from_pipeline(pipe, guidance_rescale=2.0)
    denoiser = StableDiffusionDenoiser.from_pipeline(pipe)
    with pytest.raises(ValueError, match="batch of 3 latents but 2 prompts"):
        denoiser(torch.zeros(3, 4, 8, 8), torch.ones(3), prompts=PROMPTS)
    with pytest.raises(ValueError, match="needs prompts"):
        denoiser(torch.zeros(2, 4, 8, 8), torch.ones(2))


def test_half_precision_keeps_the_schedule_float64(tmp_path):
    """.to(float16) casts the networks, never the sigma <-> t tables."""
    denoiser = StableDiffusionDenoiser.from_pipeline(StableDiffusionPipeline(**tiny_sd_components(tmp_path, ddim())))
    sigma = torch.tensor([14.6, 3.3, 0.05])
    t_before = denoiser.sigma_to_t(sigma)
    denoiser.to(torch.float16)
    assert next(denoiser.net.unet.parameters()).dtype == torch.float16
    assert denoiser.log_sigmas.dtype == torch.float64
    assert torch.equal(denoiser.sigma_to_t(sigma), t_before)


def test_missing_model_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download no-such-org/no-such-model.*HF_HUB_OFFLINE"):
        load_stable_diffusion("no-such-org/no-such-model")
    with pytest.raises(FileNotFoundError, match=r"model directory './missing/dir' does not exist"):
        load_unet_denoiser("./missing/dir")


# ----------------------------------------------------------------------------------- UNet2DModel


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_unet_matches_ddpm_pipeline(name):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    ).eval()
    scheduler = SCHEDULERS[name]()
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    with torch.no_grad():
        theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(4), num_inference_steps=N_STEPS, output_type="np").images
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))  # DDPMPipeline's first draw
    denoiser = unet_denoiser(unet, scheduler)
    sigmas = scheduler_sigmas(scheduler)
    with torch.no_grad():
        ours = to_np(denoiser.decode(optsample.sample(name, denoiser, start_state(scheduler, noise, sigmas), sigmas)))
    assert float(np.abs(ours - theirs).max()) <= TOL
    assert 0.05 < float(theirs.std())


# ---------------------------------------------------------------------------------------- prompts


def test_prompt_sets(tmp_path):
    coco = {"annotations": [
        {"image_id": 9, "id": 30, "caption": "A dog  on grass."}, {"image_id": 2, "id": 12, "caption": "second"},
        {"image_id": 2, "id": 11, "caption": "first caption"}, {"image_id": 9, "id": 31, "caption": "later"},
    ]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    assert coco_captions(tmp_path / "captions_val2017.json") == ["first caption", "A dog on grass."]
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert load_prompts(str(tmp_path / "p.txt")) == ["one", "two"]
    assert len(load_prompts("builtin")) >= 8
    with pytest.raises(FileNotFoundError, match="prompt file 'nope.txt' does not exist"):
        load_prompts("nope.txt")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO captions file"):
        load_prompts(str(tmp_path / "bad.json"))
    conditioning = prompt_conditioning(["p0", "p1", "p2"])
    everything = conditioning(range(8))["prompts"]
    assert everything == ["p0", "p1", "p2", "p0", "p1", "p2", "p0", "p1"]
    assert conditioning([5, 6])["prompts"] == everything[5:7]  # sample k's prompt depends on k alone


# ------------------------------------------------------------------------- the runner, end to end



def test_runner_scores_a_saved_pipeline(tmp_path, monkeypatch):
    """optsample-run model=sd model.path=<save_pretrained dir>: latents decoded by the VAE, then FID (avgpool4
    features, reference images from a .pt file) and CLIP score (a tiny CLIP from a directory) against the
    per-sample prompts; the row equals the same pieces composed by hand in one batch."""
    from optsample import metrics, schedules
    from optsample.runner import results
    from optsample.samplers import initial_noise

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTSAMPLE_CACHE", str(tmp_path / "cache"))
    components = tiny_sd_components(tmp_path, ddim())
    StableDiffusionPipeline(**components).save_pretrained(tmp_path / "tiny_sd")
    save_tiny_clip(tmp_path / "clip", components["tokenizer"])
    reference = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.save(reference, tmp_path / "reference.pt")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS + ["a red dog"]))
    n, steps = 6, 4
    code = cli(
        "model=sd", f"model.path={tmp_path / 'tiny_sd'}", f"model.prompts={tmp_path / 'prompts.txt'}",
        f"model.reference={tmp_path / 'reference.pt'}", "model.feature_net=avgpool4", f"model.clip_model={tmp_path / 'clip'}",
        "model.guidance_scale=2.0", "sampler=ddim", "schedule=discrete", f"steps={steps}", f"n_samples={n}",
        "batch_size=4", "metric=text2image", "logger=none", "progress=false", "device=cpu", "results_dir=runs",
    )
    assert code == 0
    (row,) = results.read_rows(tmp_path / "runs")
    assert row["nfe"] == steps

    denoiser = load_stable_diffusion(str(tmp_path / "tiny_sd"), guidance_scale=2.0)
    sigmas = schedules.get("discrete", steps, alphas_cumprod=denoiser.alphas_cumprod)
    prompts = [(PROMPTS + ["a red dog"])[k % 3] for k in range(n)]
    with torch.inference_mode():
        latents = optsample.sample("ddim", denoiser, initial_noise(range(n), (4, 8, 8)) * sigmas[0], sigmas,
                                   extra_args={"prompts": prompts})
        images = denoiser.decode(latents)
    context = metrics.MetricContext(None, prompts=prompts, reference=reference, feature_net="avgpool4",
                                    clip_model=str(tmp_path / "clip"), cache_dir=str(tmp_path / "cache2"))
    expected = metrics.compute(["fid", "clip_score"], images, context)
    assert images.shape == (n, 3, 16, 16)
    assert row["metric.fid"] == pytest.approx(expected["fid"], rel=1e-5, abs=1e-6)
    assert row["metric.clip_score"] == pytest.approx(expected["clip_score"], rel=1e-5)
    assert row["metric.fid"] > 0 and row["metric.clip_score"] > 0
