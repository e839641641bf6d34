"""Reading and writing the digits networks as safetensors, the architecture in the file's metadata.

The shipped files live in ``optsample/zoo/digits/assets/`` (package data): ``digits_edm.safetensors`` (EMA weights of
the UNet; metadata: channels, emb_dim, sigma_data), ``digits_classifier.safetensors`` and ``digits.json``
(provenance: the command that made them, seed, wall time, losses, accuracies, SHA-256 of both files).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from ...models import EDMPrecond
from .nets import DigitsClassifier, DigitsJudge, DigitsUNet

ASSET_DIR = Path(__file__).resolve().parent / "assets"
DENOISER_FILE = "digits_edm.safetensors"
CLASSIFIER_FILE = "digits_classifier.safetensors"
PROVENANCE_FILE = "digits.json"
JUDGE_FILE = "digits_judge.safetensors"  # the class-guidance judge (optsample/zoo/digits/judge.py)
JUDGE_PROVENANCE_FILE = "digits_judge.json"


def asset(name: str) -> Path:
    path = ASSET_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"shipped digits weights {path} are missing; retrain them with `optsample-train install=true`"
        )
    return path


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(module: torch.nn.Module, path: str | Path, metadata: dict) -> Path:
    """``module``'s state dict as safetensors with ``metadata`` (values stored as JSON strings)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


def _read(path: str | Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return load_file(str(path)), metadata


def load_denoiser(path: str | Path | None = None) -> EDMPrecond:
    """The digits UNet under EDM preconditioning, in eval mode (default: the shipped EMA weights)."""
    state, meta = _read(path or asset(DENOISER_FILE))
    missing = [k for k in ("channels", "emb_dim", "sigma_data") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} is not a digits denoiser: metadata lacks {missing}")
    net = DigitsUNet(channels=meta["channels"], emb_dim=meta["emb_dim"])
    net.load_state_dict(state)
    return EDMPrecond(net, sigma_data=meta["sigma_data"]).eval().requires_grad_(False)


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    state, _ = _read(path or asset(CLASSIFIER_FILE))
    net = DigitsClassifier()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def shipped_classifier() -> DigitsClassifier:
    """The shipped classifier (loaded once per process; used by FID-digits and the accuracy metric)."""
    return load_classifier()


def load_judge(path: str | Path | None = None) -> DigitsJudge:
    state, meta = _read(path or asset(JUDGE_FILE))
    net = DigitsJudge(hidden=meta.get("hidden", 128))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def shipped_judge() -> DigitsJudge:
    """The shipped judge of class guidance (a network other than the guide, :class:`DigitsJudge`)."""
    return load_judge()


def provenance() -> dict:
    return json.loads(asset(PROVENANCE_FILE).read_text(encoding="utf-8"))
