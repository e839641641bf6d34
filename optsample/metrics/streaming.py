"""Streaming metrics: every metric as mergeable sufficient statistics, in bounded memory.

The torchmetrics ``Metric`` pattern (``update`` / ``compute``, states that add across batches and ranks),
with ``merge(other)`` and a plain ``state()`` dict so the same statistics add across processes
(:mod:`optsample.runner.distributed`) and across jobs (:mod:`optsample.runner.shards`). States are float64;
:class:`MetricStream` merges in the order it is told (the runner: rank order, shard order).

    stream = MetricStream(["loglik", "mmd2_unbiased"], MetricContext(model), n_samples=50_000)
    for start in range(0, 50_000, 1000):
        stream.update(samples[start:start + 1000], Batch(start))
    stream.compute()          # {"loglik": ..., "mmd2_unbiased": ...}

Each update names the index of its first sample (``Batch.start``): statistics that depend on which
samples they saw (KID's subsets, the reference solve of RMSE) are fixed by sample index, never by the
process that saw them, and the stream refuses overlapping ranges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .registry import MetricContext, info

_SUBCHUNK = 4096  # rows per internal pass, so a large update never builds a large intermediate


@dataclass
class Batch:
    """What one update needs besides the samples: the index of its first sample and the per-sample
    inputs of those samples (starting noise, conditioning, labels, prompts)."""

    start: int
    x_start: torch.Tensor | None = None
    extra_args: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None
    prompts: list[str] | None = None


class Statistic:
    """One metric's mergeable state. Subclasses set ``name`` and implement ``update`` / ``compute``;
    a state that is a dict of float64 tensors that add (``self.sums``) merges and saves with no more code.

    ``ctx`` carries what is the same for every batch (the model, the reference data, the feature net);
    ``n_samples`` is the total the stream will see (the size of the default reference draw).
    """

    name = ""

    def __init__(self, ctx: MetricContext, n_samples: int):
        self.ctx, self.n_samples = ctx, n_samples
        self.sums: dict[str, torch.Tensor] = {}
        self.sample_shape: tuple | None = None  # of the samples seen (for the reference draw)

    def seen(self, samples: torch.Tensor) -> None:
        self._shape(tuple(samples.shape[1:]))

    def _shape(self, shape: tuple | None) -> None:
        if shape is None:
            return
        if self.sample_shape is not None and tuple(shape) != self.sample_shape:
            raise ValueError(f"metric {self.name!r}: samples of shape {tuple(shape)} after {self.sample_shape}")
        self.sample_shape = tuple(shape)

    def reference_placeholder(self) -> torch.Tensor:
        """[n_samples, *sample_shape] without memory, for :func:`~optsample.metrics.registry.reference_data`."""
        from .registry import placeholder

        return placeholder(self.n_samples, self.sample_shape or ())

    def add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to(device="cpu", dtype=torch.float64)
        self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError

    def merge(self, other: "Statistic") -> "Statistic":
        """Add ``other``'s state into this one (in place) and return self."""
        self._shape(other.sample_shape)
        for key, value in other.sums.items():
            self.add(key, value)
        return self

    def state(self) -> dict:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "sample_shape": self.sample_shape}

    def load(self, state: dict) -> "Statistic":
        self.sums = {k: v.to(torch.float64).clone() for k, v in state["sums"].items()}
        self.sample_shape = tuple(state["sample_shape"]) if state["sample_shape"] is not None else None
        return self


class ByIndex(Statistic):
    """A state kept per update, keyed by the update's first sample index (merge = union; ``parts()``
    returns them in index order, so the result does not depend on who saw which part)."""

    def __init__(self, ctx: MetricContext, n_samples: int):
        super().__init__(ctx, n_samples)
        self.by_start: dict[int, Any] = {}

    def keep(self, start: int, value: Any) -> None:
        if start in self.by_start:
            raise ValueError(f"metric {self.name!r}: samples from index {start} were given twice")
        self.by_start[start] = value

    def parts(self) -> list:
        return [self.by_start[k] for k in sorted(self.by_start)]

    def merge(self, other: "Statistic") -> "Statistic":
        for start, value in other.by_start.items():
            self.keep(start, value)
        return super().merge(other)

    def state(self) -> dict:
        return {**super().state(), "by_start": dict(self.by_start)}

    def load(self, state: dict) -> "Statistic":
        super().load(state)
        self.by_start = dict(state["by_start"])
        return self


def _cat_like(parts: list) -> Any:
    """Concatenate per-batch values: tensors along dim 0, lists end to end, anything else: the first."""
    if not parts or parts[0] is None:
        return None
    if isinstance(parts[0], torch.Tensor) and parts[0].ndim > 0:
        return torch.cat(parts)
    if isinstance(parts[0], (list, tuple)):
        return [item for part in parts for item in part]
    return parts[0]


class Collected(ByIndex):
    """Fallback for a metric registered as a plain ``fn(samples, ctx)``: keeps its samples (O(n) memory)
    and calls ``fn`` on all of them at the end, with the batches' inputs concatenated in index order."""

    fn: Callable[[torch.Tensor, MetricContext], float]

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        self.keep(batch.start, (samples.detach().cpu(), batch.x_start, batch.extra_args, batch.labels, batch.prompts))

    def compute(self) -> float:
        parts = self.parts()
        samples, x_start, extra, labels, prompts = (list(p) for p in zip(*parts))
        keys = extra[0].keys() if extra else ()
        extra_args = {k: _cat_like([e[k] for e in extra]) for k in keys}
        ctx = dataclasses.replace(self.ctx, x_start=_cat_like(x_start), extra_args={**self.ctx.extra_args, **extra_args},
                                  labels=_cat_like(labels), prompts=_cat_like(prompts))
        return float(self.fn(torch.cat(samples), ctx))


def collected(name: str, fn: Callable) -> type:
    return type(f"Collected_{name}", (Collected,), {"name": name, "fn": staticmethod(fn)})


def subchunks(x: torch.Tensor, size: int = _SUBCHUNK):
    return x.split(size) if x.shape[0] > size else (x,)


class MetricStream:
    """The statistics of several metrics over one stream of samples, with the index ranges seen."""

    def __init__(self, names: list[str], ctx: MetricContext, n_samples: int):
        self.names = list(names)
        self.ctx, self.n_samples = ctx, int(n_samples)
        self.stats = {name: info(name).statistic(ctx, self.n_samples) for name in self.names}
        self.ranges: list[tuple[int, int]] = []

    def update(self, samples: torch.Tensor, batch: Batch) -> None:
        stop = batch.start + samples.shape[0]
        if batch.start < 0 or stop > self.n_samples:
            raise ValueError(f"samples {batch.start}..{stop} fall outside 0..{self.n_samples}")
        self._add_range((batch.start, stop))
        for stat in self.stats.values():
            stat.update(samples, batch)

    def _add_range(self, new: tuple[int, int]) -> None:
        for start, stop in self.ranges:
            if new[0] < stop and start < new[1]:
                raise ValueError(f"samples {new[0]}..{new[1]} overlap samples {start}..{stop} already seen")
        self.ranges.append(new)

    def merge(self, other: "MetricStream") -> "MetricStream":
        """Add ``other`` (same metrics, disjoint samples) into this stream, in place."""
        if other.names != self.names or other.n_samples != self.n_samples:
            raise ValueError(f"cannot merge metrics {other.names} over {other.n_samples} samples into "
                             f"{self.names} over {self.n_samples}")
        for r in other.ranges:
            self._add_range(tuple(r))
        for name in self.names:
            self.stats[name].merge(other.stats[name])
        return self

    def covered(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    def state_dict(self) -> dict:
        return {"names": self.names, "n_samples": self.n_samples, "ranges": sorted(self.ranges),
                "stats": {name: stat.state() for name, stat in self.stats.items()}}

    def load_state_dict(self, state: dict) -> "MetricStream":
        if list(state["names"]) != self.names or int(state["n_samples"]) != self.n_samples:
            raise ValueError(f"state of metrics {state['names']} over {state['n_samples']} samples does not fit "
                             f"{self.names} over {self.n_samples}")
        self.ranges = [tuple(r) for r in state["ranges"]]
        for name in self.names:
            self.stats[name].load(state["stats"][name])
        return self

    def compute(self, *, complete: bool = True) -> dict[str, float]:
        """``{name: value}``; with ``complete`` every sample 0..n_samples must have been seen."""
        if complete and self.covered() != self.n_samples:
            raise ValueError(f"metrics saw {self.covered()} of {self.n_samples} samples")
        return {name: float(stat.compute()) for name, stat in self.stats.items()}


def slice_args(extra_args: dict, n: int, start: int, stop: int) -> dict:
    """Per-sample entries of ``extra_args`` (tensors / lists of length n) cut to start..stop."""
    out = {}
    for key, value in extra_args.items():
        per_sample = isinstance(value, (torch.Tensor, list, tuple)) and len(value) == n and getattr(value, "ndim", 1) > 0
        out[key] = value[start:stop] if per_sample else value
    return out


def compute_one_shot(names: list[str], samples: torch.Tensor, ctx: MetricContext, chunk_size: int | None = None) -> dict:
    """All of ``samples`` through a :class:`MetricStream` in chunks of ``chunk_size`` (None: one chunk)."""
    n = samples.shape[0]
    chunk = n if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    stream = MetricStream(names, ctx, n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        cut = [v[start:stop] if v is not None else None for v in (ctx.x_start, ctx.labels, ctx.prompts)]
        stream.update(samples[start:stop], Batch(start, cut[0], slice_args(ctx.extra_args, n, start, stop), cut[1], cut[2]))
    return stream.compute()
