"""CLIP score of text-to-image samples: mean over samples of max(100 * cos(image, text), 0)
(Hessel et al. 2021, CLIPScore, eq. 1 with w = 100, as torchmetrics' CLIPScore).

Our own small implementation, because torchmetrics 1.9's CLIPScore expects ``get_image_features`` /
``get_text_features`` to return tensors, while transformers 5 returns ``BaseModelOutputWithPooling``
(``'BaseModelOutputWithPooling' object has no attribute 'norm'``). :func:`embedding` accepts both.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import NotApplicable, register_statistic
from .streaming import Batch, Statistic

# CLIPImageProcessor's defaults (transformers.image_utils OPENAI_CLIP_MEAN / OPENAI_CLIP_STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LOADED: dict[str, tuple[Any, Any]] = {}


def embedding(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4), a model output whose
    ``pooler_output`` holds the projection (transformers 5), or that output as a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[1]
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find the embedding in a {type(output).__name__}")
    return pooled


def load_clip(spec: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a pair, or from a hub name / local path (loaded once per process)."""
    if isinstance(spec, (tuple, list)):
        model, tokenizer = spec
        return model, tokenizer
    if spec not in _LOADED:
        from transformers import CLIPModel, CLIPTokenizer

        _LOADED[spec] = (CLIPModel.from_pretrained(spec).eval(), CLIPTokenizer.from_pretrained(spec))
    return _LOADED[spec]


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """[-1, 1] images -> CLIP pixel values: shortest side resized to ``size`` (bicubic), centre crop,
    normalised by the CLIP mean / std (the steps of transformers' CLIPImageProcessor, in torch)."""
    x = ((images.to(torch.float32) + 1) / 2).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    height, width = x.shape[-2:]
    if min(height, width) != size:
        scale = size / min(height, width)
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        x = torch.nn.functional.interpolate(x, size=new_size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_scores(images: torch.Tensor, prompts: list[str], model: Any, tokenizer: Any) -> torch.Tensor:
    """Per-sample max(100 * cos(E_image, E_text), 0), shape [N]."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    param = next(model.parameters())
    device = param.device
    pixels = preprocess(images, model.config.vision_config.image_size).to(device=device, dtype=param.dtype)
    max_length = model.config.text_config.max_position_embeddings
    tokens = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    image_emb = embedding(model.get_image_features(pixel_values=pixels))
    text_emb = embedding(model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                 attention_mask=tokens["attention_mask"].to(device)))
    cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
    return (100 * cos).clamp(min=0).cpu()


@register_statistic("clip_score", higher_is_better=True)
class ClipScore(Statistic):
    """Mean CLIP score of image samples against their prompts (``Batch.prompts``, ``ctx.clip_model``);
    state: the sum of per-sample scores (float64) and the count."""

    def update(self, samples, batch: Batch) -> None:
        if samples.ndim != 4:
            raise NotApplicable(f"metric 'clip_score' applies to images [N, C, H, W], got shape {tuple(samples.shape)}")
        prompts = batch.prompts if batch.prompts is not None else self.ctx.prompts
        if not prompts:
            raise NotApplicable("metric 'clip_score' needs prompts (a text-to-image model)")
        model, tokenizer = load_clip(self.ctx.clip_model)
        self.add("score_sum", clip_scores(samples, list(prompts), model, tokenizer).sum())
        self.add("count", torch.tensor(float(samples.shape[0])))

    def compute(self) -> float:
        return float(self.sums["score_sum"] / self.sums["count"])
