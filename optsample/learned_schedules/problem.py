"""What a learned schedule is learned for, and against what: the budget, the ends policy, the teacher.

Ends policy (REFERENCES.md, "Learned schedules", pitfalls: the first step and the final sigma need an
explicit policy): every learned schedule starts at ``sigma_max``, its last positive sigma lies in
``[sigma_min, sigma_max)`` and it ends at 0 (``final="zero"``, k-diffusion ``append_zero``), so it has
exactly the step count of ``schedules.karras(n, sigma_min, sigma_max)`` for the same budget and runs
wherever a sigma array runs.

Teachers: on analytic models the exact ODE solution (:func:`optsample.reference.trajectory`, DOP853 in
float64); on networks a many-step high-order solve (:class:`SolverTeacher`), refined once and refused if
the refinement moves it by more than ``tol``. Both give the states at the sigmas asked for, from the same
starting noise; the learners only ever see the tuning seeds' noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .. import reference, samplers, schedules

F64 = torch.float64
TAIL_SUBSTEPS, TAIL_STOP = 4, 1e-5  # SolverTeacher's last interval, to 0: 4x the sub-steps, down to 1e-5 of its start


class BudgetError(samplers.BudgetError):
    """An NFE budget the sampler cannot meet with a learnable schedule (>= 2 steps)."""


class TeacherError(RuntimeError):
    """The teacher did not converge (or returned non-finite states); the message names the teacher."""


@dataclass(frozen=True)
class Ends:
    """The ends policy of the module docstring: start at sigma_max, last positive sigma >= sigma_min, then 0."""

    sigma_max: float = 80.0
    sigma_min: float = 0.002

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max < math.inf):
            raise ValueError(f"ends need 0 < sigma_min < sigma_max < inf, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}")


def steps_for_budget(sampler: str, nfe: int, hparams: dict | None = None, ends: Ends | None = None) -> int:
    """The step count of ``sampler`` within ``nfe`` evaluations, measured on a Karras schedule over the learned
    range (``samplers.steps_for_nfe``, as the runner does), refusing a budget that gives fewer than 2 steps (a
    schedule [sigma_max, 0] has no free sigma) or that one step already exceeds."""
    hparams, ends = dict(hparams or {}), ends if ends is not None else Ends()
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise BudgetError(f"nfe must be an integer >= 1, got {nfe!r}")

    def schedule(n: int) -> torch.Tensor:
        return schedules.karras(n, ends.sigma_min, ends.sigma_max)

    try:
        n_steps = samplers.steps_for_nfe(sampler, nfe, schedule=schedule, **hparams)
    except samplers.BudgetError as err:
        raise BudgetError(f"nfe={nfe}: {err}") from None
    if n_steps < 2:
        two = samplers.measure_nfe(sampler, 2, schedule=schedule, **hparams)
        raise BudgetError(f"nfe={nfe} gives sampler {sampler!r} 1 step, which has no sigma to learn; "
                          f"give nfe >= {two} (2 steps)")
    return n_steps


def tuning_noise(seeds, sample_shape, ends: Ends) -> torch.Tensor:
    """The starting points sigma_max * z_k, z_k from seed k alone (``samplers.initial_noise``), in float64."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one tuning seed, got []")
    return samplers.initial_noise(seeds, sample_shape, dtype=F64) * ends.sigma_max


def mse(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (the squared RMSE of optsample.reference.rmse); keeps the graph."""
    return (x.to(F64) - target.to(F64)).pow(2).mean()


def _check_states(name: str, states: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(states).all()):
        raise TeacherError(f"teacher {name!r} returned non-finite states")
    return states


@dataclass(frozen=True)
class ExactTeacher:
    """The exact probability-flow ODE solution (optsample.reference.trajectory): analytic models."""

    rtol: float = 1e-10
    atol: float = 1e-10
    method: str = "DOP853"

    name = "exact_ode"

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def states(self, model, x: torch.Tensor, sigmas) -> torch.Tensor:
        """[len(sigmas), *x.shape] float64 states on the trajectory through x at sigmas[0]."""
        try:
            out = reference.trajectory(model, x, sigmas, rtol=self.rtol, atol=self.atol, method=self.method)
        except RuntimeError as err:
            raise TeacherError(f"teacher {self.name!r} ({self.method}, rtol={self.rtol}) did not converge: {err}") from None
        return _check_states(self.name, out)


@dataclass(frozen=True)
class SolverTeacher:
    """A many-step solve with a high-order sampler: every interval of the requested sigmas split into
    ``substeps`` geometric sub-steps (the last one, to 0, with ``TAIL_SUBSTEPS * substeps`` steps down to
    ``TAIL_STOP`` of its start, then 0), solved once with ``substeps`` and once with ``2 * substeps``; refused (TeacherError) if the
    two final states differ by more than ``tol`` relative RMSE. The finer solve is returned. (GITS's teacher is
    iPNDM on 61 points, OSS's 100-200 Euler steps; REFERENCES.md.)"""

    sampler: str = "ipndm"
    substeps: int = 8
    tol: float = 1e-3

    @property
    def name(self) -> str:
        return f"{self.sampler}_x{self.substeps}"

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self)}

    @staticmethod
    def _refine(sigmas: list[float], substeps: int) -> tuple[torch.Tensor, list[int]]:
        fine, where = [sigmas[0]], [0]
        for a, b in zip(sigmas, sigmas[1:]):
            # to 0: TAIL_SUBSTEPS x the sub-steps down to a * TAIL_STOP, then 0, so that a request of [sigma_max, 0]
            # alone (gradient, optuna) is a many-step solve too (it was 8 steps to sigma_max / 1000, then a jump)
            stop, count = (b, substeps) if b > 0 else (a * TAIL_STOP, TAIL_SUBSTEPS * substeps)
            fine += [a * (stop / a) ** (t / count) for t in range(1, count + 1)]
            if b == 0:
                fine.append(0.0)
            where.append(len(fine) - 1)
        return torch.tensor(fine, dtype=F64), where

    def _solve(self, model, x, sigmas, substeps):
        fine, where = self._refine(sigmas, substeps)
        wanted, seen = set(where), {}

        def keep(info):  # only the states at the requested sigmas (x at the start of fine step i)
            if info["i"] in wanted:
                seen[info["i"]] = info["x"].to(F64)

        seen[len(fine) - 1] = samplers.sample(self.sampler, model, x, fine, callback=keep,
                                              seeds=range(x.shape[0])).to(F64)
        return torch.stack([seen[k] for k in where])

    def states(self, model, x: torch.Tensor, sigmas) -> torch.Tensor:
        sigmas = [float(s) for s in sigmas]
        with torch.no_grad():
            coarse = self._solve(model, x.to(F64), sigmas, self.substeps)
            fine = self._solve(model, x.to(F64), sigmas, 2 * self.substeps)
        _check_states(self.name, fine)
        change = float(reference.rmse(coarse[-1], fine[-1])) / max(float(fine[-1].pow(2).mean().sqrt()), 1e-300)
        if not change <= self.tol:
            raise TeacherError(f"teacher {self.name!r} did not converge: doubling its sub-steps moved the result by "
                               f"{change:.3g} (relative RMSE) > tol={self.tol}")
        return fine


def make_teacher(name: str = "exact_ode", **options):
    """``exact_ode`` (analytic models) or ``solver`` (networks; options sampler, substeps, tol)."""
    if name == "exact_ode":
        return ExactTeacher(**options)
    if name == "solver":
        return SolverTeacher(**options)
    raise ValueError(f"teacher must be 'exact_ode' or 'solver', got {name!r}")
