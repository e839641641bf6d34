"""``optsample-run`` (also ``python -m optsample.run``): the Hydra experiment runner.

One run = validate the whole config (before any work), build the model and schedule, generate
``n_samples`` in batches with per-sample seeds, score, log, and write one result row keyed by the
hash of the resolved config. A run whose row exists is skipped (``force=true`` redoes it).

    optsample-run sampler=adam sampler.beta1=0.8 steps=20
    optsample-run -m sampler=euler,heun,dpmpp_2m steps=5,10,20 logger=none
    optsample-run -m sampler=euler nfe=10,20 hydra/launcher=joblib
    optsample-run -m experiment=tune_euler_churn          # Optuna sweeper preset (optional extra)
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from . import config as C
from . import plugins, results
from .devices import InDtype, model_dtype, resolve_device
from . import distributed, guidance_tasks, shards

log = logging.getLogger("optsample.runner.app")

TRAJECTORY_SAMPLES = 64
SAVE_FORMATS = ("none", "npz", "png")
VERSIONED_PACKAGES = ("optsample", "torch", "numpy", "hydra-core", "omegaconf", "diffusers")


class ConfigError(ValueError):
    """An impossible configuration, found before any work; the message names the key."""


# ----------------------------------------------------------------------------------------------
# Validation and planning: everything that can fail does so here, before a model is built.


@dataclass
class RunPlan:
    cfg: dict  # the resolved config (a plain dict, no hydra node)
    key: str  # config hash
    steps: int | None
    sigmas: torch.Tensor | None  # the schedule that is run; provisional (no model arguments) until resolve_schedule
    hparams: dict
    dtype: torch.dtype
    results_dir: Path
    schedule_kwargs: dict | None = None  # the schedule's arguments actually used (model range filled in)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def schedule_kwargs(cfg: dict, model_args: dict) -> dict:
    """The schedule's arguments: the config's, with sigma_min / sigma_max left unset (None) taken from the
    model's trained range when it has one (k-diffusion ``model.sigma_min/max``), else the schedule's
    defaults; model-provided arguments (``alphas_cumprod``) passed where the schedule takes them."""
    from .. import schedules

    accepted = inspect.signature(schedules.function(cfg["schedule"]["name"])).parameters
    kwargs = {k: v for k, v in model_args.items() if k in accepted}
    for key, value in C.schedule_params(cfg["schedule"]).items():
        if value is not None:
            kwargs[key] = value
        elif key not in kwargs:  # an unset sigma_min / sigma_max without a model range: the function's default
            kwargs[key] = accepted[key].default
    return kwargs


def _values_decide_steps(schedule_cfg: dict) -> bool:
    """custom values, and a learned file unless ``interpolate`` (then steps / nfe decide, as for karras)."""
    return schedule_cfg["name"] == "custom" or (schedule_cfg["name"] == "learned" and not schedule_cfg.get("interpolate"))


def _resolve_schedule(cfg: dict, hparams: dict, model_args: dict) -> tuple[int | None, torch.Tensor, dict]:
    """(steps, sigmas, schedule kwargs) of the schedule that is run. With an NFE budget the step count is the
    largest whose NFE, measured on this very schedule (sigma range, family, final-sigma policy, restarts),
    fits the budget (core.steps_for_nfe); a budget that one step exceeds is a ConfigError."""
    from ..learned_schedules.files import InterpolationWarning
    from ..samplers import BudgetError, measure_nfe, steps_for_nfe

    kwargs = schedule_kwargs(cfg, model_args)
    steps = cfg["steps"]
    if cfg["nfe"] is not None:
        _require(cfg["nfe"] >= 1, f"nfe must be >= 1, got {cfg['nfe']}")
        if _values_decide_steps(cfg["schedule"]):  # the values decide the steps; the budget is checked on them
            sigmas = _make_sigmas(cfg, None, kwargs)
            nfe = measure_nfe(cfg["sampler"]["name"], len(sigmas) - 1, schedule=lambda n: sigmas, **hparams)
            _require(nfe <= cfg["nfe"], f"nfe: schedule={cfg['schedule']['name']} costs {nfe} evaluations with "
                     f"{cfg['sampler']['name']}, over the budget nfe={cfg['nfe']}")
            return len(sigmas) - 1, sigmas, kwargs
        try:
            with warnings.catch_warnings():  # the search's trial step counts: only the chosen one is warned about
                warnings.simplefilter("ignore", InterpolationWarning)
                steps = steps_for_nfe(cfg["sampler"]["name"], cfg["nfe"],
                                      schedule=lambda n: _make_sigmas(cfg, n, kwargs), **hparams)
        except BudgetError as err:
            raise ConfigError(f"nfe: {err} (schedule={cfg['schedule']['name']})") from None
        except ValueError as err:
            raise ConfigError(f"sampler: {err}") from None
    elif _values_decide_steps(cfg["schedule"]):
        steps = None  # the values decide the step count (``steps`` is ignored)
    elif steps is None:
        raise ConfigError("give steps=<int> or nfe=<int>")
    else:
        _require(steps >= 1, f"steps must be >= 1, got {steps}")
    sigmas = _make_sigmas(cfg, steps, kwargs)
    return (len(sigmas) - 1 if steps is None else steps), sigmas, kwargs


def resolve_schedule(plan: RunPlan, built: C.BuiltModel) -> torch.Tensor:
    """Fix the plan's schedule (and, with an NFE budget, its step count) on the built model's arguments:
    its trained sigma range and ``schedule_args``. Returns the sigmas; raises ConfigError before any sampling."""
    model_args = {**built.trained_sigma_range(), **built.schedule_args}
    plan.steps, plan.sigmas, plan.schedule_kwargs = _resolve_schedule(plan.cfg, plan.hparams, model_args)
    return plan.sigmas


def code_revision(sampler: str) -> dict:
    """What, besides the config, decides a row's numbers: the optsample version and the sampler's revision."""
    from .. import __version__, samplers

    return {"optsample": __version__, "sampler_revision": samplers.get(sampler).revision}


def hashed_config(cfg: dict) -> dict:
    """The part of the config that decides the outcome (config.UNHASHED_KEYS dropped; with an NFE
    budget the step count is derived, so ``steps`` is dropped too), plus the code revision: a row written
    by another optsample version or sampler revision has another key and is not reused;
    keys added later with a default that changes nothing, ``chunk_size=None`` and ``metric.reference_stats=None``,
    are dropped so earlier rows keep their hash)."""
    kept = {k: v for k, v in cfg.items() if k not in C.UNHASHED_KEYS}
    for key in ("guidance", "task"):  # unguided runs keep the hashes they had before these groups existed
        if (kept.get(key) or {}).get("name", "none") == "none":
            kept.pop(key, None)
    if kept.get("nfe") is not None or ("schedule" in kept and _values_decide_steps(kept["schedule"])):
        kept["steps"] = None
    if kept.get("chunk_size") is None:
        kept.pop("chunk_size", None)
    if kept.get("schedule", {}).get("name") == "learned":  # transfer options added later: off keeps old hashes
        kept["schedule"] = {k: v for k, v in kept["schedule"].items()
                            if not (k == "interpolate" and v is False or k == "sigma_range" and v is None)}
    if isinstance(kept.get("metric"), dict) and kept["metric"].get("reference_stats") is None:
        kept["metric"] = {k: v for k, v in kept["metric"].items() if k != "reference_stats"}
    kept["code"] = code_revision(cfg["sampler"]["name"])
    return kept


def plan_run(cfg: dict, *, job_num: int = 0) -> RunPlan:
    """Check every key of a resolved config and derive the run's plan; raises ConfigError naming the key."""
    from .. import samplers

    try:  # first: in a launcher's worker process this is where the user's modules get imported
        plugins.load(cfg.get("plugins") or [])
    except plugins.PluginError as err:
        raise ConfigError(str(err)) from None
    try:
        spec = samplers.get(cfg["sampler"]["name"])
        hparams = C.sampler_hparams(cfg["sampler"])
        spec.make_params(**hparams)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"sampler: {err}") from None
    _require(cfg["model"]["name"] in C.MODELS, f"model {cfg['model']['name']!r} is not one of {sorted(C.MODELS)}")
    for key in ("n_samples", "batch_size"):
        _require(cfg[key] >= 1, f"{key} must be >= 1, got {cfg[key]}")
    _require(cfg["chunk_size"] is None or cfg["chunk_size"] >= 1, f"chunk_size must be >= 1, got {cfg['chunk_size']}")
    _check_metric_names(cfg["metric"]["names"])
    _require(cfg["save_samples"] in SAVE_FORMATS, f"save_samples must be one of {SAVE_FORMATS}, got {cfg['save_samples']!r}")
    if cfg["shards"] != 1 or cfg["shard"] is not None:
        _require(cfg["shard"] is not None, f"shards={cfg['shards']} needs shard=<0..{cfg['shards'] - 1}>")
        try:
            shards.shard_chunks(cfg["n_samples"], chunk_size(cfg), cfg["shards"], cfg["shard"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    try:
        guidance_tasks.check(cfg)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"guidance/task: {err}") from None
    try:
        dtype = model_dtype(cfg["model"]["dtype"])
        resolve_device(cfg["device"], job_num)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    steps, sigmas, kwargs = None, None, None
    if cfg["schedule"]["name"] != "discrete":  # discrete needs the model's alphas_cumprod: checked in build
        # provisional (the schedule's own sigma range): catches bad schedules and budgets before the model
        # is built; resolve_schedule redoes it on the model's range
        steps, sigmas, kwargs = _resolve_schedule(cfg, hparams, {})
    hashed = hashed_config(cfg)
    if cfg["schedule"]["name"] == "learned":  # a re-learned file at the same path is a different run
        hashed["learned_sigmas"] = sigmas.tolist()
    key = results.config_hash(hashed)
    return RunPlan(cfg, key, steps, sigmas, hparams, dtype, Path(_absolute(cfg["results_dir"])), kwargs)


def _check_metric_names(names: list[str]) -> None:
    if not names:
        return
    from .. import metrics

    unknown = sorted(set(names) - set(metrics.available()))
    _require(not unknown, f"metric.names: unknown metric(s) {unknown}; available: {metrics.available()}")


def _make_sigmas(cfg: dict, steps: int | None, kwargs: dict) -> torch.Tensor:
    from .. import schedules

    if cfg["schedule"]["name"] == "discrete" and "alphas_cumprod" not in kwargs:
        raise ConfigError(
            f"model {cfg['model']['name']} has no discrete schedule (schedule=discrete needs a discrete-time model "
            "that supplies alphas_cumprod, e.g. a diffusers pipeline; use schedule=karras or another)"
        )
    if cfg["schedule"]["name"] == "learned":  # the file's provenance is checked against this run's (learned_schedules.files)
        expect = {"model": cfg["model"]["name"], "sampler": cfg["sampler"]["name"], "hparams": C.sampler_hparams(cfg["sampler"])}
        kwargs = {**kwargs, "expect": expect}
    try:
        return schedules.get(cfg["schedule"]["name"], steps, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"schedule: {err}") from None


def _absolute(path: str) -> str:
    """Relative paths are relative to the directory the user launched from (hydra job.chdir or not)."""
    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    except (ImportError, ValueError):
        return os.path.abspath(path)


# ----------------------------------------------------------------------------------------------
# Provenance.


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """HEAD of the checkout optsample is imported from ('unknown' for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "none"
    return found


# ----------------------------------------------------------------------------------------------
# The run.


def sample_seeds(seed: int, start: int, stop: int) -> list[int]:
    """Per-sample seeds (seed << 32) + k: sample k depends on (seed, k) alone, not on the batching."""
    return [(seed << 32) + k for k in range(start, stop)]


_LAST_BUILT: dict = {}  # the last model built in this process, keyed by its config, device and dtype


def build_model(model_cfg: dict, device: torch.device, dtype: torch.dtype) -> C.BuiltModel:
    """Build (or reuse) the model: a sweep in one process builds each model once, and analytic metrics'
    reference solutions, cached per model object, are then computed once per starting noise."""
    key = (json.dumps(model_cfg, sort_keys=True, default=str), str(device), str(dtype))
    if key not in _LAST_BUILT:
        _LAST_BUILT.clear()  # keep one model alive at most
        built = C.MODELS[model_cfg["name"]].build(model_cfg)
        if isinstance(built.denoiser, torch.nn.Module):
            built.denoiser.to(device, dtype).eval()
        _LAST_BUILT[key] = built
    return _LAST_BUILT[key]


def batch_conditioning(built: C.BuiltModel, indices, device) -> dict:
    """The model's per-sample conditioning for these sample indices, tensors moved to ``device``."""
    if built.conditioning is None:
        return {}
    args = built.conditioning(list(indices))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def chunk_size(cfg: dict) -> int:
    """Samples per chunk: the unit of the seed split across ranks and shards, of the metric updates and
    of KID's subsets (``chunk_size``, default ``batch_size``); a chunk is sampled in batches of batch_size."""
    return cfg["chunk_size"] or cfg["batch_size"]


def sample_chunk(plan: RunPlan, built: C.BuiltModel, sigmas: torch.Tensor, device: torch.device, start: int, stop: int,
                 callback=None):
    """Samples start..stop (seeds :func:`sample_seeds`) in batches of ``batch_size``; returns (samples,
    x_start, the last batch's sampler info). ``callback`` sees the first batch only."""
    from ..samplers import initial_noise, sample

    cfg = plan.cfg
    denoiser = built.denoiser if plan.dtype == torch.float32 else InDtype(built.denoiser, plan.dtype)
    outputs, starts = [], []
    for first in range(start, stop, cfg["batch_size"]):
        last = min(first + cfg["batch_size"], stop)
        seeds = sample_seeds(cfg["seed"], first, last)
        x_start = initial_noise(seeds, built.sample_shape, device=device) * float(sigmas[0])
        out, info = sample(
            cfg["sampler"]["name"], denoiser, x_start, sigmas.to(device), seeds=seeds,
            extra_args={**built.extra_args, **batch_conditioning(built, range(first, last), device)},
            return_info=True, callback=callback if first == start else None, **plan.hparams,
        )
        outputs.append(out)
        starts.append(x_start)
    if len(outputs) == 1:
        return outputs[0], starts[0], info
    return torch.cat(outputs), torch.cat(starts), info


def generate(plan: RunPlan, built: C.BuiltModel, sigmas: torch.Tensor, device: torch.device):
    """All n_samples in batches, kept in memory; returns (samples, x_start, nfe per sample, seconds, None).
    For callers that want the samples; the runner streams them (:func:`stream_run`, which also records
    the trajectory for the logger)."""
    outputs, starts, nfe = [], [], 0
    start_time = time.perf_counter()
    for start, stop in distributed.chunks(plan.cfg["n_samples"], chunk_size(plan.cfg)):
        out, x_start, info = sample_chunk(plan, built, sigmas, device, start, stop)
        outputs.append(out)
        starts.append(x_start)
        nfe = info.nfe
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(outputs), torch.cat(starts), nfe, time.perf_counter() - start_time, None


def metric_context(plan: RunPlan, built: C.BuiltModel, sigmas, device):
    """The run's MetricContext: what is the same for every batch (model, reference, feature net)."""
    from .. import metrics

    args = dict(built.metric_args)
    if plan.cfg["metric"].get("reference_stats"):
        args["reference_stats"] = _absolute(plan.cfg["metric"]["reference_stats"])
    return metrics.MetricContext(model=built.denoiser, sigma_start=float(sigmas[0]), extra_args=dict(built.extra_args),
                                 device=device, **args)


def samples_dir(plan: RunPlan) -> Path:
    return plan.results_dir / "samples" / plan.key


def save_samples(plan: RunPlan, images: torch.Tensor, start: int) -> None:
    """Write samples start.. as ``save_samples`` says: ``npz`` one file per chunk (``samples``, ``seeds``);
    ``png`` one file per sample ``<k - k % 1000:06d>/<k:06d>.png`` for sample index k, quantised as
    NVlabs/edm generate.py (x * 127.5 + 128, clipped to uint8). Atomic per file."""
    import numpy as np

    kind, folder = plan.cfg["save_samples"], samples_dir(plan)
    seeds = np.asarray(sample_seeds(plan.cfg["seed"], start, start + images.shape[0]), dtype=np.int64)
    if kind == "npz":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"samples-{start:08d}-{start + images.shape[0]:08d}.npz"
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as f:
            np.savez(f, samples=images.detach().cpu().float().numpy(), seeds=seeds)
        os.replace(temp, path)
        return
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"save_samples=png needs images [N, 1 or 3, H, W], got shape {tuple(images.shape)}; use save_samples=npz")
    from PIL import Image

    pixels = (images.detach().cpu().float() * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for offset, picture in enumerate(pixels):
        k = start + offset
        path = folder / f"{k - k % 1000:06d}" / f"{k:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(temp, format="PNG")
        os.replace(temp, path)


def metric_batch(built: C.BuiltModel, start: int, stop: int, x_start, device):
    """The per-sample inputs of samples start..stop for the metrics."""
    from ..metrics import Batch

    conditioning = batch_conditioning(built, range(start, stop), device)
    labels = conditioning.get("class_labels", conditioning.get("labels"))
    return Batch(start, x_start=x_start, extra_args=conditioning, labels=labels, prompts=conditioning.get("prompts"))


@dataclass
class Streamed:
    """What one process's share of a run produced: its metric statistics and what the logger needs."""

    stream: object  # optsample.metrics.MetricStream
    nfe: int
    sample_s: float
    score_s: float
    samples: torch.Tensor | None  # the first LOGGED_SAMPLES samples (rank 0), images if the model decodes
    trajectory: list | None


LOGGED_SAMPLES = 4096  # samples handed to the logger's picture (the first ones)


def stream_run(plan: RunPlan, built: C.BuiltModel, sigmas: torch.Tensor, device: torch.device,
               chunk_list: list[tuple[int, int]], keep_all: bool = False) -> Streamed:
    """Sample the given chunks and stream each into the metric statistics; nothing of size n is kept, unless
    ``keep_all`` (a ``task=`` run, whose metrics compare all samples with exact posterior samples)."""
    from tqdm.auto import tqdm

    from .. import metrics

    cfg = plan.cfg
    names = guidance_tasks.metric_names(cfg, cfg["metric"]["names"])  # a task= run drops the analytic metrics
    stream = metrics.MetricStream(names, metric_context(plan, built, sigmas, device), cfg["n_samples"])
    trajectory: list = []
    record = (lambda info: trajectory.append(info["x"][:TRAJECTORY_SAMPLES].cpu())) if cfg["log_trajectory"] else None
    total = sum(stop - start for start, stop in chunk_list)
    bar = tqdm(total=total, desc=f"{cfg['sampler']['name']} {len(sigmas) - 1} steps", disable=not cfg["progress"])
    kept, nfe, sample_s, score_s = [], 0, 0.0, 0.0
    keep = cfg["n_samples"] if keep_all else LOGGED_SAMPLES
    for start, stop in chunk_list:
        t0 = time.perf_counter()
        out, x_start, info = sample_chunk(plan, built, sigmas, device, start, stop, record if start == 0 else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        nfe = info.nfe
        images = built.decode(out) if built.decode is not None else out
        stream.update(images, metric_batch(built, start, stop, x_start, device))
        if cfg["save_samples"] != "none":
            save_samples(plan, images, start)
        if start < keep:
            kept.append(images[:keep - start].cpu())
        if start == 0 and trajectory:
            trajectory.append(out[:TRAJECTORY_SAMPLES].cpu())
        sample_s, score_s = sample_s + t1 - t0, score_s + time.perf_counter() - t1
        bar.update(stop - start)
    bar.close()
    return Streamed(stream, nfe, sample_s, score_s, torch.cat(kept) if kept else None, trajectory or None)


def _warn(what: str, err: Exception) -> None:
    message = f"{what} failed ({type(err).__name__}: {err}); the run goes on"
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def log_run(plan: RunPlan, metric_values: dict, samples, trajectory, run_dir: str, log_density=None,
            caption: str | None = None) -> None:
    """Hand the run to the configured logger (optsample.runner.loggers); a failing logger only warns.
    ``log_density`` (the clean log-density of an analytic model) draws contours under the trajectories;
    ``caption`` says what the samples' picture shows (a task's column order)."""
    logger_cfg = plan.cfg["logger"]
    if logger_cfg["name"] == "none":
        return
    try:
        from . import loggers

        logger = loggers.make_logger(
            dict(logger_cfg), project=plan.cfg["project"], group=plan.cfg["name"], name=run_name(plan), run_dir=run_dir,
            state_dir=_sweep_dir(),
        )
        try:
            logger.log_run(results.flatten(plan.cfg), metric_values, samples, trajectory, log_density=log_density,
                           caption=caption)
        finally:
            logger.finish()
    except Exception as err:  # noqa: BLE001  (a logger must never lose a finished run)
        _warn(f"logger {logger_cfg['name']!r}", err)


def run_name(plan: RunPlan) -> str:
    return f"{plan.cfg['sampler']['name']}-{plan.steps}steps-{plan.key}"


def objective_of(cfg: dict, row: dict) -> float | None:
    """The value a sweeper (Optuna) minimises: row[cfg.objective]."""
    key = cfg.get("objective")
    if not key:
        return None
    if key not in row:
        raise ConfigError(f"objective {key!r} is not a key of the result row; keys: {sorted(row)}")
    return float(row[key])


def execute(cfg: dict, *, job_num: int = 0, run_dir: str | None = None) -> dict:
    """One run from a resolved config dict; returns the row (existing row if the run had finished).

    Under torchrun every rank samples its chunks (:mod:`optsample.runner.distributed`); rank 0 merges
    the metric statistics, writes the one row and hands it to the other ranks."""
    t_begin = time.perf_counter()
    here = distributed.init()
    plan = plan_run(cfg, job_num=job_num)
    if not cfg["force"]:
        existing = results.find_row(plan.results_dir, plan.key)
        if existing is not None:
            log.info("skip %s: finished (%s)", run_name(plan), results.row_path(plan.results_dir, plan.key))
            return existing
    device = resolve_device(cfg["device"], here.local_rank if here.size > 1 else job_num)
    t_build = time.perf_counter()
    built = build_model(guidance_tasks.model_config(cfg), device, plan.dtype)
    sigmas = resolve_schedule(plan, built)
    built, task = guidance_tasks.prepare(cfg, built, sigmas, plan.hparams)
    build_s = time.perf_counter() - t_build
    sharded = cfg["shard"] is not None
    if sharded and not cfg["force"] and shards.shard_path(plan.results_dir, plan.key, cfg["shard"], cfg["shards"]).exists():
        log.info("skip shard %d of %s: its statistics exist", cfg["shard"], run_name(plan))
        return distributed.broadcast_from_main(finish_shard(plan) if here.is_main else None, here)
    chunk_list = (shards.shard_chunks(cfg["n_samples"], chunk_size(cfg), cfg["shards"], cfg["shard"]) if sharded
                  else distributed.chunks(cfg["n_samples"], chunk_size(cfg)))
    _require(task is None or (here.size == 1 and not sharded), f"task={cfg['task']['name']} runs in one process: its metrics "
             "compare all the samples with exact posterior samples (no torchrun, no shards)")
    with torch.no_grad() if guidance_tasks.needs_grad(cfg) else torch.inference_mode():  # guidance takes gradients
        part = stream_run(plan, built, sigmas, device, chunk_list[here.rank::here.size], keep_all=task is not None)
        t_reduce = time.perf_counter()
        merged = distributed.reduce_stream(part.stream, here)
        if not here.is_main:
            return distributed.broadcast_from_main(None, here)
        if sharded:
            write_shard(plan, merged, part, device, here, chunk_list)
            return distributed.broadcast_from_main(finish_shard(plan), here)
        metric_values = merged.compute()
        metric_values.update(guidance_tasks.task_metrics(task, part.samples))
        score_s = part.score_s + time.perf_counter() - t_reduce
    row = make_row(plan, metric_values, nfe=part.nfe, steps=len(sigmas) - 1, device=device)
    row["world_size"] = here.size
    t_log = time.perf_counter()
    log_density = getattr(built.denoiser, "log_prob", None) if part.trajectory else None
    log_run(plan, metric_values, guidance_tasks.log_images(task, part.samples), part.trajectory,
            run_dir or str(plan.results_dir), log_density, guidance_tasks.log_caption(task))
    total_s = time.perf_counter() - t_begin
    row.update({
        "time.build_s": build_s, "time.sample_s": part.sample_s, "time.score_s": score_s,
        "time.log_s": time.perf_counter() - t_log, "time.total_s": total_s,
        "time.overhead_s": total_s - part.sample_s - score_s,
    })
    results.append_row(plan.results_dir, row)
    log.info("%s: NFE %d, %s -> %s", run_name(plan), part.nfe, metric_values, results.row_path(plan.results_dir, plan.key))
    return distributed.broadcast_from_main(row, here)


def write_shard(plan: RunPlan, stream, part: Streamed, device, here, chunk_list) -> None:
    """Shard ``cfg.shard``'s statistics with their fingerprint, written once and atomically."""
    cfg = plan.cfg
    fingerprint = {"config_hash": plan.key, "shard": cfg["shard"], "shards": cfg["shards"], "revision": git_revision(),
                   "seed_range": [chunk_list[0][0], chunk_list[-1][1]], "seed": cfg["seed"]}
    info = {"nfe": part.nfe, "device": str(device), "world_size": here.size, "sample_s": part.sample_s,
            "score_s": part.score_s, "host": platform.node()}
    path = shards.shard_path(plan.results_dir, plan.key, cfg["shard"], cfg["shards"])
    shards.write_atomic(path, {"fingerprint": fingerprint, "state": stream.state_dict(), "cfg": cfg, "info": info})
    log.info("%s: shard %d of %d (samples %d..%d) -> %s", run_name(plan), cfg["shard"], cfg["shards"],
             *fingerprint["seed_range"], path)


def finish_shard(plan: RunPlan) -> dict:
    """The row if this shard completed the set (the last shard merges), else what this shard wrote."""
    cfg = plan.cfg
    if shards.complete(plan.results_dir, plan.key, cfg["shards"]):
        return shards.merge(plan.results_dir, plan.key)
    return {"config_hash": plan.key, "shard": cfg["shard"], "shards": cfg["shards"],
            "shard_path": str(shards.shard_path(plan.results_dir, plan.key, cfg["shard"], cfg["shards"]))}


def make_row(plan: RunPlan, metric_values: dict, *, nfe: int, steps: int, device: torch.device) -> dict:
    from .. import samplers

    row = results.flatten(plan.cfg)
    row["nfe_budget"] = row.pop("nfe")
    # the schedule's arguments actually used (sigma_min / sigma_max: the model's range when unset)
    row.update({f"schedule.{k}": v for k, v in (plan.schedule_kwargs or {}).items() if not isinstance(v, torch.Tensor)})
    if plan.sigmas is not None:
        row.update({"sigma_start": float(plan.sigmas[0]), "sigma_end": float(plan.sigmas[plan.sigmas > 0][-1])})
    row["plugins"] = ",".join(row.get("plugins") or [])  # one text cell: the tables group rows by hashable cells
    row.update({f"metric.{k}": float(v) for k, v in metric_values.items()})
    row.update({f"versions.{k}": v for k, v in package_versions().items()})
    spec = samplers.get(plan.cfg["sampler"]["name"])  # the code revision that decides the numbers (hashed_config)
    row.update({"versions.optsample": code_revision(spec.name)["optsample"], "sampler.revision": spec.revision,
                "sampler.source_hash": spec.source_hash})
    row.update({
        "steps": steps, "nfe": nfe, "device_resolved": str(device), "config_hash": plan.key,
        "git_rev": git_revision(), "host": platform.node(), "timestamp": time.time(),
    })
    return row


# ----------------------------------------------------------------------------------------------
# Hydra glue.


def _job_num() -> int:
    from hydra.core.hydra_config import HydraConfig

    try:
        return int(HydraConfig.get().job.num)
    except Exception:  # noqa: BLE001  (single run: no job number)
        return 0


def _output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.output_dir
    except Exception:  # noqa: BLE001
        return None


def _sweep_dir() -> str | None:
    """The multirun's sweep dir (shared by its jobs, new for each sweep); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
        return _absolute(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    except Exception:  # noqa: BLE001  (not under Hydra)
        return None


def task(cfg) -> float | None:
    """The Hydra task function: returns the objective for sweepers."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        row = execute(resolved, job_num=_job_num(), run_dir=_output_dir())
        return objective_of(resolved, row)
    except (ConfigError, OmegaConfBaseException) as err:
        if not _ONE_LINE_ERRORS:
            raise
        usage_exit(err)  # here, not in main: Hydra would first print "Error executing job with overrides"


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepTableCallback(Callback):
    """At the end of a multirun, hand every row of the experiment to the logger's sweep table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        logger_cfg = OmegaConf.to_container(config.logger, resolve=True)
        if logger_cfg["name"] == "none":
            return
        try:
            from . import loggers

            rows = results.read_rows(_absolute(config.results_dir))
            mix = results.revision_mix(rows)
            if mix:
                log.warning("sweep table of %s: %s", config.results_dir, mix)
            loggers.log_sweep_table(
                logger_cfg, rows, project=config.project, group=config.name, run_dir=config.hydra.sweep.dir,
            )
        except Exception as err:  # noqa: BLE001
            _warn("sweep table", err)


def config_path(primary: str = "config") -> str:
    """Absolute path of the configs: the conf/ of the source checkout this module is imported from,
    else the ``optsample.conf`` package data (an installed wheel). The checkout comes first: an editable
    install of another checkout maps ``optsample.conf`` to *its* conf/, which must not win. The first folder holding
    ``<primary>.yaml`` (``schedule`` for optsample-schedule) wins."""
    import importlib.util

    checkout = Path(__file__).resolve().parents[2]
    candidates = [str(checkout / "conf")] if (checkout / "pyproject.toml").exists() else []
    try:
        spec = importlib.util.find_spec("optsample.conf")
    except ImportError:
        spec = None
    candidates += list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in candidates:
        if (Path(folder) / f"{primary}.yaml").exists():
            return str(Path(folder).resolve())
    raise FileNotFoundError(f"optsample's configs are missing: looked in {candidates}")


_ONE_LINE_ERRORS = False  # set by main() unless HYDRA_FULL_ERROR=1 (a launcher's worker process raises)


def usage_error(err: BaseException) -> str | None:
    """A configuration mistake as one line naming the key (with the nearest valid names), or None for
    anything else (a real bug keeps its traceback)."""
    import difflib
    import itertools

    from hydra.errors import CompactHydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, ConfigError):
        return str(err)
    if isinstance(err, MissingConfigException):  # group=option with an unknown option
        lines = str(err).splitlines()
        head = lines[0].removeprefix("In 'config': ")
        start = next((k + 1 for k, line in enumerate(lines) if line.startswith("Available options")), len(lines))
        options = [line.strip() for line in itertools.takewhile(lambda x: x.startswith("\t"), lines[start:])]
        wanted = head.split("/")[-1].rstrip("'")
        near = difflib.get_close_matches(wanted, options, n=3, cutoff=0.5)
        return head + (f"; did you mean {', '.join(map(repr, near))}?" if near else f"; options: {options}")
    if isinstance(err, OmegaConfBaseException):  # missing value, wrong type, unknown key
        message, full_key = str(err).splitlines()[0], getattr(err, "full_key", None)
        if full_key and full_key not in message and message.endswith(f": {err.key}"):
            message = message.removesuffix(str(err.key)) + full_key  # "Missing mandatory value: schedule.values"
        key, known = getattr(err, "key", None), _dataclass_fields(getattr(err, "object_type", None))
        near = difflib.get_close_matches(str(key), known, n=1) if key is not None and key not in known else []
        return message + (f"; did you mean {near[0]!r}?" if near else "")
    if isinstance(err, CompactHydraException):  # e.g. ``Could not override 'x'`` caused by a key error
        message = str(err).splitlines()[0].rstrip(".")
        cause = usage_error(err.__cause__) if isinstance(err.__cause__, OmegaConfBaseException) else None
        return f"{message}: {cause}" if cause else message
    return None


def _dataclass_fields(object_type) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(object_type)] if dataclasses.is_dataclass(object_type) else []


def usage_exit(err: BaseException) -> None:
    """Print ``optsample-run: error: <one line>`` to stderr and exit 2 (argparse's convention)."""
    print(f"optsample-run: error: {usage_error(err)}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    import hydra

    global _ONE_LINE_ERRORS
    here = distributed.init()  # before Hydra: under torchrun the ranks must agree on the output directory
    distributed.set_run_stamp(distributed.broadcast_from_main(time.time(), here))
    if here.size > 1:
        sys.argv += distributed.hydra_overrides(here, sys.argv[1:])
    try:  # before composing: a plugin's samplers / models are options of sampler= / model=
        plugins.load(plugins.from_overrides(sys.argv[1:]))
    except plugins.PluginError as err:
        print(f"optsample-run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    C.register_configs()
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    _ONE_LINE_ERRORS = full_error != "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's composition errors reach us unprinted
    try:
        hydra.main(config_path=config_path(), config_name="config", version_base="1.3")(task)()
    except Exception as err:
        if full_error == "1" or usage_error(err) is None:
            raise
        usage_exit(err)
    finally:
        _ONE_LINE_ERRORS = False
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


if __name__ == "__main__":
    # Run through the importable module, not __main__: joblib / submitit workers unpickle the task
    # function by its module name.
    from optsample.runner.app import main as _main

    _main()
