"""The schedule file: a learned sigma schedule as JSON, with its provenance; its validating loader; ``schedule=learned``.

    {"format": "optsample.schedule/1",
     "sigmas": [80.0, ..., 0.0],                         # k-diffusion convention: plain sigmas, ending at 0
     "provenance": {"model": {"name": "gmm64", ...}, "sampler": {"name": "dpmpp_2m", "hparams": {}},
                    "nfe": 6, "steps": 6, "method": "dp", "method_options": {...}, "ends": {...},
                    "teacher": {"name": "exact_ode", ...}, "seeds": [...], "loss": {...}, ...}}

Nothing that is not finite, strictly decreasing and ending at 0 (and starting at the provenance's sigma_max) is
ever written or read back. A schedule learned for another model or sampler (or other sampler hyper-parameters)
is refused by name (:class:`ProvenanceMismatch`), or only warned about with ``on_mismatch="warn"``.
Importing this module registers the schedule ``learned`` in :mod:`optsample.schedules`.

Transfer (issue 14's study), both explicit options of ``learned`` and plain functions here:

- another step count: ``interpolate=True`` resamples the file's positive sigmas to ``n`` points, log sigma
  linear in the step fraction (:func:`interpolate_steps`, the AYS ``loglinear_interp`` that ``schedules.ays``
  uses too), then 0; without it a step-count mismatch is an error;
- another model / sampler: ``on_mismatch="warn"`` turns the refusal into a ProvenanceWarning naming what differs;
- another sigma range: ``sigma_range=[c, d]`` maps the file's ends range [a, b] (its provenance ``ends``) onto
  [c, d], affine in log sigma (:func:`map_sigma_range`): the schedule keeps its shape in log sigma.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .. import samplers, schedules

FORMAT = "optsample.schedule/1"
REQUIRED_PROVENANCE = ("model", "sampler", "nfe", "steps", "method", "teacher", "seeds", "loss")
ON_MISMATCH = ("error", "warn")


class ScheduleFileError(ValueError):
    """A schedule file (or a schedule about to be written) that is not valid; the message names the file."""


class ProvenanceMismatch(ValueError):
    """The schedule was learned for another model / sampler / hyper-parameters than the run's."""


class ProvenanceWarning(UserWarning):
    """As :class:`ProvenanceMismatch`, with ``on_mismatch="warn"``."""


class InterpolationWarning(UserWarning):
    """A schedule file run at another step count than it was learned for (``interpolate=True``)."""


@dataclass(frozen=True)
class ScheduleFile:
    sigmas: torch.Tensor  # float64, strictly decreasing, ends at 0
    provenance: dict
    path: str

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def validate_sigmas(values, where: str, sigma_max: float | None = None) -> torch.Tensor:
    """A float64 tensor of ``values`` if they are >= 2 finite numbers, strictly decreasing, ending at exactly 0
    (and starting at ``sigma_max`` if given); else ScheduleFileError naming ``where`` and the first bad entry."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().tolist()
    if not isinstance(values, (list, tuple)) or len(values) < 2:
        raise ScheduleFileError(f"{where}: sigmas must be a list of at least 2 numbers, got {values!r}")
    for k, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScheduleFileError(f"{where}: sigmas[{k}] must be a finite number, got {value!r}")
    for k in range(len(values) - 1):
        if not values[k + 1] < values[k]:
            raise ScheduleFileError(f"{where}: sigmas must be strictly decreasing, got sigmas[{k}]={values[k]!r} "
                                    f"<= sigmas[{k + 1}]={values[k + 1]!r}")
    if values[-1] != 0:
        raise ScheduleFileError(f"{where}: sigmas must end at 0 (final='zero'), got {values[-1]!r}")
    if sigma_max is not None and not math.isclose(values[0], sigma_max, rel_tol=1e-12):
        raise ScheduleFileError(f"{where}: sigmas[0] = {values[0]!r} but the ends policy says sigma_max = {sigma_max!r}")
    return torch.tensor(values, dtype=torch.float64)


def _sigma_max_of(provenance: dict) -> float | None:
    ends = provenance.get("ends") or {}
    return ends.get("sigma_max")


def save(path, sigmas, provenance: dict) -> ScheduleFile:
    """Validate, then write ``path`` (via a temporary file and a rename, so a failed write leaves nothing)."""
    missing = [key for key in REQUIRED_PROVENANCE if key not in provenance]
    if missing:
        raise ScheduleFileError(f"{path}: provenance lacks {missing}")
    checked = validate_sigmas(sigmas, f"schedule for {path}", _sigma_max_of(provenance))
    if provenance["steps"] != len(checked) - 1:
        raise ScheduleFileError(f"{path}: provenance says {provenance['steps']} steps, sigmas have {len(checked) - 1}")
    document = {"format": FORMAT, "sigmas": checked.tolist(), "provenance": provenance}
    text = json.dumps(document, indent=1, allow_nan=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text + "\n")
    os.replace(partial, path)
    return ScheduleFile(checked, provenance, str(path))


def load(path) -> ScheduleFile:
    """Read and validate a schedule file; ScheduleFileError naming the file for anything wrong in it."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ScheduleFileError(f"schedule file {path}: cannot be read ({err.strerror or err})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScheduleFileError(f"schedule file {path}: not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ScheduleFileError(f"schedule file {path}: format must be {FORMAT!r}, got {found!r}")
    provenance = document.get("provenance")
    if not isinstance(provenance, dict):
        raise ScheduleFileError(f"schedule file {path}: no provenance object")
    missing = [key for key in REQUIRED_PROVENANCE if key not in provenance]
    if missing:
        raise ScheduleFileError(f"schedule file {path}: provenance lacks {missing}")
    sigmas = validate_sigmas(document.get("sigmas"), f"schedule file {path}", _sigma_max_of(provenance))
    if provenance["steps"] != len(sigmas) - 1:
        raise ScheduleFileError(f"schedule file {path}: provenance says {provenance['steps']} steps, "
                                f"sigmas have {len(sigmas) - 1}")
    return ScheduleFile(sigmas, provenance, path)


def _complete(sampler: str, hparams: dict) -> dict:
    """Hyper-parameters with the sampler's defaults filled in ({} and the full default dict compare equal)."""
    try:
        return dataclasses.asdict(samplers.get(sampler).make_params(**hparams))
    except (KeyError, TypeError, ValueError):
        return dict(hparams)


def _name_of(node) -> str | None:
    return node.get("name") if isinstance(node, dict) else node


def check_provenance(schedule: ScheduleFile, *, model=None, sampler=None, hparams: dict | None = None,
                     on_mismatch: str = "error") -> list[str]:
    """Compare the file's model / sampler / sampler hyper-parameters with the run's (None: not compared).

    Returns the mismatches (empty if none); raises ProvenanceMismatch with ``on_mismatch="error"``, warns
    (ProvenanceWarning) with ``"warn"``."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {list(ON_MISMATCH)}, got {on_mismatch!r}")
    learned_for = schedule.provenance
    problems = []
    if model is not None and _name_of(learned_for["model"]) != _name_of(model):
        problems.append(f"model {_name_of(learned_for['model'])!r}, not {_name_of(model)!r}")
    if sampler is not None and _name_of(learned_for["sampler"]) != _name_of(sampler):
        problems.append(f"sampler {_name_of(learned_for['sampler'])!r}, not {_name_of(sampler)!r}")
    elif hparams is not None:
        name = _name_of(learned_for["sampler"])
        learned_hparams = learned_for["sampler"].get("hparams", {}) if isinstance(learned_for["sampler"], dict) else {}
        if _complete(name, learned_hparams) != _complete(name, hparams):
            problems.append(f"sampler hyper-parameters {learned_hparams}, not {dict(hparams)}")
    if problems:
        message = f"schedule file {schedule.path} was learned for " + "; ".join(problems)
        if on_mismatch == "error":
            raise ProvenanceMismatch(message + " (on_mismatch='warn' to use it anyway)")
        warnings.warn(message, ProvenanceWarning, stacklevel=2)
    return problems


def interpolate_steps(sigmas: torch.Tensor, n: int) -> torch.Tensor:
    """A schedule [s_0, ..., s_{k-1}, 0] of k steps resampled to n steps: its k positive sigmas log-linearly
    interpolated in the step fraction to n points (``schedules.loglinear_interp``; AYS), then 0. n = k gives
    ``sigmas`` bitwise; every n >= 2 keeps s_0 and s_{k-1} exactly."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if len(sigmas) < 2 or float(sigmas[-1]) != 0:
        raise ValueError(f"sigmas must be a schedule ending at 0, got {sigmas.tolist()}")
    points = schedules.loglinear_interp(sigmas[:-1], n)
    return validate_sigmas(torch.cat([points, sigmas.new_zeros(1)]), f"schedule interpolated to n = {n} steps")


def map_sigma_range(sigmas: torch.Tensor, source, target) -> torch.Tensor:
    """``sigmas`` learned on the range source = [a, b] moved to target = [c, d], affine in log sigma:
    log s' = log c + (log s - log a) (log d - log c) / (log b - log a); s_0 = b becomes d exactly, 0 stays 0."""
    (a, b), (c, d) = (_check_sigma_range(name, value) for name, value in (("source", source), ("sigma_range", target)))
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    scale = (math.log(d) - math.log(c)) / (math.log(b) - math.log(a))
    positive = torch.exp(math.log(c) + (torch.log(sigmas[:-1]) - math.log(a)) * scale)
    mapped = torch.cat([positive, sigmas[-1:]])
    if math.isclose(float(sigmas[0]), b, rel_tol=1e-12):
        mapped[0] = d
    return validate_sigmas(mapped, f"schedule mapped from sigma range {[a, b]} to {[c, d]}")


def _check_sigma_range(name: str, value) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"{name} must be [sigma_min, sigma_max], two finite numbers > 0, got {value!r}")
    if not value[0] < value[1]:
        raise ValueError(f"{name} must have sigma_min < sigma_max, got {list(value)!r}")
    return float(value[0]), float(value[1])


def learned(path: str, n: int | None = None, *, on_mismatch: str = "error", interpolate: bool = False,
            sigma_range: Optional[List[float]] = None, expect: dict | None = None) -> torch.Tensor:
    """The sigmas of schedule file ``path`` (``schedules.get("learned", n, path=...)``; ``schedule=learned
    schedule.path=<file>`` in the runner, which passes ``expect={"model", "sampler", "hparams"}`` of the run).

    ``n``, if given, must be the file's step count (a learned schedule is learned for its budget), unless
    ``interpolate`` (then :func:`interpolate_steps` to n, with an InterpolationWarning naming both counts).
    ``sigma_range=[c, d]``: :func:`map_sigma_range` from the file's ends range onto [c, d]."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {list(ON_MISMATCH)}, got {on_mismatch!r}")
    if not isinstance(interpolate, bool):
        raise ValueError(f"interpolate must be true or false, got {interpolate!r}")
    if sigma_range is not None:
        _check_sigma_range("sigma_range", sigma_range)
    schedule = load(path)
    if expect:
        check_provenance(schedule, on_mismatch=on_mismatch, **expect)
    sigmas = schedule.sigmas
    if n is not None and n != schedule.steps:
        nfe = schedule.provenance.get("nfe")
        if not interpolate:
            raise ValueError(f"n = {n} steps but schedule file {path} has {schedule.steps} (learned for nfe={nfe}); "
                             "interpolate=true to resample it")
        warnings.warn(f"schedule file {path} has {schedule.steps} steps (learned for nfe={nfe}); interpolated to "
                      f"{n} steps (log-linear in the step fraction)", InterpolationWarning, stacklevel=2)
        sigmas = interpolate_steps(sigmas, n)
    if sigma_range is not None:
        ends = schedule.provenance.get("ends") or {}
        if "sigma_min" not in ends or "sigma_max" not in ends:
            raise ScheduleFileError(f"schedule file {path}: sigma_range needs the provenance's ends "
                                    "(sigma_min, sigma_max), which it lacks")
        sigmas = map_sigma_range(sigmas, [ends["sigma_min"], ends["sigma_max"]], sigma_range)
    return sigmas


schedules.register("learned", learned)
