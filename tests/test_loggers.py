"""Loggers: an offline W&B run directory holds the metrics, the pictures and the sweep table (read back from
the run's .wandb record log and its files/media); CSV and none loggers; a failing W&B only warns."""

import json
import struct
import time
import warnings

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from optsample.runner import loggers
from optsample.models import GaussianMixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_wandb_records(path):
    """Records of a .wandb file: W&B's LevelDB-style log (7-byte file header ':W&B' + magic + version, then
    32 KiB blocks of chunks with a <crc32, length, type> header; types 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block trailer too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        pending += raw[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir):
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def run_records(run, timeout=20.0):
    """The records of an offline run once its 'exit' record is on disk (wandb-core writes from its own process)."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(run.glob("*.wandb"))
        records = read_wandb_records(files[0]) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def history(records):
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_metrics_and_pictures(tmp_path):
    gmm = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
    g = torch.Generator().manual_seed(0)
    trajectory = [torch.randn(16, 2, generator=g, dtype=torch.float64) * s for s in (5.0, 2.0, 1.0)]
    logger = loggers.make_logger({"kind": "wandb"}, project="proj", group="sweep1", name="euler-10", run_dir=str(tmp_path))
    logger.log_run({"sampler": {"name": "euler"}, "nfe": 10}, {"rmse": 0.25, "loglik": -1.5}, trajectory[-1], trajectory,
                   log_density=gmm.log_prob)
    logger.finish()
    run = offline_run(tmp_path)
    records = run_records(run)
    meta = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (meta.project, meta.run_group, meta.display_name) == ("proj", "sweep1", "euler-10")
    (logged,) = history(records)
    assert logged["metric/rmse"] == 0.25 and logged["metric/loglik"] == -1.5
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["sampler"] == {"name": "euler"} and config["nfe"] == 10
    for key in ("samples", "trajectory"):
        (png,) = (run / "files" / "media" / "images").glob(f"{key}_*.png")
        assert logged[f"{key}/path"] == str(png.relative_to(run / "files"))
        assert png.read_bytes()[:8] == PNG_MAGIC and imread(png).shape[:2] == (logged[f"{key}/height"], logged[f"{key}/width"])


def test_image_grid_exact_and_logged(tmp_path):
    images = torch.stack([torch.full((3, 4, 5), v) for v in (-1.0, 0.0, 1.0)])  # 3 images -> 2 x 2 grid
    grid = loggers.image_grid(images, padding=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:6] == 0).all() and (grid[1:5, 7:12] == 128).all() and (grid[6:10, 1:6] == 255).all()
    assert (grid[6:10, 7:12] == 0).all() and (grid[0] == 0).all()  # empty slot and padding stay black
    logger = loggers.make_logger({"name": "wandb", "mode": "offline"}, project="p", group="g", name="img", run_dir=str(tmp_path))
    logger.log_run({"model": "toy"}, {"fid": 3.0}, images.repeat(2, 1, 1, 1), None)
    logger.finish()
    (png,) = (offline_run(tmp_path) / "files" / "media" / "images").glob("samples_*.png")
    expected = loggers.image_grid(images.repeat(2, 1, 1, 1))
    assert np.array_equal((imread(png)[..., :3] * 255).round().astype(np.uint8), expected)


def test_sweep_table_in_offline_run(tmp_path):
    rows = [{"sampler.name": "euler", "nfe": 10, "metric.rmse": 0.5}, {"sampler.name": "heun", "nfe": 20, "metric.rmse": 0.125,
                                                                        "sampler.s_churn": [1, 2]}]
    loggers.log_sweep_table({"kind": "wandb"}, rows, project="p", group="sweep7", run_dir=str(tmp_path))
    run = offline_run(tmp_path)
    (table_file,) = (run / "files" / "media" / "table").glob("results_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["sampler.name", "nfe", "metric.rmse", "sampler.s_churn"]
    assert table["data"] == [["euler", 10, 0.5, None], ["heun", 20, 0.125, "[1, 2]"]]
    records = run_records(run)
    meta = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (meta.run_group, meta.display_name, meta.job_type) == ("sweep7", "sweep7-table", "sweep-table")


@pytest.fixture
def unreachable_wandb(monkeypatch):
    """W&B online with a key but no server: a closed port on this machine (nothing leaves it)."""
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")  # a dummy 40-character key
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(loggers._OFFLINE, "reason", None)
    import wandb

    wandb.teardown()  # W&B reads WANDB_BASE_URL once per process (its setup singleton): start afresh
    yield
    wandb.teardown()  # and never leave the unreachable server to a later test


def test_unreachable_wandb_waits_once_then_the_sweep_goes_offline(tmp_path, unreachable_wandb):
    # Before: each run waited W&B's default init_timeout, 90 s (a gmm2d run took 1 min 33 s instead of 2.4 s).
    online = {"kind": "wandb", "mode": "online"}
    began = time.perf_counter()
    with pytest.warns(RuntimeWarning) as caught:
        for k in range(3):
            logger = loggers.make_logger(online, project="p", group="g", name=f"run{k}", run_dir=str(tmp_path / f"{k}"))
            logger.log_run({"k": k}, {"rmse": 0.5 * k}, None, None)
            logger.finish()
    elapsed = time.perf_counter() - began
    assert elapsed < loggers.INIT_TIMEOUT_S + 20, elapsed  # one bounded wait (10 s) + 3 offline runs, not 3 x 90 s
    messages = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(messages) == 1 and "rest of the sweep log offline" in messages[0] and "wandb sync" in messages[0]
    assert "127.0.0.1:9" in messages[0]  # the closed local port was asked, no other address
    for k in range(3):  # every run is kept offline, to upload later with `wandb sync`
        (logged,) = history(run_records(offline_run(tmp_path / f"{k}")))
        assert logged["metric/rmse"] == 0.5 * k


def test_offline_marker_in_the_sweep_dir_reaches_other_worker_processes(tmp_path, unreachable_wandb):
    online = {"kind": "wandb", "mode": "online", "init_timeout": 2}
    with pytest.warns(RuntimeWarning, match="rest of the sweep log offline"):
        loggers.make_logger(online, project="p", group="g", name="a", run_dir=str(tmp_path / "a"),
                            state_dir=str(tmp_path)).finish()
    assert "127.0.0.1:9" in (tmp_path / loggers.OFFLINE_MARKER).read_text()  # the reason, for the user
    loggers._OFFLINE["reason"] = None  # as in a fresh joblib worker: only the marker file says it
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = loggers.make_logger({**online, "init_timeout": 60}, project="p", group="g", name="b",
                                     run_dir=str(tmp_path / "b"), state_dir=str(tmp_path))
        logger.finish()
    assert time.perf_counter() - began < 30  # offline at once: no 60 s wait for the server
    assert not [w for w in caught if "W&B" in str(w.message)]  # said once, by the first run
    offline_run(tmp_path / "b")


def test_wandb_failure_warns_and_goes_on(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setitem(loggers._OFFLINE, "reason", None)

    def broken_init(**kwargs):
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B init failed.*no network"):
        logger = loggers.make_logger({"kind": "wandb", "mode": "online"}, project="p", group="g", name="n", run_dir=str(tmp_path))
    logger.log_run({"a": 1}, {"rmse": 1.0}, torch.zeros(4, 2), None)  # no exception: W&B is off for this run
    logger.finish()
    with pytest.warns(RuntimeWarning, match="W&B init failed"):
        loggers.log_sweep_table({"kind": "wandb"}, [{"a": 1}], project="p", group="g", run_dir=str(tmp_path))


def test_csv_and_none_loggers(tmp_path):
    logger = loggers.make_logger({"kind": "csv"}, project="p", group="g", name="n", run_dir=str(tmp_path / "run"))
    trajectory = [torch.zeros(3, 2), torch.ones(3, 2)]
    logger.log_run({"sampler": {"name": "euler", "eta": 0.5}, "nfe": 4}, {"rmse": 0.125}, torch.ones(3, 2), trajectory)
    logger.log_run({"sampler": {"name": "euler", "eta": 0.5}, "nfe": 8}, {"metric.rmse": 0.0625}, torch.ones(3, 2), None)
    logger.finish()
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines == ["sampler.name,sampler.eta,nfe,metric.rmse", "euler,0.5,4,0.125", "euler,0.5,8,0.0625"]
    for name in ("samples.png", "trajectory.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == PNG_MAGIC
    loggers.log_sweep_table({"kind": "csv"}, [{"a": 1, "b": 0.5}], project="p", group="g", run_dir=str(tmp_path / "sweep"))
    assert (tmp_path / "sweep" / "sweep_table.csv").read_text().splitlines() == ["a,b", "1,0.5"]
    quiet = loggers.make_logger({"kind": "none"}, project="p", group="g", name="n", run_dir=str(tmp_path / "none"))
    quiet.log_run({}, {"rmse": 1.0}, torch.zeros(2, 2), None)
    quiet.finish()
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="unknown logger kind 'tensorboard'"):
        loggers.make_logger({"kind": "tensorboard"}, project="p", group="g", name="n", run_dir=str(tmp_path))
