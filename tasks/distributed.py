"""Process-group helpers for running the engine under ``torchrun`` (DDP).

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus
``MASTER_ADDR``/``MASTER_PORT``); without them everything here degrades to a single process.
The backend is gloo on CPU and nccl on CUDA.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist

__all__ = [
    "DistInfo",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "pick_device",
    "rank_zero_first",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes.
        local_rank: rank on this node; selects the CUDA device.
        is_main: True on rank 0, the only rank that prints and writes files.
        device: the device this process trains on (``cuda:<local_rank>`` under DDP on GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``--device``: None picks CUDA when available, else the CPU; an unusable device is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a device name ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":  # mps, xpu, ...: the backend must be built in and have a device here
        backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if not callable(available) or not available():
            other = "cpu or cuda" if torch.cuda.is_available() else "cpu"
            raise ValueError(f"--device {device}: no {dev.type} device on this machine (use --device {other})")
    return dev


def init_distributed(device: str | torch.device | None = "cpu") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Idempotent: when a process group already exists its rank/world size are reported. On CUDA the
    process is pinned to ``cuda:LOCAL_RANK`` (an explicit index in ``device`` is ignored under
    DDP, because each process must own a different GPU).

    Args:
        device: "cpu", "cuda" or "cuda:N".

    Returns:
        A :class:`DistInfo`; ``world_size == 1`` when not launched by torchrun.
    """
    dev = pick_device(device)
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")

    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world_size = torch_dist.get_rank(), torch_dist.get_world_size()
        local_rank = local_rank if local_rank is not None else rank
    elif world_size is None or world_size <= 1 or rank is None:
        return DistInfo(device=dev)
    else:
        if local_rank is None:
            raise ValueError("RANK/WORLD_SIZE are set but LOCAL_RANK is not; launch with torchrun")
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        if not torch_dist.is_available():
            raise RuntimeError("torch.distributed is not available in this PyTorch build")
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")

    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, is_main=rank == 0, device=dev)


def cleanup_distributed() -> None:
    """Destroy the default process group if one exists."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank; a no-op in single-process runs."""
    if info.distributed:
        torch_dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects; used for eval metrics)."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Return ``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    torch_dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def rank_zero_first(info: DistInfo) -> Iterator[None]:
    """Run the block on rank 0 first while the other ranks wait, then on the others.

    For data preparation: rank 0 writes a synthetic set or a cache once; the others then find it.
    """
    if not info.is_main:
        barrier(info)
    try:
        yield
    finally:
        if info.is_main:
            barrier(info)
