"""Data-parallel runs under `torchrun`: the process group, who writes, and the collectives batchlab uses.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; batchlab joins the group
(NCCL on CUDA, gloo on the CPU) when WORLD_SIZE > 1. When a rank dies, torchrun stops the survivors
(and gloo raises at once on a closed socket): seconds, as the kill test measures. Every collective
also has a timeout, a backstop for hangs torchrun cannot see.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from batchlab.errors import bad

# A collective waiting longer than this raises: a backstop for hangs torchrun cannot see. A rank that
# dies is noticed sooner: its peers' sockets close (gloo raises at once) and torchrun stops the rest.
# It must outlast the longest honest wait: ranks probing memory wait for each other's trials, and a
# trial at the edge of a big model takes minutes.
TIMEOUT_SECONDS = 30 * 60


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env() -> None:
    """Join the process group torchrun describes; a no-op in a single process."""
    if env_world_size() <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(cuda_index())
    backend = os.environ.get("BATCHLAB_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise bad("BATCHLAB_DIST_BACKEND", backend, "nccl or gloo", "unset it for the default")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS))


def cuda_index() -> int:
    """This rank's GPU: LOCAL_RANK, wrapped around the GPUs there are (more ranks than GPUs share
    them, which gloo allows and NCCL does not: BATCHLAB_DIST_BACKEND=gloo)."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around `model`, on this rank's GPU or on the CPU."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def finish() -> None:
    """Leave the group in step with the others: a rank that exited with the group alive could
    abort in gloo's teardown ("terminate called without an active exception")."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0 alone writes the store, the JSON and the report."""
    return rank() == 0


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (the tensor itself in one process)."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def lost_peer(error: BaseException) -> bool:
    """True for a collective that failed because another rank went away (or timed out on it)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        m in text for m in ("Connection closed by peer", "Connection reset by peer", "timed out", "NCCL")
    )


def minimum(value: float) -> float:
    """The smallest of the ranks' values (the value itself in one process)."""
    return _reduce(value, dist.ReduceOp.MIN)


def maximum(value: float) -> float:
    return _reduce(value, dist.ReduceOp.MAX)


def _reduce(value: float, op: Any) -> float:
    if not active():
        return value
    box = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(box, op=op)
    return float(box.item())


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the gradients to their mean over the ranks, in one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast(value: Any) -> Any:
    """Rank 0's value of a JSON-like object, on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
