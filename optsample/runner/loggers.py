"""Run loggers: W&B (offline by default: no account needed; ``mode: online`` syncs), CSV, none.

``make_logger(cfg_logger, project=, group=, name=, run_dir=)`` returns an object with
``log_run(config, metrics, samples, trajectory, caption=)`` and ``finish()`` (``caption`` says what the samples'
picture shows: a task's measurement | reconstruction | truth columns); ``log_sweep_table`` logs all rows
of a sweep at its end. ``cfg_logger["kind"]`` (or ``["name"]``, the runner's config field) picks
"wandb", "csv" or "none". A W&B failure (no network, bad key, ...) warns and the run goes on.

W&B online without a route to the server: ``wandb.init`` waits ``init_timeout`` seconds (W&B's default 90 s
per run; here ``INIT_TIMEOUT_S``), then this run and every later run of the sweep log offline, said once.
"Later runs" are those of this process and, through a marker file in ``state_dir`` (the sweep dir), those
of a launcher's other worker processes. The offline runs upload with ``wandb sync <run dir>/wandb``.

Pictures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display):
a sample grid for images [N, C, H, W], a scatter for vectors [N, D], and for 2-D models the sampler
paths, optionally over the density's contours, like optimizer-path pictures.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

LOGGER_KINDS = ("wandb", "csv", "none")
INIT_TIMEOUT_S = 10.0  # wandb.init's wait for the server (W&B's default: 90 s)
OFFLINE_MARKER = ".wandb_offline"  # in the sweep dir: an online init failed, the sweep's later runs go offline
_OFFLINE = {"reason": None}  # this process: why W&B went offline (None while online works)


# ----------------------------------------------------------------------------------------------
# Pictures


def image_grid(images: torch.Tensor, max_images: int = 64, padding: int = 2) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> one uint8 grid [rows*(H+p)+p, cols*(W+p)+p, 3], ceil(sqrt(n)) per row
    (quantisation as NVlabs/edm generate.py: x * 127.5 + 128, clipped)."""
    images = images[:max_images].detach().to("cpu", torch.float32)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images[:, :3]
    n, _, height, width = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (height + padding) + padding, cols * (width + padding) + padding, 3), dtype=np.uint8)
    pixels = (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k in range(n):
        top, left = padding + (k // cols) * (height + padding), padding + (k % cols) * (width + padding)
        grid[top:top + height, left:left + width] = pixels[k]
    return grid


def _figure(size=(5, 5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _to_array(fig) -> np.ndarray:
    """RGB uint8 pixels of an Agg figure."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def scatter_plot(samples: torch.Tensor, title: str = "samples") -> np.ndarray:
    """Vectors [N, D]: scatter of coordinates 0 and 1 (a histogram when D == 1)."""
    x = samples.detach().to("cpu", torch.float64).reshape(samples.shape[0], -1).numpy()
    fig, ax = _figure()
    if x.shape[1] == 1:
        ax.hist(x[:, 0], bins=50)
    else:
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5)
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    return _to_array(fig)


def trajectory_plot(trajectory: list[torch.Tensor], log_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    max_paths: int = 64) -> np.ndarray:
    """Paths of 2-D samples through the steps (each entry [N, 2]), over the contours of ``log_density``
    (e.g. ``GaussianMixture.log_prob``) when given; start points hollow, end points filled."""
    paths = torch.stack([t.detach().to("cpu", torch.float64)[:max_paths] for t in trajectory]).numpy()  # [T, P, 2]
    fig, ax = _figure((6, 6))
    end = paths[-1]
    lo, hi = end.min(0), end.max(0)
    margin = 0.25 * (hi - lo) + 1e-3
    lo, hi = lo - margin, hi + margin
    if log_density is not None:
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
        grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
        with torch.no_grad():
            z = log_density(grid).reshape(gx.shape).numpy()
        levels = np.linspace(z.max() - 12.0, z.max(), 13)  # the last 12 nats below the peak: the modes, not the far tails
        ax.contourf(gx, gy, z, levels=levels, cmap="Blues", alpha=0.6, extend="min")
    ax.plot(paths[:, :, 0], paths[:, :, 1], color="tab:red", linewidth=0.6, alpha=0.6)
    ax.scatter(paths[0, :, 0], paths[0, :, 1], s=8, facecolors="none", edgecolors="tab:gray")
    ax.scatter(end[:, 0], end[:, 1], s=8, color="black")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_title("sampler paths")
    return _to_array(fig)


def sample_picture(samples: torch.Tensor) -> np.ndarray | None:
    """The picture of a run's samples: a grid for images, a scatter / histogram for vectors."""
    if samples.ndim == 4:
        return image_grid(samples)
    if samples.ndim == 2:
        return scatter_plot(samples)
    return None


def _is_2d_path(trajectory) -> bool:
    return bool(trajectory) and all(t.ndim == 2 and t.shape[1] == 2 for t in trajectory)


def _save_png(array: np.ndarray, path: Path) -> None:
    from matplotlib.image import imsave

    imsave(path, array)


# ----------------------------------------------------------------------------------------------
# Loggers


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class NoneLogger:
    """Logs nothing."""

    def log_run(self, config: dict, metrics: dict, samples: torch.Tensor | None = None,
                trajectory: list[torch.Tensor] | None = None, *, log_density=None, caption: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class CsvLogger:
    """Appends one row (flattened config + metrics) to ``<run_dir>/log.csv`` and saves the pictures as
    ``samples.png`` / ``trajectory.png`` next to it (the samples' caption in ``samples.txt``)."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def log_run(self, config: dict, metrics: dict, samples: torch.Tensor | None = None,
                trajectory: list[torch.Tensor] | None = None, *, log_density=None, caption: str | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        row = {**_flatten(config), **{f"metric.{k.removeprefix('metric.')}": v for k, v in metrics.items()}}
        path = self.run_dir / "log.csv"
        header = None
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow(row)
        picture = sample_picture(samples) if samples is not None else None
        if picture is not None:
            _save_png(picture, self.run_dir / "samples.png")
            if caption:
                (self.run_dir / "samples.txt").write_text(caption + "\n", encoding="utf-8")
        if _is_2d_path(trajectory):
            _save_png(trajectory_plot(trajectory, log_density), self.run_dir / "trajectory.png")

    def finish(self) -> None:
        pass


class WandbLogger:
    """One W&B run per sampling run (``reinit="create_new"``: several may live in one process).

    cfg keys: ``mode`` (offline | online | disabled; default offline), ``entity``, ``log_samples``
    (default True). Any exception from W&B becomes a warning, and the logger turns itself off.
    """

    def __init__(self, cfg: dict, *, project: str, group: str, name: str, run_dir: str, job_type: str = "sample",
                 state_dir: str | None = None):
        self.cfg = dict(cfg)
        self.run = None
        self._guard("init", lambda: self._init(project, group, name, run_dir, job_type, state_dir))

    def _init(self, project, group, name, run_dir, job_type, state_dir):
        import wandb

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        timeout = float(self.cfg.get("init_timeout") or INIT_TIMEOUT_S)
        settings = wandb.Settings(reinit="create_new", silent=True, console="off", disable_git=True, init_timeout=timeout)
        mode = self.cfg.get("mode") or "offline"
        marker = Path(state_dir) / OFFLINE_MARKER if state_dir else None
        if mode == "online" and (_OFFLINE["reason"] or (marker is not None and marker.exists())):
            mode = "offline"  # an earlier run of this sweep found no server: do not wait again
        start = dict(project=project, group=group, name=name, dir=str(run_dir), job_type=job_type,
                     entity=self.cfg.get("entity"), settings=settings)
        try:
            self.run = wandb.init(mode=mode, **start)
        except Exception as err:
            if mode != "online":
                raise
            _go_offline(err, timeout, run_dir, marker)
            self.run = wandb.init(mode="offline", **start)

    def _guard(self, action: str, fn: Callable[[], Any]) -> None:
        if action != "init" and self.run is None:
            return
        try:
            fn()
        except Exception as err:  # W&B must never stop a run: no network, bad key, disk full, ...
            warnings.warn(f"W&B {action} failed ({type(err).__name__}: {err}); continuing without W&B", RuntimeWarning)
            self.run = None

    def log_run(self, config: dict, metrics: dict, samples: torch.Tensor | None = None,
                trajectory: list[torch.Tensor] | None = None, *, log_density=None, caption: str | None = None) -> None:
        """``caption``: what the samples' picture shows, e.g. a task's "measurement | reconstruction | truth"."""
        self._guard("log", lambda: self._log(config, metrics, samples, trajectory, log_density, caption))

    def _log(self, config, metrics, samples, trajectory, log_density, caption=None):
        import wandb

        self.run.config.update(config, allow_val_change=True)
        payload = {f"metric/{k.removeprefix('metric.')}": v for k, v in metrics.items()}
        if self.cfg.get("log_samples", True):
            picture = sample_picture(samples) if samples is not None else None
            if picture is not None:
                payload["samples"] = wandb.Image(picture, caption=caption)
            if _is_2d_path(trajectory):
                payload["trajectory"] = wandb.Image(trajectory_plot(trajectory, log_density))
        self.run.log(payload)

    def log_table(self, key: str, rows: list[dict]) -> None:
        self._guard("table", lambda: self.run.log({key: rows_table(rows)}))

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


def _go_offline(err: Exception, timeout: float, run_dir, marker: Path | None) -> None:
    """After the first failed online init: later runs of this process (and, via ``marker``, of the sweep's
    other workers) log offline at once; warn once."""
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    _OFFLINE["reason"] = first_line
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(first_line + "\n")
    runs = marker.parent / "*" / "wandb" if marker is not None else Path(run_dir) / "wandb"
    warnings.warn(
        f"W&B online init failed after at most {timeout:g} s ({type(err).__name__}: {first_line}); this run and the "
        f"rest of the sweep log offline: upload them later with `wandb sync {runs}/offline-run-*`", RuntimeWarning,
    )


def rows_table(rows: list[dict]):
    """A ``wandb.Table`` of result rows: union of the keys as columns (first-seen order); values that are not
    numbers, strings or booleans are JSON-encoded."""
    import wandb

    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return json.dumps(value, default=str)

    return wandb.Table(columns=columns, data=[[cell(row.get(c)) for c in columns] for row in rows])


def logger_kind(cfg_logger: dict) -> str:
    kind = cfg_logger.get("kind", cfg_logger.get("name", "none"))
    if kind not in LOGGER_KINDS:
        raise ValueError(f"unknown logger kind {kind!r}; choose one of {', '.join(LOGGER_KINDS)}")
    return kind


def make_logger(cfg_logger: dict, *, project: str, group: str, name: str, run_dir: str, state_dir: str | None = None):
    """The run logger named by ``cfg_logger["kind"]`` (or ``["name"]``): wandb, csv or none. ``state_dir``
    (the sweep dir) is shared by a sweep's runs: W&B's switch to offline is kept there."""
    kind = logger_kind(cfg_logger)
    if kind == "wandb":
        return WandbLogger(cfg_logger, project=project, group=group, name=name, run_dir=run_dir, state_dir=state_dir)
    if kind == "csv":
        return CsvLogger(run_dir)
    return NoneLogger()


def log_sweep_table(cfg_logger: dict, rows: list[dict], *, project: str, group: str, run_dir: str) -> None:
    """At the end of a sweep: all rows as one W&B Table (run ``<group>-table``), or ``sweep_table.csv``
    for the csv logger; nothing for none."""
    kind = logger_kind(cfg_logger)
    if kind == "wandb":
        logger = WandbLogger(cfg_logger, project=project, group=group, name=f"{group}-table", run_dir=run_dir,
                             job_type="sweep-table", state_dir=run_dir)
        logger.log_table("results", rows)
        logger.finish()
    elif kind == "csv" and rows:
        import pandas as pd

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(Path(run_dir) / "sweep_table.csv", index=False)
