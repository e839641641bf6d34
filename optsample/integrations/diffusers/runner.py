"""diffusers checkpoints as runner options (adapters.py here does the work).

    optsample-run model=ddpm_cifar10 schedule=discrete sampler=ddim steps=10 metric=images model.reference=cifar10_train.npz
    optsample-run model=sd15 schedule=discrete sampler=plms steps=10 model.guidance_scale=15 metric=text2image \
        model.prompts=captions_val2017.json model.reference=coco_val2017_256.npz
    optsample-run model=diffusers_unet model.path=./my_ddpm ...    model=sd model.path=./my_sd ...

``path`` is a hub id (weights fetched by the user beforehand: ``huggingface-cli download <id>``; with
``HF_HUB_OFFLINE=1`` nothing is fetched) or a local ``save_pretrained`` directory. Image metrics compare
with ``reference`` (a file of reference images, :func:`load_reference_images`); CLIP score uses
``clip_model`` (a hub id or local directory with a CLIPModel and its tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import MISSING

from ...models.registry import BuiltModel, ModelConfig, register_model
from ...metrics.registry import DEFAULT_CLIP_MODEL

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class DiffusersUNetConfig(ModelConfig):
    path: str = MISSING  # hub id or local directory of a UNet2DModel pipeline (DDPMPipeline.save_pretrained)
    reference: Optional[str] = None  # reference images for FID / KID: .npz, .pt or a folder of images
    feature_net: str = "inception"  # optsample.metrics.features name


@dataclass
class StableDiffusionConfig(DiffusersUNetConfig):
    prompts: str = "builtin"  # builtin | COCO captions .json | .txt, one prompt per line
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    height: Optional[int] = None  # None: unet.sample_size * vae_scale_factor (512 for SD 1.x)
    width: Optional[int] = None
    clip_model: str = DEFAULT_CLIP_MODEL


def load_reference_images(path: str | Path) -> torch.Tensor:
    """Reference images [N, C, H, W] in [-1, 1] from a ``.npz`` (first array: uint8 [N, H, W, C], as the
    ADM / guided-diffusion reference batches), a ``.pt`` tensor ([N, C, H, W]: uint8, or float in [-1, 1])
    or a folder of image files (same size, sorted by name)."""
    import numpy as np

    path = Path(path).expanduser()
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"reference folder {str(path)!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    elif path.suffix == ".npz":
        with np.load(path) as data:
            images = torch.from_numpy(data[data.files[0]]).permute(0, 3, 1, 2)
    elif path.suffix == ".pt":
        images = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"reference {str(path)!r}: expected a .npz, a .pt or a folder of images")
    if images.ndim != 4:
        raise ValueError(f"reference {str(path)!r}: expected images [N, C, H, W], got shape {tuple(images.shape)}")
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def reference_args(cfg: dict) -> dict:
    """metric_args for FID / KID: a lazy reference loader, a cache key naming the file (size and mtime:
    an edited file gets new features) and the feature net."""
    args = {"feature_net": cfg["feature_net"]}
    if cfg["reference"]:
        path = Path(cfg["reference"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model.reference {cfg['reference']!r} does not exist")
        stat = path.stat()
        args["reference"] = lambda: load_reference_images(path)
        args["reference_key"] = f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    return args


def attach_decode(built: BuiltModel, decode) -> BuiltModel:
    """``built.decode``: samples -> images in [-1, 1] for metrics and loggers (the runner applies it)."""
    built.decode = decode
    return built


def build_unet(cfg: dict) -> BuiltModel:
    from .adapters import load_unet_denoiser

    denoiser = load_unet_denoiser(cfg["path"])
    config = denoiser.net.unet.config
    size = config.sample_size if isinstance(config.sample_size, (tuple, list)) else (config.sample_size,) * 2
    built = BuiltModel(denoiser, (config.in_channels, *size), schedule_args={"alphas_cumprod": denoiser.alphas_cumprod},
                       metric_args=reference_args(cfg))
    return attach_decode(built, denoiser.decode)


def build_stable_diffusion(cfg: dict) -> BuiltModel:
    from .adapters import load_stable_diffusion
    from .prompts import load_prompts, prompt_conditioning

    conditioning = prompt_conditioning(load_prompts(cfg["prompts"]))
    denoiser = load_stable_diffusion(cfg["path"], guidance_scale=cfg["guidance_scale"],
                                     guidance_rescale=cfg["guidance_rescale"], negative_prompt=cfg["negative_prompt"])
    built = BuiltModel(
        denoiser, denoiser.latent_shape(cfg["height"], cfg["width"]),
        schedule_args={"alphas_cumprod": denoiser.alphas_cumprod}, conditioning=conditioning,
        metric_args={**reference_args(cfg), "clip_model": cfg["clip_model"]},
    )
    return attach_decode(built, denoiser.decode)


register_model(DiffusersUNetConfig(name="ddpm_cifar10", path="google/ddpm-cifar10-32"), build_unet)
register_model(DiffusersUNetConfig(name="diffusers_unet"), build_unet)
register_model(StableDiffusionConfig(name="sd14", path="CompVis/stable-diffusion-v1-4"), build_stable_diffusion)
register_model(StableDiffusionConfig(name="sd15", path="stable-diffusion-v1-5/stable-diffusion-v1-5"), build_stable_diffusion)
register_model(StableDiffusionConfig(name="sd"), build_stable_diffusion)
