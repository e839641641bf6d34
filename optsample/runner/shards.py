"""One config split across jobs: ``optsample-run shards=K shard=i ...`` (e.g. a SLURM array over i).

Shard i samples a contiguous block of the run's seed chunks (:func:`shard_chunks`; the chunks are the
same as unsharded, so chunk-fixed statistics such as KID's subsets agree) and writes its metric
statistics, once, to ``<results_dir>/shards/<config_hash>/shard-<i>-of-<K>.pt`` (temp file, fsync,
``os.replace``: a killed shard leaves no file and re-runs to the same statistics). The file carries a
fingerprint: config hash, shard index and count, seed range, git revision, and the resolved config.
When all K files are there, the shard that finds them (or ``optsample-merge <results_dir>``) checks
them and writes the one row; a missing, foreign (other config), duplicated or overlapping shard, or
one from another revision, is refused with its file named. One file per (config, shard) and a merger
that only reads: no locks on a shared file system (REFERENCES.md, "Scale").
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

import torch

from . import distributed

log = logging.getLogger("optsample.shards")


class ShardError(ValueError):
    """Shards that cannot be merged into a row; the message names the files."""


def shard_chunks(n_samples: int, chunk_size: int, shards: int, shard: int) -> list[tuple[int, int]]:
    """Shard ``shard`` of ``shards``: chunks [i M / K, (i + 1) M / K) of the M chunks (contiguous)."""
    every = distributed.chunks(n_samples, chunk_size)
    if not 1 <= shards <= len(every):
        raise ValueError(f"shards must be in [1, {len(every)}] (the number of chunks of chunk_size), got {shards}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, shards={shards}), got {shard}")
    return every[shard * len(every) // shards:(shard + 1) * len(every) // shards]


def shard_dir(results_dir, key: str) -> Path:
    return Path(results_dir) / "shards" / key


def shard_path(results_dir, key: str, shard: int, shards: int) -> Path:
    return shard_dir(results_dir, key) / f"shard-{shard:04d}-of-{shards:04d}.pt"


def write_atomic(path: Path, payload: dict) -> Path:
    """``torch.save`` to a unique temp name in the same directory, fsync, ``os.replace``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_shard(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is named)
        raise ShardError(f"unreadable shard file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(payload, dict) or "fingerprint" not in payload or "state" not in payload:
        raise ShardError(f"shard file {path} is not a shard (no fingerprint / state)")
    return payload


def shard_files(results_dir, key: str) -> list[Path]:
    directory = shard_dir(results_dir, key)
    return sorted(p for p in directory.glob("shard-*.pt")) if directory.is_dir() else []


def check_shards(results_dir, key: str) -> list[tuple[Path, dict]]:
    """The K shard payloads of config ``key`` in shard order, after every check; ShardError naming the
    files otherwise."""
    files = shard_files(results_dir, key)
    if not files:
        raise ShardError(f"no shards of config {key} under {shard_dir(results_dir, key)}")
    loaded = [(path, read_shard(path)) for path in files]
    first_path, first = loaded[0]
    shards = first["fingerprint"]["shards"]
    by_index: dict[int, Path] = {}
    for path, payload in loaded:
        fp = payload["fingerprint"]
        if fp["config_hash"] != key:
            raise ShardError(f"foreign shard {path}: it is of config {fp['config_hash']}, not {key}")
        if fp["revision"] != first["fingerprint"]["revision"]:
            raise ShardError(f"shard {path} is from revision {fp['revision']}, shard {first_path} from "
                             f"{first['fingerprint']['revision']}: re-run the shards on one revision")
        if fp["shards"] != shards or path.name != shard_path(results_dir, key, fp["shard"], shards).name:
            raise ShardError(f"shard {path} says it is shard {fp['shard']} of {fp['shards']}: it does not belong "
                             f"under that name in a set of {shards}")
        if fp["shard"] in by_index:
            raise ShardError(f"duplicated shard {fp['shard']}: {by_index[fp['shard']]} and {path}")
        by_index[fp["shard"]] = path
    missing = sorted(set(range(shards)) - set(by_index))
    if missing:
        names = ", ".join(shard_path(results_dir, key, i, shards).name for i in missing)
        raise ShardError(f"missing shard(s) {missing} of {shards} of config {key}: {names}")
    ordered = sorted(loaded, key=lambda item: item[1]["fingerprint"]["shard"])
    covered = sorted((tuple(p["fingerprint"]["seed_range"]), path) for path, p in ordered)
    end = 0
    for (start, stop), path in covered:
        if start != end:
            raise ShardError(f"shard {path} covers samples {start}..{stop}, expected it to start at {end} "
                             f"({'overlap' if start < end else 'gap'})")
        end = stop
    n_samples = first["cfg"]["n_samples"]
    if end != n_samples:
        raise ShardError(f"shards of config {key} cover samples 0..{end}, not 0..{n_samples}")
    return ordered


def merge(results_dir, key: str) -> dict:
    """Merge the complete, consistent shards of config ``key`` (in shard order) and write its row."""
    from .. import metrics
    from . import app as run
    from . import results

    ordered = check_shards(results_dir, key)
    cfg = ordered[0][1]["cfg"]
    plan = run.plan_run(cfg)
    device = torch.device("cpu")
    built = run.build_model(cfg["model"], device, plan.dtype)
    sigmas = run.resolve_schedule(plan, built)  # the schedule the shards ran (the model's sigma range)
    ctx = run.metric_context(plan, built, sigmas, device)
    stream = None
    for path, payload in ordered:
        part = metrics.MetricStream(list(cfg["metric"]["names"]), ctx, cfg["n_samples"])
        try:
            part.load_state_dict(payload["state"])
            stream = part if stream is None else stream.merge(part)
        except ValueError as err:
            raise ShardError(f"shard {path}: {err}") from err
    with torch.inference_mode():
        values = stream.compute()
    info = [payload["info"] for _, payload in ordered]
    row = run.make_row(plan, values, nfe=info[0]["nfe"], steps=len(sigmas) - 1, device=info[0]["device"])
    row.update({"world_size": sum(i["world_size"] for i in info), "time.sample_s": sum(i["sample_s"] for i in info),
                "time.score_s": sum(i["score_s"] for i in info)})
    path = results.append_row(plan.results_dir, row)
    log.info("merged %d shards of %s -> %s", len(ordered), key, path)
    return row


def complete(results_dir, key: str, shards: int) -> bool:
    return all(shard_path(results_dir, key, i, shards).exists() for i in range(shards))


def main(argv: list[str] | None = None) -> int:
    """``optsample-merge RESULTS_DIR [--key HASH ...]``: write the row of every complete set of shards."""
    parser = argparse.ArgumentParser(prog="optsample-merge", description=main.__doc__)
    parser.add_argument("results_dir")
    parser.add_argument("--key", nargs="*", help="config hashes (default: every folder under RESULTS_DIR/shards)")
    args = parser.parse_args(argv)
    root = Path(args.results_dir) / "shards"
    keys = args.key or (sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    if not keys:
        print(f"optsample-merge: no shards under {root}", file=sys.stderr)
        return 1
    failed = 0
    for key in keys:
        try:
            row = merge(args.results_dir, key)
            metrics = {k: round(v, 6) for k, v in row.items() if k.startswith("metric.") and isinstance(v, float)}
            print(f"{key}: {len(shard_files(args.results_dir, key))} shards -> {metrics}")
        except ShardError as err:
            failed += 1
            print(f"optsample-merge: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
