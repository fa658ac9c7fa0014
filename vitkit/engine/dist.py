"""Process-group facts, so that the trainer logs, shows progress and writes files on rank 0 only.

Under torchrun the environment names this process's rank; a single process is rank 0 of 1.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (identity for a single process)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment (NCCL for GPUs, gloo for CPUs); a no-op for a
    single process or when already joined. Each GPU process uses the GPU of its local rank.
    True when this call joined it (and `teardown` should leave it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def teardown(wait: bool) -> None:
    """Leave the process group. With `wait` (every process got to the same point: the end of the run or an agreed
    stop) each first waits for the others, as rank 0 may still be writing files: a gloo process that left while its
    peer was busy aborted at exit about one run in four ("terminate called without an active exception"), and
    torchrun then stops the rest. Without it (an error in one process) nobody waits for processes that may never come.
    """
    if dist.is_available() and dist.is_initialized():
        if wait and active():
            dist.barrier()
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's `obj` in every process (e.g. the run directory, whose name has a timestamp)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers in every process."""
    if not active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def local_device(device: torch.device) -> torch.device:
    """The process's own GPU under torchrun (cuda:LOCAL_RANK); other devices unchanged."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: torch.nn.Module, device: torch.device):
    """DistributedDataParallel around `model` when several processes train; None for one."""
    if not active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def any_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true in any process (a signal reached one of them)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
