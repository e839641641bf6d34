"""Old path of the runner app, kept so ``python -m optsample.run`` / ``torchrun -m optsample.run`` and
``from optsample.run import ...`` keep working: it lives in optsample/runner/app.py now."""

from .runner.app import (
    TRAJECTORY_SAMPLES, VERSIONED_PACKAGES, ConfigError, RunPlan, SweepTableCallback, batch_conditioning, build_model,
    config_path, execute, generate, git_revision, hashed_config, log_run, main, make_row, objective_of,
    metric_context, package_versions, plan_run, resolve_schedule, run_name, sample_seeds, stream_run, task,
)

__all__ = [
    "TRAJECTORY_SAMPLES", "VERSIONED_PACKAGES", "ConfigError", "RunPlan", "SweepTableCallback", "batch_conditioning",
    "build_model", "config_path", "execute", "generate", "git_revision", "hashed_config", "log_run", "main",
    "make_row", "metric_context", "objective_of", "package_versions", "plan_run", "resolve_schedule", "run_name",
    "sample_seeds", "stream_run", "task",
]

if __name__ == "__main__":
    main()  # the task function stays optsample.runner.app.task: joblib / submitit workers unpickle it by that name
