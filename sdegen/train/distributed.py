"""Multi-process set-up: ``torchrun --nproc_per_node=K -m sdegen ...`` runs K copies of a command.

:func:`session` initialises the process group from torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) with NCCL when the processes use GPUs and gloo on CPU,
and tears it down at the end. Library code asks :func:`context` who it is; without a process group it
is the single process of rank 0. Only rank 0 writes files and prints.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Who this process is: ``rank`` of ``world_size`` processes, computing on ``device``."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The one device resolver: ``auto`` (or None): CUDA when available, else CPU; else a torch device
    string (``cpu``, ``cuda``, ``cuda:N``, ...). Under torchrun each process takes GPU ``LOCAL_RANK``.
    Raises ValueError for an unknown name or an unavailable CUDA device."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA device is available; use device=cpu")
        if dist.is_initialized() and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def context(device: str = "auto") -> Context:
    """This process's rank, the number of processes and the device it should compute on."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), resolve_device(device))
    return Context(0, 1, resolve_device(device))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Context]:
    """Initialise the process group if this process was started by torchrun with K > 1 processes;
    yield its :class:`Context`; destroy the group at the end. A no-op for a single process."""
    started = False
    if launched_by_torchrun() and not dist.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started = True
    try:
        yield context(device)
    finally:
        if started:
            dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of ``x`` over the processes (``x`` itself for one process)."""
    if not ctx.distributed:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / ctx.world_size


def any_true(flag: bool, ctx: Context) -> bool:
    """Whether ``flag`` holds on any process (every process gets the same answer)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def local_slice(global_batch: int, ctx: Context) -> slice:
    """This process's rows of a global batch (which must split evenly)."""
    if global_batch % ctx.world_size:
        raise ValueError(f"the global batch size {global_batch} does not split over {ctx.world_size} "
                         "processes; choose a multiple of the process count")
    per = global_batch // ctx.world_size
    return slice(ctx.rank * per, (ctx.rank + 1) * per)


def broadcast_object(obj, ctx: Context):
    """Rank 0's ``obj`` (any picklable value), on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
