"""Old path of the diffusers adapters, kept for ``from optsample.models.diffusers_adapters import ...``:
they live in optsample/integrations/diffusers/adapters.py now (the tiny test pipeline in tests/tiny_pipeline.py)."""

from ..integrations.diffusers.adapters import (
    LATENT_SCALE_DEFAULT, Float64Schedule, GuidedUNet, StableDiffusionDenoiser, UNetDenoiser, UNetOutput,
    check_guidance, img2img_sigmas, load_stable_diffusion, load_unet_denoiser, missing_model_message,
    rescale_guidance, schedule_of, unet_denoiser,
)

__all__ = [
    "LATENT_SCALE_DEFAULT", "Float64Schedule", "GuidedUNet", "StableDiffusionDenoiser", "UNetDenoiser", "UNetOutput",
    "check_guidance", "img2img_sigmas", "load_stable_diffusion", "load_unet_denoiser", "missing_model_message",
    "rescale_guidance", "schedule_of", "unet_denoiser",
]
