"""Test fixture: a tiny random-weight Stable Diffusion pipeline, written without a download (the tests and
benchmarks/gpu_check_sd.py exercise the real-model paths with it). Moved here from the library (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

TINY_WORDS = ("a", "photo", "of", "red", "cat", "blue", "dog", "on", "the", "grass")


def write_tiny_tokenizer(folder, words: Sequence[str] = TINY_WORDS, max_length: int = 16):
    """A CLIP BPE tokenizer over ``words`` (vocab.json + merges.txt written to ``folder``)."""
    import json

    from transformers import CLIPTokenizer

    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for char in sorted(set("".join(words))):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in words:  # left-to-right merges building each word
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


TINY_TEXT_CONFIG = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)


def tiny_stable_diffusion(folder, scheduler, seed: int = 0) -> dict:
    """Keyword arguments for ``StableDiffusionPipeline(**...)``: random UNet2DConditionModel (latents 4x8x8),
    AutoencoderKL (16x16 images), CLIP text encoder and a tokenizer written to ``folder``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    tokenizer = write_tiny_tokenizer(folder)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TINY_TEXT_CONFIG))
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_tiny_clip(folder, tokenizer) -> None:
    """A tiny random CLIPModel (16x16 images) and ``tokenizer`` saved to ``folder`` (the CLIP score's model)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), **TINY_TEXT_CONFIG), projection_dim=16,
                        vision_config=dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4))
    torch.manual_seed(9)  # a seed whose image/text cosines are positive here (the clamp at 0 inactive)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
