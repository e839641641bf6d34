"""Old path of the diffusers scheduler, kept for ``from optsample.diffusers_scheduler import as_scheduler``:
it lives in optsample/integrations/diffusers/scheduler.py now."""

from .integrations.diffusers.scheduler import (
    LATENT_SCALINGS, PLAN_DTYPE, RANGED_SCHEDULES, SCHEDULES, OptSampleScheduler, SamplerCoroutine, as_scheduler,
    evaluation_sigmas, seeds_for, tail_evaluation_sigmas,
)

__all__ = [
    "LATENT_SCALINGS", "PLAN_DTYPE", "RANGED_SCHEDULES", "SCHEDULES", "OptSampleScheduler", "SamplerCoroutine",
    "as_scheduler", "evaluation_sigmas", "seeds_for", "tail_evaluation_sigmas",
]
