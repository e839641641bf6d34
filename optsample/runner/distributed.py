"""One run across the ranks of ``torchrun --nproc_per_node=K -m optsample.runner.app ...``.

The pattern of NVlabs/edm ``generate.py`` / ``fid.py``: the seeds are cut into fixed chunks that do not
depend on K, rank r takes chunks r, r + K, r + 2K, ... (no padding, no duplicates: unlike
``DistributedSampler``, which pads by repeating samples), each rank streams its samples into its metric
statistics, and the statistics are gathered to rank 0 and merged there in rank order (float64, a fixed
order), where the row is computed and written. Rank 0 computes alone, after the gather, so no collective
``compute()`` can hang (torchmetrics #2684). If a rank fails, the gather never completes, torchrun ends
the others, and no row is written.

Hydra under torchrun: every rank resolves ``${now:}`` itself and would make its own output directory
(hydra #2070). The configs name their directories with ``${optsample_now:...}`` instead, rank 0's
clock broadcast to all ranks before Hydra starts (:func:`set_run_stamp`); ranks > 0 write no ``.hydra``
config copy and log to ``<job>.rank<r>.log`` in that directory (:func:`hydra_overrides`).

Backends: gloo for CPU tensors, NCCL for CUDA ones ("cpu:gloo,cuda:nccl" when CUDA is there); the
statistics travel as pickled CPU objects, so gloo carries them either way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not 0 <= rank < size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={size}), got {rank}")
    return World(rank, size, local_rank)


def backend() -> str:
    """gloo on CPU; gloo for CPU tensors and NCCL for CUDA tensors when CUDA and NCCL are available."""
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init() -> World:
    """Join the process group if launched by torchrun with more than one process (idempotent)."""
    here = world()
    if here.size > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank % torch.cuda.device_count())
        torch.distributed.init_process_group(backend=backend())
    return here


def chunks(n_samples: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every chunk of ``chunk_size`` seeds (the last one shorter); independent of K."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, n_samples)) for start in range(0, n_samples, chunk_size)]


def rank_chunks(n_samples: int, chunk_size: int, here: World) -> list[tuple[int, int]]:
    """The chunks rank r samples: r, r + K, r + 2K, ... (NVlabs/edm generate.py's rank-strided batches)."""
    return chunks(n_samples, chunk_size)[here.rank::here.size]


def gather_to_main(obj, here: World) -> list | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0, None on the others (one process: ``[obj]``)."""
    if here.size == 1:
        return [obj]
    out = [None] * here.size if here.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj, here: World):
    """Rank 0's ``obj`` on every rank."""
    if here.size == 1:
        return obj
    box = [obj if here.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def reduce_stream(stream, here: World):
    """Every rank's :class:`~optsample.metrics.MetricStream` merged on rank 0 in rank order (None elsewhere)."""
    states = gather_to_main(stream.state_dict(), here)
    if states is None:
        return None
    merged = stream if here.size == 1 else type(stream)(stream.names, stream.ctx, stream.n_samples).load_state_dict(states[0])
    for state in states[1:]:
        merged.merge(type(stream)(stream.names, stream.ctx, stream.n_samples).load_state_dict(state))
    return merged


_RUN_STAMP: list[float] = []  # rank 0's start time, the same on every rank


def set_run_stamp(stamp: float) -> None:
    _RUN_STAMP[:] = [float(stamp)]


def run_stamp(fmt: str) -> str:
    """The OmegaConf resolver ``${optsample_now:<strftime format>}``: Hydra's ``${now:}``, but rank 0's
    time on every rank (the time of the first use in a process that never set it)."""
    if not _RUN_STAMP:
        set_run_stamp(time.time())
    return datetime.fromtimestamp(_RUN_STAMP[0]).strftime(fmt)


def register_resolver() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("optsample_now", run_stamp, replace=True)


def hydra_overrides(here: World, argv: list[str]) -> list[str]:
    """Extra Hydra overrides for rank > 0 (none for rank 0): no config copy, a log file of its own."""
    if here.is_main:
        return []
    taken = {arg.split("=", 1)[0].lstrip("+~") for arg in argv}
    extra = []
    if "hydra.output_subdir" not in taken:
        extra.append("hydra.output_subdir=null")
    if "hydra.job_logging.handlers.file.filename" not in taken:
        extra.append(f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/${{hydra.job.name}}.rank{here.rank}.log")
    return extra
