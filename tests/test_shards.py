"""Shards across jobs (optsample.runner.shards): K shards merged == the unsharded row; missing, foreign,
duplicated, overlapping and other-revision shards refused by name; a re-run shard gives the same statistics."""

import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from optsample.runner import config as C
from optsample.runner import results
from optsample.runner import app as R
from optsample.runner import shards

BASE = ["model=gmm2d", "sampler=dpmpp_2m", "nfe=6", "n_samples=48", "batch_size=8", "metric=analytic", "logger=none",
        "progress=false", "device=cpu"]
NAMES = ["rmse", "loglik", "mode_error", "mmd2_unbiased", "sliced_wasserstein"]


def cfg_of(*overrides):
    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=[*BASE, *overrides]), resolve=True)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    return R.execute(cfg_of(f"results_dir={tmp_path_factory.mktemp('one')}"))


def test_shard_chunks_partition_the_run():
    parts = [shards.shard_chunks(48, 8, 4, i) for i in range(4)]
    assert [c for part in parts for c in part] == [(s, s + 8) for s in range(0, 48, 8)]  # 6 chunks over 4 shards
    assert [len(p) for p in parts] == [1, 2, 1, 2]
    with pytest.raises(ValueError, match=r"shards must be in \[1, 6\].*got 7"):
        shards.shard_chunks(48, 8, 7, 0)
    with pytest.raises(ValueError, match=r"shard must be in \[0, shards=3\), got 3"):
        shards.shard_chunks(48, 8, 3, 3)
    with pytest.raises(R.ConfigError, match="shards=3 needs shard="):
        R.plan_run(cfg_of("shards=3"))


def test_three_shards_merge_to_the_unsharded_row(tmp_path, unsharded):
    out = [R.execute(cfg_of(f"results_dir={tmp_path}", "shards=3", f"shard={i}")) for i in (2, 0, 1)]
    assert "shard_path" in out[0] and "shard_path" in out[1]  # not complete yet: no row
    row = out[2]  # the last shard merged
    assert row["config_hash"] == unsharded["config_hash"] and row["world_size"] == 3
    for name in NAMES:
        assert row[f"metric.{name}"] == pytest.approx(unsharded[f"metric.{name}"], rel=1e-12, abs=0), name
    assert results.find_row(tmp_path, row["config_hash"])["metric.rmse"] == row["metric.rmse"]
    # optsample-merge writes the same row again from the files alone
    (tmp_path / f"{row['config_hash']}.json").unlink()
    assert shards.main([str(tmp_path)]) == 0
    assert results.find_row(tmp_path, row["config_hash"])["metric.mmd2_unbiased"] == row["metric.mmd2_unbiased"]


def test_refused_shards_are_named(tmp_path, capsys):
    key = R.plan_run(cfg_of()).key
    for i in (0, 2):
        R.execute(cfg_of(f"results_dir={tmp_path}", "shards=3", f"shard={i}"))
    with pytest.raises(shards.ShardError, match=r"missing shard\(s\) \[1\] of 3 .*shard-0001-of-0003.pt"):
        shards.merge(tmp_path, key)
    assert shards.main([str(tmp_path)]) == 1 and "missing shard" in capsys.readouterr().err
    assert results.find_row(tmp_path, key) is None
    folder = shards.shard_dir(tmp_path, key)
    # duplicated: shard 0's file copied as shard 1
    shutil.copy(folder / "shard-0000-of-0003.pt", folder / "shard-0001-of-0003.pt")
    with pytest.raises(shards.ShardError, match=r"shard .*shard-0001-of-0003.pt says it is shard 0 of 3"):
        shards.merge(tmp_path, key)
    # foreign: a shard of another config (seed=1) under this config's folder
    other = R.execute(cfg_of(f"results_dir={tmp_path}", "seed=1", "shards=3", "shard=1"))
    shutil.copy(other["shard_path"], folder / "shard-0001-of-0003.pt")
    with pytest.raises(shards.ShardError, match=rf"foreign shard .*shard-0001-of-0003.pt: it is of config {other['config_hash']}"):
        shards.merge(tmp_path, key)
    # another revision: the last shard to finish finds the set complete and refuses it (the job fails)
    payload = torch.load(folder / "shard-0002-of-0003.pt", weights_only=False)
    payload["fingerprint"]["revision"] = "0123abc"
    torch.save(payload, folder / "shard-0002-of-0003.pt")
    with pytest.raises(shards.ShardError, match=r"shard .*shard-0002-of-0003.pt is from revision 0123abc"):
        R.execute(cfg_of(f"results_dir={tmp_path}", "shards=3", "shard=1", "force=true"))
    assert results.find_row(tmp_path, key) is None


def test_rerun_shard_gives_the_same_statistics(tmp_path):
    cfg = cfg_of(f"results_dir={tmp_path}", "shards=2", "shard=1")
    path = R.execute(cfg)["shard_path"]
    first = torch.load(path, weights_only=False)["state"]
    (tmp_path / "shards" / ".leftover.tmp").write_bytes(b"a killed writer's temp file")  # ignored by readers
    R.execute({**cfg, "force": True})
    second = torch.load(path, weights_only=False)["state"]
    assert first["ranges"] == second["ranges"] == [(24, 32), (32, 40), (40, 48)]
    for name in NAMES:
        a, b = first["stats"][name], second["stats"][name]
        assert a["sums"].keys() == b["sums"].keys()
        assert all(torch.equal(a["sums"][k], b["sums"][k]) for k in a["sums"])  # bitwise
        assert all(torch.equal(a["by_start"][k], b["by_start"][k]) for k in a.get("by_start", {}))


def test_save_samples_npz_per_seed_equal_the_samples(tmp_path):
    """save_samples=npz: one file per chunk, whose samples are generate()'s and whose seeds are (seed << 32) + k."""
    import numpy as np

    cfg = cfg_of(f"results_dir={tmp_path}", "save_samples=npz", "n_samples=20", "metric=none", "seed=3")
    R.execute(cfg)
    plan = R.plan_run(cfg)
    files = sorted(R.samples_dir(plan).glob("*.npz"))
    assert [f.name for f in files] == ["samples-00000000-00000008.npz", "samples-00000008-00000016.npz",
                                       "samples-00000016-00000020.npz"]
    loaded = [np.load(f) for f in files]
    samples = np.concatenate([d["samples"] for d in loaded])
    assert np.concatenate([d["seeds"] for d in loaded]).tolist() == [(3 << 32) + k for k in range(20)]
    built = C.MODELS["gmm2d"].build(cfg["model"])
    expected, *_ = R.generate(plan, built, plan.sigmas, torch.device("cpu"))
    assert np.array_equal(samples, expected.numpy())
    with pytest.raises(R.ConfigError, match="save_samples must be one of"):
        R.plan_run({**cfg, "save_samples": "jpg"})
    with pytest.raises(R.ConfigError, match=r"save_samples=png needs images \[N, 1 or 3, H, W\], got shape \(8, 2\)"):
        R.execute({**cfg, "save_samples": "png", "force": True})


def test_save_samples_png_edm_layout(tmp_path):
    import numpy as np
    from PIL import Image

    plan = R.plan_run(cfg_of(f"results_dir={tmp_path}", "save_samples=png"))
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    R.save_samples(plan, images, 999)
    first, second = (R.samples_dir(plan) / "000000" / "000999.png"), (R.samples_dir(plan) / "001000" / "001000.png")
    pixels = torch.from_numpy(np.array(Image.open(second)))
    assert first.exists() and pixels.shape == (4, 5, 3)
    assert torch.equal(pixels, (images[1] * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(1, 2, 0))  # EDM's quantisation


def test_metric_reference_stats_reaches_the_metrics(tmp_path):
    cfg = cfg_of(f"results_dir={tmp_path}", "metric.reference_stats=stats/cifar10.npz")
    plan = R.plan_run(cfg)
    ctx = R.metric_context(plan, C.MODELS["gmm2d"].build(cfg["model"]), plan.sigmas, torch.device("cpu"))
    assert ctx.reference_stats == str(Path.cwd() / "stats" / "cifar10.npz")  # relative to the launch directory


def test_submitit_local_array_over_shards_writes_the_unsharded_row(tmp_path, unsharded):
    """hydra/launcher=submitit_local over shard=0,1 (the SLURM-array command with the local executor)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "optsample.runner.app", "-m", "hydra/launcher=submitit_local", *BASE, "results_dir=sub",
           "shards=2", "shard=0,1", "hydra.launcher.timeout_min=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = results.read_rows(tmp_path / "sub")
    assert row["config_hash"] == unsharded["config_hash"] and row["world_size"] == 2
    for name in NAMES:
        assert row[f"metric.{name}"] == pytest.approx(unsharded[f"metric.{name}"], rel=1e-12, abs=0), name


def test_new_keys_leave_earlier_config_hashes_alone():
    """shards / shard / save_samples are unhashed and metric.reference_stats=None is dropped, so a config
    hashes as it did before these keys existed; a reference .npz does change the hash."""
    cfg = cfg_of()
    before = {k: v for k, v in cfg.items() if k not in ("shards", "shard", "save_samples", "chunk_size")}
    before["metric"] = {"names": cfg["metric"]["names"]}
    assert R.hashed_config(cfg) == R.hashed_config(before)  # the keys' defaults leave the hashed part as it was
    assert R.plan_run(cfg_of("metric.reference_stats=ref.npz")).key != R.plan_run(cfg).key
    assert R.plan_run(cfg_of("shards=2", "shard=1", "save_samples=npz")).key == R.plan_run(cfg).key
    assert R.plan_run(cfg_of("chunk_size=24")).key != R.plan_run(cfg).key  # KID's subsets change with it


def test_chunks_of_several_batches_give_the_same_samples(tmp_path):
    """chunk_size=24 with batch_size=8: each chunk sampled in 3 batches, samples bitwise those of 8-sample
    chunks; the shard file records 24-sample chunks."""
    import numpy as np

    cfg = cfg_of(f"results_dir={tmp_path}", "save_samples=npz", "chunk_size=24", "metric=none", "shards=2", "shard=0")
    R.execute(cfg)
    plan = R.plan_run(cfg)
    (file,) = sorted(R.samples_dir(plan).glob("*.npz"))
    assert file.name == "samples-00000000-00000024.npz"
    reference = cfg_of()
    expected, *_ = R.generate(R.plan_run(reference), C.MODELS["gmm2d"].build(cfg["model"]), plan.sigmas, torch.device("cpu"))
    assert np.array_equal(np.load(file)["samples"], expected[:24].numpy())
    assert torch.load(shards.shard_path(tmp_path, plan.key, 0, 2), weights_only=False)["state"]["ranges"] == [(0, 24)]
    with pytest.raises(R.ConfigError, match="chunk_size must be >= 1, got 0"):
        R.plan_run({**cfg, "chunk_size": 0})
