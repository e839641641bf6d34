"""Learned schedules (issue 14): method=optuna (the parametric baseline) and the transfer helpers (another step
count, model / sampler, sigma range)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from optsample import schedules
from optsample.models import GaussianMixture
from test_learned_schedules import CountingModel, _learned, _run, _schedule_app

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# method=optuna


def test_optuna_lowers_the_teacher_loss_and_its_file_runs_in_the_runner(tmp_path):
    """optsample-schedule model=gmm2d sampler=dpmpp_2m nfe=4 method=optuna optuna.trials=8 on 16 tuning seeds:
    the tuned Karras schedule's RMSE to the exact solution on the tuning seeds is <= 0.7 x the default Karras
    schedule's (measured 0.41 vs 0.90, 8 trials); the provenance carries the best params, the trial count
    and the study seed, and the chosen schedule is Karras eq. 5 at those params; optsample-run runs the file's
    sigmas at NFE 4."""
    from optsample.runner import app as R

    written = _schedule_app(tmp_path, "model=gmm2d", "sampler=dpmpp_2m", "nfe=4", "method=optuna", "n_samples=16",
                            "optuna.trials=8")
    prov = written.provenance
    assert prov["method"] == "optuna" and prov["steps"] == 4
    assert prov["loss"]["rmse"] <= 0.7 * prov["loss"]["rmse_karras_default"]
    info = prov["info"]
    assert info["trials"] == 8 and info["study_seed"] == 0 and set(info["best_params"]) == {"rho", "sigma_min"}
    assert info["validation_seeds"] == prov["seeds"][12:] and info["train_seeds"] == prov["seeds"][:12]
    best = info["best_params"]
    karras = schedules.karras(4, best["sigma_min"], 80.0, best["rho"])
    assert torch.allclose(written.sigmas, karras, rtol=1e-14) and float(written.sigmas[0]) == 80.0
    cfg = _run("model=gmm2d", "sampler=dpmpp_2m", "nfe=4", "schedule=learned", f"schedule.path={written.path}",
               "seed=2", "n_samples=16", "batch_size=16", "metric.names=[rmse]", f"results_dir={tmp_path / 'runs'}")
    assert torch.equal(R.plan_run(cfg).sigmas, written.sigmas)
    row = R.execute(cfg)
    assert row["nfe"] == 4 and row["steps"] == 4 and math.isfinite(row["metric.rmse"])


def _optuna(seed=0, trials=6, sampler="euler", **options):
    from optsample.learned_schedules.learn import learn

    gmm = GaussianMixture.random(dim=4, components=3, seed=0)
    return learn(gmm, sampler, 4, (4,), method="optuna", seeds=range(8),
                 options={"trials": trials, "seed": seed, **options})


def test_optuna_is_deterministic_given_the_study_seed():
    """Same study seed -> the same best params and bitwise the same sigmas, also for a stochastic sampler
    (euler_ancestral: its noise comes from the tuning seeds); another seed -> other params."""
    first, again, other = _optuna(seed=3), _optuna(seed=3), _optuna(seed=4)
    assert first.provenance["info"]["best_params"] == again.provenance["info"]["best_params"]
    assert torch.equal(first.sigmas, again.sigmas)
    assert other.provenance["info"]["best_params"] != first.provenance["info"]["best_params"]
    noisy, noisy_again = _optuna(seed=3, sampler="euler_ancestral"), _optuna(seed=3, sampler="euler_ancestral")
    assert noisy.provenance["info"] == noisy_again.provenance["info"] and torch.equal(noisy.sigmas, noisy_again.sigmas)


def test_optuna_trial_zero_is_default_karras_and_sigma_max_range_keeps_the_ends():
    """One trial = the enqueued default (rho 7, sigma_min = the ends' 0.002): the schedule is schedules.karras(4)
    to 1e-14. With sigma_max_range [10, 80] the first sigma is still the ends' 80 exactly, the last positive one
    >= 0.002, and the tuned sigma_max lies in [10, 80]."""
    one = _optuna(trials=1, val_fraction=0)
    assert one.provenance["info"]["best_params"] == {"rho": 7.0, "sigma_min": 0.002}
    assert torch.allclose(one.sigmas, schedules.karras(4), rtol=1e-14) and "validation_mse" not in one.provenance["info"]
    tuned = _optuna(trials=6, sigma_max_range=[10.0, 80.0])
    top = tuned.provenance["info"]["best_params"]["sigma_max"]
    assert float(tuned.sigmas[0]) == 80.0 and float(tuned.sigmas[-2]) >= 0.002 and 10.0 <= top <= 80.0


@pytest.mark.parametrize("options, message", [
    ({"trials": 0}, "trials must be an integer >= 1, got 0"),
    ({"trials": 2.5}, "trials must be an integer >= 1, got 2.5"),
    ({"rho_range": [8.0, 2.0]}, r"rho_range must have low < high, got \[8.0, 2.0\]"),
    ({"rho_range": [3.0, 3.0]}, "rho_range must have low < high"),
    ({"rho_range": []}, r"rho_range must be a \[low, high\] pair, got \[\]"),
    ({"sigma_min_range": [0.0, 0.1]}, "sigma_min_range must hold two finite numbers > 0"),
    ({"sigma_min_range": [0.001, 0.1]}, r"sigma_min_range must lie in \[sigma_min, sigma_max\)"),
    ({"sigma_min_range": [0.01, 90.0]}, r"sigma_min_range must lie in \[sigma_min, sigma_max\)"),
    ({"sigma_max_range": [1.0, 100.0]}, "sigma_max_range must lie in"),
    ({"sigma_max_range": [0.1, 80.0]}, "sigma_max_range must lie in"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
    ({"rate": 1.0}, r"method 'optuna' has no option\(s\) \['rate'\]"),
])
def test_bad_optuna_options_are_one_line_errors_before_any_model_call(options, message):
    from optsample.learned_schedules.learn import learn

    model = CountingModel(GaussianMixture.random(dim=4, components=3, seed=0))
    with pytest.raises(ValueError, match=message) as caught:
        learn(model, "euler", 4, (4,), method="optuna", seeds=range(8), options=options)
    assert "\n" not in str(caught.value) and model.calls == 0


def test_optsample_schedule_checks_optuna_options_before_building(tmp_path):
    from optsample.runner import app as R

    with pytest.raises(R.ConfigError, match=r"rho_range must have low < high, got \[5.0, 2.0\]"):
        _schedule_app(tmp_path, "model=gmm2d", "method=optuna", "optuna.rho_range=[5,2]")
    with pytest.raises(R.ConfigError, match="needs >= 2 tuning seeds"):
        _schedule_app(tmp_path, "model=gmm2d", "method=optuna", "n_samples=1")
    assert not (tmp_path / "learned.json").exists()


def test_optuna_per_trial_logging_is_silenced_and_restored(caplog):
    """No optuna 'Trial k finished' line reaches the log; optuna's verbosity is the same after as before."""
    import optuna

    before = optuna.logging.get_verbosity()
    with caplog.at_level("INFO"):
        _optuna(trials=4)
    assert not [r for r in caplog.records if "finished with value" in r.getMessage()]
    assert [r for r in caplog.records if r.name == "optsample.learned_schedules.optuna"]  # one line per quarter
    assert optuna.logging.get_verbosity() == before


# ----------------------------------------------------------------------------------------------
# Transfer: another step count


def _nvidia_loglinear_interp(t_steps, num_steps):
    """Transcribed from the AYS authors' how-to page (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html)."""
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(t_steps[::-1])
    new_xs = np.linspace(0, 1, num_steps)
    new_ys = np.interp(new_xs, xs, ys)
    return np.exp(new_ys)[::-1].copy()


def _file_of(tmp_path, sigmas, name="table.json", **provenance):
    from optsample.learned_schedules import files

    base = {"model": {"name": "gmm2d"}, "sampler": {"name": "euler", "hparams": {}}, "nfe": len(sigmas) - 1,
            "steps": len(sigmas) - 1, "method": "dp", "teacher": {"name": "exact_ode"}, "seeds": [0], "loss": {},
            "ends": {"sigma_max": sigmas[0], "sigma_min": sigmas[-2], "final": "zero"}}
    return files.save(tmp_path / name, sigmas, {**base, **provenance})


@pytest.mark.parametrize("model", sorted(schedules.AYS_SIGMAS))
def test_interpolating_the_ays_table_as_a_file_is_schedules_ays(tmp_path, model):
    """A file holding the 10-step AYS table (+ 0) interpolated to m steps == schedules.ays(m) bitwise (one shared
    function) and == the AYS authors' loglinear_interp (numpy, transcribed) to 1e-14, for m in 2..16."""
    from optsample.learned_schedules import files

    saved = _file_of(tmp_path, [*schedules.AYS_SIGMAS[model], 0.0])
    for m in (2, 3, 4, 5, 7, 10, 11, 16):
        assert torch.equal(files.interpolate_steps(saved.sigmas, m), schedules.ays(m, model))
        peer = _nvidia_loglinear_interp(np.array(schedules.AYS_SIGMAS[model]), m)
        np.testing.assert_allclose(files.interpolate_steps(saved.sigmas, m)[:-1].numpy(), peer, rtol=1e-14)


def test_interpolation_is_identity_at_its_own_count_and_keeps_ends_and_order(tmp_path):
    """n -> n: bitwise the file, no warning; n -> m (m = 2..12): first and last positive sigma exactly the file's,
    strictly decreasing, ends at 0, and an InterpolationWarning naming both counts; without interpolate the
    mismatch stays an error naming both counts."""
    from optsample.learned_schedules import files

    saved, _ = _learned(tmp_path)  # a dp schedule, 3 euler steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(schedules.get("learned", 3, path=saved.path, interpolate=True), saved.sigmas)
    assert torch.equal(files.interpolate_steps(saved.sigmas, 3), saved.sigmas)
    for m in range(2, 13):
        if m == 3:
            continue
        with pytest.warns(files.InterpolationWarning, match=f"has 3 steps .*interpolated to {m} steps"):
            sigmas = schedules.get("learned", m, path=saved.path, interpolate=True)
        assert len(sigmas) == m + 1 and float(sigmas[0]) == float(saved.sigmas[0])
        assert float(sigmas[-2]) == float(saved.sigmas[-2]) and float(sigmas[-1]) == 0.0
        assert bool((sigmas[1:] < sigmas[:-1]).all())
    with pytest.raises(ValueError, match="n = 6 steps but schedule file .* has 3 .*interpolate=true"):
        schedules.get("learned", 6, path=saved.path)


def test_runner_interpolates_a_learned_file_to_the_nfe_budget(tmp_path):
    """schedule=learned schedule.interpolate=true nfe=8 with euler: 8 steps, the file's 3 interpolated
    (files.interpolate_steps), one InterpolationWarning for the chosen count only; without the flag the file's
    3 steps run (nfe is a budget the file meets)."""
    from optsample.learned_schedules import files
    from optsample.runner import app as R

    saved = _file_of(tmp_path, [80.0, 3.0, 0.1, 0.0])
    cfg = _run("model=gmm2d", "sampler=euler", "nfe=8", "schedule=learned", f"schedule.path={saved.path}",
               "schedule.interpolate=true", f"results_dir={tmp_path / 'runs'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = R.plan_run(cfg)
    counts = [str(w.message) for w in caught if issubclass(w.category, files.InterpolationWarning)]
    assert plan.steps == 8 and torch.equal(plan.sigmas, files.interpolate_steps(saved.sigmas, 8))
    assert len(counts) == 1 and "interpolated to 8 steps" in counts[0]
    assert R.plan_run({**cfg, "schedule": {**cfg["schedule"], "interpolate": False}}).steps == 3


def test_hash_of_a_learned_run_without_the_transfer_options_is_unchanged(tmp_path):
    """interpolate=false / sigma_range=null (the defaults added with transfer) leave a learned run's hashed
    config as it was without those keys, so earlier rows are reused."""
    from optsample.runner import app as R

    saved = _file_of(tmp_path, [80.0, 3.0, 0.1, 0.0])
    cfg = _run("model=gmm2d", "sampler=euler", "schedule=learned", f"schedule.path={saved.path}")
    old = {**cfg, "schedule": {k: v for k, v in cfg["schedule"].items() if k not in ("interpolate", "sigma_range")}}
    assert R.hashed_config(cfg) == R.hashed_config(old)
    assert R.hashed_config({**cfg, "schedule": {**cfg["schedule"], "interpolate": True}}) != R.hashed_config(old)


# ----------------------------------------------------------------------------------------------
# Transfer: another sampler / model, another sigma range


def test_runner_refuses_another_sampler_by_default_and_warns_with_on_mismatch(tmp_path):
    from optsample.learned_schedules import files
    from optsample.runner import app as R

    saved = _file_of(tmp_path, [80.0, 3.0, 0.1, 0.0])
    base = ["sampler=heun", "schedule=learned", f"schedule.path={saved.path}", f"results_dir={tmp_path / 'r'}"]
    with pytest.raises(R.ConfigError, match="learned for sampler 'euler', not 'heun'"):
        R.plan_run(_run("model=gmm2d", *base))
    with pytest.raises(R.ConfigError, match="learned for model 'gmm2d', not 'gmm64'"):
        R.plan_run(_run("model=gmm64", "sampler=euler", *base[1:]))
    with pytest.warns(files.ProvenanceWarning, match="learned for model 'gmm2d', not 'gmm64'; sampler 'euler', not 'heun'"):
        plan = R.plan_run(_run("model=gmm64", *base, "schedule.on_mismatch=warn"))
    assert torch.equal(plan.sigmas, saved.sigmas)


def test_sigma_range_mapping_is_affine_in_log_sigma(tmp_path):
    """A file on [0.1, 80] mapped to [0.002, 14.6]: first sigma 14.6 exactly, last positive 0.002 (1e-14), each
    (log s' - log c) / (log d - log c) = (log s - log a) / (log b - log a) to 1e-12; mapping to its own range is
    the identity to 1e-15; through the runner: schedule.sigma_range=[0.002,14.6]. Bad ranges name the option."""
    from optsample.learned_schedules import files
    from optsample.runner import app as R

    saved = _file_of(tmp_path, [80.0, 9.0, 1.5, 0.1, 0.0])
    mapped = schedules.get("learned", path=saved.path, sigma_range=[0.002, 14.6])
    assert float(mapped[0]) == 14.6 and float(mapped[-1]) == 0.0
    assert float(mapped[-2]) == pytest.approx(0.002, rel=1e-14)
    before = (saved.sigmas[:-1].log() - math.log(0.1)) / (math.log(80.0) - math.log(0.1))
    after = (mapped[:-1].log() - math.log(0.002)) / (math.log(14.6) - math.log(0.002))
    assert torch.allclose(after, before, rtol=0, atol=1e-12)
    same = files.map_sigma_range(saved.sigmas, [0.1, 80.0], [0.1, 80.0])
    assert torch.allclose(same, saved.sigmas, rtol=1e-15, atol=0)
    cfg = _run("model=gmm2d", "sampler=euler", "schedule=learned", f"schedule.path={saved.path}",
               "schedule.sigma_range=[0.002,14.6]", f"results_dir={tmp_path / 'r'}")
    assert torch.equal(R.plan_run(cfg).sigmas, mapped)
    with pytest.raises(ValueError, match=r"sigma_range must have sigma_min < sigma_max, got \[14.6, 0.002\]"):
        schedules.get("learned", path=saved.path, sigma_range=[14.6, 0.002])
    with pytest.raises(ValueError, match="sigma_range must be \\[sigma_min, sigma_max\\]"):
        schedules.get("learned", path=saved.path, sigma_range=[0.0, 1.0])
    with pytest.raises(ValueError, match="interpolate must be true or false"):
        schedules.get("learned", path=saved.path, interpolate="yes")
    with pytest.warns(files.InterpolationWarning, match="has 4 steps .*interpolated to 6 steps"):
        both = schedules.get("learned", 6, path=saved.path, interpolate=True, sigma_range=[0.002, 14.6])
    other_order = files.interpolate_steps(files.map_sigma_range(saved.sigmas, [0.1, 80.0], [0.002, 14.6]), 6)
    assert torch.allclose(both, other_order, rtol=1e-12, atol=0)  # both maps are affine in log sigma: they commute


def test_as_scheduler_interpolates_a_learned_file_too(tmp_path):
    """as_scheduler(schedule="learned", schedule_kwargs={"path", "interpolate": True}).set_timesteps(6) holds the
    file's 3 steps interpolated to 6 (files.interpolate_steps), to 1e-12; without interpolate 6 steps is refused."""
    from optsample.integrations.diffusers.scheduler import as_scheduler
    from optsample.learned_schedules import files

    saved = _file_of(tmp_path, [80.0, 3.0, 0.1, 0.0])
    scheduler = as_scheduler("euler", schedule="learned", schedule_kwargs={"path": saved.path, "interpolate": True})
    with pytest.warns(files.InterpolationWarning, match="has 3 steps .*interpolated to 6 steps"):
        scheduler.set_timesteps(6)
    assert torch.allclose(scheduler.schedule_sigmas.to(F64), files.interpolate_steps(saved.sigmas, 6), rtol=1e-12)
    with pytest.raises(ValueError, match="n = 6 steps but schedule file .* has 3"):
        as_scheduler("euler", schedule="learned", schedule_kwargs={"path": saved.path}).set_timesteps(6)
