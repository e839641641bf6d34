"""The Hydra runner: multirun rows, resume after kill -9, validation before work, launchers, Optuna.

Metrics (optsample.metrics) and loggers (optsample.runner.loggers) belong to another module; here they are
replaced by stubs with the fixed interface, so these tests exercise only the runner.
"""

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from helpers import cli
import torch
import yaml
from hydra import compose, initialize_config_dir

import optsample
import optsample.runner
from optsample.runner import config as C
from optsample.runner import devices, results
from optsample.runner import app as R

BASE = ["logger=none", "metric=none", "n_samples=8", "progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def stub_compute(names, samples, context):
    """Stand-in for optsample.metrics.compute: mean squared distance from the start, per name."""
    value = float((samples.double() - context.x_start.double()).pow(2).mean())
    return {name: value for name in names}


class StubStream:
    """Stand-in for optsample.metrics.MetricStream: keeps the batches, applies stub_compute at the end."""

    def __init__(self, names, ctx, n_samples):
        self.names, self.ctx, self.n_samples, self.parts = list(names), ctx, n_samples, []

    def update(self, samples, batch):
        self.parts.append((batch.start, samples, batch.x_start))

    def state_dict(self):
        return {"parts": list(self.parts)}

    def load_state_dict(self, state):
        self.parts = list(state["parts"])
        return self

    def merge(self, other):
        self.parts += other.parts
        return self

    def compute(self):
        parts = sorted(self.parts, key=lambda p: p[0])
        samples, x_start = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        return stub_compute(self.names, samples, types.SimpleNamespace(x_start=x_start)) if self.names else {}


class StubLogger:
    calls: list = []

    def __init__(self, cfg, **kw):
        StubLogger.calls.append(("make", cfg, kw))

    def log_run(self, config, metrics, samples, trajectory, log_density=None, caption=None):
        if StubLogger.fail:
            raise RuntimeError("W&B is down")
        StubLogger.calls.append(("log_run", config, metrics, samples, trajectory))

    def finish(self):
        StubLogger.calls.append(("finish",))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = types.ModuleType("optsample.metrics")
    metrics.MetricContext = lambda **kw: types.SimpleNamespace(**kw)
    metrics.compute = stub_compute
    metrics.MetricStream = StubStream
    metrics.Batch = lambda start, **kw: types.SimpleNamespace(start=start, **kw)
    metrics.available = lambda: list(C.METRIC_PRESETS["analytic"])
    loggers = types.ModuleType("optsample.runner.loggers")
    loggers.make_logger = StubLogger
    loggers.log_sweep_table = lambda cfg, rows, **kw: StubLogger.calls.append(("sweep_table", len(rows), kw))
    monkeypatch.setitem(sys.modules, "optsample.metrics", metrics)
    monkeypatch.setitem(sys.modules, "optsample.runner.loggers", loggers)
    # `from . import metrics` reads the package attribute first: replace it too
    monkeypatch.setattr(optsample, "metrics", metrics, raising=False)
    monkeypatch.setattr(optsample.runner, "loggers", loggers, raising=False)
    StubLogger.calls, StubLogger.fail = [], False
    return tmp_path



def rows(name="default"):
    return results.read_rows(Path("runs") / name)


def test_multirun_2x2_writes_4_rows_then_skips_them(in_tmp):
    assert cli("-m", *BASE, "metric=fast", "sampler=euler,heun", "steps=2,3") == 0
    first = {(r["sampler.name"], r["steps"]): r for r in rows()}
    assert sorted(first) == [("euler", 2), ("euler", 3), ("heun", 2), ("heun", 3)]
    # NFE measured by the framework: heun's last step (sigma_next = 0) is an Euler step
    assert {k: r["nfe"] for k, r in first.items()} == {("euler", 2): 2, ("euler", 3): 3, ("heun", 2): 3, ("heun", 3): 5}
    assert all(r["metric.loglik"] == r["metric.mode_error"] > 0 for r in first.values())
    assert all(r["git_rev"] and r["versions.torch"] == torch.__version__ for r in first.values())
    assert all(r["time.overhead_s"] >= 0 and r["time.total_s"] >= r["time.sample_s"] for r in first.values())
    assert cli("-m", *BASE, "metric=fast", "sampler=euler,heun", "steps=2,3") == 0  # finished: all skipped
    again = {(r["sampler.name"], r["steps"]): r for r in rows()}
    assert {k: r["timestamp"] for k, r in again.items()} == {k: r["timestamp"] for k, r in first.items()}
    assert cli("-m", *BASE, "metric=fast", "sampler=euler", "steps=2,3", "force=true") == 0
    forced = {(r["sampler.name"], r["steps"]): r for r in rows()}
    assert len(forced) == 4 and forced[("euler", 2)]["timestamp"] > first[("euler", 2)]["timestamp"]
    assert forced[("heun", 2)]["timestamp"] == first[("heun", 2)]["timestamp"]
    assert forced[("euler", 2)]["metric.loglik"] == first[("euler", 2)]["metric.loglik"]  # seeded: same numbers


def test_nfe_budget_picks_steps(in_tmp):
    assert cli("-m", *BASE, "sampler=heun,dpmpp_2m", "nfe=6") == 0
    got = {r["sampler.name"]: (r["steps"], r["nfe"], r["nfe_budget"]) for r in rows()}
    assert got["heun"] == (3, 5, 6) and got["dpmpp_2m"] == (6, 6, 6)
    assert got["heun"][0] == optsample.samplers.steps_for_nfe("heun", 6)


@pytest.mark.parametrize("override, message", [
    ("sampler=eulr", "Could not find 'sampler/eulr'"),
    ("steps=0", "steps must be >= 1, got 0"),
    ("sampler.etta=1", "Key 'etta' not in 'EulerSamplerConfig'"),
    ("stepz=4", "Key 'stepz' not in 'RunConfig'"),
    ("steps=abc", "steps"),
    ("model.dtype=float8", "model.dtype must be one of"),
    ("schedule.rho=-1", "rho must be > 0"),
    ("metric.names=[fid2]", "unknown metric(s) ['fid2']"),
])
def test_bad_config_fails_before_work_and_writes_no_row(in_tmp, capfd, override, message):
    assert cli(*BASE, override) == 2
    assert message in capfd.readouterr().err
    assert not Path("results").exists()


def test_impossible_hparam_names_bound(in_tmp, capfd):
    assert cli(*BASE, "sampler=euler_ancestral", "sampler.eta=-0.5") == 2
    assert "hyper-parameter 'eta' = -0.5 is outside [0.0, inf]" in capfd.readouterr().err
    assert not Path("results").exists()


def compose_run(*overrides):
    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_sampler_and_schedule_reachable_from_the_command_line():
    from omegaconf import OmegaConf

    for name in optsample.available():
        cfg = OmegaConf.to_container(compose_run(f"sampler={name}"), resolve=True)
        assert cfg["sampler"]["name"] == name
        assert R.plan_run(cfg).hparams == {k: v for k, v in cfg["sampler"].items() if k != "name"}
    cfg = OmegaConf.to_container(compose_run("sampler=euler_ancestral", "sampler.eta=0.25"), resolve=True)
    assert optsample.get("euler_ancestral").make_params(**R.plan_run(cfg).hparams).eta == 0.25
    for name in set(optsample.schedules.available()) - {"custom", "discrete", "learned"}:  # these need values / a model / a file
        plan = R.plan_run(OmegaConf.to_container(compose_run(f"schedule={name}", "steps=7"), resolve=True))
        assert torch.equal(plan.sigmas, optsample.schedules.get(name, 7))
    custom = OmegaConf.to_container(compose_run("schedule=custom", "schedule.values=[3.0,1.0,0.5]", "steps=null"), resolve=True)
    assert R.plan_run(custom).sigmas.tolist() == [3.0, 1.0, 0.5, 0.0]


def test_presets_compose():
    from hydra.core.global_hydra import GlobalHydra

    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        slurm = compose("config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
        assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.gpus_per_node == 1
        tune = compose("config", overrides=["experiment=tune_euler_churn"], return_hydra_config=True)
        assert tune.objective == "metric.sliced_wasserstein" and "OptunaSweeper" in tune.hydra.sweeper._target_
        solvers = compose("config", overrides=["experiment=gmm_solvers"], return_hydra_config=True)
        assert solvers.name == "gmm_solvers" and solvers.hydra.sweeper.params.sampler.startswith("euler,heun")
    assert not GlobalHydra.instance().is_initialized()


def plan_for(*overrides):
    from omegaconf import OmegaConf

    return R.plan_run(OmegaConf.to_container(compose_run(*BASE, *overrides), resolve=True))


def test_sample_k_independent_of_batch_size():
    plan_a, plan_b = plan_for("batch_size=3", "sampler=euler_ancestral"), plan_for("batch_size=8", "sampler=euler_ancestral")
    built = C.MODELS["gmm2d"].build(plan_a.cfg["model"])
    out_a, start_a, *_ = R.generate(plan_a, built, plan_a.sigmas, torch.device("cpu"))
    out_b, start_b, *_ = R.generate(plan_b, built, plan_b.sigmas, torch.device("cpu"))
    assert torch.equal(out_a, out_b) and torch.equal(start_a, start_b)
    assert start_a[0].tolist() != start_a[1].tolist()
    assert plan_a.key == plan_for("batch_size=3", "sampler=euler_ancestral", "logger=csv").key  # logger not hashed
    assert plan_a.key != plan_b.key


def test_model_dtype_casts_only_the_model(monkeypatch):
    seen = []
    plan = plan_for("model.dtype=bfloat16")
    built = C.MODELS["gmm2d"].build(plan.cfg["model"])
    inner = built.denoiser
    built.denoiser = lambda x, sigma: seen.append((x.dtype, sigma.dtype)) or inner(x, sigma)
    out, *_ = R.generate(plan, built, plan.sigmas, torch.device("cpu"))
    assert out.dtype == torch.float32 and set(seen) == {(torch.bfloat16, torch.float32)}  # sigma keeps its precision
    ref, *_ = R.generate(plan_for(), C.MODELS["gmm2d"].build(plan.cfg["model"]), plan.sigmas, torch.device("cpu"))
    assert 0 < (out - ref).abs().max() < 0.5  # bf16 model: close to, but not the float32 result


def test_device_choice(monkeypatch):
    assert devices.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(devices.DeviceError, match="gpu"):
        devices.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.resolve_device("auto", 3) == torch.device("cpu")
    with pytest.raises(devices.DeviceError, match="cuda"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [devices.resolve_device("auto", j).index for j in range(4)] == [0, 1, 0, 1]  # job num modulo GPUs
    assert devices.resolve_device("cuda:1", 0).index == 1
    with pytest.raises(devices.DeviceError, match="only 2"):
        devices.resolve_device("cuda:2")


def test_logger_gets_the_run_and_a_failing_logger_only_warns(in_tmp):
    assert cli("-m", *BASE[1:], "logger=csv", "sampler=euler,heun", "steps=2", "metric=fast") == 0
    kinds = [c[0] for c in StubLogger.calls]
    assert kinds == ["make", "log_run", "finish"] * 2 + ["sweep_table"]
    assert StubLogger.calls[0][2]["group"] == "default" and StubLogger.calls[1][3].shape == (8, 2)
    assert StubLogger.calls[-1][1] == 2 and StubLogger.calls[1][4] is None
    assert cli(*BASE[1:], "logger=csv", "steps=4", "log_trajectory=true") == 0
    trajectory = StubLogger.calls[-2][4]
    assert len(trajectory) == 5 and torch.equal(trajectory[-1], StubLogger.calls[-2][3])  # 4 step starts + output
    assert trajectory[0].abs().max() > 20 and trajectory[-1].abs().max() < 20  # from sigma_max = 80 to the data
    StubLogger.fail = True
    with pytest.warns(RuntimeWarning, match="W&B is down"):
        assert cli(*BASE[1:], "logger=csv", "steps=5") == 0
    assert len(rows()) == 4


def test_optuna_sweep_3_trials(in_tmp):
    assert cli("-m", *BASE, "experiment=tune_euler_churn", "hydra.sweeper.n_trials=3") == 0
    found = rows("tune_euler_churn")
    assert len(found) == 3 and len({r["sampler.s_churn"] for r in found}) == 3
    best = yaml.safe_load(next(Path("multirun").rglob("optimization_results.yaml")).read_text())
    assert best["best_value"] == min(r["metric.rmse"] for r in found)


SWEEP = [sys.executable, "-m", "optsample.runner.app", "-m", *BASE]


def test_joblib_and_submitit_local_launchers(in_tmp):
    for launcher, name in (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "jl"), (["hydra/launcher=submitit_local"], "sl"):
        done = subprocess.run([*SWEEP, *launcher, f"name={name}", "sampler=euler,dpmpp_2m", "steps=3"], env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert sorted(r["sampler.name"] for r in rows(name)) == ["dpmpp_2m", "euler"]


def test_sweep_killed_with_sigkill_resumes_to_the_full_set(in_tmp):
    grid = ["model=gmm64", "n_samples=3000", "sampler=euler,heun,dpmpp_2m", "steps=8,16"]
    directory = Path("runs/default")
    proc = subprocess.Popen([*SWEEP, *grid], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not list(directory.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = results.finished_keys(directory)
    assert 1 <= len(at_kill) < 6
    done = subprocess.run([*SWEEP, *grid], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    final = rows()
    assert len(final) == 6 and len({r["config_hash"] for r in final}) == 6
    assert sorted((r["sampler.name"], r["steps"]) for r in final) == sorted(
        (s, n) for s in ("euler", "heun", "dpmpp_2m") for n in (8, 16))
    assert at_kill <= {r["config_hash"] for r in final}
    assert (done.stdout + done.stderr).count("skip ") == len(at_kill)  # finished runs were not redone


def test_registering_a_model_twice_replaces_it_with_a_warning():
    """A re-run notebook cell registers model=test_twice again: the second builder (dim 3, not 2) wins."""
    from optsample.runner import config

    try:
        config.register_model(config.GMMConfig(name="test_twice", dim=2), config.build_gmm)
        with pytest.warns(UserWarning, match="model 'test_twice' is already registered; replacing it"):
            config.register_model(config.GMMConfig(name="test_twice", dim=3), config.build_gmm)
        assert config.MODELS["test_twice"].config.dim == 3
    finally:
        config.MODELS.pop("test_twice", None)


PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_fixture"


def test_a_plugin_sampler_runs_in_a_joblib_sweep_of_2_parallel_jobs(in_tmp):
    """tests/plugin_fixture/my_sampler.py registers "damped_euler" outside optsample; plugins=[my_sampler] makes it
    an option of sampler= and imports it in both joblib workers (loky processes), which write 2 rows."""
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), ENV.get("PYTHONPATH", "")])}
    done = subprocess.run([*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "name=plugin", "plugins=[my_sampler]",
                           "sampler=damped_euler", "sampler.damping=0.1,0.6", "steps=3"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = rows("plugin")
    assert sorted((r["sampler.name"], r["sampler.damping"]) for r in found) == [("damped_euler", 0.1), ("damped_euler", 0.6)]
    assert len({r["config_hash"] for r in found}) == 2
    assert [r["plugins"] for r in found] == ["my_sampler"] * 2  # one text cell, so the tables can group rows


def test_a_plugin_that_cannot_be_imported_fails_naming_it(in_tmp):
    with pytest.raises(R.ConfigError, match="plugins: cannot import plugin 'no_such_module'"):
        R.plan_run({**plan_for().cfg, "plugins": ["no_such_module"]})
