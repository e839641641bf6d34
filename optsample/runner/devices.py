"""Device choice and model precision for the runner.

``device=auto`` takes a GPU when there is one (CUDA, else Apple MPS), else the CPU. In a sweep each
job takes its own GPU: job number modulo ``torch.cuda.device_count()``, so joblib / submitit workers
on one multi-GPU node spread over the cards.
"""

from __future__ import annotations

import torch

from .config import DEVICES, MODEL_DTYPES


class DeviceError(ValueError):
    """An impossible device or dtype request; raised before any work."""


def check_device_spec(spec: str) -> None:
    base, _, index = spec.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise DeviceError(f"device must be one of {list(DEVICES)} or cuda:<index>, got {spec!r}")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str, job_num: int = 0) -> torch.device:
    """``auto|cpu|cuda|cuda:<i>|mps`` -> a torch.device; ``auto``/``cuda`` pick GPU job_num % count."""
    check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available():
            spec = "mps"
        else:
            return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device=mps was asked for but torch.backends.mps is not available")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={spec} was asked for but torch.cuda.is_available() is False")
    count = torch.cuda.device_count()
    index = int(spec.partition(":")[2]) if ":" in spec else job_num % count
    if index >= count:
        raise DeviceError(f"device={spec}: only {count} CUDA device(s)")
    return torch.device("cuda", index)


def model_dtype(name: str) -> torch.dtype:
    if name not in MODEL_DTYPES:
        raise DeviceError(f"model.dtype must be one of {list(MODEL_DTYPES)}, got {name!r}")
    return getattr(torch, name)


class InDtype:
    """Run a denoiser in ``dtype``: x is cast to it, the output back to x's dtype; sigma stays in the
    sampler's precision (float16 would move a discrete timestep by up to ~0.4).

    The sampler's state stays float32 (core.sample's state dtype); only the model computes in half
    precision, as diffusers upcasts in ``step`` (shared/REFERENCES.md, diffusers #7426).
    """

    def __init__(self, denoiser, dtype: torch.dtype):
        self.inner, self.dtype = denoiser, dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        return self.inner(x.to(self.dtype), sigma, **extra).to(x.dtype)

    def start_run(self, denoiser=None) -> None:
        """Pass the start of a sampling run on to a stateful model (a guided denoiser resets its rule state)."""
        start = getattr(self.inner, "start_run", None)
        if start is not None:
            start(denoiser)
