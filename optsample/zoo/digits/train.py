"""``optsample-train``: train the embedded default (the digits denoiser and the FID-digits classifier).

    optsample-train install=true          # retrain the shipped weights (seeded; ~4 min on 1 CPU thread)
    optsample-train iterations=50 classifier_epochs=1 out_dir=/tmp/smoke

Writes to ``out_dir`` (default: Hydra's run dir ``outputs/train/<time>``): ``digits_edm.safetensors`` (EMA
weights), ``digits_classifier.safetensors``, ``digits.json`` (provenance), ``loss.csv`` and ``loss.png``
(the loss curve), ``checkpoints/step_<k>.safetensors`` every ``checkpoint_every`` steps and
``samples.png``; with ``logger=wandb`` the curve and the final numbers also go to a W&B run (offline).
``install=true`` copies the three files into ``optsample/zoo/digits/assets/``. The loss and the recipe are in
:mod:`optsample.zoo.digits.training`.
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

LOGGERS = ("csv", "wandb", "none")


@dataclass
class TrainConfig:
    seed: int = 0
    iterations: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    channels: int = 32  # UNet width (435k parameters at 32)
    emb_dim: int = 64
    p_mean: float = -1.2  # EDM: ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022, Table 1)
    p_std: float = 1.2
    label_dropout: float = 0.1  # null-class probability, for classifier-free guidance
    classifier_epochs: int = 30
    classifier_batch_size: int = 64
    classifier_lr: float = 2e-3
    checkpoint_every: int = 500
    threads: int = 1  # torch CPU threads; 1 avoids oversubscription on shared machines and keeps runs identical
    out_dir: Optional[str] = None  # None: Hydra's run dir
    install: bool = False  # copy the weights into optsample/zoo/digits/assets/ (the shipped ones)
    logger: str = "csv"  # csv | wandb (offline) | none: where the loss curve goes besides loss.csv / loss.png
    progress: bool = True


def check(cfg: TrainConfig) -> None:
    """Reject impossible settings before any work, naming the key."""
    positive = ("iterations", "batch_size", "lr", "channels", "emb_dim", "p_std", "classifier_epochs",
                "classifier_batch_size", "classifier_lr", "checkpoint_every", "threads")
    for key in positive:
        if not getattr(cfg, key) > 0:
            raise ValueError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if not 0 <= cfg.label_dropout < 1:
        raise ValueError(f"label_dropout must be in [0, 1), got {cfg.label_dropout}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.channels % 8:
        raise ValueError(f"channels must be a multiple of 8 (GroupNorm with 8 groups), got {cfg.channels}")
    if cfg.logger not in LOGGERS:
        raise ValueError(f"logger {cfg.logger!r} is not one of {list(LOGGERS)}")


def write_loss_curve(steps: list, losses: list, out: Path) -> None:
    """``loss.csv`` (step, loss, running mean over 50 steps) and ``loss.png``."""
    window, running = 50, []
    for k in range(len(losses)):
        chunk = losses[max(0, k - window + 1):k + 1]
        running.append(sum(chunk) / len(chunk))
    with open(out / "loss.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "loss_mean50"])
        writer.writerows(zip(steps, losses, running))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, running, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png")


def sample_grid(denoiser, out: Path, guidance: float = 2.0) -> torch.Tensor:
    """10 samples of each class (Heun, NFE 19) as ``samples.png``; returns them."""
    from ...runner import loggers
    from . import GuidedDenoiser
    from ...samplers import initial_noise, sample
    from ...schedules import karras

    labels = torch.arange(100) % 10
    sigmas = karras(10, sigma_min=0.002, sigma_max=80.0)
    x = initial_noise(list(range(100)), (1, 8, 8)) * float(sigmas[0])
    with torch.no_grad():
        images = sample("heun", GuidedDenoiser(denoiser, guidance), x, sigmas, extra_args={"class_labels": labels})
    from matplotlib.image import imsave

    imsave(out / "samples.png", loggers.image_grid(images, max_images=100).repeat(4, 0).repeat(4, 1))
    return images


def train(cfg: TrainConfig, out: Path) -> dict:
    """Train both networks into ``out``; returns the provenance dict (also written as digits.json)."""
    from tqdm.auto import tqdm

    from . import checkpoints, data, training

    check(cfg)
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    t_begin = time.perf_counter()
    bar = tqdm(total=cfg.iterations, desc="denoiser", disable=not cfg.progress)
    arch = {"channels": cfg.channels, "emb_dim": cfg.emb_dim}

    def on_step(step, loss, ema):
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
        if step % cfg.checkpoint_every == 0:
            checkpoints.save(ema.net, out / "checkpoints" / f"step_{step:06d}.safetensors",
                             {**arch, "sigma_data": ema.sigma_data, "step": step})

    denoiser, history = training.train_denoiser(
        iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, ema_decay=cfg.ema_decay,
        channels=cfg.channels, emb_dim=cfg.emb_dim, p_mean=cfg.p_mean, p_std=cfg.p_std,
        label_dropout=cfg.label_dropout, seed=cfg.seed, on_step=on_step,
    )
    bar.close()
    meta = {**arch, "sigma_data": denoiser.sigma_data, "step": cfg.iterations}
    denoiser_path = checkpoints.save(denoiser.net, out / checkpoints.DENOISER_FILE, meta)
    write_loss_curve(history.steps, history.losses, out)
    classifier, classifier_history = training.train_classifier(
        epochs=cfg.classifier_epochs, batch_size=cfg.classifier_batch_size, lr=cfg.classifier_lr, seed=cfg.seed,
    )
    classifier_path = checkpoints.save(classifier, out / checkpoints.CLASSIFIER_FILE, {"num_features": 64})
    held_images, held_labels = data.load("heldout")
    images = sample_grid(denoiser, out)
    record = {
        "command": "optsample-train " + " ".join(sys.argv[1:]),
        "config": asdict(cfg) | {"out_dir": None},
        "data": {"source": "sklearn.datasets.load_digits", "scaling": "x / 8 - 1", "split_seed": data.SPLIT_SEED,
                 "train": len(data.load("train")[1]), "heldout": len(held_labels)},
        "denoiser": {"parameters": sum(p.numel() for p in denoiser.parameters()), "sigma_data": denoiser.sigma_data,
                     "loss_first_50": history.mean_loss(first=50), "loss_last_50": history.mean_loss(last=50),
                     "seconds": round(history.seconds, 1), "sha256": checkpoints.file_digest(denoiser_path)},
        "classifier": {"parameters": sum(p.numel() for p in classifier.parameters()),
                       "heldout_accuracy": training.accuracy(classifier, held_images, held_labels),
                       "seconds": round(classifier_history.seconds, 1),
                       "sha256": checkpoints.file_digest(classifier_path)},
        "samples_accuracy_heun_nfe19_guidance2": training.accuracy(classifier, images, torch.arange(100) % 10),
        "wall_seconds": round(time.perf_counter() - t_begin, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "host": platform.node(),
    }
    (out / checkpoints.PROVENANCE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log_to_logger(cfg, record, history, images, out)
    if cfg.install:
        for name in (checkpoints.DENOISER_FILE, checkpoints.CLASSIFIER_FILE, checkpoints.PROVENANCE_FILE):
            shutil.copyfile(out / name, checkpoints.ASSET_DIR / name)
    return record


def log_to_logger(cfg: TrainConfig, record: dict, history, images: torch.Tensor, out: Path) -> None:
    """With ``logger=wandb``: the loss curve (a table) and final numbers in an offline W&B run (optsample.runner.loggers)."""
    if cfg.logger != "wandb":
        return
    from ...runner import loggers, results

    logger = loggers.make_logger({"name": "wandb"}, project="optsample", group="train", name="digits-train",
                                 run_dir=str(out))
    try:
        numbers = {k: v for k, v in results.flatten(record).items() if isinstance(v, (int, float))}
        logger.log_run(asdict(cfg), numbers, images)
        logger.log_table("loss", [{"step": step, "loss": loss} for step, loss in zip(history.steps, history.losses)])
    finally:
        logger.finish()


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def task(cfg) -> None:
    from omegaconf import OmegaConf

    train_cfg = TrainConfig(**OmegaConf.to_container(cfg, resolve=True))
    out = Path(train_cfg.out_dir).absolute() if train_cfg.out_dir else _output_dir()
    record = train(train_cfg, out)
    print(json.dumps({k: record[k] for k in ("denoiser", "classifier", "wall_seconds")}, indent=1))
    print(f"wrote {out}" + (" and installed the weights into optsample/zoo/digits/assets/" if train_cfg.install else ""))


def main() -> None:
    import hydra
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    # The primary config lives here, not in conf/: a folder there is a group that optsample-run --help lists.
    store.store(name="train", node={
        "defaults": ["train_schema", "_self_"],
        "hydra": {"job": {"chdir": False}, "run": {"dir": "outputs/train/${now:%Y-%m-%d_%H-%M-%S}"}},
    })
    hydra.main(config_path=None, config_name="train", version_base="1.3")(task)()


if __name__ == "__main__":
    from optsample.zoo.digits.train import main as _main

    _main()
