"""The two small networks of the embedded default: a class-conditional UNet for 8x8 digits (wrapped by
:class:`optsample.models.EDMPrecond`) and a digit classifier whose penultimate features are FID-digits'.

UNet layout follows the DDPM / NVlabs/edm ``SongUNet`` pattern at toy scale: residual blocks with GroupNorm
and SiLU, the noise level and class entering each block as a per-channel scale and shift (FiLM; edm
``UNetBlock`` with ``adaptive_scale=True``), skip connections between resolutions 8 -> 4 -> 2 -> 4 -> 8.
Noise conditioning: sinusoidal embedding of c_noise (edm ``PositionalEmbedding``). Class conditioning:
``nn.Embedding(11, ...)`` where index 10 is the null class used for classifier-free guidance
(Ho & Salimans 2022, sec. 3.2).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

NULL_CLASS = 10  # the "no label" token of classifier-free guidance


def noise_embedding(c_noise: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of c_noise [B] (Vaswani et al. 2017, sec. 3.5; edm ``PositionalEmbedding``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    angles = c_noise.float()[:, None] * freqs[None, :] * 1000 / 4  # c_noise = ln(sigma)/4 spans ~[-2, 1.2]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> FiLM(emb) -> GroupNorm -> SiLU -> conv3x3, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class DigitsUNet(nn.Module):
    """F(x_in, c_noise, class_labels) for 1x8x8 images; ``class_labels`` in 0..9, or 10 (= None) for unconditional."""

    def __init__(self, channels: int = 64, emb_dim: int = 128, num_classes: int = 10):
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.emb_dim, self.num_classes = emb_dim, num_classes
        self.noise_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)  # + the null class
        self.conv_in = nn.Conv2d(1, c1, 3, padding=1)
        self.down8 = ResBlock(c1, c1, emb_dim)
        self.down4 = ResBlock(c1, c2, emb_dim)
        self.mid2a, self.mid2b = ResBlock(c2, c2, emb_dim), ResBlock(c2, c2, emb_dim)
        self.up4 = ResBlock(2 * c2, c2, emb_dim)
        self.up8 = ResBlock(c2 + c1, c1, emb_dim)
        self.norm_out, self.conv_out = nn.GroupNorm(8, c1), nn.Conv2d(c1, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        emb = F.silu(self.noise_mlp(noise_embedding(c_noise, self.emb_dim).to(x.dtype)) + self.class_emb(class_labels))
        h8 = self.down8(self.conv_in(x), emb)
        h4 = self.down4(F.avg_pool2d(h8, 2), emb)
        h2 = self.mid2b(self.mid2a(F.avg_pool2d(h4, 2), emb), emb)
        u4 = self.up4(torch.cat([F.interpolate(h2, scale_factor=2.0, mode="nearest"), h4], dim=1), emb)
        u8 = self.up8(torch.cat([F.interpolate(u4, scale_factor=2.0, mode="nearest"), h8], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(u8)))


class DigitsClassifier(nn.Module):
    """A small CNN: conv 8x8 -> conv 4x4 -> ``features`` (64-dim penultimate layer) -> 10 logits."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, self.num_features), nn.SiLU(),
        )
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, 64] of images [N, 1, 8, 8] in [-1, 1]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class DigitsJudge(nn.Module):
    """The *judge* of class guidance: a ReLU MLP on the 64 raw pixels (no convolutions, no shared layers
    with :class:`DigitsClassifier`, another seed), so samples that fool the guide's gradients are not
    judged by the same function (Shen et al., NeurIPS 2024: guidance exploits its own guide)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
