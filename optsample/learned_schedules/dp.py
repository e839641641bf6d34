"""``method=dp``: the student's steps chosen among the points of a fine sigma grid by dynamic programming.

The grid is ``schedules.karras(grid_size, sigma_min, sigma_max, rho)`` (``grid_size`` positive points, then 0),
the teacher's states are known at every grid point, and a schedule of ``n`` steps is a path
0 = p_0 < p_1 < ... < p_n = grid_size through the grid indices. Two costs (REFERENCES.md, "Learned schedules"):

- ``cost="gits"`` (Chen et al., ICML 2024; zju-pi/diff-sampler ``gits-main/gits_utils.py`` ``dp``): teacher-anchored.
  C[i, j] = MSE between one student step from the *teacher's* state at grid i to grid j and the teacher's state
  at j; the path minimises sum_m coeff^m C[p_m, p_{m+1}] (their V[j][k] = min_i C[j][i] + coeff V[i][k-1],
  coeff 1.15 for pixel models), solved exactly. Multistep history: ignored, as in GITS: the "one step" is the
  sampler run on the two sigmas [grid_i, grid_j] alone, i.e. its first-order start (DDIM for DPM-Solver++ and
  UniPC, Euler for iPNDM).
- ``cost="oss"`` (Pei et al. 2025; bebebe666/OptimalSteps ``OSS/OSS.py`` ``search_OSS``): the student's own
  carried error. For each step count k and landing point j the DP keeps the student's best state (lowest MSE
  to the teacher at j) and extends it by one step. Multistep history, ``history="exact"`` (default): the
  extension re-runs the real sampler along the stored best path plus the new point, so every state is exactly
  what the sampler produces on that prefix (its multistep memory and its own last-step rules included) and the
  final value is the sampler's true error on the returned schedule; ``history="none"`` is OSS's original
  one-step extension from the stored state (the same for one-step samplers such as Euler). Like OSS this keeps
  one state per (k, j), a greedy choice: it is exact only when a better intermediate state never leads to a worse
  end (OSS uses the batch of one image; here the MSE is over the whole tuning batch, one schedule for all).
  ``beam`` > 1 keeps the ``beam`` best states per (k, j) instead (a beam search over the same paths; beam 1 is
  OSS's DP exactly).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .. import samplers, schedules
from .problem import Ends, mse

COSTS = ("gits", "oss")
HISTORIES = ("exact", "none")


def make_grid(grid_size: int, ends: Ends, rho: float = 7.0) -> torch.Tensor:
    """The candidate sigmas: Karras et al. 2022 eq. 5 on ``grid_size`` points from sigma_max to sigma_min, then 0."""
    return schedules.karras(grid_size, ends.sigma_min, ends.sigma_max, rho)


def check_budget(n_steps: int, grid: torch.Tensor) -> None:
    if n_steps > len(grid) - 1:
        raise ValueError(f"n_steps = {n_steps} does not fit a grid of {len(grid) - 1} steps; raise grid_size")


def _run(sampler, model, x, sigmas, hparams, seeds) -> torch.Tensor:
    # Per-sample noise streams only for stochastic samplers: building one generator per sample costs more
    # than a gmm64 step, and deterministic samplers never draw noise.
    seeds = seeds if samplers.get(sampler).stochastic else None
    with torch.no_grad():
        return samplers.sample(sampler, model, x, sigmas, seeds=seeds, **hparams).to(torch.float64)


def gits_costs(sampler: str, model, grid: torch.Tensor, teacher: torch.Tensor, hparams: dict | None = None,
               seeds=None) -> np.ndarray:
    """C[i, j] (i < j) of the module docstring; +inf on and below the diagonal."""
    hparams, size = dict(hparams or {}), len(grid)
    seeds = list(seeds) if seeds is not None else list(range(teacher.shape[1]))
    costs = np.full((size, size), np.inf)
    for i in range(size - 1):
        for j in range(i + 1, size):
            out = _run(sampler, model, teacher[i], grid[[i, j]], hparams, seeds)
            costs[i, j] = float(mse(out, teacher[j]))
    return costs


def path_cost(costs: np.ndarray, path, coeff: float = 1.0) -> float:
    """sum_m coeff^m C[p_m, p_{m+1}]: the GITS objective of one path."""
    return float(sum(coeff**m * costs[a, b] for m, (a, b) in enumerate(zip(path, path[1:]))))


def gits_path(costs: np.ndarray, n_steps: int, coeff: float = 1.0) -> tuple[list[int], float]:
    """The path 0 -> last of exactly ``n_steps`` steps minimising :func:`path_cost` (GITS ``dp``, solved exactly).

    value[k][j] = cost to go from j to the last index in k steps: value[1][j] = C[j, last],
    value[k][j] = min_{j < i < last} C[j, i] + coeff value[k-1][i]."""
    last = len(costs) - 1
    if not 1 <= n_steps <= last:
        raise ValueError(f"n_steps must be in [1, {last}] for this grid, got {n_steps}")
    value = np.full((n_steps + 1, last + 1), np.inf)
    choice = np.full((n_steps + 1, last + 1), -1, dtype=int)
    value[1, :last] = costs[:last, last]
    choice[1, :last] = last
    for k in range(2, n_steps + 1):
        for j in range(last):
            candidates = costs[j, j + 1:last] + coeff * value[k - 1, j + 1:last]
            if len(candidates) and np.isfinite(candidates).any():
                best = int(np.argmin(candidates))
                value[k, j], choice[k, j] = candidates[best], j + 1 + best
    path, j = [0], 0
    for k in range(n_steps, 0, -1):
        j = int(choice[k, j])
        path.append(j)
    return path, float(value[n_steps, 0])


def oss_path(sampler: str, model, grid: torch.Tensor, teacher: torch.Tensor, x_start: torch.Tensor, n_steps: int,
             hparams: dict | None = None, seeds=None, history: str = "exact", beam: int = 1) -> tuple[list[int], float]:
    """OSS's DP of the module docstring; returns (path, MSE of the student's final state to the teacher's).

    ``beam`` = the number of states kept per (step count, landing point): the ``beam`` lowest-MSE distinct
    paths, each extended (a beam search; 1 is OSS's single best state). With a multistep sampler a state that
    is worse at j can end better (its history, its lower-order last steps), which one state per (k, j) misses;
    a wider beam costs ``beam`` times the extensions."""
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {list(HISTORIES)}, got {history!r}")
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    hparams, last = dict(hparams or {}), len(grid) - 1
    check_budget(n_steps, grid)
    seeds = list(seeds) if seeds is not None else list(range(x_start.shape[0]))
    # kept[(k, j)]: up to ``beam`` (path, state, cost), lowest cost first
    kept: dict[tuple[int, int], list[tuple[tuple, torch.Tensor, float]]] = {}
    for k in range(1, n_steps + 1):
        targets = [last] if k == n_steps else range(k, last - (n_steps - k) + 1)
        for j in targets:
            sources = [(0, ((), x_start, 0.0))] if k == 1 else [
                (i, entry) for i in range(k - 1, j) for entry in kept.get((k - 1, i), ())]
            found: list[tuple[tuple, torch.Tensor, float]] = []
            for i, (path, state, _) in sources:
                if history == "exact" or k == 1:
                    new_path = (*path, j) if path else (0, j)
                    out = _run(sampler, model, x_start, grid[list(new_path)], hparams, seeds)
                else:
                    new_path = (*path, j)
                    out = _run(sampler, model, state, grid[[i, j]], hparams, seeds)
                found.append((new_path, out, float(mse(out, teacher[j]))))
            if found:
                # stable: among equal costs the first found wins, as the single-state DP's strict "<" did
                kept[(k, j)] = sorted(found, key=lambda entry: entry[2])[:beam]
    path, _, cost = kept[(n_steps, last)][0]
    return list(path), cost


def brute_force_paths(last: int, n_steps: int):
    """Every path 0 -> last of exactly n_steps steps through the grid indices (for tests on tiny grids)."""
    for interior in itertools.combinations(range(1, last), n_steps - 1):
        yield [0, *interior, last]


def n_paths(last: int, n_steps: int) -> int:
    return math.comb(last - 1, n_steps - 1)
