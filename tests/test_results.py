"""The results store: atomic one-file-per-row writes, concurrent writers, kill -9, corrupt files."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from optsample.runner import results


def row(key: str, **values) -> dict:
    return {"config_hash": key, "sampler.name": "euler", "steps": 10, **values}


def test_round_trip_and_keys(tmp_path):
    results.append_row(tmp_path, row("aaaa", **{"metric.rmse": 0.5, "sampler.s_tmax": float("inf")}))
    results.append_row(tmp_path, row("bbbb", **{"metric.rmse": 0.25}))
    rows = results.read_rows(tmp_path)
    assert [r["config_hash"] for r in rows] == ["aaaa", "bbbb"]
    assert rows[0]["metric.rmse"] == 0.5 and rows[0]["sampler.s_tmax"] == float("inf")
    assert results.finished_keys(tmp_path) == {"aaaa", "bbbb"}
    assert results.read_rows(tmp_path / "missing") == []


def test_rewrite_replaces_never_duplicates(tmp_path):
    results.append_row(tmp_path, row("aaaa", **{"metric.rmse": 1.0}))
    results.append_row(tmp_path, row("aaaa", **{"metric.rmse": 2.0}))
    rows = results.read_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["metric.rmse"] == 2.0
    assert results.stale_temp_files(tmp_path) == []


def test_config_hash_is_order_free_and_value_sensitive():
    a = {"sampler": {"name": "euler", "eta": 1.0}, "steps": 10}
    b = {"steps": 10, "sampler": {"eta": 1.0, "name": "euler"}}
    assert results.config_hash(a) == results.config_hash(b)
    assert results.config_hash(a) != results.config_hash({**a, "steps": 11})
    assert results.config_hash(a) != results.config_hash({"sampler": {"name": "euler", "eta": 0.5}, "steps": 10})
    assert len(results.config_hash(a)) == 16
    assert results.flatten(a) == {"sampler.name": "euler", "sampler.eta": 1.0, "steps": 10}


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="config_hash"):
        results.append_row(tmp_path, {"steps": 1})
    with pytest.raises(ValueError, match="config_hash"):
        results.append_row(tmp_path, {"config_hash": "../escape"})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        results.append_row(tmp_path, row("cccc", bad=object()))
    assert os.listdir(tmp_path) == []  # the failed write left no temp file behind


@pytest.mark.parametrize("content", ['{"config_hash": "dddd", "steps":', "[1, 2]", '{"config_hash": "other"}'])
def test_corrupt_file_is_reported_with_its_path(tmp_path, content):
    results.append_row(tmp_path, row("aaaa"))
    bad = tmp_path / "dddd.json"
    bad.write_text(content)
    for reader in (results.read_rows, results.finished_keys):
        with pytest.raises(results.CorruptResultsError, match=str(bad)):
            reader(tmp_path)


def test_temp_files_are_ignored(tmp_path):
    results.append_row(tmp_path, row("aaaa"))
    (tmp_path / ".bbbb.123.abcd.tmp").write_text('{"config_hash": "bb')  # a writer killed mid-write
    assert results.finished_keys(tmp_path) == {"aaaa"}
    assert [p.name for p in results.stale_temp_files(tmp_path)] == [".bbbb.123.abcd.tmp"]


def _writer(directory: str, worker: int, n: int) -> None:
    for k in range(n):
        # keys 0..n-1 are written by every worker (same config finishing twice), plus one own key each
        results.append_row(directory, row(f"shared{k:03d}", worker=worker, payload="x" * 20000))
    results.append_row(directory, row(f"own{worker}", worker=worker))


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    keys = sorted(r["config_hash"] for r in results.read_rows(tmp_path))
    assert keys == sorted([f"shared{k:03d}" for k in range(40)] + [f"own{w}" for w in range(4)])
    assert results.stale_temp_files(tmp_path) == []


KILLED_WRITER = textwrap.dedent("""
    import sys
    from optsample.runner import results
    k = 0
    while True:
        results.append_row(sys.argv[1], {"config_hash": f"row{k:06d}", "k": k, "payload": "y" * 2_000_000})
        k += 1
""")


def test_kill_9_mid_write_leaves_only_whole_rows(tmp_path):
    """A writer of 2 MB rows is killed with SIGKILL repeatedly; every row on disk must parse and the
    rows must be exactly 0..m-1 (sequential writer: nothing lost before the last completed write)."""
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("*.json"))) < 3 * (attempt + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        rows = results.read_rows(tmp_path)  # raises CorruptResultsError on any torn row
        ks = sorted(r["k"] for r in rows)
        # every restart starts at k = 0 again and replaces rows, so the set stays a prefix
        assert ks == list(range(len(ks))) and len(ks) >= 3
        assert all(len(r["payload"]) == 2_000_000 for r in rows)
