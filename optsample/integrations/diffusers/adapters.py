"""diffusers checkpoints in the denoiser convention ``D(x, sigma, **extra)``.

- :func:`unet_denoiser` / :func:`load_unet_denoiser`: a ``UNet2DModel`` (e.g. google/ddpm-cifar10-32) with
  its scheduler's ``alphas_cumprod`` and ``prediction_type``, wrapped by :class:`DiscreteVPDenoiser`.
- :class:`StableDiffusionDenoiser` / :func:`load_stable_diffusion`: a Stable Diffusion 1.x style pipeline
  (``UNet2DConditionModel``, ``AutoencoderKL``, CLIP text encoder + tokenizer) in latent space, with prompt
  and negative-prompt conditioning, classifier-free guidance and guidance rescale as in diffusers'
  ``StableDiffusionPipeline``, VAE encoding / decoding, and img2img (:func:`img2img_sigmas`,
  :meth:`StableDiffusionDenoiser.img2img_start`) as in ``StableDiffusionImg2ImgPipeline``.

Weights come from a hub only on users' machines; a model that is neither a local directory nor in the
local hub cache raises one FileNotFoundError that says how to get it (:func:`missing_model_message`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...models.wrappers import DiscreteVPDenoiser

LATENT_SCALE_DEFAULT = 0.18215  # SD 1.x vae.config.scaling_factor (Rombach et al. 2022, sec. 4.3 / app. G)


# ----------------------------------------------------------------------------------------------
# Loading: local directories or the hub cache, with one clear message when the weights are missing.


def missing_model_message(model_id: str, err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    how = (
        f"download it first with `huggingface-cli download {model_id}` (or `hf download {model_id}`)"
        + (" and/or unset HF_HUB_OFFLINE (it is set, so nothing is fetched from the hub)" if offline else "")
        + ", or pass path=<a local directory saved with save_pretrained>"
    )
    return f"model {model_id!r} is not a local directory and is not in the local hub cache: {how}. ({type(err).__name__}: {err})"


def _load(cls, model_id: str, **kwargs):
    """``cls.from_pretrained(model_id, **kwargs)``: an existing directory, else a hub id (at most one '/');
    a missing model raises FileNotFoundError saying how to get it."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return cls.from_pretrained(str(local), **kwargs)
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise FileNotFoundError(f"model directory {model_id!r} does not exist")
    try:
        return cls.from_pretrained(model_id, **kwargs)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError / RepositoryNotFoundError are OSErrors
        raise FileNotFoundError(missing_model_message(model_id, err)) from None


def schedule_of(scheduler) -> tuple[torch.Tensor, str]:
    """(alphas_cumprod, prediction_type) of a diffusers scheduler (every DDPM-family scheduler stores
    ``alphas_cumprod`` from its betas config; ``prediction_type`` defaults to epsilon)."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod: not a discrete VP (DDPM) schedule")
    return torch.as_tensor(alphas_cumprod, dtype=torch.float64), scheduler.config.get("prediction_type", "epsilon")


# ----------------------------------------------------------------------------------------------
# Unconditional pixel-space UNet (DDPMPipeline).


class UNetOutput(nn.Module):
    """``UNet2DModel`` as a plain ``net(x_t, t, class_labels=None) -> tensor``."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        return self.unet(x_t.to(self.unet.dtype), t, class_labels=class_labels, return_dict=False)[0]


class Float64Schedule:
    """Mixin: ``.to(dtype)`` casts the network, never the sigma <-> t tables (a float16 log-sigma table
    would move timesteps by whole steps); they stay float64 and follow the device lazily."""

    def _apply(self, fn, recurse=True):
        tables = {name: getattr(self, name) for name in ("alphas_cumprod", "sigmas", "log_sigmas")}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            setattr(self, name, table.to(device=getattr(self, name).device, dtype=torch.float64))
        return self


class UNetDenoiser(Float64Schedule, DiscreteVPDenoiser):
    """A diffusers ``UNet2DModel`` in the denoiser convention (k-diffusion ``external.py`` wrappers)."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples are images already; clipped to [-1, 1] as DDPMPipeline's ``(x / 2 + 0.5).clamp(0, 1)``."""
        return x.clamp(-1, 1)


def unet_denoiser(unet, scheduler) -> UNetDenoiser:
    alphas_cumprod, prediction_type = schedule_of(scheduler)
    return UNetDenoiser(UNetOutput(unet), alphas_cumprod, prediction_type)


def load_unet_denoiser(model_id: str, *, torch_dtype=None) -> UNetDenoiser:
    """A UNet2DModel pipeline (``google/ddpm-cifar10-32`` or a local save_pretrained directory)."""
    from diffusers import DiffusionPipeline

    pipe = _load(DiffusionPipeline, model_id, torch_dtype=torch_dtype)
    if not hasattr(pipe, "unet") or pipe.unet.__class__.__name__ != "UNet2DModel":
        raise ValueError(f"model {model_id!r} is a {type(pipe).__name__}, not an unconditional UNet2DModel pipeline")
    return unet_denoiser(pipe.unet, pipe.scheduler)


# ----------------------------------------------------------------------------------------------
# Stable Diffusion: text conditioning, classifier-free guidance, latent space.


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, rescale: float) -> torch.Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16
    (diffusers ``rescale_noise_cfg``): match the guided output's per-sample std to the conditional one's,
    then mix ``rescale * rescaled + (1 - rescale) * guided``."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


class GuidedUNet(nn.Module):
    """``UNet2DConditionModel`` with classifier-free guidance (Ho & Salimans 2022, eq. 6) on its output:
    ``out = out_uncond + scale * (out_cond - out_uncond)``, then :func:`rescale_guidance`. As diffusers, the
    unconditional and conditional halves run as one batch (negative first) and guidance is off for
    ``scale <= 1``."""

    def __init__(self, unet, guidance_scale: float = 7.5, guidance_rescale: float = 0.0):
        super().__init__()
        self.unet = unet
        self.guidance_scale, self.guidance_rescale = float(guidance_scale), float(guidance_rescale)
        check_guidance(self.guidance_scale, self.guidance_rescale)

    def forward(self, x_t, t, *, prompt_embeds, negative_prompt_embeds=None) -> torch.Tensor:
        x_t = x_t.to(self.unet.dtype)  # the sampler state may be float32 around a half-precision network
        if self.guidance_scale <= 1:
            return self.unet(x_t, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        both = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds]), return_dict=False)[0]
        uncond, cond = both.chunk(2)
        guided = uncond + self.guidance_scale * (cond - uncond)
        return rescale_guidance(guided, cond, self.guidance_rescale) if self.guidance_rescale > 0 else guided


def check_guidance(guidance_scale: float, guidance_rescale: float) -> None:
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")


class StableDiffusionDenoiser(Float64Schedule, DiscreteVPDenoiser):
    """A Stable Diffusion 1.x pipeline as a latent-space denoiser ``D(z, sigma, prompts=[...])``.

    Conditioning per call: ``prompts`` (one string per batch item) and optional ``negative_prompts``, or
    precomputed ``prompt_embeds`` / ``negative_prompt_embeds``. Text is encoded as diffusers'
    ``encode_prompt`` does (padding to ``model_max_length``; the empty prompt when no negative is given)
    and the last batch's encodings are cached, so a sampler pays the text encoder once per batch.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, alphas_cumprod, prediction_type: str = "epsilon", *,
                 guidance_scale: float = 7.5, guidance_rescale: float = 0.0, negative_prompt: str = ""):
        super().__init__(GuidedUNet(unet, guidance_scale, guidance_rescale), alphas_cumprod, prediction_type)
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.negative_prompt = negative_prompt
        self.latent_scale = float(getattr(vae.config, "scaling_factor", LATENT_SCALE_DEFAULT))
        self.latent_shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._cache: tuple | None = None

    @classmethod
    def from_pipeline(cls, pipe, **options) -> "StableDiffusionDenoiser":
        alphas_cumprod, prediction_type = schedule_of(pipe.scheduler)
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, alphas_cumprod, prediction_type, **options)

    @property
    def guidance_scale(self) -> float:
        return self.net.guidance_scale

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """[C, H/f, W/f] of one latent; the default size is the UNet's ``sample_size * vae_scale_factor``."""
        size = self.net.unet.config.sample_size * self.vae_scale_factor
        height, width = height or size, width or size
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        return (self.net.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text-encoder hidden states of ``prompts`` (diffusers ``encode_prompt``, clip_skip None)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    def text_conditioning(self, prompts, negative_prompts=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds, negative_prompt_embeds), cached for the last (prompts, negative_prompts)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if negative_prompts is None or isinstance(negative_prompts, str):
            negative_prompts = [self.negative_prompt if negative_prompts is None else negative_prompts] * len(prompts)
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative_prompts")
        key = (tuple(prompts), tuple(negative_prompts), self.guidance_scale > 1)
        if self._cache is None or self._cache[0] != key:
            negative = self.encode_text(negative_prompts) if self.guidance_scale > 1 else None
            self._cache = (key, (self.encode_text(prompts), negative))
        return self._cache[1]

    def forward(self, x, sigma, *, prompts=None, negative_prompts=None, prompt_embeds=None,
                negative_prompt_embeds=None, **extra) -> torch.Tensor:
        if prompt_embeds is None:
            if prompts is None:
                raise ValueError("StableDiffusionDenoiser needs prompts=[...] (one per sample) or prompt_embeds")
            prompt_embeds, negative_prompt_embeds = self.text_conditioning(prompts, negative_prompts)
        elif negative_prompt_embeds is None and self.guidance_scale > 1:
            negative_prompt_embeds = self.text_conditioning([""] * prompt_embeds.shape[0])[0]
        if prompt_embeds.shape[0] != x.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} latents but {prompt_embeds.shape[0]} prompts")
        dtype = next(self.net.unet.parameters()).dtype
        negative = None if negative_prompt_embeds is None else negative_prompt_embeds.to(dtype)
        return super().forward(x, sigma, prompt_embeds=prompt_embeds.to(dtype), negative_prompt_embeds=negative, **extra)

    # -- latent space --------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """Images in [-1, 1] -> latents ``scaling_factor * (z - shift)`` with z drawn from the VAE posterior
        (``generator``; diffusers ``retrieve_latents`` sample mode) or its mode (``sample=False``)."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images.to(vae_dtype)).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.latent_shift) * self.latent_scale

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images, about [-1, 1] and not clipped, differentiable (``vae.decode(z / scaling_factor +
        shift)``, diffusers ``StableDiffusionPipeline``): the decoder a loss on decoded images takes its gradient
        through (:class:`optsample.guidance.DecodedLoss`). In the latents' dtype."""
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.latent_scale + self.latent_shift).to(vae_dtype), return_dict=False)[0]
        return images.to(latents.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Latents -> images in [-1, 1] (:meth:`vae_decode`, clipped as the pipeline's postprocess), float32, in
        batches of ``batch_size`` to bound memory."""
        images = [self.vae_decode(chunk).float() for chunk in latents.split(batch_size)]
        return torch.cat(images).clamp(-1, 1)

    def img2img_start(self, images: torch.Tensor, sigmas: torch.Tensor, strength: float, noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_start, sigmas_tail) for img2img: the latents of ``images`` noised to the first sigma that
        ``strength`` keeps, ``x = z0 + sigma_start * noise`` (the VE form of diffusers' ``add_noise``).

        As ``StableDiffusionImg2ImgPipeline.prepare_latents``, the posterior sample is drawn from
        ``generator`` before the noise (which is also drawn from it unless given)."""
        sigmas_tail = img2img_sigmas(sigmas, strength)
        clean = self.encode(images, generator)
        if noise is None:
            noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        return clean + float(sigmas_tail[0]) * noise.to(clean.dtype), sigmas_tail


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of an n-step schedule that img2img runs: ``StableDiffusionImg2ImgPipeline.get_timesteps``
    keeps the last ``min(int(n * strength), n)`` steps."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    n = len(sigmas) - 1
    kept = min(int(n * strength), n)
    if kept < 1:
        raise ValueError(f"strength {strength} with {n} steps keeps no step (int(n * strength) = 0): raise either")
    return sigmas[n - kept:]


def load_stable_diffusion(model_id: str, *, torch_dtype=None, **options) -> StableDiffusionDenoiser:
    """A Stable Diffusion 1.x style checkpoint (hub id or local directory with unet/, vae/, text_encoder/,
    tokenizer/, scheduler/); the safety checker is not loaded. ``options``: guidance_scale, guidance_rescale,
    negative_prompt."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    dtype_kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    loaded = {name: _load(cls, model_id, subfolder=name, **dtype_kwargs) for name, cls in parts.items()}
    tokenizer = _load(CLIPTokenizer, model_id, subfolder="tokenizer")
    scheduler = _load(DDPMScheduler, model_id, subfolder="scheduler")
    alphas_cumprod, prediction_type = schedule_of(scheduler)
    return StableDiffusionDenoiser(loaded["unet"], loaded["vae"], loaded["text_encoder"], tokenizer, alphas_cumprod,
                                   prediction_type, **options)


__all__ = [
    "GuidedUNet", "StableDiffusionDenoiser", "UNetDenoiser", "img2img_sigmas", "load_stable_diffusion",
    "load_unet_denoiser", "rescale_guidance", "unet_denoiser",
]
