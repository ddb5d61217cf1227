"""Multi-process training helpers: ``torchrun`` detection, DDP wrapping, sharding, reductions.

Under ``torchrun --nproc_per_node=N`` every process reads ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` from the environment and joins a process group (``gloo`` on CPU, ``nccl`` on
CUDA). Without those variables everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistEnv",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "init",
    "shard_indices",
    "shutdown",
    "wrap",
]


@dataclass(frozen=True)
class DistEnv:
    """The process's place in the job.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes.
        local_rank: Rank on this node (picks the GPU).
        device: The device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, plots and writes checkpoints."""
        return self.rank == 0


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} asked for CUDA but torch.cuda.is_available() is "
                "False; use --device cpu (or auto)."
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init(device: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun``; pick this process's device.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.

    Raises:
        ValueError: If CUDA is requested but unavailable.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, dev)


def shutdown(env: DistEnv) -> None:
    """Leave the process group (no-op for a single process)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` unchanged."""
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def barrier(env: DistEnv) -> None:
    """Wait for every process (no-op for a single process)."""
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a list of floats over all processes (float64, on this process's device)."""
    if not env.distributed:
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(buf)
    return buf.tolist()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` for a single process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_indices(
    n: int, epoch: int, seed: int, env: DistEnv, shuffle: bool = True
) -> torch.Tensor:
    """This process's share of a per-epoch permutation of ``range(n)``.

    The permutation depends only on ``(seed, epoch)``, so a resumed run sees the same order. It
    is padded by wrapping around to a multiple of ``world_size``, so every process runs the same
    number of batches (DDP needs that), then dealt out round-robin.
    """
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen)
    else:
        perm = torch.arange(n)
    total = -(-n // env.world_size) * env.world_size
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[env.rank :: env.world_size]
