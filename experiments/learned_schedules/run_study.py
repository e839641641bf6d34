"""The learned-schedules study (issue 14, item 3): Karras vs tuned Karras vs AYS-style vs learned, on held-out seeds.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/learned_schedules/run_study.py            # every missing cell
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learned_schedules/run_study.py --models digits --methods dp
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learned_schedules/run_study.py --tables-only

Every (model, sampler, NFE, schedule) cell is cached: a learned schedule is a schedule file
``<out>/schedules/<model>_<sampler>_nfe<N>_<label>.json`` (optsample.learned_schedules.files, with its
provenance), its held-out scores ``<out>/scores/<model>/<sampler>_nfe<N>_<label>.json`` (per seed, with the
sigmas they were computed on). A rerun computes only what is missing or stale (a learned file whose method,
options, seeds or teacher differ from the request; a score whose sigmas differ), so columns can be added later.

Protocol (as experiments/optimizer_vs_solvers): learning sees only the tuning seed 1 (sample seeds
(1 << 32) + k, k < ``--n-tune``); every schedule is scored on the held-out seeds 2, 3, 4. Models:

- ``gmm64`` (64-D, 8 components) and ``digits_empirical`` (the exact denoiser of the digits train split):
  RMSE to the exact ODE solution (optsample.reference.solve) from the same noise, 256 samples per seed;
  teacher for learning: the exact ODE solution (``ExactTeacher``).
- ``digits``: the shipped UNet's unconditional branch (null class; ``learn`` takes no conditioning), network in
  float32; FID-digits (optsample.zoo.digits.inverse.fid_digits, against the 450 held-out digits) of 450 samples
  per seed. Teacher for learning: ``SolverTeacher`` (iPNDM, every interval of a Karras grid split into 8
  geometric sub-steps, checked against 16) on the dp grid; the floor is FID-digits of a 50-step iPNDM Karras
  solve from the same seeds (``floor``).

Schedules: ``karras`` (rho 7, sigma in [0.002, 80]); ``karras_tuned`` (gmm64 and digits_empirical: rho and
sigma_min of results/optimizer_vs_solvers/best_params.json, Optuna 16 trials on seed 1 with 256 samples, for
euler / dpmpp_2m / unipc / ghvb at NFE 5 and 10; for unipc / ghvb that tuning also chose the sampler's order,
only the schedule is reused with the default sampler); ``ays`` (AYS-style:
schedules.ays's SD 1.5 table mapped onto [0.002, 80] affinely in log sigma, then log-linearly interpolated to
the step count, as schedules.ays does; not AYS's optimisation for these models); the learned labels of
:data:`LEARNED` (``learn()`` with the options named there). Transfer (:func:`transfer_cells`): a schedule
learned for one sampler / model / NFE scored where it was not learned.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from optsample import reference, samplers, schedules
from optsample.learned_schedules import files
from optsample.learned_schedules import learn as learn_module
from optsample.learned_schedules.dp import make_grid
from optsample.learned_schedules.problem import Ends, ExactTeacher, SolverTeacher, steps_for_budget

REPO = Path(__file__).resolve().parents[2]
SAMPLERS = ("euler", "dpmpp_2m", "unipc", "ipndm", "ghvb")
NFES = (4, 5, 6, 8, 10)
TUNING_SEED, REPORTING_SEEDS = 1, (2, 3, 4)
ENDS = Ends()  # sigma in [0.002, 80] for all three models (EDM's range)
BASELINES = ("karras", "karras_tuned", "ays")
# label -> (learn() method, options, labels whose learned schedules of the same cell are extra gradient starts,
# tuning samples (None: --n-tune)); "dp"'s grid_size is per model (ModelSpec.grid). Default --methods: the first three.
LEARNED = {
    "dp": ("dp", {}, (), None),
    "gradient": ("gradient", {"iters": 60}, (), None),
    "optuna": ("optuna", {}, (), None),
    # the improved descent of (results/learned_schedules/target): 1024 tuning samples (768 train, 256
    # validation) in mini-batches of 256, 100 steps, cosine lr, restarts from Karras rho {3, 7} x sigma_min
    # {0.002, 0.05} and from this cell's dp and optuna schedules; the best start on validation is kept. (With
    # 64 samples it overfits: gmm64 dpmpp_2m NFE 5, tuning RMSE 0.092, held-out 0.657.)
    "gradient+restarts": ("gradient", {"iters": 100, "lr_schedule": "cosine", "batch_size": 256, "init_rho": [3.0, 7.0],
                                       "init_sigma_min": [None, 0.05]}, ("dp", "optuna"), 1024),
    "dp+beam4": ("dp", {"beam": 4}, (), None),
}
DEFAULT_METHODS = ("dp", "gradient", "optuna")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: dict  # the schedule file's provenance "model"
    metric: str  # rmse | fid_digits
    n_report: int
    grid: int  # dp grid size (and the digits teacher's grid)
    samplers: tuple
    nfes: tuple


MODELS = {
    "gmm64": ModelSpec("gmm64", {"name": "gmm64", "dim": 64, "components": 8, "seed": 0, "spread": 3.0}, "rmse",
                       256, 32, SAMPLERS, NFES),
    "digits_empirical": ModelSpec("digits_empirical", {"name": "digits_empirical", "split": "train",
                                                       "class_conditional": False}, "rmse", 256, 20, SAMPLERS, NFES),
    "digits": ModelSpec("digits", {"name": "digits", "guidance": 0.0, "branch": "unconditional (null class)",
                                   "checkpoint": None, "net_dtype": "float32"}, "fid_digits", 450, 16,
                        SAMPLERS, (4, 5, 6)),
}


def sample_seeds(seed: int, n: int) -> list[int]:
    """The runner's per-sample seeds (seed << 32) + k (optsample/runner/app.py ``sample_seeds``)."""
    return [(seed << 32) + k for k in range(n)]


class Float32Net(torch.nn.Module):
    """The float32 network called on float64 states (the samplers and teachers run in float64); differentiable."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, sigma, **kwargs):
        return self.net(x.float(), torch.as_tensor(sigma).float(), **kwargs).to(x.dtype)


def build(spec: ModelSpec):
    """(denoiser, sample shape) of a study model."""
    if spec.name == "gmm64":
        from optsample.models import GaussianMixture

        return GaussianMixture.random(dim=64, components=8, seed=0), (64,)
    from optsample.zoo.digits import GuidedDenoiser, data, load_denoiser

    if spec.name == "digits_empirical":
        from optsample.models import EmpiricalDenoiser

        return EmpiricalDenoiser(data.load("train")[0]), (1, 8, 8)
    return Float32Net(GuidedDenoiser(load_denoiser(), guidance=0.0)).eval(), (1, 8, 8)


def _key(x: torch.Tensor) -> tuple:
    return tuple(x.shape), float(x.double().sum()), float(x.double().pow(2).sum())


class CachedTeacher:
    """A teacher whose states are computed once per starting noise and sigma list (shared by every cell);
    ``describe()`` is the inner teacher's, so the files' provenance is what the teacher itself would write."""

    def __init__(self, inner):
        self.inner, self.memo = inner, {}

    @property
    def name(self):
        return self.inner.name

    def describe(self) -> dict:
        return self.inner.describe()

    def states(self, model, x, sigmas):
        key = (_key(x), tuple(float(s) for s in sigmas))
        if key not in self.memo:
            self.memo[key] = self.inner.states(model, x, sigmas)
        return self.memo[key]


class GridTeacher(CachedTeacher):
    """A solver teacher solved once on a fixed Karras grid; states asked at grid sigmas are read off it.
    (SolverTeacher asked for [sigma_max, 0] alone would take 8 sub-steps from 80 to 0.08 and jump to 0.)"""

    def __init__(self, inner, grid: torch.Tensor):
        super().__init__(inner)
        self.grid = grid

    def describe(self) -> dict:
        return {**self.inner.describe(), "solved_on": f"karras({len(self.grid) - 1}, 0.002, 80, rho=7) grid"}

    def states(self, model, x, sigmas):
        full = super().states(model, x, self.grid)
        index = []
        for sigma in sigmas:
            hits = [k for k, g in enumerate(self.grid.tolist()) if math.isclose(g, float(sigma), rel_tol=1e-9)]
            if not hits:
                raise ValueError(f"GridTeacher: sigma {float(sigma)} is not a point of its grid")
            index.append(hits[0])
        return full[index]


def make_teacher(spec: ModelSpec):
    if spec.metric == "rmse":
        return CachedTeacher(ExactTeacher())
    return GridTeacher(SolverTeacher("ipndm", substeps=8), make_grid(spec.grid, ENDS))


def tuned_karras(model: str, sampler: str, nfe: int) -> dict | None:
    """rho and sigma_min tuned for (model, sampler, nfe) in experiments/optimizer_vs_solvers, if there (gmm64 and
    digits_empirical only: its digits tuning was of the guided conditional model, not this unconditional one)."""
    if model not in ("gmm64", "digits_empirical"):
        return None
    path = REPO / "results" / "optimizer_vs_solvers" / "best_params.json"
    entry = json.loads(path.read_text()).get(model, {}).get(sampler, {}).get(str(nfe))
    if entry is None:
        return None
    params = entry["params"]
    return {"rho": params["schedule.rho"], "sigma_min": params["schedule.sigma_min"]}


def ays_mapped(n_steps: int, ends: Ends = ENDS) -> torch.Tensor:
    """schedules.ays(n, "sd15") moved onto [sigma_min, sigma_max] affinely in log sigma (files.map_sigma_range: the
    table's ends onto the range's ends). Log-linear interpolation commutes with an affine map of log sigma, so
    this is also the mapped table interpolated to n points."""
    table = schedules.AYS_SIGMAS["sd15"]
    return files.map_sigma_range(schedules.ays(n_steps, "sd15"), (table[-1], table[0]),
                                 (ends.sigma_min, ends.sigma_max))


def baseline(name: str, spec: ModelSpec, sampler: str, nfe: int) -> torch.Tensor | None:
    n_steps = steps_for_budget(sampler, nfe, ends=ENDS)
    if name == "karras":
        return schedules.karras(n_steps, ENDS.sigma_min, ENDS.sigma_max)
    if name == "ays":
        return ays_mapped(n_steps)
    tuned = tuned_karras(spec.name, sampler, nfe)
    return schedules.karras(n_steps, sigma_max=ENDS.sigma_max, **tuned) if tuned else None


def learned_path(out: Path, model: str, sampler: str, nfe: int, label: str) -> Path:
    return out / "schedules" / f"{model}_{sampler}_nfe{nfe}_{label}.json"


def method_request(label: str, spec: ModelSpec, out: Path, sampler: str, nfe: int) -> tuple[str, dict] | None:
    """learn()'s method and options for this cell (None if a schedule it starts from is not learned yet)."""
    method, options, starts, _ = LEARNED[label]
    options = {"grid_size": spec.grid, **options} if method == "dp" else dict(options)
    if starts:
        paths = [learned_path(out, spec.name, sampler, nfe, start) for start in starts]
        if not all(path.exists() for path in paths):
            return None
        options["init_schedules"] = [files.load(path).sigmas.tolist() for path in paths]
    return method, options


def fresh(provenance: dict, method: str, options: dict, seeds: list, teacher) -> str | None:
    """None if a cached file answers this request, else why not."""
    if provenance.get("method") != method:
        return f"method {provenance.get('method')!r}"
    stored = provenance.get("method_options", {})
    differs = {k: v for k, v in options.items() if stored.get(k) != v}
    if differs:
        return f"options {differs} (file: { {k: stored.get(k) for k in differs} })"
    if provenance.get("seeds") != seeds:
        return "tuning seeds"
    if provenance.get("teacher") != teacher.describe():
        return f"teacher {provenance.get('teacher')}"
    return None


def learned_cell(out, spec, model, shape, teacher, sampler, nfe, label, n_tune, budget):
    """The cached or newly learned sigmas of one cell (None if its method is not in this library yet)."""
    request = method_request(label, spec, out, sampler, nfe)
    if request is None:
        print(f"  skip {spec.name} {sampler} nfe={nfe} {label}: its starting schedules are not learned yet", flush=True)
        return None
    method, options = request
    n_tune = LEARNED[label][3] or n_tune
    path, seeds = learned_path(out, spec.name, sampler, nfe, label), sample_seeds(TUNING_SEED, n_tune)
    if path.exists():
        cached = files.load(path)
        why = fresh(cached.provenance, method, options, seeds, teacher)
        if why is None:
            return cached.sigmas
        print(f"  relearn {path.name}: cached file differs in {why}", flush=True)
    if method not in learn_module.METHODS:
        print(f"  skip {spec.name} {sampler} nfe={nfe} {label}: method {method!r} not in this library", flush=True)
        return None
    if budget.spent():
        print(f"  skip {path.name}: CPU budget spent", flush=True)
        return None
    result = learn_module.learn(model, sampler, nfe, shape, method=method, seeds=seeds, teacher=teacher,
                                ends=ENDS, options=options)
    files.save(path, result.sigmas, {"model": spec.description, **result.provenance})
    print(f"  learned {path.name} in {result.provenance['seconds']:.1f} s: tuning RMSE "
          f"{result.provenance['loss']['rmse']:.4g} (Karras {result.provenance['loss']['rmse_karras_default']:.4g})",
          flush=True)
    return result.sigmas


class Scorer:
    """Held-out scores of one model: RMSE to the exact solution, or FID-digits; starts / references built once."""

    def __init__(self, spec: ModelSpec, model, shape, cache: Path):
        self.spec, self.model, self.shape, self.cache = spec, model, shape, cache
        self._starts, self._exact = {}, {}

    def start(self, seed):
        if seed not in self._starts:
            noise = samplers.initial_noise(sample_seeds(seed, self.spec.n_report), self.shape, dtype=torch.float64)
            self._starts[seed] = noise * ENDS.sigma_max
        return self._starts[seed]

    def exact(self, seed):
        if seed not in self._exact:
            path = self.cache / f"exact_{self.spec.name}_seed{seed}_n{self.spec.n_report}.pt"
            if path.exists():
                self._exact[seed] = torch.load(path)
            else:
                self._exact[seed] = reference.solve(self.model, self.start(seed), ENDS.sigma_max, 0.0)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self._exact[seed], path)
        return self._exact[seed]

    def score(self, sampler, sigmas, seed) -> float:
        with torch.no_grad():
            out = samplers.sample(sampler, self.model, self.start(seed), sigmas,
                                  seeds=sample_seeds(seed, self.spec.n_report))
        if self.spec.metric == "rmse":
            return reference.rmse(out, self.exact(seed))
        from optsample.zoo.digits.inverse import fid_digits

        return fid_digits(out)


def score_cell(out, scorer, sampler, nfe, label, sigmas, source=None) -> dict:
    """{seed: value} on the held-out seeds, cached with the sigmas (recomputed if they differ beyond round-off)."""
    path = out / "scores" / scorer.spec.name / f"{sampler}_nfe{nfe}_{label}.json"
    values = [float(s) for s in sigmas]
    if path.exists():
        stored = json.loads(path.read_text())
        same = len(stored["sigmas"]) == len(values) and all(
            math.isclose(a, b, rel_tol=1e-12) for a, b in zip(stored["sigmas"], values))  # to round-off
        if same and stored["n_report"] == scorer.spec.n_report:
            return {int(k): v for k, v in stored["values"].items()}
    started = time.process_time()
    result = {seed: scorer.score(sampler, sigmas, seed) for seed in REPORTING_SEEDS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": scorer.spec.name, "sampler": sampler, "nfe": nfe, "schedule": label,
                                "metric": scorer.spec.metric, "n_report": scorer.spec.n_report, "source": source,
                                "cpu_s": round(time.process_time() - started, 2), "sigmas": values,
                                "values": {str(k): v for k, v in result.items()}}, indent=1))
    return result


class Budget:
    """Stops new learning once this process has used ``limit`` CPU-seconds (scores of cached cells still run)."""

    def __init__(self, limit: float):
        self.limit, self.started = limit, time.process_time()

    def spent(self) -> bool:
        return time.process_time() - self.started > self.limit


def main_cells(out, spec, model, shape, scorer, teacher, args, budget) -> None:
    samplers_here = [s for s in spec.samplers if s in args.samplers]
    if spec.metric == "fid_digits" and samplers_here:  # the floor: a converged 50-step iPNDM solve
        score_cell(out, scorer, "ipndm", 50, "floor", schedules.karras(50), "ipndm, karras(50)")
    for sampler in samplers_here:
        for nfe in [n for n in spec.nfes if n in args.nfe]:
            means = {}
            for label in BASELINES:
                sigmas = baseline(label, spec, sampler, nfe)
                if sigmas is not None:
                    means[label] = score_cell(out, scorer, sampler, nfe, label, sigmas, label)
            for label in args.methods:
                sigmas = learned_cell(out, spec, model, shape, teacher, sampler, nfe, label, args.n_tune, budget)
                if sigmas is not None:
                    source = str(learned_path(out, spec.name, sampler, nfe, label).relative_to(out))
                    means[label] = score_cell(out, scorer, sampler, nfe, label, sigmas, source)
            print(f"{spec.name} {sampler} nfe={nfe}: " + ", ".join(
                f"{k} {sum(v.values()) / len(v):.4g}" for k, v in means.items()), flush=True)


def transfer_sources(spec: ModelSpec, sampler: str, nfe: int, methods) -> list[tuple[str, str, str, int, str]]:
    """(label, source model, source sampler, source nfe, method) of the transfers scored at this cell."""
    out = []
    for method in methods:
        if sampler != "dpmpp_2m":
            out.append((f"{method}<-dpmpp_2m", spec.name, "dpmpp_2m", nfe, method))
        if spec.name != "gmm64":
            out.append((f"{method}<-gmm64", "gmm64", sampler, nfe, method))
        if spec.name == "digits":
            out.append((f"{method}<-digits_empirical", "digits_empirical", sampler, nfe, method))
        if nfe != 10 and spec.name != "digits":
            out.append((f"{method}<-nfe10", spec.name, sampler, 10, method))
    return out


def transfer_cells(out, spec, scorer, args) -> None:
    for sampler in [s for s in spec.samplers if s in args.samplers]:
        for nfe in [n for n in spec.nfes if n in args.nfe]:
            n_steps = steps_for_budget(sampler, nfe, ends=ENDS)
            for label, model_from, sampler_from, nfe_from, method in transfer_sources(spec, sampler, nfe,
                                                                                       args.transfer_methods):
                path = learned_path(out, model_from, sampler_from, nfe_from, method)
                if not path.exists():
                    continue
                sigmas = files.load(path).sigmas
                if len(sigmas) - 1 != n_steps:  # log-linear in the step fraction (AYS's loglinear_interp)
                    sigmas = files.interpolate_steps(sigmas, n_steps)
                score_cell(out, scorer, sampler, nfe, label, sigmas, str(path.relative_to(out)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(LEARNED))
    parser.add_argument("--transfer-methods", nargs="*", default=["dp", "gradient"])
    parser.add_argument("--n-tune", type=int, default=64)
    parser.add_argument("--cpu-budget", type=float, default=math.inf, help="CPU-seconds of new learning, then stop")
    parser.add_argument("--tables-only", action="store_true", help="only rebuild tables / plot from the scores")
    parser.add_argument("--out", default=str(REPO / "results" / "learned_schedules"))
    parser.add_argument("--cache", default="/tmp/optsample_learned_schedules_cache", help="exact solutions (.pt)")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    if not args.tables_only:
        budget = Budget(args.cpu_budget)
        for name in args.models:
            spec = MODELS[name]
            model, shape = build(spec)
            scorer, teacher = Scorer(spec, model, shape, Path(args.cache)), make_teacher(spec)
            main_cells(out, spec, model, shape, scorer, teacher, args, budget)
            transfer_cells(out, spec, scorer, args)
    from tables import write_tables  # experiments/learned_schedules/tables.py

    write_tables(out)
    print(f"wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time() - cpu:.0f} s")


if __name__ == "__main__":
    main()
