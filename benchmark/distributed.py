"""Data-parallel evaluation with ``torchrun`` (torch.distributed; NCCL on GPUs, gloo on CPU).

Each rank evaluates a deterministic shard of the sorted image ids (``i % world == rank``),
appends its own ``records.rank<r>.jsonl``, and rank 0 gathers every rank's per-image
count records (exact integer data, no float reduction) and writes the results. A single
process is world size 1: the same code path.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist


def world() -> tuple:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init() -> tuple:
    rank, size, local = world()
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)  # model.device=cuda means this rank's GPU
        dist.init_process_group(backend=backend)
    return rank, size, local


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank (e.g. the run directory)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank 0 (None elsewhere)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
