"""NFE budgets and sigma ranges are those of the schedule that is run (issue 9, items 1 and 3).

A tiny discrete-VP model (Stable Diffusion's scaled_linear alphas over an 8-D Gaussian mixture, no hub)
stands in for SD: it has a trained range, a discrete schedule, and is cheap enough to run every sampler.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import optsample
from optsample.runner import config as C
from optsample.runner import app as R
from optsample.models import DenoiserAsDiscreteEps, DiscreteVPDenoiser, GaussianMixture
from optsample.samplers import BudgetError, measure_nfe, steps_for_nfe

# SD's betas: scaled_linear from 0.00085 to 0.012 over 1000 steps (diffusers DDPMScheduler, SD's config)
BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1 - BETAS, 0)
# k-diffusion / A1111 report SD's trained range as 14.6146 .. 0.0292 (sqrt((1 - abar) / abar) at t = 999, 0)
SD_SIGMA_MAX, SD_SIGMA_MIN = 14.6146, 0.029168


def build_tiny_vp(cfg: dict) -> C.BuiltModel:
    gmm = GaussianMixture.random(dim=cfg["dim"], components=3, seed=cfg["seed"], spread=1.0)
    denoiser = DiscreteVPDenoiser(DenoiserAsDiscreteEps(gmm, ALPHAS_CUMPROD), ALPHAS_CUMPROD)
    return C.BuiltModel(denoiser, (cfg["dim"],), schedule_args={"alphas_cumprod": ALPHAS_CUMPROD})


@pytest.fixture(autouse=True, scope="module")
def tiny_vp_model():
    C.MODELS["tiny_vp"] = C.ModelEntry(C.GMMConfig(name="tiny_vp", dim=4, components=3), build_tiny_vp)
    yield
    del C.MODELS["tiny_vp"]


def resolved(*overrides) -> dict:
    C.register_configs()
    with initialize_config_dir(config_dir=R.config_path(), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "metric=none", "progress=false", "n_samples=2", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run_nfe(*overrides) -> tuple[R.RunPlan, int]:
    """(plan, evaluations the run really made): the runner's own plan -> build -> schedule -> generate path."""
    plan = R.plan_run(resolved(*overrides))
    built = R.build_model(plan.cfg["model"], torch.device("cpu"), plan.dtype)
    sigmas = R.resolve_schedule(plan, built)
    with torch.inference_mode():
        _, _, nfe, _, _ = R.generate(plan, built, sigmas, torch.device("cpu"))
    return plan, nfe


def test_the_issue_reproductions():
    # restart nfe=10 used 27 evaluations on old code (steps measured on linspace(10, 0)); now it keeps to 10
    plan, nfe = run_nfe("sampler=restart", "nfe=10")
    assert nfe <= 10
    # sgd with one warm restart: old code failed ("sigmas are [10.0, 0.0]"); now 20 of 20
    plan, nfe = run_nfe("sampler=sgd", "sampler.restart_count=1", "nfe=20")
    assert nfe == 20
    # discrete leading (SD's steps_offset 1) + final=sigma_min has n + 1 steps: old code ran 11 for nfe=10 (NFE 11)
    plan, nfe = run_nfe("model=tiny_vp", "sampler=euler", "schedule=discrete", "schedule.spacing=leading", "schedule.steps_offset=1",
                        "schedule.final=sigma_min", "nfe=10")
    assert (nfe, len(plan.sigmas) - 1) == (10, 10)


def test_unmeetable_budget_is_a_config_error_before_the_model_is_built(monkeypatch):
    monkeypatch.setattr(R, "build_model", lambda *a: pytest.fail("the model was built"))
    # heun with final=sigma_min: one step is [sigma_max, sigma_min, 0], a Heun step + an Euler step = 3 NFE
    with pytest.raises(R.ConfigError, match=r"nfe = 1 is below the 3 evaluations of 1 step\(s\) of heun"):
        R.execute(resolved("sampler=heun", "schedule.final=sigma_min", "nfe=1"))
    with pytest.raises(BudgetError):
        steps_for_nfe("heun", 2, schedule=lambda n: optsample.schedules.karras(n, final="sigma_min"))


SCHEDULES = ["karras", "exponential", "polyexponential", "linear", "vp", "ays", "discrete"]


@pytest.fixture(scope="module")
def base_cfg():
    return resolved("model=tiny_vp")


def cfg_for(base: dict, sampler: str, schedule: str, **top) -> dict:
    """The resolved config of ``sampler=<sampler> schedule=<schedule>`` (the generated nodes' defaults), without
    composing it again: Hydra composition is most of the time of a run this small."""
    return {**base, **top, "sampler": dataclasses.asdict(C.sampler_config(sampler)()),
            "schedule": dataclasses.asdict(C.schedule_config(schedule)())}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", optsample.available())
def test_every_sampler_and_schedule_keeps_to_its_budget(base_cfg, sampler, schedule):
    """nfe=B: the run uses at most B evaluations and one more step would exceed B (so < one step's cost unused);
    where even the shortest schedule costs more than B, the run is a ConfigError before any work."""
    for budget, final in ((7, "zero"), (12, "sigma_min")):
        cfg = cfg_for(base_cfg, sampler, schedule, nfe=budget, steps=None)
        if "final" in cfg["schedule"]:
            cfg["schedule"]["final"] = final
        try:
            plan = R.plan_run(cfg)
        except R.ConfigError as err:
            assert f"nfe = {budget} is below" in str(err)
            kwargs = R.schedule_kwargs(cfg, {})
            assert measure_nfe(sampler, 1, schedule=lambda n: optsample.schedules.get(schedule, n, **kwargs)) > budget
            continue
        built = R.build_model(cfg["model"], torch.device("cpu"), plan.dtype)
        sigmas = R.resolve_schedule(plan, built)
        with torch.inference_mode():
            nfe = R.generate(plan, built, sigmas, torch.device("cpu"))[2]

        def schedule_of(n):
            return optsample.schedules.get(schedule, n, **plan.schedule_kwargs)

        assert nfe <= budget, (sampler, schedule, budget, nfe)
        assert torch.equal(schedule_of(plan.steps), sigmas)
        assert measure_nfe(sampler, plan.steps + 1, schedule=schedule_of, **plan.hparams) > budget


def test_schedules_default_to_the_models_trained_range():
    # old code: karras from EDM's 80 down to 0.002 whatever the model; now SD's 14.6146 .. 0.029168
    plan, _ = run_nfe("model=tiny_vp", "schedule=karras", "steps=6")
    assert float(plan.sigmas[0]) == pytest.approx(SD_SIGMA_MAX, abs=1e-4)
    assert float(plan.sigmas[-2]) == pytest.approx(SD_SIGMA_MIN, abs=1e-6)
    row = R.make_row(plan, {}, nfe=6, steps=6, device=torch.device("cpu"))
    assert row["sigma_start"] == float(plan.sigmas[0]) and row["schedule.sigma_max"] == pytest.approx(SD_SIGMA_MAX, abs=1e-4)
    assert row["schedule.sigma_min"] == pytest.approx(SD_SIGMA_MIN, abs=1e-6) == row["sigma_end"]
    # an explicit value wins over the model's range; the other end still comes from the model
    plan, _ = run_nfe("model=tiny_vp", "schedule=karras", "steps=6", "schedule.sigma_max=5.0")
    assert float(plan.sigmas[0]) == pytest.approx(5.0, rel=1e-12)
    assert float(plan.sigmas[-2]) == pytest.approx(SD_SIGMA_MIN, abs=1e-6)
    # a model without a trained range (the analytic GMM) keeps the schedule's defaults, EDM's 80 .. 0.002
    plan, _ = run_nfe("model=gmm2d", "schedule=exponential", "steps=6")
    assert (float(plan.sigmas[0]), float(plan.sigmas[-2])) == pytest.approx((80.0, 0.002), rel=1e-12)
    assert R.make_row(plan, {}, nfe=6, steps=6, device=torch.device("cpu"))["schedule.sigma_max"] == 80.0
