"""Optimizer update rules against classic solvers, per NFE, every sampler with tuned hyper-parameters and schedule.

    .venv/bin/python experiments/optimizer_vs_solvers/run_ovs.py           # the study (README.md: wall time)
    .venv/bin/python experiments/optimizer_vs_solvers/run_ovs.py --tiny    # a ~20 s end-to-end check (tests/test_ovs.py)

Three phases, all through the runner (``optsample-run``, called in this process so that built models and the
metrics' reference-solution cache are reused between runs; every run is one row in ``<runs>/<name>/`` and a
re-run skips finished rows, so the driver resumes after a crash):

1. Tune: per (model, sampler, NFE), a Hydra multirun with the Optuna sweeper (``experiment=[ovs_<model>,ovs_tune]``)
   over the sampler's own hyper-parameters plus the Karras schedule's rho and sigma_min (``search_spaces.yaml``),
   minimising the model preset's objective on the tuning seed 1 only. Trial 0 is the default configuration
   (enqueued in the study), so the best trial is never worse than the defaults on that seed. On ``digits``
   (a UNet, ~2 s per run) the tuning runs at NFE 10 only and its best parameters serve every NFE.
   Best parameters -> ``<out>/best_params.json``.
2. Report: the best and the default configuration of every (model, sampler, NFE) on the reporting seeds
   2, 3, 4 (``experiment=ovs_<model>``, basic sweeper), which the tuning never saw.
3. Tables and plots (:mod:`optsample.runner.report`: rows = sampler, cols = nfe_budget, mean ± std over the reporting
   seeds, best bolded) for tuned and default configurations, and ``comparison.md``: every sampler against
   euler, dpmpp_2m and unipc (tuned), per NFE, with paired per-seed wins (same starting noise per seed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLASSIC = ("euler", "dpmpp_2m", "unipc")
# ema_x0 is momentum (a proven identity, tests/test_rules.py): tuned once, under momentum's name.
RULES = ("momentum", "nesterov", "ghvb", "plms_momentum", "dpmpp_2m_momentum", "adam", "eps_scaling")
BASELINES = ("euler", "dpmpp_2m", "unipc")
TUNING_SEED = 1
REPORTING_SEEDS = (2, 3, 4)
NFES = (5, 10, 20)
QUIET_HYDRA = ("hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


@dataclass(frozen=True)
class Part:
    """One model of the study: preset ``experiment=ovs_<model>``, the metric Optuna minimises, the metrics
    tabulated, and the NFE the tuning runs at (None: at every reported NFE)."""

    model: str
    objective: str
    metrics: tuple
    trials: int
    tune_at_nfe: int | None = None


def default_parts(trials: int, digits_trials: int, digits_tune_at: int | None = None) -> list[Part]:
    return [
        Part("gmm64", "rmse", ("rmse",), trials),
        Part("digits_empirical", "rmse", ("rmse",), trials),
        Part("digits", "fid", ("fid", "kid", "accuracy"), digits_trials, tune_at_nfe=digits_tune_at),
    ]


# ----------------------------------------------------------------------------------------------
# Process-wide workarounds, undone on exit (see README.md, "Caveats").

SEED_FOLD = 0x9E3779B9  # floor(2^32 / golden ratio): Knuth's multiplicative hashing (TAOCP vol. 3, sec. 6.4)


def fold_seed(seed: int) -> int:
    """A 64-bit per-sample seed folded into the 32 bits torch's CPU generator keeps: s xor (s >> 32) * 0x9E3779B9,
    mod 2^32. Identity for s < 2^32 (so seed=0 runs are unchanged); seed << 32 + k -> k xor (seed * 0x9E3779B9)."""
    return (seed ^ ((seed >> 32) * SEED_FOLD)) & 0xFFFFFFFF


def seeds_collide() -> bool:
    """True if the runner's seeds (seed << 32) + k give seed 1 and seed 2 the same starting noise: torch's CPU
    ``Generator.manual_seed`` keeps only the low 32 bits of the seed (mt19937), which are k in both."""
    from optsample.runner.app import sample_seeds
    from optsample.samplers import initial_noise

    first, second = (initial_noise(sample_seeds(seed, 0, 1), (8,)) for seed in (1, 2))
    return bool((first == second).all())


@contextlib.contextmanager
def distinct_sample_seeds():
    """While the runner's per-sample seeds collide across ``seed`` values, fold them (:func:`fold_seed`) so the
    tuning seed and the reporting seeds really draw different noise; a no-op once optsample folds them itself."""
    from optsample.runner import app as run

    original = run.sample_seeds
    fold = seeds_collide()
    if fold:
        run.sample_seeds = lambda seed, start, stop: [fold_seed(s) for s in original(seed, start, stop)]
    try:
        yield fold
    finally:
        run.sample_seeds = original


@contextlib.contextmanager
def reuse_built_models():
    """Build each model config once per process: the rmse metric caches its reference ODE solution by the model
    object (optsample/metrics/analytic.py), which the runner otherwise rebuilds for every run (6-8 s per
    digits_empirical run instead of ~0.1 s)."""
    from optsample.runner import config as C

    saved = dict(C.MODELS)
    built: dict = {}

    def once(build):
        def build_once(cfg: dict):
            key = json.dumps(cfg, sort_keys=True, default=str)
            if key not in built:
                built[key] = build(cfg)
            return built[key]
        return build_once

    for name, entry in saved.items():
        C.MODELS[name] = C.ModelEntry(entry.config, once(entry.build))
    try:
        yield
    finally:
        C.MODELS.clear()
        C.MODELS.update(saved)


@contextlib.contextmanager
def exact_karras_start():
    """``schedules.karras`` with its first point exactly sigma_max. Its formula (Karras et al. 2022 eq. 5, as in
    k-diffusion and NVlabs/edm) gives (sigma_max^(1/rho))^rho, which misses 80 by an ulp for most rho; then
    x_start = noise * sigmas[0] changes bit-wise with rho and the rmse metric's reference-solution cache
    (keyed by x_start's digest) misses: a 4.6 s ODE solve per digits_empirical trial. Sampling changes by
    1e-16 relative."""
    from optsample import schedules

    original = schedules._SCHEDULES["karras"]

    @functools.wraps(original)
    def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0, **kwargs):
        sigmas = original(n, sigma_min, sigma_max, rho, **kwargs)
        sigmas[0] = sigma_max
        return sigmas

    schedules._SCHEDULES["karras"] = karras
    try:
        yield
    finally:
        schedules._SCHEDULES["karras"] = original


# ----------------------------------------------------------------------------------------------
# Search spaces and defaults.


def load_search_spaces(path: Path = HERE / "search_spaces.yaml") -> dict[str, dict[str, str]]:
    """sampler -> {override key: Hydra sweep expression}: the schedule's space plus the sampler's own."""
    spec = yaml.safe_load(Path(path).read_text())
    schedule = dict(spec["schedule"])
    return {name: {**schedule, **(own or {})} for name, own in spec["samplers"].items()}


def default_values(sampler: str, keys) -> dict:
    """The default of every ``sampler.<x>`` / ``schedule.<x>`` key: the registered sampler's hyper-parameter
    dataclass and the karras schedule's signature (optsample/runner/config.py generates both nodes from them)."""
    from optsample.runner import config as C

    # schedule.sigma_min / sigma_max are None in the node (= the model's trained range); the study's models
    # have none, so their default is the karras signature's (EDM's 0.002 / 80)
    signature = {p.name: p.default for p in C.schedule_parameters("karras")}
    schedule = {k: signature[k] if v is None else v for k, v in dataclasses.asdict(C.schedule_config("karras")()).items()
                if k != "name"}
    nodes = {"sampler": dataclasses.asdict(C.sampler_config(sampler)()), "schedule": schedule}
    values = {}
    for key in keys:
        group, _, field = key.partition(".")
        if group not in nodes or field not in nodes[group]:
            raise ValueError(f"search space key {key!r} of sampler {sampler!r} is not a sampler / schedule field")
        values[key] = nodes[group][field]
    return values


# ----------------------------------------------------------------------------------------------
# The runner, in this process.


def optsample_run(*args: str) -> None:
    """``optsample-run`` with these arguments (Hydra reads sys.argv); RuntimeError naming them on failure."""
    from optsample.runner import app as run

    old = sys.argv
    sys.argv = ["optsample-run", *args]
    try:
        run.main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise RuntimeError(f"optsample-run {' '.join(args)} exited with {exit_.code}") from None
    finally:
        sys.argv = old


@dataclass
class Options:
    runs: Path
    out: Path
    n_samples: int | None  # None: the model preset's (256)
    samplers: tuple
    nfes: tuple

    def common(self, name: str) -> list[str]:
        args = [f"name={name}", f"results_dir={self.runs / name}", f"hydra.sweep.dir={self.runs / 'hydra' / name}",
                *QUIET_HYDRA]
        if self.n_samples is not None:
            args += [f"n_samples={self.n_samples}", f"batch_size={self.n_samples}"]
        return args


def tune(part: Part, sampler: str, nfe: int, space: dict, opts: Options) -> dict:
    """One Optuna sweep on the tuning seed; returns best params, best and default objective values, trial count."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # enqueue_trial (optuna 2.10)
    storage = f"sqlite:///{opts.runs / 'optuna.db'}"
    study_name = f"{part.model}-{sampler}-nfe{nfe}"
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study_name, storage=storage)  # a re-run replays the seeded TPE on cached rows
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
    defaults = default_values(sampler, space)
    study.enqueue_trial(defaults)
    name = f"ovs_{part.model}_tune"
    optsample_run(
        "-m", f"experiment=[ovs_{part.model},ovs_tune]", *opts.common(name),
        f"hydra.sweep.subdir={study_name}-${{hydra.job.num}}",
        f"sampler={sampler}", f"nfe={nfe}", f"seed={TUNING_SEED}", f"metric.names=[{part.objective}]",
        f"hydra.sweeper.n_trials={part.trials}", f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={study_name}", *(f"{key}={expr}" for key, expr in space.items()),
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    default_trial = study.trials[0]
    if default_trial.params != defaults:
        raise RuntimeError(f"{study_name}: trial 0 ran {default_trial.params}, not the defaults {defaults}")
    return {"params": study.best_trial.params, "tuning_value": study.best_value,
            "default_value": default_trial.value, "default_params": defaults,
            "trials": len(study.trials), "completed_trials": len(done)}


def overrides(params: dict) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]


def report(part: Part, sampler: str, nfe: int, params: dict, label: str, opts: Options) -> None:
    """The configuration ``params`` on the reporting seeds: rows in ``<runs>/ovs_<model>_<label>``."""
    name = f"ovs_{part.model}_{label}"
    optsample_run("-m", f"experiment=ovs_{part.model}", *opts.common(name), f"sampler={sampler}", f"nfe={nfe}",
                  "seed=" + ",".join(map(str, REPORTING_SEEDS)), *overrides(params))


def select_rows(rows: pd.DataFrame, sampler: str, nfe: int, params: dict, n_samples: int | None) -> pd.DataFrame:
    """This study's rows of one cell: the sampler at this NFE budget with exactly ``params``, reporting seeds."""
    keep = (rows["sampler.name"] == sampler) & (rows["nfe_budget"] == nfe) & rows["seed"].isin(REPORTING_SEEDS)
    if n_samples is not None:
        keep &= rows["n_samples"] == n_samples
    for key, value in params.items():
        keep &= rows[key] == value
    found = rows[keep]
    if sorted(found["seed"]) != sorted(REPORTING_SEEDS):
        raise RuntimeError(f"{sampler} NFE {nfe} {params}: expected one row per seed {REPORTING_SEEDS}, "
                           f"found seeds {sorted(found['seed'])}")
    return found


# ----------------------------------------------------------------------------------------------
# Tables and the comparison.


def ordered(table, samplers):
    """The pivot with rows in the study's order (classic solvers first), not alphabetical."""
    order = [s for s in samplers if s in table.mean.index]
    return dataclasses.replace(table, **{k: getattr(table, k).reindex(order) for k in ("mean", "std", "count", "best")})


def protocol_note(part: Part, label: str) -> str:
    what = (f"hyper-parameters and Karras schedule (rho, sigma_min) tuned ({trials_note(part)})" if label == "tuned"
            else "default hyper-parameters and schedule (karras rho 7, sigma_min 0.002), untuned")
    return (f"model={part.model}, {what}. Numbers: mean ± std over the reporting seeds "
            f"{', '.join(map(str, REPORTING_SEEDS))} (seed {TUNING_SEED} was used for tuning and is never reported).")


def trials_note(part: Part) -> str:
    where = f"at NFE {part.tune_at_nfe}, reused at every NFE" if part.tune_at_nfe else "and NFE"
    return f"Optuna TPE, {part.trials} trials per sampler {where}, on seed {TUNING_SEED}"


def write_tables(part: Part, frames: dict, opts: Options) -> list[Path]:
    from optsample.runner import report

    written = []
    for label, frame in frames.items():
        for metric in part.metrics:
            table = ordered(report.pivot(frame, metric, "sampler.name", "nfe_budget"), opts.samplers)
            stem = f"{part.model}_{metric}_{label}"
            paths = report.write_tables(table, opts.out, stem)
            note = protocol_note(part, label)
            md = opts.out / f"{stem}.md"
            md.write_text(f"{note}\n\n{md.read_text()}")
            written += paths
    return written


def paired(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """metric per (sampler, nfe) x seed."""
    return frame.pivot_table(index=["sampler.name", "nfe_budget"], columns="seed", values=f"metric.{metric}")


def comparison(part: Part, tuned: pd.DataFrame, default: pd.DataFrame, opts: Options) -> str:
    """Markdown: per NFE, each sampler's tuned mean, its ratio to each tuned baseline with per-seed wins, and
    the gain from tuning (tuned / default). Ratios < 1 are better for lower-is-better metrics."""
    from optsample.runner.report import metric_direction

    metric = part.objective
    higher = metric_direction(metric)
    per_seed, per_seed_default = paired(tuned, metric), paired(default, metric)
    baselines = [b for b in BASELINES if b in opts.samplers]
    lines = [f"### {part.model}: {metric} ({'higher' if higher else 'lower'} is better), tuned configurations",
             "", "Cells: mean over seeds 2-4; `xR (w/3)` = ratio of means to the baseline and the number of "
             "reporting seeds on which the sampler beats it (same starting noise per seed).", ""]
    header = ["nfe", "sampler", metric] + [f"vs {b}" for b in baselines] + ["tuned / default"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for nfe in opts.nfes:
        for sampler in opts.samplers:
            if (sampler, nfe) not in per_seed.index:
                continue
            values = per_seed.loc[(sampler, nfe)]
            cells = [str(nfe), sampler, f"{values.mean():.4g}"]
            for base in baselines:
                if base == sampler:
                    cells.append("-")
                    continue
                other = per_seed.loc[(base, nfe)]
                wins = int(((values > other) if higher else (values < other)).sum())
                cells.append(f"x{values.mean() / other.mean():.3f} ({wins}/{len(values)})")
            untuned = per_seed_default.loc[(sampler, nfe)]
            cells.append(f"x{values.mean() / untuned.mean():.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The driver.


def study_frames(part: Part, best: dict, spaces: dict, opts: Options) -> dict[str, pd.DataFrame]:
    from optsample.runner.results import read_rows

    frames = {}
    for label in ("tuned", "default"):
        rows = pd.DataFrame(read_rows(opts.runs / f"ovs_{part.model}_{label}"))
        cells = []
        for sampler in opts.samplers:
            for nfe in opts.nfes:
                params = (best[sampler][str(nfe)]["params"] if label == "tuned"
                          else default_values(sampler, spaces[sampler]))
                cells.append(select_rows(rows, sampler, nfe, params, opts.n_samples))
        # report.pivot warns when a cell's rows differ in anything but seed / metrics / times; the write
        # timestamp always differs between seeds, so it goes
        frames[label] = pd.concat(cells, ignore_index=True).drop(columns=["timestamp"])
    return frames


def tabulate(part: Part, best: dict, spaces: dict, opts: Options) -> str:
    """Tables and plots of one model under ``opts.out``; returns its section of comparison.md."""
    frames = study_frames(part, best, spaces, opts)
    write_tables(part, frames, opts)
    return comparison(part, frames["tuned"], frames["default"], opts)


def run_part(part: Part, spaces: dict, opts: Options, log) -> tuple[dict, dict]:
    """Tune, report, tabulate one model; returns (best params per sampler and NFE, seconds per phase)."""
    seconds = {}
    start = time.perf_counter()
    best: dict = {}
    tune_nfes = (part.tune_at_nfe,) if part.tune_at_nfe is not None else opts.nfes
    for sampler in opts.samplers:
        best[sampler] = {}
        for nfe in tune_nfes:
            t0 = time.perf_counter()
            found = tune(part, sampler, nfe, spaces[sampler], opts)
            log(f"tune {part.model:16s} {sampler:17s} NFE {nfe:2d}: {part.objective} {found['default_value']:.4g} "
                f"(defaults) -> {found['tuning_value']:.4g} with {found['params']} [{time.perf_counter() - t0:.1f} s]")
            best[sampler][str(nfe)] = {**found, "tuned_at_nfe": nfe}
        for nfe in opts.nfes:
            best[sampler].setdefault(str(nfe), best[sampler][str(tune_nfes[0])])
    seconds["tune_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for sampler in opts.samplers:
        for nfe in opts.nfes:
            report(part, sampler, nfe, best[sampler][str(nfe)]["params"], "tuned", opts)
        log(f"report {part.model} {sampler}: tuned configs on seeds {REPORTING_SEEDS} done")
    # the defaults: one multirun over samplers x NFE x seeds
    name = f"ovs_{part.model}_default"
    optsample_run("-m", f"experiment=ovs_{part.model}", *opts.common(name), "sampler=" + ",".join(opts.samplers),
                  "nfe=" + ",".join(map(str, opts.nfes)), "seed=" + ",".join(map(str, REPORTING_SEEDS)))
    seconds["report_s"] = time.perf_counter() - start
    return best, seconds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(REPO / "runs" / "optimizer_vs_solvers"), help="result rows (uncommitted)")
    parser.add_argument("--out", default=str(REPO / "results" / "optimizer_vs_solvers"), help="tables, plots, JSON")
    parser.add_argument("--models", default="gmm64,digits_empirical,digits")
    parser.add_argument("--samplers", default=",".join(CLASSIC + RULES))
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--trials", type=int, default=16, help="Optuna trials per (sampler, NFE) on gmm64 / digits_empirical")
    parser.add_argument("--digits-trials", type=int, default=8, help="Optuna trials per (sampler, NFE) on digits")
    parser.add_argument("--digits-tune-at", type=int, default=None, metavar="NFE",
                        help="tune digits at this NFE only and reuse its best parameters at every NFE (default: tune at each)")
    parser.add_argument("--n-samples", type=int, default=None, help="samples per run (default: the presets' 256)")
    parser.add_argument("--tables-only", action="store_true", help="redo the tables, plots and comparison.md from "
                        "<out>/best_params.json and the rows in <runs> (no sampling)")
    parser.add_argument("--tiny", action="store_true", help="CI check: gmm64 + digits_empirical, euler and momentum, "
                        "NFE 4 and 6, 3 trials, 32 samples")
    return parser.parse_args(argv)


def tables_only(args) -> int:
    """Tables, plots and comparison.md again from best_params.json (its protocol: models, samplers, NFE, trials)."""
    path = Path(args.out).resolve() / "best_params.json"
    if not path.exists():
        raise SystemExit(f"run_ovs: --tables-only needs {path} (written by a full run)")
    best = json.loads(path.read_text())
    protocol = best.pop("protocol")
    opts = Options(Path(args.runs).resolve(), path.parent, protocol["n_samples"], tuple(protocol["samplers"]),
                   tuple(protocol["nfe"]))
    parts = {p.model: p for p in default_parts(0, 0)}
    sections = []
    for model, entries in best.items():
        tuned_at = protocol["tuned_at_nfe"][model]
        part = dataclasses.replace(parts[model], trials=protocol["trials"][model],
                                   tune_at_nfe=None if tuned_at == "each" else tuned_at)
        sections.append(tabulate(part, entries, load_search_spaces(), opts))
    (opts.out / "comparison.md").write_text("\n".join(sections))
    print(f"tables of {', '.join(best)} in {opts.out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tables_only:
        return tables_only(args)
    if args.tiny:
        args.models, args.samplers, args.nfe, args.trials, args.n_samples = (
            "gmm64,digits_empirical", "euler,momentum", "4,6", 3, 32)
    spaces = load_search_spaces()
    samplers = tuple(s.strip() for s in args.samplers.split(","))
    unknown = sorted(set(samplers) - set(spaces))
    if unknown:
        raise SystemExit(f"run_ovs: no search space for sampler(s) {unknown}; known: {sorted(spaces)}")
    parts = {p.model: p for p in default_parts(args.trials, args.digits_trials, args.digits_tune_at)}
    models = [m.strip() for m in args.models.split(",")]
    if set(models) - set(parts):
        raise SystemExit(f"run_ovs: unknown model(s) {sorted(set(models) - set(parts))}; known: {sorted(parts)}")
    opts = Options(Path(args.runs).resolve(), Path(args.out).resolve(), args.n_samples, samplers,
                   tuple(int(n) for n in args.nfe.split(",")))
    opts.runs.mkdir(parents=True, exist_ok=True)
    opts.out.mkdir(parents=True, exist_ok=True)
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    begin = time.perf_counter()
    best_all, timing = {}, {}
    with distinct_sample_seeds() as folded, reuse_built_models(), exact_karras_start():
        log("per-sample seeds folded to 32 bits (run_ovs.fold_seed)" if folded else "per-sample seeds: as the runner makes them")
        for model in models:
            part = parts[model]
            best_all[model], timing[model] = run_part(part, spaces, opts, log)
            log(f"{model}: {timing[model]}")
    # merge into an existing best_params.json of the same study (samplers, NFE, samples), so models can be redone alone
    path = opts.out / "best_params.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    old = previous.pop("protocol", {})
    if (old.get("samplers"), old.get("nfe"), old.get("n_samples")) != (list(samplers), list(opts.nfes), opts.n_samples or 256):
        previous, old = {}, {}
    seconds = {**old.get("seconds", {}), **timing}
    protocol = {"tuning_seed": TUNING_SEED, "reporting_seeds": list(REPORTING_SEEDS), "nfe": list(opts.nfes),
                "samplers": list(samplers), "search_spaces": "experiments/optimizer_vs_solvers/search_spaces.yaml",
                "optuna": "TPE seed 0, 6 random startup trials, trial 0 = the defaults",
                "trials": {**old.get("trials", {}), **{m: parts[m].trials for m in models}},
                "tuned_at_nfe": {**old.get("tuned_at_nfe", {}), **{m: parts[m].tune_at_nfe or "each" for m in models}},
                "n_samples": opts.n_samples or 256, "seeds_folded": folded, "seconds": seconds,
                "wall_s": {m: round(sum(t.values()), 1) for m, t in seconds.items()}}
    path.write_text(json.dumps({"protocol": protocol, **previous, **best_all}, indent=1) + "\n")
    tables_only(args)  # every model of the JSON, so comparison.md covers them all
    log(f"done in {time.perf_counter() - begin:.0f} s: {path}, {opts.out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
