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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

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


def learned(path: str, n: int | None = None, *, on_mismatch: str = "error", expect: dict | None = None) -> torch.Tensor:
    """The sigmas of schedule file ``path`` (``schedules.get("learned", n, path=...)``; ``schedule=learned
    schedule.path=<file>`` in the runner, which passes ``expect={"model", "sampler", "hparams"}`` of the run).

    ``n``, if given, must be the file's step count (a learned schedule is learned for its budget)."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {list(ON_MISMATCH)}, got {on_mismatch!r}")
    schedule = load(path)
    if n is not None and n != schedule.steps:
        nfe = schedule.provenance.get("nfe")
        raise ValueError(f"n = {n} steps but schedule file {path} has {schedule.steps} (learned for nfe={nfe})")
    if expect:
        check_provenance(schedule, on_mismatch=on_mismatch, **expect)
    return schedule.sigmas


schedules.register("learned", learned)
