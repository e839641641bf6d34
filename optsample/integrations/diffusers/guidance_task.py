"""Stable Diffusion loss guidance as a runner task family, ``task=sd_colour`` (optsample.runner.guidance_tasks).

    optsample-run -m task=sd_colour guidance=none,fastai,fastai_momentum,fastai_adam sampler=euler \
        schedule=discrete steps=50 n_samples=16 batch_size=2 metric=none metric.names=[clip_score]

The task names its checkpoint and text conditioning (``task.path``: a Stable Diffusion 1.x hub id downloaded
beforehand, or a ``save_pretrained`` directory; ``task.prompts``, ``task.guidance_scale``, ...: the ``model=sd``
options, :class:`~.runner.StableDiffusionConfig`) and adds the fast.ai Stable Diffusion deep dive's colour loss on
the decoded estimate: :class:`~optsample.guidance.DecodedLoss` of :func:`~optsample.guidance.objectives.colour_loss`
through the VAE decoder (:meth:`~.adapters.StableDiffusionDenoiser.vae_decode`); ``guidance=`` wraps the CFG'd
denoiser with any rule. Row metric: ``colour_loss``, the mean colour loss of the decoded samples (and the metric
group's CLIP score / FID against the task's prompts / reference). The logger's picture: the decoded samples.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ...guidance import DecodedLoss
from ...guidance.objectives import colour_loss
from ...metrics.registry import DEFAULT_CLIP_MODEL

CHANNELS = ("red", "green", "blue")
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class SDColourTaskConfig:
    """Pull channel ``channel`` of the decoded image towards ``target`` (image in [0, 1]; the deep dive: blue, 0.9)
    on the Stable Diffusion checkpoint ``path`` (the other fields: as ``model=sd``'s)."""

    name: str = "sd_colour"
    channel: int = 2
    target: float = 0.9
    path: str = SD15
    prompts: str = "builtin"  # builtin | COCO captions .json | .txt, one prompt per line
    negative_prompt: str = ""
    guidance_scale: float = 7.5  # classifier-free guidance (the deep dive: 8)
    height: Optional[int] = None  # None: 512 for SD 1.x
    width: Optional[int] = None
    clip_model: str = DEFAULT_CLIP_MODEL
    reference: Optional[str] = None  # reference images for FID / KID (metric.names=[fid])


def check(task: dict) -> None:
    """task.channel and task.target in range (ValueError naming the key)."""
    if task["channel"] not in range(len(CHANNELS)):
        raise ValueError(f"task.channel must be 0, 1 or 2 (red, green, blue), got {task['channel']}")
    if not 0 <= task["target"] <= 1:
        raise ValueError(f"task.target must be in [0, 1] (image units), got {task['target']}")


def model_config(task: dict) -> dict:
    """The runner's model section: ``model=sd`` at the task's checkpoint and conditioning."""
    fields = ("path", "prompts", "negative_prompt", "guidance_scale", "height", "width", "clip_model", "reference")
    return {"name": "sd", "guidance_rescale": 0.0, "feature_net": "inception", **{k: task[k] for k in fields}}


def image_loss(task: dict):
    """The task's loss on images in [-1, 1]: per-sample colour_loss of task.channel towards task.target."""
    return functools.partial(colour_loss, channel=int(task["channel"]), target=float(task["target"]))


def prepare(cfg: dict, task: dict, built, guide, guidance: dict):
    """(the model to sample, the task's problem). ``guide(model, objective)``: the run's ``guidance=`` (None:
    unguided); ``guidance``: its section (``through``)."""
    decoder = getattr(built.denoiser, "vae_decode", None)
    if decoder is None:
        raise ValueError(f"task={task['name']} needs a latent model with a VAE decoder (vae_decode), got "
                         f"{type(built.denoiser).__name__}")
    if guide is None:
        return built, task
    model = guide(built.denoiser, DecodedLoss(decoder, image_loss(task), through=guidance["through"]))
    return dataclasses.replace(built, denoiser=model), task


def metrics(task: dict, images: torch.Tensor) -> dict[str, float]:
    """``colour_loss``: the mean over the decoded samples (images in [-1, 1], as the runner decodes them)."""
    with torch.no_grad():
        values = image_loss(task)(images.detach().double())
    return {"colour_loss": float(values.mean())}


def log_images(task: dict, images: torch.Tensor) -> torch.Tensor:
    """The logger's picture: the decoded samples."""
    return images


def caption(task: dict) -> str:
    return f"decoded samples (task {task['name']}: {CHANNELS[int(task['channel'])]} towards {float(task['target']):g})"


TASKS = {"sd_colour": SDColourTaskConfig}
