"""Feature networks for FID / KID (a registry: later issues add the project's own net in one line) and
the on-disk cache of reference features, keyed by the reference data and the feature net.

A feature net factory ``factory(device) -> nn.Module`` returns a module mapping images [N, C, H, W]
in [-1, 1] (the models' convention) to features [N, F].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .registry import MetricContext, reference_data, tensor_digest

_FEATURE_NETS: dict[str, Callable[[torch.device], nn.Module]] = {}
_LOADED: dict[tuple[str, str], nn.Module] = {}


def register_feature_net(name: str, factory: Callable[[torch.device], nn.Module], *, overwrite: bool = False) -> None:
    """Make ``factory`` available as ``MetricContext(feature_net=name)``."""
    if name in _FEATURE_NETS and not overwrite:
        raise ValueError(f"feature net {name!r} is already registered")
    _FEATURE_NETS[name] = factory
    for key in [k for k in _LOADED if k[0] == name]:
        del _LOADED[key]


def available_feature_nets() -> list[str]:
    return sorted(_FEATURE_NETS)


def feature_net(name: str, device="cpu") -> nn.Module:
    """The feature net ``name`` on ``device`` in eval mode (built once per process and device)."""
    if name not in _FEATURE_NETS:
        raise ValueError(f"unknown feature net {name!r}; available: {', '.join(available_feature_nets())}")
    key = (name, str(device))
    if key not in _LOADED:
        _LOADED[key] = _FEATURE_NETS[name](torch.device(device)).eval()
    return _LOADED[key]


class Uint8Images(nn.Module):
    """[-1, 1] float images -> uint8 [0, 255] with 3 channels, as the Inception nets expect
    (quantisation as in NVlabs/edm generate.py: x * 127.5 + 128, clipped)."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (images * 127.5 + 128).clip(0, 255).to(torch.uint8)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)


def _inception(device: torch.device) -> nn.Module:
    """Inception-v3 pool features (2048), the TF-FID graph as translated by torch-fidelity."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the 'inception' feature net needs torch-fidelity, which is not installed: "
            "pip install 'optsample[inception]' (it pulls torchvision), or choose another feature net: "
            f"{', '.join(available_feature_nets())}"
        ) from err
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    return Uint8Images(net, 2048).to(device)


class AvgPoolFeatures(nn.Module):
    """Channel means over a 4x4 grid of image patches: a cheap, weight-free feature map (C * 16 features),
    for smoke tests and tiny images; not comparable with published FIDs."""

    def __init__(self, grid: int = 4):
        super().__init__()
        self.grid = grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, self.grid).flatten(1)


register_feature_net("inception", _inception)
register_feature_net("avgpool4", lambda device: AvgPoolFeatures(4))


@torch.no_grad()
def extract_features(images: torch.Tensor, net: nn.Module, device="cpu", batch_size: int = 256) -> torch.Tensor:
    """Features of ``images`` [N, C, H, W] in batches, float64 on the CPU, [N, F]."""
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else images.dtype
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device=device, dtype=dtype)
        chunks.append(net(batch).reshape(batch.shape[0], -1).to(device="cpu", dtype=torch.float64))
    return torch.cat(chunks)


def cache_root(ctx: MetricContext) -> Path:
    if ctx.cache_dir is not None:
        return Path(ctx.cache_dir)
    return Path(os.environ.get("OPTSAMPLE_CACHE", Path.home() / ".cache" / "optsample"))


def reference_features(samples: torch.Tensor, ctx: MetricContext, metric: str) -> torch.Tensor:
    """Features of the reference data under ``ctx.feature_net``, cached on disk as
    ``<cache>/features/<feature_net>-<key>.pt`` with key = ``ctx.reference_key`` or a digest of the data
    (with ``reference_key`` and a cache hit, a callable ``ctx.reference`` is never called)."""
    net_name = ctx.feature_net
    data = None
    if ctx.reference_key is not None:
        key = "".join(c if c.isalnum() or c in "-_." else "_" for c in ctx.reference_key)
    else:
        data = reference_data(samples, ctx, metric)
        key = tensor_digest(data)[:20]
    path = cache_root(ctx) / "features" / f"{net_name}-{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    if data is None:
        data = reference_data(samples, ctx, metric)
    features = extract_features(data, feature_net(net_name, ctx.device), ctx.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"features": features, "feature_net": net_name, "n": features.shape[0]}, temp)
    os.replace(temp, path)  # atomic: concurrent runs never read a half-written file
    return features


def sample_features(samples: torch.Tensor, ctx: MetricContext) -> torch.Tensor:
    return extract_features(samples, feature_net(ctx.feature_net, ctx.device), ctx.device)
