"""``optsample-study``: the main job. Classic solvers and optimizer update rules x NFE on the shipped
digits model (FID-digits, KID, class accuracy) and on the 64-D Gaussian mixture (exact metrics).

    optsample-study                 # the default study: runs/default_study -> results/default_study (~10 min, 2 CPUs)
    optsample-study --tiny          # a ~30 s end-to-end check (CI): 3 samplers x NFE {4, 6}, few samples

Every run goes through the runner (:func:`optsample.runner.app.execute` on configs composed by Hydra from
``conf/``, experiment preset ``default_study``), so each finished run is one row in ``runs/<name>`` and a
re-run skips it (resumable). Afterwards: one offline W&B run with the table of all rows
(:func:`optsample.runner.loggers.log_sweep_table`); tables and metric-vs-NFE plots per model and metric
(:mod:`optsample.runner.report`); a sample grid per sampler (rows: NFE, columns: classes 0-9) and one of all
samplers at NFE 10, under ``results/<name>/``. The sampler and NFE lists are read from
``conf/experiment/default_study.yaml``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

EXPERIMENT = "default_study"
TINY_SAMPLERS = ["euler", "heun", "momentum"]
TINY_NFE = [4, 6]
GRID_NFE = 10


@dataclass
class Part:
    """One model of the study: its runner overrides and the metrics tabulated."""

    model: str
    metrics: list
    overrides: list = field(default_factory=list)


def default_parts(n_digits: int, n_gmm: int) -> list[Part]:
    return [
        Part("digits", ["fid", "kid", "accuracy"], [f"n_samples={n_digits}", f"batch_size={n_digits}"]),
        Part("gmm64", ["rmse", "loglik", "mode_error", "mmd2_unbiased"],
             ["model=gmm64", "metric.names=[rmse,loglik,mode_error,mmd2_unbiased]", f"n_samples={n_gmm}", f"batch_size={n_gmm}"]),
    ]


def sweep_lists() -> tuple[list[str], list[int]]:
    """(samplers, NFE budgets) from the experiment preset's ``hydra.sweeper.params``."""
    from omegaconf import OmegaConf

    from .app import config_path

    params = OmegaConf.load(Path(config_path()) / "experiment" / f"{EXPERIMENT}.yaml").hydra.sweeper.params
    return [s.strip() for s in str(params.sampler).split(",")], [int(n) for n in str(params.nfe).split(",")]


def compose(overrides: list[str]) -> dict:
    """The resolved runner config of ``experiment=default_study`` + ``overrides`` (a plain dict)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from . import config as C
    from .app import config_path

    C.register_configs()
    with initialize_config_dir(config_dir=config_path(), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={EXPERIMENT}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def run_grid(parts: list[Part], samplers: list[str], nfes: list[int], common: list[str]) -> list[dict]:
    """Every (part, sampler, NFE) through the runner; finished rows are reused. Returns the rows."""
    from . import app as run

    rows, total, done = [], len(parts) * len(samplers) * len(nfes), 0
    for part in parts:
        for sampler in samplers:
            for nfe in nfes:
                t0 = time.perf_counter()
                row = run.execute(compose([*common, *part.overrides, f"sampler={sampler}", f"nfe={nfe}"]))
                rows.append(row)
                done += 1
                shown = ", ".join(f"{m}={row.get('metric.' + m, float('nan')):.4g}" for m in part.metrics)
                print(f"[{done}/{total}] {part.model} {sampler} nfe={nfe}: {shown} ({time.perf_counter() - t0:.1f}s)",
                      flush=True)
    return rows


def write_tables(rows: list[dict], parts: list[Part], out: Path) -> list[Path]:
    """Per model and metric: <out>/<model>/<metric>_by_nfe.{md,tex,csv,png} (optsample.runner.report)."""
    import pandas as pd

    from . import report

    frame, written = pd.DataFrame(rows), []
    for part in parts:
        sub = frame[frame["model.name"] == part.model]
        for metric in part.metrics:
            table = report.pivot(sub, metric, "sampler.name", "nfe_budget")
            written += report.write_tables(table, out / part.model, f"{metric}_by_nfe")
    return written


def _grid_figure(images: torch.Tensor, row_labels: list[str], col_labels: list[str], path: Path, title: str) -> None:
    """images [rows * cols, 1, 8, 8] in [-1, 1] as one labelled grid PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = len(row_labels), len(col_labels)
    tiles = images.reshape(rows, cols, 8, 8).clamp(-1, 1)
    canvas = torch.full((rows * 9 + 1, cols * 9 + 1), -1.0)
    for r in range(rows):
        for c in range(cols):
            canvas[1 + 9 * r:9 * r + 9, 1 + 9 * c:9 * c + 9] = tiles[r, c]
    fig = Figure(figsize=(0.45 * cols + 1.2, 0.45 * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(canvas.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks([4.5 + 9 * r for r in range(rows)], row_labels, fontsize=7)
    ax.set_xticks([4.5 + 9 * c for c in range(cols)], col_labels, fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _digit_samples(sampler: str, nfe: int, common: list[str]) -> torch.Tensor:
    """Samples 0-9 (classes 0-9, the runner's seeds) of model=digits with ``sampler`` at NFE ``nfe``."""
    from . import config as C
    from . import app as run

    cfg = compose([*common, "n_samples=10", "batch_size=10", f"sampler={sampler}", f"nfe={nfe}", "progress=false"])
    plan = run.plan_run(cfg)
    built = C.MODELS["digits"].build(cfg["model"])
    with torch.inference_mode():
        samples, *_ = run.generate(plan, built, run.resolve_schedule(plan, built), torch.device("cpu"))
    return samples


def write_grids(samplers: list[str], nfes: list[int], common: list[str], out: Path) -> list[Path]:
    """<out>/grids/<sampler>.png (rows NFE, columns classes) and <out>/grids/all_nfe<GRID_NFE>.png."""
    folder = out / "grids"
    folder.mkdir(parents=True, exist_ok=True)
    classes, written, at_grid_nfe = [str(c) for c in range(10)], [], []
    grid_nfe = GRID_NFE if GRID_NFE in nfes else nfes[-1]
    for sampler in samplers:
        per_nfe = [_digit_samples(sampler, nfe, common) for nfe in nfes]
        at_grid_nfe.append(per_nfe[nfes.index(grid_nfe)])
        path = folder / f"{sampler}.png"
        _grid_figure(torch.cat(per_nfe), [f"NFE {n}" for n in nfes], classes, path, f"{sampler} (model=digits)")
        written.append(path)
    path = folder / f"all_nfe{grid_nfe}.png"
    _grid_figure(torch.cat(at_grid_nfe), samplers, classes, path, f"all samplers at NFE {grid_nfe} (model=digits)")
    return written + [path]


PRINTED_METRICS = ("fid", "accuracy", "rmse")


def log_to_wandb(rows: list[dict], logger: str, name: str, runs_dir: Path) -> None:
    """All rows as one W&B table (offline unless configured otherwise), or sweep_table.csv for csv."""
    from . import loggers

    loggers.log_sweep_table({"name": logger}, rows, project="optsample", group=name, run_dir=str(runs_dir))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optsample-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="3 samplers x NFE {4, 6}, 50 / 200 samples (~30 s)")
    parser.add_argument("--name", default=None, help="study name (default default_study, or tiny_study with --tiny)")
    parser.add_argument("--runs-dir", default=None, help="result rows (default runs/<name>)")
    parser.add_argument("--out", default=None, help="tables, plots, grids (default results/<name>)")
    parser.add_argument("--samplers", default=None, help="comma-separated, overrides the preset's list")
    parser.add_argument("--nfe", default=None, help="comma-separated NFE budgets, overrides the preset's list")
    parser.add_argument("--n-digits", type=int, default=None, help="samples per digits run (default 500; tiny 50)")
    parser.add_argument("--n-gmm", type=int, default=None, help="samples per gmm64 run (default 1000; tiny 200)")
    parser.add_argument("--logger", default="wandb", choices=["wandb", "csv", "none"], help="sweep table (W&B offline)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    samplers, nfes = sweep_lists()
    if args.tiny:
        samplers, nfes = TINY_SAMPLERS, TINY_NFE
    if args.samplers:
        samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if args.nfe:
        nfes = [int(n) for n in args.nfe.split(",")]
    from .. import samplers as sampler_registry

    unknown = sorted(set(samplers) - set(sampler_registry.available()))
    if unknown or not samplers or not nfes or min(nfes) < 1:
        print(f"optsample-study: need known samplers and NFE >= 1 (unknown samplers: {unknown}; nfe: {nfes})",
              file=sys.stderr)
        return 2
    name = args.name or ("tiny_study" if args.tiny else EXPERIMENT)
    runs_dir = Path(args.runs_dir or f"runs/{name}").absolute()
    out = Path(args.out or f"results/{name}").absolute()
    n_digits = args.n_digits or (50 if args.tiny else 500)
    n_gmm = args.n_gmm or (200 if args.tiny else 1000)
    torch.set_num_threads(args.threads)
    common = [f"name={name}", f"results_dir={runs_dir}", "logger=none", "progress=false", "device=cpu"]
    parts = default_parts(n_digits, n_gmm)
    t0 = time.perf_counter()
    rows = run_grid(parts, samplers, nfes, common)
    t_runs = time.perf_counter() - t0
    written = write_tables(rows, parts, out)
    written += write_grids(samplers, nfes, common, out)
    log_to_wandb(rows, args.logger, name, runs_dir)
    summary = {
        "runs": len(rows), "samplers": samplers, "nfe": nfes, "n_samples": {"digits": n_digits, "gmm64": n_gmm},
        "seconds_runs": round(t_runs, 1), "seconds_total": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for table in sorted(out.glob("*/*_by_nfe.md")):  # the headline tables on the terminal too
        if table.name.split("_by_")[0] in PRINTED_METRICS:
            print(f"\nmodel={table.parent.name}: {table.read_text(encoding='utf-8')}")
    print(json.dumps(summary))
    print(f"wrote {len(written) + 1} files under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
