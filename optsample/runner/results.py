"""The results store: one JSON file per finished run, keyed by a hash of the run's resolved config.

Layout: ``<results_dir>/<config_hash>.json`` holds one flat row (dotted keys such as ``sampler.name``,
``metric.rmse``, ``time.sample_s``). Why one file per row rather than one shared file:

* Atomic: a row is written to a hidden temp file in the same directory, flushed and fsync'ed, then
  ``os.replace``d onto its final name (POSIX rename is atomic), and the directory is fsync'ed. A
  process killed at any moment (kill -9 included) leaves either the complete row or no row; at worst a
  hidden ``.*.tmp`` file, which readers ignore.
* Concurrent writers (joblib / submitit workers) never share a file handle: each writes its own temp
  name (pid + random suffix). Two workers finishing the *same* config replace the same final name with
  equivalent rows, so a row can never be duplicated, and none can be lost.
* A damaged row file (edited by hand, truncated by a broken file system) is not silently skipped:
  :func:`read_rows` raises :class:`CorruptResultsError` naming its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

ROW_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"


class CorruptResultsError(ValueError):
    """A results file that cannot be read as a row; the message names its path."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one flat dict with dotted keys ({"sampler": {"eta": 1}} -> {"sampler.eta": 1})."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _jsonable(value: Any) -> Any:
    """Numpy / torch scalars -> python numbers for ``json.dumps``; anything else is an error."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    raise TypeError(f"result value {value!r} of type {type(value).__name__} is not JSON serialisable")


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def config_hash(resolved_cfg: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the canonical JSON (sorted keys) of the flattened config.

    Flattening first makes the hash independent of nesting order; ints and floats keep their JSON
    spelling, so ``1`` and ``1.0`` differ (OmegaConf types a field once, so that never splits a sweep).
    """
    return hashlib.sha256(_canonical_json(flatten(resolved_cfg)).encode()).hexdigest()[:16]


def row_path(results_dir: str | os.PathLike, key: str) -> Path:
    return Path(results_dir) / f"{key}{ROW_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_row(results_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """Write ``row`` atomically as ``<results_dir>/<row["config_hash"]>.json``; returns the path.

    Temp file in the same directory -> flush + fsync -> ``os.replace`` -> fsync of the directory.
    Re-writing an existing key replaces that row (``force=true`` re-runs), never duplicates it.
    """
    key = row.get("config_hash")
    if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
        raise ValueError(f"row needs a 'config_hash' string usable as a file name, got {key!r}")
    directory = Path(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(row), sort_keys=True, indent=1, default=_jsonable)
    temp = directory / f".{key}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        final = row_path(directory, key)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return final


def _row_files(results_dir: str | os.PathLike) -> list[Path]:
    directory = Path(results_dir)
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise CorruptResultsError(f"results path {directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix == ROW_SUFFIX and not p.name.startswith("."))


def read_row(path: str | os.PathLike) -> dict[str, Any]:
    """One row file; a file that is not a JSON object whose config_hash matches its name is corrupt."""
    path = Path(path)
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptResultsError(f"corrupt results file {path}: {err}") from err
    if not isinstance(row, dict) or row.get("config_hash") != path.name[: -len(ROW_SUFFIX)]:
        raise CorruptResultsError(f"corrupt results file {path}: not a row whose config_hash matches its file name")
    return row


def read_rows(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row under ``results_dir`` (sorted by config hash); [] if the directory does not exist."""
    return [read_row(p) for p in _row_files(results_dir)]


def finished_keys(results_dir: str | os.PathLike) -> set[str]:
    """Config hashes of the finished runs (every row is read, so a corrupt file raises)."""
    return {row["config_hash"] for row in read_rows(results_dir)}


def find_row(results_dir: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The row of ``key`` if that run finished, else None (a corrupt file raises)."""
    path = row_path(results_dir, key)
    return read_row(path) if path.exists() else None


# What besides the config decides a row's numbers (optsample.runner.app.code_revision); rows from before these
# keys were recorded read as "none".
REVISION_KEYS = ("versions.optsample", "sampler.revision")


def revision_mix(rows: list[Mapping[str, Any]]) -> str | None:
    """None if every sampler's rows come from one code revision, else a sentence naming the mix, e.g.
    "euler: sampler.revision 1 / 2" (a table of them would compare numbers of different code)."""
    seen: dict[str, set] = {}
    for row in rows:
        key = tuple(_revision_text(row.get(k)) for k in REVISION_KEYS)
        seen.setdefault(str(row.get("sampler.name", "?")), set()).add(key)
    mixed = []
    for sampler, keys in sorted(seen.items()):
        if len(keys) > 1:
            parts = [f"{name} {' / '.join(sorted({k[i] for k in keys}))}" for i, name in enumerate(REVISION_KEYS)
                     if len({k[i] for k in keys}) > 1]
            mixed.append(f"{sampler}: {', '.join(parts)}")
    versions = {_revision_text(row.get("versions.optsample")) for row in rows}
    if not mixed and len(versions) <= 1:
        return None
    what = "; ".join(mixed) if mixed else f"versions.optsample {' / '.join(sorted(versions))}"
    return f"rows of different code revisions are mixed ({what}); re-run them or filter with --where"


def _revision_text(value: Any) -> str:
    if value is None or value != value:  # missing, or NaN from a pandas frame
        return "none"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def stale_temp_files(results_dir: str | os.PathLike) -> list[Path]:
    """Hidden temp files left by killed writers (harmless; listed so a tool may clean them)."""
    directory = Path(results_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(".") and p.suffix == TEMP_SUFFIX)

