"""Stable Diffusion loss guidance as a runner task, ``task=sd_colour`` (registered in optsample.runner.guidance_tasks).

    optsample-run -m model=sd15 task=sd_colour guidance=fastai guidance.rule=sgd,adam,momentum \\
        sampler=euler schedule=discrete steps=50 metric=text2image n_samples=16 batch_size=2 device=cuda

The ``model`` group gives the pipeline and its text conditioning (``model=sd15`` / ``sd14``, or ``model=sd
model.path=<dir>``: prompts, classifier-free guidance scale, CLIP model for the CLIP score); the task adds the
fast.ai Stable Diffusion deep dive's colour loss on the decoded estimate, :class:`~optsample.guidance.DecodedLoss`
of :func:`~optsample.guidance.objectives.colour_loss` through the VAE decoder
(:meth:`~.adapters.StableDiffusionDenoiser.vae_decode`), and ``guidance=`` wraps the CFG'd denoiser with any
rule. Row metric: ``colour_loss``, the mean colour loss of the decoded samples (the metric group's CLIP score /
FID as usual). The logger's picture: the decoded samples.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from ...guidance import DecodedLoss
from ...guidance.objectives import colour_loss

CHANNELS = ("red", "green", "blue")


@dataclass
class SDColourTaskConfig:
    """Pull channel ``channel`` of the decoded image towards ``target`` (image in [0, 1]; the deep dive: blue, 0.9)."""

    name: str = "sd_colour"
    channel: int = 2
    target: float = 0.9


def check(cfg: dict, task: dict) -> None:
    """The model is a Stable Diffusion one (registered with a StableDiffusionConfig: it has a VAE decoder);
    task.channel and task.target in range (ValueError naming the key)."""
    from ...models.registry import MODELS
    from .runner import StableDiffusionConfig

    entry = MODELS.get(cfg["model"]["name"])
    if entry is None or not isinstance(entry.config, StableDiffusionConfig):
        raise ValueError(_needs_latent_model(task, cfg))
    if task["channel"] not in range(len(CHANNELS)):
        raise ValueError(f"task.channel must be 0, 1 or 2 (red, green, blue), got {task['channel']}")
    if not 0 <= task["target"] <= 1:
        raise ValueError(f"task.target must be in [0, 1] (image units), got {task['target']}")


def _needs_latent_model(task: dict, cfg: dict) -> str:
    return (f"task={task['name']} needs a latent model with a VAE decoder (model=sd15, sd14 or sd), "
            f"got model={cfg['model']['name']}")


def image_loss(task: dict):
    """The task's loss on images in [-1, 1]: per-sample colour_loss of task.channel towards task.target."""
    return functools.partial(colour_loss, channel=int(task["channel"]), target=float(task["target"]))


def prepare(cfg: dict, task: dict, built, make_guided):
    """(the model to sample, the task's problem). ``make_guided(model, objective)``: the runner's ``guidance=``."""
    decoder = getattr(built.denoiser, "vae_decode", None)
    if decoder is None:
        raise ValueError(_needs_latent_model(task, cfg))
    guidance = cfg.get("guidance") or {"name": "none"}
    model = built.denoiser
    if guidance["name"] != "none":
        model = make_guided(model, DecodedLoss(decoder, image_loss(task), through=guidance["through"]))
    return dataclasses.replace(built, denoiser=model), task


def metrics(task: dict, images: torch.Tensor) -> dict[str, float]:
    """``colour_loss``: the mean over the decoded samples (images in [-1, 1], as the runner decodes them)."""
    with torch.no_grad():
        values = image_loss(task)(images.detach().double())
    return {"colour_loss": float(values.mean())}


def picture(task: dict, images: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(what the logger shows, its caption): the decoded samples."""
    return images, f"decoded samples (task {task['name']}: {CHANNELS[int(task['channel'])]} towards {float(task['target']):g})"


TASKS = {"sd_colour": SDColourTaskConfig}
