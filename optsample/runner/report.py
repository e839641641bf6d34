"""``optsample-table``: result rows -> paper-style tables (markdown, LaTeX, CSV) and a metric-vs-NFE plot.

    optsample-table results/ --metric rmse --rows sampler.name --cols nfe --out tables/

One metric is pivoted rows x columns; each cell is the mean +- sample standard deviation over the rows
that fall in it (normally the seeds); the best mean of every column is marked (bold), its direction
taken from the metric registry (``loglik``, ``clip_score``: higher is better) unless overridden.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PLUS_MINUS = "±"


@dataclass
class Pivot:
    """Per-cell statistics of one metric: ``mean`` / ``std`` / ``count`` frames (rows x cols) and ``best``
    (True where a cell holds its column's best mean)."""

    metric: str
    rows: str
    cols: str
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    best: pd.DataFrame
    higher_is_better: bool
    # With columns by NFE budget: the mean NFE really used per cell (a cell that used less says so)
    nfe_used: pd.DataFrame | None = None


def load_rows(source: str | Path) -> pd.DataFrame:
    """Rows from a results directory (:func:`optsample.runner.results.read_rows`) or a .csv / .json / .jsonl file."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source}: no such results directory or file")
    if path.is_dir():
        from .results import read_rows

        return pd.DataFrame(read_rows(path))
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix in (".json", ".jsonl"):
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    raise ValueError(f"{source}: expected a results directory or a .csv / .json / .jsonl file")


def metric_column(frame: pd.DataFrame, metric: str) -> str:
    """``metric.<name>`` (the runner's row key) or ``<name>`` itself; ValueError listing the metric columns."""
    for column in (f"metric.{metric}", metric):
        if column in frame.columns:
            return column
    found = sorted(c for c in frame.columns if str(c).startswith("metric."))
    raise ValueError(f"no column for metric {metric!r}; metric columns: {', '.join(found) or 'none'}")


def metric_direction(metric: str) -> bool:
    """True if higher is better, from the metric registry (unknown metrics: lower is better)."""
    from .. import metrics

    name = metric.removeprefix("metric.")
    return metrics.info(name).higher_is_better if name in metrics.available() else False


def apply_filters(frame: pd.DataFrame, filters: list[str]) -> pd.DataFrame:
    """Keep rows where every ``key=value`` holds (value compared as text, so 10 matches 10 and "10")."""
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or key not in frame.columns:
            raise ValueError(f"bad filter {item!r}: expected key=value with key a column")
        frame = frame[frame[key].map(_label) == value]
    return frame


def _label(value) -> str:
    """Header / filter text of a value: 10.0 -> "10"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _warn_mixed_cells(frame: pd.DataFrame, keys: list[str], value_column: str) -> None:
    """Warn when rows averaged into one cell differ in a setting other than the seed."""
    ignored = set(keys) | {value_column, "seed", "config_hash", "timestamp"}
    settings = [c for c in frame.columns if c not in ignored and not str(c).startswith(("metric.", "time.", "nfe"))]
    mixed = [c for c in settings if frame.groupby(keys, dropna=False)[c].nunique(dropna=False).gt(1).any()]
    if mixed:
        warnings.warn(f"cells average rows that differ in {', '.join(mixed)}; filter them with --where", UserWarning)


def _warn_mixed_revisions(frame: pd.DataFrame) -> None:
    """Warn when the table's rows come from different code revisions (optsample.runner.results.revision_mix)."""
    from .results import revision_mix

    message = revision_mix(frame.to_dict("records"))
    if message:
        warnings.warn(message, UserWarning)


def pivot(frame: pd.DataFrame, metric: str, rows: str, cols: str, higher_is_better: bool | None = None) -> Pivot:
    """Mean, sample std (ddof 1) and count of ``metric`` per (rows, cols) cell, best mean per column marked."""
    value_column = metric_column(frame, metric)
    for key in (rows, cols):
        if key not in frame.columns:
            raise ValueError(f"no column {key!r}; columns: {', '.join(map(str, frame.columns))}")
    frame = frame.dropna(subset=[value_column])
    _warn_mixed_cells(frame, [rows, cols], value_column)
    _warn_mixed_revisions(frame)
    grouped = frame.groupby([rows, cols])[value_column]
    mean, std, count = (getattr(grouped, stat)().unstack(cols) for stat in ("mean", "std", "count"))
    if higher_is_better is None:
        higher_is_better = metric_direction(value_column)
    best_value = mean.max() if higher_is_better else mean.min()
    best = mean.eq(best_value, axis=1) & mean.notna()
    nfe_used = None
    if cols == "nfe_budget" and "nfe" in frame.columns:
        nfe_used = frame.groupby([rows, cols])["nfe"].mean().unstack(cols)
    return Pivot(value_column.removeprefix("metric."), rows, cols, mean, std, count.fillna(0).astype(int), best,
                 higher_is_better, nfe_used)


def cell_text(mean: float, std: float, count: int, fmt: str) -> str:
    """"mean ± std" (std of n >= 2 values), "mean" for one value, "-" for none."""
    if count == 0 or mean != mean:
        return "-"
    if count < 2 or std != std:
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} {PLUS_MINUS} {std:{fmt}}"


def _cells(table: Pivot, fmt: str, mark) -> list[list[str]]:
    body = []
    for row_key in table.mean.index:
        line = [mark(_label(row_key), False, True)]
        for col_key in table.mean.columns:
            text = cell_text(table.mean.at[row_key, col_key], table.std.at[row_key, col_key],
                             int(table.count.at[row_key, col_key]), fmt)
            used = table.nfe_used.at[row_key, col_key] if table.nfe_used is not None else None
            if used is not None and used == used and text != "-" and float(used) != float(col_key):
                text += f" (NFE {used:g})"  # the budget was not all used: say what was
            line.append(mark(text, bool(table.best.at[row_key, col_key]), False))
        body.append(line)
    return body


def _header(table: Pivot) -> list[str]:
    return [table.rows] + [f"{table.cols}={_label(c)}" for c in table.mean.columns]


def _caption(table: Pivot) -> str:
    direction = "higher" if table.higher_is_better else "lower"
    return f"{table.metric} ({direction} is better; mean {PLUS_MINUS} std over seeds; best per column in bold)"


def to_markdown(table: Pivot, fmt: str = ".3g") -> str:
    """A GitHub-flavoured markdown table (own formatter; no tabulate), best cells in **bold**."""
    body = _cells(table, fmt, lambda text, best, is_label: f"**{text}**" if best else text)
    header = _header(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return f"{_caption(table)}\n\n" + "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(char, escaped)
    return text


def to_latex(table: Pivot, fmt: str = ".3g") -> str:
    """A booktabs tabular, best cells in \\textbf, ± as $\\pm$."""

    def mark(text, best, is_label):
        text = latex_escape(text).replace(f" {PLUS_MINUS} ", r" $\pm$ ")
        return rf"\textbf{{{text}}}" if best else text

    body = _cells(table, fmt, mark)
    header = [latex_escape(h) for h in _header(table)]
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return f"% {latex_escape(_caption(table))}\n" + "\n".join(lines) + "\n"


def to_csv(table: Pivot) -> str:
    """Numbers for reuse: one line per row label; per column value ``<cols>=<v>`` (mean) and ``... std``."""
    out = pd.DataFrame(index=table.mean.index)
    for col_key in table.mean.columns:
        name = f"{table.cols}={_label(col_key)}"
        out[name] = table.mean[col_key]
        out[f"{name} std"] = table.std[col_key]
    out.index = [_label(k) for k in out.index]
    out.index.name = table.rows
    return out.to_csv()


def plot(table: Pivot, path: str | Path) -> bool:
    """Metric vs the column key (e.g. NFE), one line per row label with std error bars; log-log when every
    x and mean is positive, log-x when only x is. False (no file) if the columns are not numeric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    try:
        xs = [float(c) for c in table.mean.columns]
    except (TypeError, ValueError):
        return False
    fig = Figure(figsize=(6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row_key in table.mean.index:
        ys, errs = table.mean.loc[row_key].to_numpy(float), table.std.loc[row_key].fillna(0).to_numpy(float)
        ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=3, capsize=2, label=_label(row_key))
    means = table.mean.to_numpy(float)
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
        if (means[~pd.isna(means)] > 0).all():
            ax.set_yscale("log")
    ax.set_xticks(xs, [_label(c) for c in table.mean.columns], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel(table.cols)
    ax.set_ylabel(table.metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_tables(table: Pivot, out_dir: str | Path, stem: str, fmt: str = ".3g") -> list[Path]:
    """``<stem>.md``, ``.tex``, ``.csv`` and (numeric columns) ``.png`` under ``out_dir``; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".md", to_markdown(table, fmt)), (".tex", to_latex(table, fmt)), (".csv", to_csv(table))):
        path = out / f"{stem}{suffix}"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if plot(table, out / f"{stem}.png"):
        written.append(out / f"{stem}.png")
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optsample-table", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="results directory (or a .csv / .json / .jsonl file of rows)")
    parser.add_argument("--metric", required=True, help="metric name, e.g. rmse (column metric.rmse)")
    parser.add_argument("--rows", default="sampler.name", help="row key (default sampler.name)")
    parser.add_argument("--cols", default="nfe", help="column key (default nfe)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="keep matching rows")
    parser.add_argument("--out", default=".", help="output directory (default .)")
    parser.add_argument("--name", default=None, help="file stem (default <metric>_by_<cols>)")
    parser.add_argument("--fmt", default=".3g", help="number format spec (default .3g)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher", action="store_const", const=True, default=None)
    direction.add_argument("--lower-is-better", dest="higher", action="store_const", const=False)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frame = apply_filters(load_rows(args.source), args.where)
        if frame.empty:
            print(f"optsample-table: no rows in {args.source}", file=sys.stderr)
            return 1
        table = pivot(frame, args.metric, args.rows, args.cols, args.higher)
    except ValueError as err:
        print(f"optsample-table: {err}", file=sys.stderr)
        return 2
    stem = args.name or f"{table.metric}_by_{args.cols}".replace("/", "_")
    written = write_tables(table, args.out, stem, args.fmt)
    print(to_markdown(table, args.fmt))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
