"""Does Adam help guidance? Every method tuned with Optuna at the same trial budget, reported on held-out problems.

Issue 12, item 4. Methods (the runner's ``guidance=`` presets): DPS (sgd), AdamDPS (adam), momentum, RMSProp,
sign and MPGD (backprop-free). Tasks (``conf/experiment/guidance_study_<task>.yaml``): gmm_inverse d = 8 (and
80), d_y = 2, exact (sliced W2 to exact posterior samples over the floor between two exact sets); digits
inpainting 90 %, 4x and 2x super-resolution, box inpainting, 3x3 blur (PSNR, sigma_y 0.05); digits class
guidance (the judge's accuracy). Each method's
search space is its ``conf/experiment/guidance_tune_<method>.yaml`` (``hydra.sweeper.params``) and the
sweeper's settings are ``guidance_tune.yaml`` (16 trials, TPE seeded 0, 6 random start-up trials): this
script reads both and runs the same seeded TPE in-process (``study.ask`` / ``trial._suggest`` in the
sweeper's order, one trial at a time, diverging trials failed as the sweeper does), so

    optsample-run -m 'experiment=[guidance_study_inpaint90,guidance_tune_adam_dps]' hydra.sweeper.direction=maximize

is the same tuning on the preset's one tuning split. Differences, all the same for every method: trial 0 is
the method's preset (enqueued, so tuning never ends worse than the preset on the tuning problems), and on
gmm_inverse a trial's value is the mean over several tuning problems (3 at d = 8, 2 at d = 80; the
sweeper's run has one).

Phases: (1) tune every (task, method) on the tuning problems -> ``study_best_params.json`` (written after each
tuning, so a late stop keeps them); (2) evaluate the best parameters on held-out problems (gmm: other
problem seeds and sample seeds; digits: other images, masks / noise and sample seeds; class guidance: other
sample seeds), rows appended to ``study_heldout.csv`` as they finish; (3) tables (mean +- std over the
held-out problems / problem sets, best per task in bold) ``study.md`` and the bar plot ``study.png``.

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/guidance_as_optimization/study.py               # all
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/guidance_as_optimization/study.py --held-out    # (2)+(3)
    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/guidance_as_optimization/study.py --tables      # (3)
    ... --tasks gmm8,inpaint90 --trials 4                                                             # a subset
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONF = REPO / "conf" / "experiment"
OUT = REPO / "results" / "guidance_as_optimization"
METHODS = {"DPS": "dps", "AdamDPS": "adam_dps", "momentum": "momentum", "RMSProp": "rmsprop", "sign": "sign",
           "MPGD": "mpgd"}
MAXIMISE = {"metric.psnr", "metric.ssim", "metric.accuracy", "metric.judge_accuracy", "metric.guide_accuracy"}


@dataclass(frozen=True)
class Split:
    """One run's problems: the sample seed, and for the tasks that have them the problem seed and image offset."""

    seed: int
    problem_seed: int | None = None
    offset: int | None = None
    n: int | None = None  # samples (None: the preset's)
    extra: tuple = ()  # further overrides (tests: a smaller run)

    def overrides(self, task: str) -> list[str]:
        out = [f"seed={self.seed}"]
        if self.problem_seed is not None:
            out.append(f"task.problem_seed={self.problem_seed}")
        if self.offset is not None:
            out.append(f"task.offset={self.offset}")
        if self.n is not None:
            out += [f"n_samples={self.n}", f"batch_size={self.n}"]
        return [*out, *self.extra]


@dataclass(frozen=True)
class Task:
    label: str
    preset: str  # conf/experiment/guidance_study_<preset>.yaml
    tuning: tuple  # Splits averaged into one trial's value
    held_out: tuple  # Splits reported (mean +- std over them)
    columns: tuple  # metrics tabulated (the first is the objective)


def _gmm(tuning: int, held_out: int, n_held_out: int) -> dict:
    return dict(tuning=tuple(Split(seed=1, problem_seed=s) for s in range(tuning)),
                held_out=tuple(Split(seed=1000 + s, problem_seed=s, n=n_held_out) for s in range(10, 10 + held_out)),
                columns=("sw_ratio", "weight_tv", "coverage90", "mean_error"))


def _digits_inverse() -> dict:
    # held-out: images 200..359 (tuning 0..39), other measurement seeds, other sample seeds; 4 sets of 40
    return dict(tuning=(Split(seed=0, problem_seed=1, offset=0),),
                held_out=tuple(Split(seed=1000 + i, problem_seed=2 + i, offset=200 + 40 * i) for i in range(4)),
                columns=("psnr", "ssim", "accuracy", "fid_digits"))


TASKS = {
    "gmm8": Task("gmm_inverse d=8 d_y=2", "gmm8", **_gmm(3, 8, 1000)),
    "gmm80": Task("gmm_inverse d=80 d_y=2", "gmm80", **_gmm(2, 4, 500)),
    "inpaint90": Task("digits inpaint 90 %", "inpaint90", **_digits_inverse()),
    "sr4": Task("digits super-resolution 4x", "sr4", **_digits_inverse()),
    "box": Task("digits box inpainting", "box", **_digits_inverse()),
    "sr2": Task("digits super-resolution 2x", "sr2", **_digits_inverse()),
    "blur": Task("digits 3x3 blur", "blur", **_digits_inverse()),
    "class": Task("digits class guidance", "class", tuning=(Split(seed=0),),
                  held_out=tuple(Split(seed=1000 + i) for i in range(4)),
                  columns=("judge_accuracy", "guide_accuracy", "fid_digits")),
}
DEFAULT_TASKS = tuple(TASKS)  # all committed in results/guidance_as_optimization/


# ----------------------------------------------------------------------------------------------
# Search spaces and sweeper settings: read from the Hydra presets, the one place they are written.


def search_space(method: str) -> dict[str, str]:
    """{override key: Hydra sweep expression} of ``guidance_tune_<method>.yaml`` (hydra.sweeper.params)."""
    return dict(yaml.safe_load((CONF / f"guidance_tune_{method}.yaml").read_text())["hydra"]["sweeper"]["params"])


def check_space(method: str) -> None:
    """ValueError unless every key of the method's search space is ``guidance.lr`` or a hyper-parameter of its
    preset's rule (optsample.guidance.rules), and every rule hyper-parameter but eps (fixed at 1e-8, as
    AdamDPS's tuning) is searched."""
    from optsample.guidance import rules
    from optsample.runner.guidance_tasks import GUIDANCE_PRESETS

    rule = GUIDANCE_PRESETS[method].rule
    names = {"lr", *rules.rule_hparam_names(rule)}
    keys = {key.removeprefix("guidance.") for key in search_space(method)}
    bogus = sorted(k for k in search_space(method) if not k.startswith("guidance.") or k.removeprefix("guidance.") not in names)
    if bogus:
        raise ValueError(f"guidance_tune_{method}.yaml searches {bogus}: not lr or a hyper-parameter of rule {rule!r} "
                         f"({sorted(names)})")
    missing = sorted(names - keys - {"eps"})
    if missing:
        raise ValueError(f"guidance_tune_{method}.yaml does not search {missing} of rule {rule!r}")


def distributions(method: str) -> dict:
    """The Optuna distributions the Hydra Optuna sweeper builds from the method's search space."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    check_space(method)
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in search_space(method).items()])
    if fixed:
        raise ValueError(f"guidance_tune_{method}.yaml: {sorted(fixed)} are not sweeps")
    return space


def sweeper_settings() -> dict:
    """n_trials, TPE seed and start-up trials of ``guidance_tune.yaml`` (the same for every method)."""
    sweeper = yaml.safe_load((CONF / "guidance_tune.yaml").read_text())["hydra"]["sweeper"]
    return {"n_trials": sweeper["n_trials"], "seed": sweeper["sampler"]["seed"],
            "n_startup_trials": sweeper["sampler"]["n_startup_trials"]}


def preset_values(method: str) -> dict:
    """The method's ``guidance=`` preset value of every key of its search space (trial 0)."""
    from optsample.runner.guidance_tasks import GUIDANCE_PRESETS

    preset = GUIDANCE_PRESETS[method]
    return {key: getattr(preset, key.removeprefix("guidance.")) for key in search_space(method)}


def objective_key(task: Task) -> str:
    return str(yaml.safe_load((CONF / f"guidance_study_{task.preset}.yaml").read_text())["objective"])


# ----------------------------------------------------------------------------------------------
# One run through the runner's own pieces (no result files, models built once per process).


def resolved(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from optsample.runner import app as R
    from optsample.runner import config as C

    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def run_resolved(cfg: dict) -> tuple[dict, torch.Tensor, object]:
    """(task metrics, samples, prepared task) of one resolved runner config with a task, run as the runner's
    execute does but without its logging or rows (also used by digits_compare.py). Diverged: NaN samples."""
    from optsample.runner import app as R
    from optsample.samplers import NonFiniteError

    plan = R.plan_run(cfg)
    device = torch.device("cpu")
    built = R.build_model(R.guidance_tasks.model_config(cfg), device, plan.dtype)
    sigmas = R.resolve_schedule(plan, built)
    built, prepared = R.guidance_tasks.prepare(cfg, built, sigmas, plan.hparams)
    with torch.no_grad():
        try:
            samples = R.generate(plan, built, sigmas, device)[0]
        except NonFiniteError:
            samples = torch.full((cfg["n_samples"], *built.sample_shape), math.nan)
        return R.guidance_tasks.task_metrics(prepared, samples), samples, prepared


def run(task: Task, method: str | None, params: dict, split: Split) -> tuple[dict, torch.Tensor, object]:
    """(task metrics, samples, prepared task) of one run; method None: no guidance. Diverged: NaN samples."""
    overrides = [f"experiment=guidance_study_{task.preset}", f"guidance={method or 'none'}", *split.overrides(task.preset),
                 *(f"{k}={v!r}" for k, v in params.items())]
    return run_resolved(resolved(overrides))


def trial_value(task: Task, method: str, params: dict, key: str) -> float:
    """The objective averaged over the tuning splits; NaN if any run diverged (a failed trial)."""
    values = [run(task, method, params, split)[0][key.removeprefix("metric.")] for split in task.tuning]
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.nan


# ----------------------------------------------------------------------------------------------
# Phase 1: tuning.


def tune(task: Task, method: str, n_trials: int | None = None) -> dict:
    """Seeded TPE over the method's search space (the Hydra sweeper's loop, in process); best params and trials."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = sweeper_settings()
    key = objective_key(task)
    direction = "maximize" if key in MAXIMISE else "minimize"
    sampler = optuna.samplers.TPESampler(seed=settings["seed"], n_startup_trials=settings["n_startup_trials"])
    study = optuna.create_study(sampler=sampler, direction=direction)
    study.enqueue_trial(preset_values(method))
    space = distributions(method)
    trials = []
    for _ in range(n_trials or settings["n_trials"]):
        trial = study.ask()
        for name, distribution in space.items():
            trial._suggest(name, distribution)  # as OptunaSweeperImpl._configure_trials
        t0 = time.perf_counter()
        value = trial_value(task, method, dict(trial.params), key)
        state = optuna.trial.TrialState.COMPLETE if math.isfinite(value) else optuna.trial.TrialState.FAIL
        study.tell(trial, value if math.isfinite(value) else None, state=state)
        trials.append({"params": dict(trial.params), "value": value, "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {task.preset:9s} {method:9s} trial {len(trials) - 1:2d} {trials[-1]}", flush=True)
    done = [t for t in trials if math.isfinite(t["value"])]
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"]) if done else trials[0]
    return {"params": best["params"], "value": best["value"], "objective": key, "direction": direction,
            "trials": trials}


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def tune_all(tasks, n_trials, best_path: Path) -> None:
    best = load_json(best_path)
    for name in tasks:
        for label, method in METHODS.items():
            if method in best.get(name, {}) and (n_trials is None or len(best[name][method]["trials"]) == n_trials):
                continue  # already tuned (rerun after a stop)
            t0 = time.perf_counter()
            result = tune(TASKS[name], method, n_trials)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            best.setdefault(name, {})[method] = result
            best_path.write_text(json.dumps(best, indent=1) + "\n")
            print(f"{name} {label}: best {result['params']} -> {result['value']:.4g} ({result['seconds']} s)", flush=True)


# ----------------------------------------------------------------------------------------------
# Phase 2: held-out evaluation.


def baselines(name: str) -> list[tuple[str, str | None]]:
    """Untuned references: the prior (no guidance) and, on gmm_inverse, the exact likelihood score (the
    sampler's own error: guidance=exact)."""
    return [("no guidance", None), *([("exact score", "exact")] if name.startswith("gmm") else [])]


def held_out(tasks, best_path: Path, csv_path: Path, pictures: dict | None = None) -> None:
    """Best params of every (task, method) and the no-guidance baseline on each held-out split -> csv rows."""
    best = load_json(best_path)
    done = {(r["task"], r["method"], r["split"]) for r in read_csv(csv_path)}
    for name in tasks:
        task = TASKS[name]
        for label, method in [*baselines(name), *METHODS.items()]:
            if label in METHODS and method not in best.get(name, {}):
                continue
            params = best[name][method]["params"] if label in METHODS else {}
            for i, split in enumerate(task.held_out):
                want_picture = pictures is not None and i == 0 and name == "inpaint90"
                if (name, label, str(i)) in done and not want_picture:
                    continue
                metrics, samples, prepared = run(task, method, params, split)
                if want_picture:
                    pictures[label] = (samples[:8], prepared.problem)
                if (name, label, str(i)) in done:
                    continue
                row = {"task": name, "method": label, "split": i, "params": json.dumps(params),
                       **{k: metrics[k] for k in task.columns}}
                append_csv(csv_path, row)
                print(f"  held-out {name} {label} split {i}: {row}", flush=True)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


COLUMNS = ("task", "method", "split", "params", "sw_ratio", "weight_tv", "coverage90", "mean_error", "psnr", "ssim",
           "accuracy", "judge_accuracy", "guide_accuracy", "fid_digits")


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


# ----------------------------------------------------------------------------------------------
# Phase 3: tables and the plot.

LOWER_IS_BETTER = {"sw_ratio", "weight_tv", "mean_error", "fid_digits"}


def summary(rows: list[dict], name: str) -> dict:
    """method -> column -> (mean, std, count) over the held-out splits of task ``name``."""
    out: dict = {}
    for label in [*(b for b, _ in baselines(name)), *METHODS]:
        mine = [r for r in rows if r["task"] == name and r["method"] == label]
        if not mine:
            continue
        out[label] = {}
        for col in TASKS[name].columns:
            values = [float(r[col]) for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[label][col] = (statistics.fmean(values), std, len(values))
    return out


def best_of(table: dict, col: str) -> set:
    """The guidance methods with the best mean in ``col``, ties included (coverage90: closest to 0.9)."""
    scored = {m: v[col][0] for m, v in table.items() if m in METHODS and math.isfinite(v[col][0])}
    if not scored:
        return set()
    if col == "coverage90":
        scored = {m: -abs(v - 0.9) for m, v in scored.items()}
    elif col in LOWER_IS_BETTER:
        scored = {m: -v for m, v in scored.items()}
    top = max(scored.values())
    return {m for m, v in scored.items() if v >= top - 1e-12}


def paired(rows: list[dict], name: str, label: str) -> str:
    """The objective against DPS on the same held-out splits: wins / splits and the mean paired difference
    (sw_ratio: the geometric mean of the per-problem ratio, as problems differ by orders of magnitude)."""
    col = TASKS[name].columns[0]
    mine = {r["split"]: float(r[col]) for r in rows if r["task"] == name and r["method"] == label}
    dps = {r["split"]: float(r[col]) for r in rows if r["task"] == name and r["method"] == "DPS"}
    common = sorted(set(mine) & set(dps))
    if label == "DPS" or not common:
        return "-"
    lower = col in LOWER_IS_BETTER
    wins = sum((mine[s] < dps[s]) if lower else (mine[s] > dps[s]) for s in common)
    if col == "sw_ratio":
        ratio = math.exp(statistics.fmean(math.log(mine[s] / dps[s]) for s in common))
        return f"{wins}/{len(common)}, x{ratio:.2f}"
    places = 2 if col == "psnr" else 3
    return f"{wins}/{len(common)}, {statistics.fmean(mine[s] - dps[s] for s in common):+.{places}f}"


def fmt_params(params: dict) -> str:
    return ", ".join(f"{k.removeprefix('guidance.')} {v:.3g}" for k, v in params.items())


def overview(tasks, rows: list[dict]) -> list[str]:
    """One table: the held-out objective (mean ± std) per method (rows) and task (columns), best in bold."""
    shown = [name for name in tasks if any(r["task"] == name for r in rows)]
    if not shown:
        return []
    tabs = {name: summary(rows, name) for name in shown}
    heads = [f"{name}: {TASKS[name].columns[0]} ({'min' if TASKS[name].columns[0] in LOWER_IS_BETTER else 'max'})"
             for name in shown]
    lines = ["## Overview: held-out objective per task", "", "| method | " + " | ".join(heads) + " |",
             "|---|" + "---|" * len(shown)]
    labels = ["no guidance", "exact score", *METHODS]
    for label in labels:
        cells = []
        for name in shown:
            col = TASKS[name].columns[0]
            if label not in tabs[name]:
                cells.append("-")
                continue
            mean, std, _ = tabs[name][label][col]
            digits = {"sw_ratio": 1, "psnr": 2}.get(col, 3)
            cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
            cell = f"**{cell}**" if label in best_of(tabs[name], col) else cell
            versus = paired(rows, name, label)
            cells.append(cell if versus == "-" else f"{cell} ({versus})")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = ("In brackets: against DPS on the same held-out problems (wins / problems, mean paired difference; "
            "sw_ratio: geometric mean of the per-problem ratio). On gmm_inverse the std is mostly between "
            "problems (their distances differ 100-fold): read the paired ratio.")
    return [*lines, "", note, ""]


def tables(tasks, best_path: Path, csv_path: Path, md_path: Path) -> str:
    best, rows = load_json(best_path), read_csv(csv_path)
    settings = sweeper_settings()
    lines = ["# Guidance study: every method tuned with Optuna at the same budget, reported on held-out problems", "",
             f"Each method: {settings['n_trials']} trials of seeded TPE (seed {settings['seed']}, "
             f"{settings['n_startup_trials']} random start-up trials; trial 0 its preset) over its search space "
             "(`conf/experiment/guidance_tune_<method>.yaml`) on the tuning problems; then the best parameters on "
             "the held-out problems. Mean ± std over the held-out problems (gmm: problems; digits: sets of 40); "
             "bold: the best guidance method per column (coverage: closest to 0.9); last column: the objective "
             "against DPS on the same held-out splits (wins, mean paired difference; sw_ratio: geometric-mean "
             "ratio). Made by "
             "`experiments/guidance_as_optimization/study.py`.", ""]
    lines += overview(tasks, rows)
    for name in tasks:
        if not any(r["task"] == name for r in rows):
            continue
        task, table = TASKS[name], summary(rows, name)
        n_held = len(task.held_out)
        tuning_s = sum(entry.get("seconds", 0.0) for entry in best.get(name, {}).values())
        lines += [f"## {task.label}", "",
                  f"Tuning objective `{objective_key(task)}` on {len(task.tuning)} tuning split(s) "
                  f"({tuning_s:.0f} s wall for the six tunings on the shared 2-core machine); held-out: "
                  f"{n_held} {'problems' if name.startswith('gmm') else 'sets of 40 problems'}.", "",
                  "| method | tuned parameters (tuning value) | " + " | ".join(task.columns)
                  + f" | {task.columns[0]} vs DPS (wins, paired) |", "|---|---|" + "---|" * (len(task.columns) + 1)]
        bold = {col: best_of(table, col) for col in task.columns}
        for label, values in table.items():
            entry = best.get(name, {}).get(METHODS.get(label, ""), None)
            tuned = f"{fmt_params(entry['params'])} ({entry['value']:.3g})" if entry else "-"
            cells = []
            for col in task.columns:
                mean, std, count = values[col]
                cell = f"{mean:.3f} ± {std:.3f}" if count == n_held else f"{mean:.3f} ± {std:.3f} ({count}/{n_held})"
                cells.append(f"**{cell}**" if label in bold[col] else cell)
            lines.append(f"| {label} | {tuned} | " + " | ".join(cells) + f" | {paired(rows, name, label)} |")
        lines.append("")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "\n".join(lines)


def plot(tasks, csv_path: Path, png_path: Path) -> None:
    """Held-out objective per method per task: the mean (bar) with std error bars and each held-out split (dots);
    sw_ratio as the per-problem ratio to DPS's (log axis, bar: geometric mean), as problems differ 100-fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    shown = [name for name in tasks if any(r["task"] == name for r in rows)]
    if not shown:
        return
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, shown):
        col = TASKS[name].columns[0]
        labels = [m for m in [*(b for b, _ in baselines(name)), *METHODS] if any(
            r["task"] == name and r["method"] == m for r in rows)]
        points = {m: {r["split"]: float(r[col]) for r in rows if r["task"] == name and r["method"] == m} for m in labels}
        ratio = col == "sw_ratio" and "DPS" in points
        if ratio:
            points = {m: {s: v / points["DPS"][s] for s, v in p.items() if s in points["DPS"]} for m, p in points.items()}
        colours = ["0.6" if m not in METHODS else ("C3" if m == "AdamDPS" else "C0") for m in labels]
        for i, m in enumerate(labels):
            values = list(points[m].values())
            if ratio:
                centre = math.exp(statistics.fmean(math.log(v) for v in values))
                ax.bar(i, centre - 1, bottom=1, color=colours[i])
            else:
                centre = statistics.fmean(values)
                ax.bar(i, centre, yerr=statistics.stdev(values) if len(values) > 1 else 0, color=colours[i], capsize=3)
            ax.plot([i] * len(values), values, "k.", markersize=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        better = "lower" if col in LOWER_IS_BETTER else "higher"
        if ratio:
            ax.set_yscale("log")
            ax.axhline(1.0, color="k", linewidth=0.5)
            ax.set_title(f"{name}: sw_ratio / DPS's ({better} better)", fontsize=8)
        else:
            ax.set_title(f"{name}: {col} ({better} better)", fontsize=8)
            if col == "psnr":
                ax.set_ylim(bottom=min(min(p.values()) for p in points.values()) - 0.5)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def picture(pictures: dict, png_path: Path) -> None:
    """8 held-out 90 % inpainting problems: measurement | reconstruction per method | truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pictures:
        return
    problem = next(iter(pictures.values()))[1]
    first = torch.arange(8)
    operator = problem.operator.select(first) if hasattr(problem.operator, "select") else problem.operator
    columns = [("measurement", operator.display(problem.y[first]))] + [(k, v[0]) for k, v in pictures.items()]
    columns.append(("truth", problem.truth[:8]))
    fig, axes = plt.subplots(8, len(columns), figsize=(1.1 * len(columns), 9))
    for j, (title, images) in enumerate(columns):
        for i in range(8):
            ax = axes[i, j]
            ax.imshow(images[i, 0].detach().clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of {list(TASKS)}")
    parser.add_argument("--trials", type=int, default=None, help="trials per method (default: guidance_tune.yaml's)")
    parser.add_argument("--held-out", action="store_true", help="skip tuning: held-out runs from the best-params JSON")
    parser.add_argument("--tables", action="store_true", help="only the tables and plot from the committed CSV")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; available: {list(TASKS)}")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    best_path, csv_path = args.out / "study_best_params.json", args.out / "study_heldout.csv"
    start = time.perf_counter()
    pictures: dict = {}
    for name in tasks:  # task by task, tables after each: a late stop keeps what finished
        if not (args.held_out or args.tables):
            tune_all([name], args.trials, best_path)
        if not args.tables:
            held_out([name], best_path, csv_path, pictures)
        report(args.out, best_path, csv_path, tasks, time.perf_counter() - start)
    if pictures:
        picture(pictures, args.out / "study_inpaint90.png")


def report(out: Path, best_path: Path, csv_path: Path, tasks, seconds: float) -> None:
    """study.md and study.png over every task with held-out rows (this run's and earlier ones)."""
    rows = read_csv(csv_path)
    shown = [t for t in TASKS if t in tasks or any(r["task"] == t for r in rows)]
    print(tables(shown, best_path, csv_path, out / "study.md"))
    print(f"({seconds:.0f} s so far in this invocation)")
    plot(shown, csv_path, out / "study.png")

if __name__ == "__main__":
    main()
