"""The optimal denoiser of a finite data set: the model a perfectly trained network would converge to.

For data {y_j} (equal weights) noised as x = y + sigma * eps, the posterior over which point was
noised is a softmax of the negative squared distances, so

    D(x; sigma) = sum_j softmax_j(-|x - y_j|^2 / (2 sigma^2)) y_j

(Karras et al. 2022, Appendix B.3, eq. 57, the "ideal denoiser"). It is evaluated in chunks over the
data with a running log-sum-exp (the "online softmax" of Milakov & Gimelshein 2018, as in
FlashAttention), so memory stays at [batch, chunk] + [batch, dim] whatever the data set size.
"""

from __future__ import annotations

import torch

from .wrappers import sigma_batch


class EmpiricalDenoiser:
    """The exact denoiser ``D(x, sigma)`` of the data set ``data`` ([N, ...], any trailing shape).

    Args:
        data: the data points y_j, [N, ...]; ``x`` must have shape [B, ...] with the same trailing shape.
        chunk_size: data points handled per block; the largest temporaries are [B, chunk_size] and
            [B, prod(...)].

    At ``sigma == 0`` the limit of the softmax is used: the nearest data point.
    """

    def __init__(self, data: torch.Tensor, chunk_size: int = 1024):
        data = torch.as_tensor(data)
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"data must be [N, ...] with N >= 1, got shape {tuple(data.shape)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.data = data
        self.item_shape = tuple(data.shape[1:])
        self.chunk_size = int(chunk_size)
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.data.shape[0]

    def _flat_data(self, ref: torch.Tensor):
        """Data as [N, dim] in ``ref``'s dtype and device, and |y_j|^2 [N] (cached per dtype/device)."""
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            flat = self.data.reshape(len(self), -1).to(ref.device, ref.dtype)
            blocks = flat.split(self.chunk_size)
            self._cache[key] = (flat, torch.cat([(block * block).sum(1) for block in blocks]))
        return self._cache[key]

    def _chunks(self, ref: torch.Tensor):
        """Yield (y_chunk [c, dim], |y|^2 chunk [c]) views; no copy of the data set is made."""
        flat, sq_norms = self._flat_data(ref)
        for start in range(0, flat.shape[0], self.chunk_size):
            yield flat[start:start + self.chunk_size], sq_norms[start:start + self.chunk_size]

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.item_shape:
            raise ValueError(f"x has item shape {tuple(x.shape[1:])}, the data has {self.item_shape}")
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def _sq_dists(x_flat: torch.Tensor, x_sq: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
        """|x - y|^2 = |x|^2 - 2 x.y + |y|^2 via one matmul, [B, c] (clamped at 0 against round-off)."""
        return (x_sq[:, None] - 2 * (x_flat @ y.T) + y_sq[None, :]).clamp_min(0)

    def nearest_index(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest data point of each sample, [B] (chunked, like the denoiser)."""
        x_flat = self._flatten(x)
        x_sq = (x_flat * x_flat).sum(1)
        best = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
        best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        offset = 0
        for y, y_sq in self._chunks(x_flat):
            dist, idx = self._sq_dists(x_flat, x_sq, y, y_sq).min(dim=1)
            better = dist < best
            best = torch.where(better, dist, best)
            best_idx = torch.where(better, idx + offset, best_idx)
            offset += y.shape[0]
        return best_idx

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest data point to each sample, [B, ...] in x's dtype (memorisation check, sigma -> 0 limit)."""
        flat, _ = self._flat_data(x)
        return flat[self.nearest_index(x)].reshape(x.shape)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[y | x] with an online softmax over chunks of data (Karras et al. 2022, eq. 57)."""
        x_flat = self._flatten(x)
        sigma = sigma_batch(sigma, x)
        x_sq = (x_flat * x_flat).sum(1)
        inv_two_var = (1 / (2 * sigma**2))[:, None]  # inf where sigma == 0, handled below
        running_max = torch.full((x.shape[0], 1), -float("inf"), dtype=x.dtype, device=x.device)
        running_sum = torch.zeros((x.shape[0], 1), dtype=x.dtype, device=x.device)
        weighted = torch.zeros_like(x_flat)
        for y, y_sq in self._chunks(x_flat):
            logits = -self._sq_dists(x_flat, x_sq, y, y_sq) * inv_two_var  # [B, c]
            new_max = torch.maximum(running_max, logits.max(dim=1, keepdim=True).values)
            rescale = (running_max - new_max).exp()  # exp(-inf) = 0 on the first chunk
            probs = (logits - new_max).exp()
            running_sum = running_sum * rescale + probs.sum(dim=1, keepdim=True)
            weighted = weighted * rescale + probs @ y
            running_max = new_max
        denoised = weighted / running_sum
        at_zero = sigma == 0
        if bool(at_zero.any()):
            denoised = torch.where(at_zero[:, None], self.nearest(x).reshape(x_flat.shape), denoised)
        return denoised.reshape(x.shape)

    def __call__(self, x: torch.Tensor, sigma, **_) -> torch.Tensor:
        """The denoiser convention: ``D(x, sigma)`` with sigma a [batch] tensor."""
        return self.denoise(x, sigma)

    def mean(self) -> torch.Tensor:
        """The data mean: the denoiser's limit as sigma -> infinity."""
        return self.data.mean(0)
