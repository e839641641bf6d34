"""Train and ship the judge of digits class guidance: ``python -m optsample.zoo.digits.judge``.

The judge (:class:`~.nets.DigitsJudge`, a pixel MLP) is trained like the FID-digits classifier
(:func:`~.training.train_classifier`: Adam, cross-entropy, +-1 pixel shifts, the train split) with another
seed; it writes ``assets/digits_judge.safetensors`` and its provenance ``assets/digits_judge.json``
(command, config, seed, seconds, held-out accuracy, SHA-256, versions).
"""

from __future__ import annotations

import json
import platform
import sys
import time

import torch

from . import checkpoints, data, training
from .nets import DigitsJudge, parameter_count

CONFIG = {"seed": 7, "epochs": 40, "batch_size": 64, "lr": 0.002, "hidden": 128, "threads": 1}


def train_and_ship(out_dir=None) -> dict:
    """Train the judge with CONFIG and write it (and its provenance) to ``out_dir`` (default: the assets)."""
    torch.set_num_threads(CONFIG["threads"])
    start = time.perf_counter()
    net, history = training.train_classifier(epochs=CONFIG["epochs"], batch_size=CONFIG["batch_size"], lr=CONFIG["lr"],
                                             seed=CONFIG["seed"], make_net=lambda: DigitsJudge(CONFIG["hidden"]))
    out = checkpoints.ASSET_DIR if out_dir is None else __import__("pathlib").Path(out_dir)
    path = checkpoints.save(net, out / checkpoints.JUDGE_FILE, {"hidden": CONFIG["hidden"]})
    heldout = data.load("heldout")
    record = {
        "command": "python -m optsample.zoo.digits.judge", "config": CONFIG,
        "architecture": "DigitsJudge: MLP 64 -> 128 -> 128 -> 10, ReLU (the guide is a CNN, DigitsClassifier)",
        "parameters": parameter_count(net), "loss_first_50": history.mean_loss(first=50),
        "loss_last_50": history.mean_loss(last=50), "seconds": round(time.perf_counter() - start, 1),
        "heldout_accuracy": training.accuracy(net, *heldout),
        "guide_heldout_accuracy": training.accuracy(checkpoints.load_classifier(), *heldout),
        "sha256": checkpoints.file_digest(path),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    (out / checkpoints.JUDGE_PROVENANCE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    print(json.dumps(train_and_ship(sys.argv[1] if len(sys.argv) > 1 else None), indent=1))
