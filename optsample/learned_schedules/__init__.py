"""Learned sigma schedules (issue 14): the learning-rate schedule, learned per sampler and NFE budget.

- :mod:`.problem`: what is learned (sampler, budget, ends policy, tuning noise) and the teacher;
- :mod:`.dp`: dynamic programming over a fine sigma grid (GITS's teacher-anchored cost or OSS's carried error);
- :mod:`.gradient`: LD3-style gradient descent through the sampler on softmax-cumsum parameterised steps;
- :mod:`.parametric`: ``method=optuna``, the baseline: Karras (rho, sigma_min[, sigma_max]) tuned by Optuna TPE;
- :mod:`.files`: the schedule file (JSON with provenance), its validating loader, ``schedule=learned``, and
  transfer (another step count, sampler, model or sigma range).

Library layer: uses samplers, schedules, models and reference, never the runner.
"""

from .files import ProvenanceMismatch, ScheduleFile, ScheduleFileError, check_provenance, learned, load, save  # noqa: E402

__all__ = ["ProvenanceMismatch", "ScheduleFile", "ScheduleFileError", "check_provenance", "learned", "load", "save"]
