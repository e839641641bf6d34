"""Does Adam help guidance on a real network? A small measured comparison on the shipped digits model.

Tasks (the runner's task= options): 90 % random inpainting and 4x super-resolution with sigma_y 0.05, and
class guidance (guide: the shipped CNN on x0_hat; judge: the shipped pixel MLP). Sampler ``ddim`` (eta 0)
at NFE 20 on the karras schedule; methods from the ``guidance=`` presets: DPS (sgd), AdamDPS (adam, b1 .14,
b2 .03), momentum (beta .5), RMSProp (beta2 .5), sign and MPGD (backprop-free). Each method's lr is tuned
on a grid (preset x 10^(k/2), k = -1..3) on tuning problems (sample seed 0, held-out digits 0..39,
measurement seed 1), then reported on held-out problems (sample seed 1000, digits 200..359, measurement
seed 2). Inverse tasks are tuned on PSNR; class guidance on guide accuracy, ties to lower FID-digits (the
judge is never used for tuning). About 4-5 CPU-minutes on one thread.

    PYTHONPATH=. python experiments/guidance_as_optimization/digits_compare.py
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

from optsample.runner import app as R
from optsample.runner import config as C
from study import run_resolved  # this folder's study.py (the script's directory is on sys.path)

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parents[2] / "results" / "guidance_as_optimization"
METHODS = {"DPS": "dps", "AdamDPS": "adam_dps", "momentum": "momentum", "RMSProp": "rmsprop", "sign": "sign",
           "MPGD": "mpgd"}
TASKS = {"inpaint 90 %": "digits_inpaint90", "super-resolution 4x": "digits_sr4", "class guidance": "digits_class"}
GRID = [10 ** (k / 2) for k in range(-1, 4)]
TUNE = dict(seed=0, offset=0, problem_seed=1, n=40)
HELD_OUT = dict(seed=1000, offset=200, problem_seed=2, n=160)


def resolved(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def run(task: str, preset: str, lr: float | None, split: dict):
    """(task metrics, samples) of one run through the runner's own pieces (no result files)."""
    overrides = ["logger=none", "metric=none", "progress=false", "sampler=ddim", "nfe=20", f"task={task}",
                 f"guidance={preset}", f"seed={split['seed']}", f"n_samples={split['n']}", f"batch_size={split['n']}"]
    if task != "digits_class":
        overrides += [f"task.offset={split['offset']}", f"task.problem_seed={split['problem_seed']}"]
    if lr is not None:
        overrides.append(f"guidance.lr={lr}")
    return run_resolved(resolved(overrides))


def score(task: str, metrics: dict) -> tuple:
    """What tuning maximises (a tuple, compared in order)."""
    if task == "digits_class":
        return (metrics["guide_accuracy"], -metrics["fid_digits"])
    return (metrics["psnr"] if math.isfinite(metrics["psnr"]) else -math.inf,)


def main() -> None:
    start = time.perf_counter()
    rows, pictures = [], {}
    for task_label, task in TASKS.items():
        base, samples, prepared = run(task, "none", None, HELD_OUT)
        rows.append({"task": task_label, "method": "no guidance", "lr": "", **base})
        for label, preset in METHODS.items():
            preset_lr = R.guidance_tasks.GUIDANCE_PRESETS[preset].lr
            tried = [(score(task, run(task, preset, preset_lr * f, TUNE)[0]), preset_lr * f) for f in GRID]
            best_lr = max(tried)[1]
            metrics, samples, prepared = run(task, preset, best_lr, HELD_OUT)
            rows.append({"task": task_label, "method": label, "lr": f"{best_lr:.3g}", **metrics})
            print(f"{task_label:22s} {label:9s} lr {best_lr:7.3g} {metrics}", flush=True)
            if task == "digits_inpaint90":
                pictures[label] = (samples[:8], prepared.problem)
    seconds = time.perf_counter() - start
    write(rows, pictures, seconds)


def write(rows, pictures, seconds) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in rows for k in row} - {"task", "method", "lr"})
    with open(OUT / "digits.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "method", "lr", *keys])
        writer.writeheader()
        writer.writerows(rows)
    lines = []
    for task_label in TASKS:
        task_rows = [r for r in rows if r["task"] == task_label]
        if task_label == "class guidance":
            cols = ["judge_accuracy", "guide_accuracy", "fid_digits"]
        else:
            cols = ["psnr", "ssim", "accuracy", "fid_digits"]
        lines += [f"**{task_label}** (held-out: {HELD_OUT['n']} samples)", "",
                  "| method | tuned lr | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        lines += [f"| {r['method']} | {r['lr'] or '-'} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for r in task_rows]
        lines.append("")
    lines.append(f"Wall time {seconds:.0f} s on one CPU thread.")
    (OUT / "digits.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    picture(pictures)


def picture(pictures) -> None:
    """8 held-out 90 % inpainting problems: measurement | reconstruction per method | truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problem = next(iter(pictures.values()))[1]
    first = torch.arange(8)
    operator = problem.operator.select(first) if hasattr(problem.operator, "select") else problem.operator
    columns = [("measurement", operator.display(problem.y[first]))] + [(k, v[0]) for k, v in pictures.items()]
    columns.append(("truth", problem.truth[:8]))
    fig, axes = plt.subplots(8, len(columns), figsize=(1.1 * len(columns), 9))
    for j, (title, images) in enumerate(columns):
        for i in range(8):
            ax = axes[i, j]
            ax.imshow(images[i, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "digits_inpaint90.png", dpi=80)


if __name__ == "__main__":
    main()
