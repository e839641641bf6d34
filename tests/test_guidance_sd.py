"""Stable Diffusion loss guidance: DecodedLoss through the VAE decoder, the fast.ai deep dive's colour loss and
loop, task=sd_colour in the runner, and the loggers' task picture with its caption.

Tiny random Stable Diffusion built from configs (tests/tiny_pipeline.py: latents 4x8x8, images 16x16), no network.
"""

from __future__ import annotations

import copy
import sys
import types

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

import optsample
from optsample import schedules
from optsample.guidance import DecodedLoss, guided
from optsample.guidance.objectives import blue_loss, colour_loss
from optsample.integrations.diffusers import guidance_task as sd_guidance
from optsample.integrations.diffusers.adapters import StableDiffusionDenoiser

from helpers import SCHEDULER_KWARGS, cli
from tiny_pipeline import save_tiny_clip, tiny_stable_diffusion

PROMPTS = ["a photo of a red cat", "a blue dog on the grass"]  # words of tiny_pipeline.TINY_WORDS


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    components = tiny_stable_diffusion(tmp_path_factory.mktemp("tokenizer"), EulerDiscreteScheduler(**SCHEDULER_KWARGS))
    return StableDiffusionPipeline(**components)


def sd_model(pipe, dtype=torch.float32, guidance_scale=2.0) -> StableDiffusionDenoiser:
    """The adapter on the fixture's pipeline (shared modules); another dtype gets its own copy of them."""
    model = StableDiffusionDenoiser.from_pipeline(pipe, guidance_scale=guidance_scale)
    return copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model


def test_colour_loss_closed_form():
    """A constant image with blue = 0.2 in [-1, 1] is 0.6 in [0, 1]: |0.6 - 0.9| = 0.3 per sample; red 1.0 -> 0.1."""
    images = torch.stack([torch.tensor([1.0, 0.0, 0.2])[:, None, None].expand(3, 4, 5)] * 2)
    assert torch.allclose(blue_loss(images), torch.tensor([0.3, 0.3]), atol=1e-7)
    assert torch.allclose(colour_loss(images, channel=0, target=0.9), torch.tensor([0.1, 0.1]), atol=1e-7)


@pytest.mark.parametrize("through", ["x0", "denoiser"])
def test_decoded_loss_gradient_matches_finite_differences(pipe, through):
    """float64, CFG scale 2, two prompts: per sample k, the directional derivative of L_k along a random v by central
    differences (h = 1e-5) equals -<g_k, v_k> to 1e-6 relative, where L_k(x) = blue_loss(vae_decode(x0)) with x0 =
    D(x) held fixed (through="x0": the derivative in x0) or x0 = D(x) (through="denoiser"). Sample k's loss depends
    on x_k alone, so this also checks the gradient is per sample."""
    model = sd_model(pipe, torch.float64)
    loss = DecodedLoss(model.vae_decode, blue_loss, through=through)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 3.0
    sigma = torch.full((2,), 3.0, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    extra = {"prompts": PROMPTS}
    denoised, grad, value = loss.gradient(model, x, sigma, **extra)
    assert grad.shape == x.shape and value.shape == (2,) and grad.grad_fn is None and value.grad_fn is None

    def losses(shift):
        with torch.no_grad():
            x0 = denoised + shift if through == "x0" else model(x + shift, sigma, **extra)
            return blue_loss(model.vae_decode(x0))

    h = 1e-5
    numeric = (losses(h * v) - losses(-h * v)) / (2 * h)
    analytic = -(grad * v).flatten(1).sum(1)
    assert torch.allclose(numeric, analytic, rtol=1e-6, atol=1e-10), (numeric, analytic)
    assert torch.allclose(losses(0.0), value, rtol=1e-12)
    assert float(analytic.abs().min()) > 1e-4  # not a vanishing gradient


def deep_dive_loop(pipe, latents, prompt, steps, scale, guidance_scale):
    """The fast.ai Stable Diffusion deep dive's "Guidance" loop (fastai/diffusion-nbs, `Stable Diffusion Deep
    Dive.ipynb`), literally, with two changes said here: EulerDiscreteScheduler instead of LMSDiscreteScheduler
    (order 1, where a shift of x is exactly a shift of D) and the guidance at every step (theirs: ``i % 5 == 0``)."""
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    text_input = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    with torch.no_grad():
        text_embeddings = pipe.text_encoder(text_input.input_ids)[0]
    uncond_input = pipe.tokenizer([""], padding="max_length", max_length=text_input.input_ids.shape[-1],
                                  return_tensors="pt")
    with torch.no_grad():
        uncond_embeddings = pipe.text_encoder(uncond_input.input_ids)[0]
    text_embeddings = torch.cat([uncond_embeddings, text_embeddings])

    def blue_loss_theirs(images):
        error = torch.abs(images[:, 2] - 0.9).mean()
        return error

    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        latent_model_input = torch.cat([latents] * 2)
        sigma = scheduler.sigmas[i]
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        with torch.no_grad():
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings)["sample"]
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = latents.detach().requires_grad_()
        latents_x0 = latents - sigma * noise_pred
        denoised_images = vae.decode((1 / 0.18215) * latents_x0).sample / 2 + 0.5  # range (0, 1)
        loss = blue_loss_theirs(denoised_images) * scale
        cond_grad = torch.autograd.grad(loss, latents)[0]
        latents = latents.detach() - cond_grad * sigma**2
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return latents.detach()


def test_fastai_schedule_is_the_deep_dive_loop(pipe):
    """``guided(sd, DecodedLoss(vae_decode, blue_loss, through="x0"), lr=200, lr_schedule="fastai")`` + our euler
    == the deep dive's loop above (CFG scale 8, 6 steps, loss scale 200), to 1e-4 (float32, as the adapter's
    pipeline parity tests); unguided the two differ by more than 10x that."""
    steps, scale, cfg_scale = 6, 200.0, 8.0
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = deep_dive_loop(pipe, noise, PROMPTS[0], steps, scale, cfg_scale)
    model = sd_model(pipe, guidance_scale=cfg_scale)
    sigmas = pipe.scheduler.sigmas.float()  # set_timesteps(steps) ran in the loop: the same schedule
    assert len(sigmas) == steps + 1 and float(sigmas[-1]) == 0
    x = noise * pipe.scheduler.init_noise_sigma
    fastai = guided(model, DecodedLoss(model.vae_decode, blue_loss, through="x0"), lr=scale, lr_schedule="fastai",
                    sigmas=sigmas, eta=0.0)  # eta 0: the euler step (the schedule's default eta is 1, ancestral)
    with torch.no_grad():
        ours = optsample.sample("euler", fastai, x, sigmas, extra_args={"prompts": PROMPTS[:1]})
        plain = optsample.sample("euler", model, x, sigmas, extra_args={"prompts": PROMPTS[:1]})
    assert float((ours - theirs).abs().max()) <= 1e-4
    assert float((plain - theirs).abs().max()) > 1e-3


@pytest.mark.parametrize("rule,lr,hparams", [("sgd", 2000.0, {}), ("momentum", 2000.0, {"beta": 0.5}),
                                             ("adam", 0.1, {"beta1": 0.9, "beta2": 0.99})])
def test_guidance_lowers_the_colour_loss(pipe, rule, lr, hparams):
    """Same 4 seeds and prompts, 8 euler steps, CFG 2: every sample's blue loss after guidance through the
    denoiser is at least 0.03 below its unguided value (unguided about 0.38-0.39 on this tiny model)."""
    model = sd_model(pipe)
    sigmas = schedules.get("discrete", 8, alphas_cumprod=model.alphas_cumprod)
    x = optsample.initial_noise(range(4), (4, 8, 8)) * sigmas[0]
    extra = {"prompts": PROMPTS * 2}
    steered = guided(model, DecodedLoss(model.vae_decode, blue_loss), rule=rule, lr=lr, lr_schedule="fastai",
                     sigmas=sigmas, eta=0.0, **hparams)
    with torch.no_grad():
        unguided = blue_loss(model.decode(optsample.sample("euler", model, x, sigmas, extra_args=extra)))
        steered_loss = blue_loss(model.decode(optsample.sample("euler", steered, x, sigmas, extra_args=extra)))
    assert bool((steered_loss < unguided - 0.03).all()), (unguided, steered_loss)


def test_bad_input_gets_one_line_errors(pipe):
    model = sd_model(pipe)
    x, sigma, extra = torch.randn(2, 4, 8, 8), torch.full((2,), 2.0), {"prompts": PROMPTS}
    with pytest.raises(ValueError, match=r"the loss must return one value per sample, shape \(2,\), got \(\)"):
        DecodedLoss(model.vae_decode, lambda images: images.mean()).gradient(model, x, sigma, **extra)
    with pytest.raises(ValueError, match="DecodedLoss needs decoder=, a differentiable latents -> images function"):
        DecodedLoss(None, blue_loss)
    for through in ("x0", "denoiser"):  # decode() runs under no_grad: the gradient would be lost
        with pytest.raises(TypeError, match="the decoder's images carry no gradient"):
            DecodedLoss(model.decode, blue_loss, through=through).gradient(model, x, sigma, **extra)
    with pytest.raises(ValueError, match=r"colour_loss needs images \[B, C, H, W\] with channel 3 < C"):
        colour_loss(torch.zeros(2, 3, 4, 4), channel=3)


# ------------------------------------------------------------------------------------------- the runner



@pytest.fixture
def saved_sd(tmp_path, pipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTSAMPLE_CACHE", str(tmp_path / "cache"))
    pipe.save_pretrained(tmp_path / "tiny_sd")
    save_tiny_clip(tmp_path / "clip", pipe.tokenizer)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    return tmp_path


def sd_run_args(folder, *extra):
    return ("task=sd_colour", f"task.path={folder / 'tiny_sd'}", f"task.prompts={folder / 'prompts.txt'}",
            f"task.clip_model={folder / 'clip'}", "task.guidance_scale=2.0", "sampler=euler",
            "schedule=discrete", "steps=4", "n_samples=4", "batch_size=2", "metric=none", "metric.names=[clip_score]",
            "progress=false", "device=cpu", "results_dir=runs", *extra)


def test_runner_sd_colour_task_end_to_end(saved_sd):
    """optsample-run task=sd_colour task.path=<saved tiny pipeline> guidance=fastai (sgd through x0, lr 2000): the row's colour_loss equals
    the library composed by hand (guided euler, decode, blue_loss mean) to 1e-5, is below the guidance=none row's
    by at least 0.02, and the CLIP score (a tiny CLIP) is in the row too."""
    from optsample.runner import results

    assert cli(*sd_run_args(saved_sd, "guidance=fastai", "guidance.lr=2000", "logger=none")) == 0
    assert cli(*sd_run_args(saved_sd, "guidance=none", "logger=none")) == 0
    rows = {row["guidance.name"]: row for row in results.read_rows(saved_sd / "runs")}
    assert set(rows) == {"fastai", "none"}
    guided_row = rows["fastai"]
    assert guided_row["task.name"] == "sd_colour" and guided_row["guidance.lr_schedule"] == "fastai"
    assert guided_row["metric.colour_loss"] < rows["none"]["metric.colour_loss"] - 0.02
    assert guided_row["metric.clip_score"] > 0

    from optsample.integrations.diffusers.adapters import load_stable_diffusion
    from optsample.samplers import initial_noise

    model = load_stable_diffusion(str(saved_sd / "tiny_sd"), guidance_scale=2.0)
    sigmas = schedules.get("discrete", 4, alphas_cumprod=model.alphas_cumprod)
    steered = guided(model, DecodedLoss(model.vae_decode, blue_loss, through="x0"), lr=2000.0, lr_schedule="fastai",
                     sigmas=sigmas, eta=0.0)
    with torch.no_grad():
        images = model.decode(optsample.sample("euler", steered, initial_noise(range(4), (4, 8, 8)) * sigmas[0], sigmas,
                                               extra_args={"prompts": PROMPTS * 2}))
    assert guided_row["metric.colour_loss"] == pytest.approx(float(blue_loss(images.double()).mean()), abs=1e-5)


def test_runner_sd_colour_bad_input(saved_sd, capsys):
    """Out-of-range task options: one-line errors before any work, no row; a built model without a VAE decoder
    is refused by the task too."""
    for option, message in (("task.channel=3", "task.channel must be 0, 1 or 2 (red, green, blue), got 3"),
                            ("task.target=1.5", "task.target must be in [0, 1] (image units), got 1.5")):
        assert cli(*sd_run_args(saved_sd, "guidance=fastai", "logger=none", option)) != 0
        assert f"guidance/task: {message}" in capsys.readouterr().err
    assert not (saved_sd / "runs").exists()
    built = types.SimpleNamespace(denoiser=lambda x, sigma: x)
    with pytest.raises(ValueError, match="task=sd_colour needs a latent model with a VAE decoder"):
        sd_guidance.prepare({}, {"name": "sd_colour"}, built, None, {"through": "x0"})


# ----------------------------------------------------------------------------- the W&B picture and caption


class FakeWandb(types.ModuleType):
    """A stand-in ``wandb`` module recording what the logger hands it (init, Image, log, finish)."""

    def __init__(self):
        super().__init__("wandb")
        self.logged, self.images = [], []
        fake = self

        class Image:
            def __init__(self, data, caption=None):
                self.data, self.caption = np.asarray(data), caption
                fake.images.append(self)

        class Run:
            config = types.SimpleNamespace(update=lambda *a, **k: None)

            def log(self, payload):
                fake.logged.append(payload)

            def finish(self):
                pass

        self.Image, self.Settings = Image, lambda **kw: kw
        self.init = lambda **kw: Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_logs_the_digits_task_picture_with_its_column_order(tmp_path, fake_wandb):
    """task=digits_sr2 guidance=dps logger=wandb: one image, the grid of measurement | reconstruction | truth per
    sample (16 samples of 8 x 26 -> 4 x 4 tiles, padding 2: 42 x 114 pixels), captioned with that order."""
    from optsample.runner import app, loggers

    from test_guidance_runner import resolved

    cfg = resolved(["logger=wandb", "metric=none", "progress=false", "sampler=ddim", "nfe=4", "n_samples=16",
                    "task=digits_sr2", "guidance=dps", f"results_dir={tmp_path}"])
    app.execute(cfg)
    (payload,) = fake_wandb.logged
    image = payload["samples"]
    assert image.caption == "each sample: measurement | reconstruction | truth (task digits_sr2)"
    assert image.data.shape == (4 * 10 + 2, 4 * 28 + 2, 3)
    assert "metric/psnr" in payload
    built = app.build_model(app.guidance_tasks.model_config(cfg), torch.device("cpu"), torch.float32)
    plan = app.plan_run(cfg)
    _, task = app.guidance_tasks.prepare(cfg, built, app.resolve_schedule(plan, built), plan.hparams)
    truth_tile = loggers.image_grid(task.problem.truth)  # the truth column of every tile is the truth image
    assert np.array_equal(image.data[2:10, 2 + 18:2 + 26], truth_tile[2:10, 2:10])


def test_wandb_logs_the_sd_samples_with_a_caption(saved_sd, fake_wandb):
    assert cli(*sd_run_args(saved_sd, "guidance=fastai", "logger=wandb")) == 0
    (payload,) = fake_wandb.logged
    assert payload["samples"].caption == "decoded samples (task sd_colour: blue towards 0.9)"
    assert payload["samples"].data.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 4 decoded 16 x 16 samples, 2 x 2
    assert "metric/colour_loss" in payload


def test_csv_logger_writes_the_caption_beside_the_picture(tmp_path):
    from optsample.runner import loggers

    logger = loggers.make_logger({"kind": "csv"}, project="p", group="g", name="n", run_dir=str(tmp_path))
    logger.log_run({"a": 1}, {"psnr": 20.0}, torch.zeros(2, 1, 8, 26), None, caption="measurement | reconstruction | truth")
    assert (tmp_path / "samples.txt").read_text() == "measurement | reconstruction | truth\n"
    assert (tmp_path / "samples.png").exists()


def test_sd_colour_experiment_composes_at_its_settings():
    """conf/experiment/sd_colour_guidance.yaml: SD 1.5, CFG 8, Euler on the discrete schedule, the sweep over
    none / sgd / momentum / adam at 20 and 50 steps; each of its runs plans (one-line checks pass)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from optsample.runner import app, config

    config.register_configs()
    with initialize_config_dir(config_dir=app.config_path(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=sd_colour_guidance"], return_hydra_config=True)
    sweep = cfg.hydra.sweeper.params
    assert sweep["guidance"] == "none,fastai,fastai_momentum,fastai_adam" and sweep["steps"] == "20,50"
    for guidance in sweep["guidance"].split(","):
        with initialize_config_dir(config_dir=app.config_path(), version_base="1.3"):
            run = compose(config_name="config", overrides=["experiment=sd_colour_guidance", f"guidance={guidance}",
                                                           "steps=20", "device=cpu"])
        run = OmegaConf.to_container(run, resolve=True, throw_on_missing=True)
        assert run["task"]["path"] == "stable-diffusion-v1-5/stable-diffusion-v1-5" and run["task"]["guidance_scale"] == 8
        assert (run["sampler"]["name"], run["schedule"]["name"], run["metric"]["names"]) == ("euler", "discrete", ["clip_score"])
        assert run["guidance"]["rule"] == {"none": "sgd", "fastai": "sgd", "fastai_momentum": "momentum",
                                           "fastai_adam": "adam"}[guidance]
        app.plan_run(run)


def test_offline_wandb_run_keeps_the_caption(tmp_path):
    """The real W&B (offline): the samples image's record carries the caption (wandb.Image's ``caption``)."""
    from optsample.runner import loggers

    from test_loggers import history, offline_run, run_records

    caption = "each sample: measurement | reconstruction | truth (task digits_sr2)"
    logger = loggers.make_logger({"kind": "wandb"}, project="p", group="g", name="cap", run_dir=str(tmp_path))
    logger.log_run({"a": 1}, {"psnr": 20.0}, torch.zeros(4, 1, 8, 26), None, caption=caption)
    logger.finish()
    (logged,) = history(run_records(offline_run(tmp_path)))
    assert logged["samples/caption"] == caption
