"""Tables and the sigma plot of the learned-schedules study, rebuilt from its cached cells (run_study.py).

Reads ``<out>/scores/<model>/*.json`` and ``<out>/schedules/*.json``; writes ``<out>/scores.csv`` (every
held-out score, one row per seed), ``<out>/study.md`` (mean ± std over the held-out seeds per model; transfer
summary), ``<out>/compact_nfe5.md`` (the README's table) and ``<out>/sigmas_nfe5.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

KARRAS = ("karras", "karras_tuned", "optuna")  # the parametric (Karras) schedules
FIXED = ("karras", "karras_tuned", "optuna", "ays")
ORDER = ("karras", "karras_tuned", "optuna", "ays", "dp", "gradient")
METRIC_NAME = {"rmse": "RMSE to the exact ODE solution", "fid_digits": "FID-digits (450 samples vs 450 held-out)"}


def load_scores(out: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((out / "scores").glob("*/*.json")):
        cell = json.loads(path.read_text())
        for seed, value in cell["values"].items():
            rows.append({"model": cell["model"], "sampler": cell["sampler"], "nfe": cell["nfe"],
                         "schedule": cell["schedule"], "seed": int(seed), "metric": cell["metric"], "value": value,
                         "source": cell["source"]})
    frame = pd.DataFrame(rows)
    seconds = {}
    for path in (out / "schedules").glob("*.json"):
        provenance = json.loads(path.read_text())["provenance"]
        seconds[str(path.relative_to(out))] = provenance.get("seconds")
    frame["learn_s"] = frame["source"].map(seconds)
    return frame


def _cell(mean, std, bold):
    text = f"{mean:.3g} ± {std:.2g}"
    return f"**{text}**" if bold else text


def model_table(stats: pd.DataFrame, metric: str, floor: float | None) -> str:
    """One row per (sampler, NFE): the schedules' mean ± std; ratios of the best learned one to the default and to
    the best tuned Karras (optuna, else karras_tuned), and for FID to the floor."""
    present = set(stats["schedule"])
    order = [s for s in ORDER if s in present] + sorted(present - set(ORDER))
    learned = [s for s in order if s not in FIXED]
    head = ["sampler", "NFE", *order, "best learned / Karras", "/ tuned Karras"]
    if floor is not None:
        head.append("best / floor")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for (sampler, nfe), group in stats.groupby(["sampler", "nfe"], sort=True):
        values = {row.schedule: (row.mean, row.std) for row in group.itertuples()}
        best = min(mean for mean, _ in values.values())
        cells = [_cell(*values[s], values[s][0] == best) if s in values else "–" for s in order]
        own = [values[s][0] for s in learned if s in values]
        tuned = next((values[s][0] for s in ("optuna", "karras_tuned") if s in values), None)
        ratio = f"x{min(own) / values['karras'][0]:.2f}" if own and "karras" in values else "–"
        ratio_tuned = f"x{min(own) / tuned:.2f}" if own and tuned else "–"
        row = [sampler, str(nfe), *cells, ratio, ratio_tuned]
        if floor is not None:
            row.append(f"x{best / floor:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def floor_table(stats: pd.DataFrame, floor: float) -> str:
    """FID-digits / floor of every schedule at every (sampler, NFE)."""
    present = set(stats["schedule"])
    order = [s for s in ORDER if s in present] + sorted(present - set(ORDER))
    lines = ["| sampler | NFE | " + " | ".join(order) + " |", "|---|---:|" + "---:|" * len(order)]
    for (sampler, nfe), group in stats.groupby(["sampler", "nfe"], sort=True):
        values = dict(zip(group["schedule"], group["mean"]))
        lines.append(f"| {sampler} | {nfe} | " + " | ".join(
            f"x{values[s] / floor:.2f}" if s in values else "–" for s in order) + " |")
    return "\n".join(lines) + "\n"


def compact_table(stats: pd.DataFrame, floors: dict, nfe: int = 5) -> str:
    """The README's table: every model and sampler at one NFE, means only; learned / Optuna-tuned Karras, and for
    FID-digits the best schedule / floor."""
    here = stats[stats["nfe"] == nfe]
    order = [s for s in ("karras", "optuna", "ays", "dp", "gradient", "gradient+restarts") if s in set(here["schedule"])]
    lines = ["| model (metric) | sampler | " + " | ".join(order) + " | best learned / optuna | best / floor |",
             "|---|---|" + "---:|" * (len(order) + 2)]
    for model in ("gmm64", "digits_empirical", "digits"):
        for sampler, group in here[here["model"] == model].groupby("sampler"):
            values = dict(zip(group["schedule"], group["mean"]))
            best = min(values[s] for s in order if s in values)
            cells = [("**{:.3g}**" if values[s] == best else "{:.3g}").format(values[s]) if s in values else "–"
                     for s in order]
            own = [values[s] for s in values if s not in FIXED]
            ratio = f"x{min(own) / values['optuna']:.2f}" if own and "optuna" in values else "–"
            floor = f"x{best / floors[model]:.2f}" if model in floors else "–"
            metric = "RMSE" if model != "digits" else "FID"
            lines.append(f"| {model} ({metric}) | {sampler} | " + " | ".join(cells) + f" | {ratio} | {floor} |")
    return "\n".join(lines) + "\n"


def transfer_summary(frame: pd.DataFrame) -> str:
    """Per (kind, model, method): transferred / own learned and / default Karras, medians over cells."""
    means = frame.groupby(["model", "sampler", "nfe", "schedule"])["value"].mean()
    lines = ["| transfer | to model | method | cells | median x own-learned | median x Karras | beats Karras |",
             "|---|---|---|---:|---:|---:|---:|"]
    transfers = [s for s in means.index.get_level_values("schedule").unique() if "<-" in s]
    groups: dict = {}
    for (model, sampler, nfe, schedule), value in means.items():
        if schedule not in transfers:
            continue
        method, source = schedule.split("<-")
        own, karras = means.get((model, sampler, nfe, method)), means.get((model, sampler, nfe, "karras"))
        if own is None or karras is None:
            continue
        kind = ("NFE 10 -> this NFE" if source == "nfe10" else
                f"{source} -> this sampler" if source in ("dpmpp_2m",) else f"{source} -> this model")
        groups.setdefault((kind, model, method), []).append((value / own, value / karras))
    for (kind, model, method), pairs in sorted(groups.items()):
        own = pd.Series([p[0] for p in pairs])
        karras = pd.Series([p[1] for p in pairs])
        lines.append(f"| {kind} | {model} | {method} | {len(pairs)} | x{own.median():.2f} | x{karras.median():.2f} | "
                     f"{int((karras < 1).sum())}/{len(pairs)} |")
    return "\n".join(lines) + "\n"


def write_tables(out: Path) -> None:
    out = Path(out)
    frame = load_scores(out)
    if frame.empty:
        return
    frame.drop(columns=["source"]).to_csv(out / "scores.csv", index=False)
    main = frame[~frame["schedule"].str.contains("<-") & (frame["schedule"] != "floor")]
    stats = main.groupby(["model", "sampler", "nfe", "schedule"])["value"].agg(["mean", "std"]).reset_index()
    parts, floors = [], {}
    for model in ("gmm64", "digits_empirical", "digits"):
        here = stats[stats["model"] == model]
        if here.empty:
            continue
        metric = main[main["model"] == model]["metric"].iloc[0]
        floor_rows = frame[(frame["model"] == model) & (frame["schedule"] == "floor")]["value"]
        floor = float(floor_rows.mean()) if len(floor_rows) else None
        if floor is not None:
            floors[model] = floor
        parts.append(f"## {model}: {METRIC_NAME[metric]}, mean ± std over held-out seeds 2, 3, 4\n")
        if floor is not None:
            parts.append(f"Floor (50-step iPNDM Karras solve, same seeds): {floor:.3g} ± {floor_rows.std():.2g}.\n")
        parts.append(model_table(here, metric, floor))
        if floor is not None:
            parts.append(f"\n{model}, FID-digits / floor:\n\n" + floor_table(here, floor))
    if frame["schedule"].str.contains("<-").any():
        parts.append("## Transfer (medians over cells; full rows in scores.csv)\n")
        parts.append(transfer_summary(frame))
    learn_s = main.drop_duplicates("source").dropna(subset=["learn_s"])
    if not learn_s.empty:
        seconds = learn_s.assign(method=learn_s["schedule"]).groupby(["model", "method"])["learn_s"]
        parts.append("## Learning time per schedule (wall s inside learn(), 1 thread, on 2 cores shared with ~8 other "
                     "processes)\n")
        parts.append("| model | method | median | min | max | schedules |\n|---|---|---:|---:|---:|---:|")
        for (model, method), s in seconds:
            parts.append(f"| {model} | {method} | {s.median():.1f} | {s.min():.1f} | {s.max():.1f} | {len(s)} |")
        parts.append("")
    (out / "compact_nfe5.md").write_text(compact_table(stats, floors, nfe=5))
    (out / "study.md").write_text("# Learned schedules study (generated by experiments/learned_schedules/tables.py)\n\n"
                                  + "\n".join(parts) + "\n")
    plot_sigmas(out, nfe=5)


def plot_sigmas(out: Path, nfe: int) -> None:
    """Learned sigmas against Karras on a log axis: one row per model, one column per sampler, at ``nfe``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict = {}
    for path in sorted((out / "scores").glob(f"*/*_nfe{nfe}_*.json")):
        cell = json.loads(path.read_text())
        if "<-" in cell["schedule"] or cell["schedule"] == "floor":
            continue
        cells.setdefault(cell["model"], {}).setdefault(cell["sampler"], {})[cell["schedule"]] = cell["sigmas"]
    models = [m for m in ("gmm64", "digits_empirical", "digits") if m in cells]
    if not models:
        return
    samplers_all = sorted({s for m in models for s in cells[m]})
    fig, axes = plt.subplots(len(models), len(samplers_all), figsize=(3.2 * len(samplers_all), 2.9 * len(models)),
                             sharey=True, squeeze=False)
    styles = {"karras": "k--o", "karras_tuned": "k:s", "optuna": "m-.D", "ays": "-x", "dp": "-o", "gradient": "-^"}
    for r, model in enumerate(models):
        for c, sampler in enumerate(samplers_all):
            ax = axes[r][c]
            for name, sigmas in sorted(cells[model].get(sampler, {}).items(), key=lambda kv: ORDER.index(kv[0])
                                       if kv[0] in ORDER else 99):
                ax.plot(range(len(sigmas) - 1), sigmas[:-1], styles.get(name, "-d"), ms=3.5, lw=1, label=name)
            ax.set_yscale("log")
            ax.set_title(f"{model}, {sampler}, NFE {nfe}", fontsize=8)
            if r == len(models) - 1:
                ax.set_xlabel("step i")
            if c == 0:
                ax.set_ylabel("sigma_i (final 0 not shown)", fontsize=8)
            if not cells[model].get(sampler):
                ax.set_visible(False)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / f"sigmas_nfe{nfe}.png", dpi=110)
    plt.close(fig)
